"""fcn_resnet101 in plain torch: torchvision's keys, weight loading, the softmax head, the
fp16-safe random init, the registry entries. CPU, small inputs (ResNet-101 at 64x64 is ~0.1 s)."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bgblur.errors import ModelUnavailableError
from bgblur.models import fcn
from bgblur.models.fcn import (
    PRETRAINED_FILENAME,
    WEIGHTS_ENV,
    FCNResNet101,
    RandomWeightsWarning,
    build_fcn_resnet101,
    class_index,
    fp16_safe_init_,
    load_fcn_state_dict,
    resolve_weights,
)
from bgblur.models.registry import get_model_spec, model_names

# --------------------------------------------------------------------------------------------
# torchvision's fcn_resnet101 state dict, written out from its architecture definition
# (torchvision/models/resnet.py ResNet(Bottleneck, [3, 4, 23, 3]) with
# replace_stride_with_dilation=[False, True, True] behind IntermediateLayerGetter (no avgpool/fc);
# torchvision/models/segmentation/fcn.py FCNHead(2048, 21), aux FCNHead(1024, 21)).
# --------------------------------------------------------------------------------------------

BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{s}", () if s == "num_batches_tracked" else (c,)) for s in BN_SUFFIXES]


def _head(prefix: str, cin: int) -> list[tuple[str, tuple[int, ...]]]:
    mid = cin // 4
    return [
        (f"{prefix}.0.weight", (mid, cin, 3, 3)),
        *_bn(f"{prefix}.1", mid),
        (f"{prefix}.4.weight", (21, mid, 1, 1)),
        (f"{prefix}.4.bias", (21,)),
    ]


def torchvision_fcn_resnet101_keys(aux: bool) -> list[tuple[str, tuple[int, ...]]]:
    keys = [("backbone.conv1.weight", (64, 3, 7, 7)), *_bn("backbone.bn1", 64)]
    inplanes = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 23), (512, 3)), start=1):
        for b in range(blocks):
            p = f"backbone.layer{layer}.{b}"
            keys += [(f"{p}.conv1.weight", (planes, inplanes, 1, 1)), *_bn(f"{p}.bn1", planes)]
            keys += [(f"{p}.conv2.weight", (planes, planes, 3, 3)), *_bn(f"{p}.bn2", planes)]
            keys += [(f"{p}.conv3.weight", (planes * 4, planes, 1, 1))]
            keys += _bn(f"{p}.bn3", planes * 4)
            if b == 0:
                keys += [(f"{p}.downsample.0.weight", (planes * 4, inplanes, 1, 1))]
                keys += _bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    keys += _head("classifier", 2048)
    if aux:
        keys += _head("aux_classifier", 1024)
    return keys


# sha256 of "key:shape" lines (no aux) of torchvision 0.26's fcn_resnet101(aux_loss=True)
# state dict, read on the GPU machine (torch 2.11); the builtin module gave the same.
TORCHVISION_KEY_SHAPE_SHA256 = "da43a37e5684a9a862e8c810375a64c56729456119077e20d7969d3a018a56ae"
TORCHVISION_PARAMS_WITH_AUX = 54_314_346  # torchvision's documented num_params for the weights
PARAMS_WITHOUT_AUX = 54_314_346 - (1024 * 256 * 9 + 2 * 256 + 256 * 21 + 21)


def key_shape_lines(state: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k}:{tuple(v.shape)}" for k, v in state.items()]


def random_model(foreground: int | str = "person", **kwargs) -> FCNResNet101:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return build_fcn_resnet101(foreground, implementation="builtin", **kwargs)


@pytest.fixture(scope="module")
def model() -> FCNResNet101:
    return random_model()


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return torch.from_numpy(
        np.random.default_rng(7).standard_normal((2, 3, 64, 64)).astype(np.float32)
    )


@pytest.fixture(autouse=True)
def no_weights_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees a real weights file: no env var, an empty torch hub folder."""
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def fake_pretrained_state(model: FCNResNet101) -> dict[str, torch.Tensor]:
    """What torchvision's file holds: the network's keys plus an aux head (random values)."""
    gen = torch.Generator().manual_seed(3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, shape in torchvision_fcn_resnet101_keys(aux=True):
        if key.startswith("aux_classifier."):
            state[key] = (
                torch.tensor(0)
                if key.endswith("num_batches_tracked")
                else torch.randn(shape, generator=gen)
            )
    return state


class TestArchitecture:
    def test_state_dict_keys_and_shapes_are_torchvisions_in_order(self) -> None:
        net = FCNResNet101(implementation="builtin")
        expected = torchvision_fcn_resnet101_keys(aux=False)
        got = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
        assert got == expected
        assert len(got) == 632 and len(torchvision_fcn_resnet101_keys(aux=True)) == 640

    def test_key_list_hash_is_the_one_read_from_torchvision(self) -> None:
        lines = key_shape_lines(FCNResNet101(implementation="builtin").state_dict())
        assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == (
            TORCHVISION_KEY_SHAPE_SHA256
        )

    def test_parameter_count_is_torchvisions_without_the_aux_head(self) -> None:
        net = FCNResNet101(implementation="builtin")
        assert sum(p.numel() for p in net.parameters()) == PARAMS_WITHOUT_AUX == 51_949_141
        aux = sum(
            int(np.prod(s))
            for k, s in torchvision_fcn_resnet101_keys(aux=True)
            if k.startswith("aux_classifier.") and "running" not in k and "num_b" not in k
        )
        assert PARAMS_WITHOUT_AUX + aux == TORCHVISION_PARAMS_WITH_AUX

    def test_dilated_layers_keep_output_stride_8(self) -> None:
        backbone = FCNResNet101(implementation="builtin").backbone
        assert backbone.layer2[0].conv2.stride == (2, 2)
        for layer, first, rest in ((backbone.layer3, 1, 2), (backbone.layer4, 2, 4)):
            assert layer[0].conv2.stride == (1, 1) and layer[0].downsample[0].stride == (1, 1)
            assert layer[0].conv2.dilation == (first, first)
            assert layer[0].conv2.padding == (first, first)
            for block in layer[1:]:
                assert block.conv2.dilation == (rest, rest) and block.conv2.padding == (rest, rest)
        with torch.inference_mode():
            assert backbone(torch.zeros(1, 3, 64, 64)).shape == (1, 2048, 8, 8)
            assert backbone(torch.zeros(1, 3, 50, 70)).shape == (1, 2048, 7, 9)

    def test_classifier_is_fcn_head(self) -> None:
        head = FCNResNet101(implementation="builtin").classifier
        assert [type(m) for m in head] == [
            nn.Conv2d,
            nn.BatchNorm2d,
            nn.ReLU,
            nn.Dropout,
            nn.Conv2d,
        ]
        assert head[3].p == 0.1
        assert head[0].bias is None and head[4].bias is not None

    def test_unknown_implementation_is_refused(self) -> None:
        with pytest.raises(ValueError, match="implementation"):
            FCNResNet101(implementation="onnx")

    def test_auto_uses_the_builtin_modules_without_torchvision(self) -> None:
        net = FCNResNet101()
        assert net.implementation == ("torchvision" if fcn.torchvision_available() else "builtin")


class TestOutput:
    def test_shape_dtype_and_range(self, model: FCNResNet101, x64: torch.Tensor) -> None:
        with torch.inference_mode():
            y = model(x64)
        assert y.shape == (2, 1, 64, 64) and y.dtype == torch.float32
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
        assert torch.isfinite(y).all()

    def test_output_is_upsampled_to_any_input_size(self, model: FCNResNet101) -> None:
        with torch.inference_mode():
            assert model(torch.zeros(1, 3, 50, 70)).shape == (1, 1, 50, 70)

    def test_head_is_softmax_of_bilinearly_upsampled_logits(
        self, model: FCNResNet101, x64: torch.Tensor
    ) -> None:
        with torch.inference_mode():
            features = model.backbone(x64)
            small = model.classifier(features)
            logits = nn.functional.interpolate(
                small, size=(64, 64), mode="bilinear", align_corners=False
            )
            torch.testing.assert_close(model.logits(x64), logits)
            probs = torch.softmax(logits, dim=1)
            torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 64))
            torch.testing.assert_close(model(x64), probs[:, 15:16])

    def test_class_selection_person_and_cat(self, model: FCNResNet101, x64: torch.Tensor) -> None:
        cat = FCNResNet101("cat", implementation="builtin").eval()
        cat.load_state_dict(model.state_dict())
        assert cat.foreground_class == 8 and model.foreground_class == 15
        with torch.inference_mode():
            probs = torch.softmax(model.logits(x64), dim=1)
            torch.testing.assert_close(cat(x64), probs[:, 8:9])
            torch.testing.assert_close(model(x64), probs[:, 15:16])

    def test_a_dominant_class_logit_gives_probability_one(self, x64: torch.Tensor) -> None:
        person, cat = random_model("person"), random_model("cat")
        for net in (person, cat):
            with torch.no_grad():
                net.classifier[4].bias[15] = 50.0  # every pixel: person
        with torch.inference_mode():
            assert float(person(x64).min()) > 0.999
            assert float(cat(x64).max()) < 1e-3

    def test_eval_mode_is_deterministic(self, model: FCNResNet101, x64: torch.Tensor) -> None:
        assert not model.training
        with torch.inference_mode():
            torch.testing.assert_close(model(x64), model(x64), rtol=0, atol=0)


class TestClassIndex:
    @pytest.mark.parametrize(
        ("value", "index"),
        [("person", 15), ("cat", 8), ("Person ", 15), (15, 15), ("8", 8), (0, 0)],
    )
    def test_names_and_indices(self, value, index: int) -> None:
        assert class_index(value) == index

    @pytest.mark.parametrize("value", ["human", "", 21, -1, True])
    def test_unknown_classes_are_refused(self, value) -> None:
        with pytest.raises(ValueError):
            class_index(value)

    def test_voc_classes(self) -> None:
        assert len(fcn.VOC_CLASSES) == 21 and fcn.VOC_CLASSES[0] == "background"
        assert fcn.VOC_CLASSES[15] == "person" and fcn.VOC_CLASSES[8] == "cat"


class TestRandomInit:
    def test_warns_loudly_that_masks_are_meaningless(self) -> None:
        with pytest.warns(RandomWeightsWarning, match="MEANINGLESS"):
            net = build_fcn_resnet101(implementation="builtin")
        assert net.weights_path is None and not net.training

    def test_is_deterministic_and_independent_of_the_global_rng(self) -> None:
        torch.manual_seed(1)
        a = random_model().state_dict()
        torch.manual_seed(2)
        b = random_model().state_dict()
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key

    def test_seed_changes_the_weights(self) -> None:
        a, b = random_model(seed=1), random_model(seed=2)
        assert not torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)

    def test_batchnorm_is_identity_like_and_residual_branches_are_damped(self) -> None:
        net = random_model()
        for name, module in net.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                assert torch.all(module.running_mean == 0) and torch.all(module.running_var == 1)
                gamma = 0.2 if name.endswith(".bn3") else 1.0
                assert torch.all(module.weight == gamma), name

    def test_activations_stay_far_below_the_float16_limit(
        self, model: FCNResNet101, x64: torch.Tensor
    ) -> None:
        peaks: dict[str, float] = {}
        hooks = [
            m.register_forward_hook(lambda m, i, o, n=n: peaks.__setitem__(n, float(o.abs().max())))
            for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, fcn.Bottleneck))
        ]
        try:
            with torch.inference_mode():
                model.logits(x64 * 3)  # beyond a normalized image's range
        finally:
            for h in hooks:
                h.remove()
        assert len(peaks) > 200  # every conv, BN and bottleneck
        assert max(peaks.values()) < 1000  # float16 overflows at 65504

    def test_torchvisions_default_init_would_overflow_float16(self, x64: torch.Tensor) -> None:
        """Why fp16_safe_init_ exists: kaiming fan_out + BN gamma 1 blow up the residual stream."""
        net = FCNResNet101(implementation="builtin").eval()
        torch.manual_seed(0)
        for m in net.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        with torch.inference_mode():
            peak = float(net.backbone(x64).abs().max())
        assert peak > 5000

    def test_float16_and_bfloat16_forward_on_the_cpu_are_finite(self, model: FCNResNet101) -> None:
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 32, 32)))
        with torch.inference_mode():
            ref = model(x.float())
            for dtype in (torch.float16, torch.bfloat16):
                net = random_model().to(dtype)
                y = net(x.to(dtype))
                assert y.dtype == dtype and torch.isfinite(y).all(), dtype
                assert float((y.float() - ref).abs().max()) < 0.05, dtype
                logits = net.logits(x.to(dtype))
                assert torch.isfinite(logits).all(), dtype


class TestWeights:
    def test_state_dict_round_trips_through_a_file(
        self, model: FCNResNet101, x64: torch.Tensor, tmp_path: Path
    ) -> None:
        other = random_model(seed=5)
        path = tmp_path / "fcn.pt"
        torch.save(other.state_dict(), path)
        loaded = build_fcn_resnet101(weights=path, implementation="builtin")
        assert loaded.weights_path == path
        with torch.inference_mode():
            torch.testing.assert_close(loaded(x64), other(x64), rtol=0, atol=0)
            assert not torch.equal(loaded(x64), model(x64))

    def test_torchvision_style_file_with_aux_head_loads_strictly(
        self, model: FCNResNet101, tmp_path: Path
    ) -> None:
        state = fake_pretrained_state(random_model(seed=9))
        assert len(state) == 640
        path = tmp_path / "pretrained.pth"
        torch.save(state, path)
        loaded = load_fcn_state_dict(path)
        assert len(loaded) == 632 and not any(k.startswith("aux_") for k in loaded)
        net = build_fcn_resnet101(weights=path, implementation="builtin")
        for key, value in net.state_dict().items():
            assert torch.equal(value, state[key]), key

    @pytest.mark.parametrize("wrapper", ["state_dict", "model", "module."])
    def test_checkpoint_wrappers_are_unwrapped(self, tmp_path: Path, wrapper: str) -> None:
        state = random_model(seed=4).state_dict()
        if wrapper == "module.":
            obj = {f"module.{k}": v for k, v in state.items()}
        else:
            obj = {wrapper: state, "epoch": 3} if wrapper == "model" else {wrapper: state}
        path = tmp_path / "ckpt.pth"
        torch.save(obj, path)
        net = build_fcn_resnet101(weights=path, implementation="builtin")
        assert torch.equal(net.classifier[4].weight, state["classifier.4.weight"])

    def test_old_checkpoints_without_num_batches_tracked_load(self, tmp_path: Path) -> None:
        state = {
            k: v
            for k, v in random_model(seed=4).state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
        path = tmp_path / "old.pth"
        torch.save(state, path)
        build_fcn_resnet101(weights=path, implementation="builtin")

    def test_hub_file_name_hash_prefix_is_checked(self, tmp_path: Path) -> None:
        path = tmp_path / "weights.pth"
        torch.save(random_model(seed=4).state_dict(), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        good = tmp_path / f"fcn_resnet101_coco-{digest[:8]}.pth"
        bad = tmp_path / "fcn_resnet101_coco-7ecb50ca.pth"
        path.rename(good)
        good.with_name(bad.name).write_bytes(good.read_bytes())
        build_fcn_resnet101(weights=good, implementation="builtin")
        with pytest.raises(ModelUnavailableError, match="does not start with the 7ecb50ca"):
            build_fcn_resnet101(weights=bad, implementation="builtin")

    def test_a_missing_weights_path_is_a_clear_error(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope" / PRETRAINED_FILENAME
        with pytest.raises(ModelUnavailableError, match="does not exist") as info:
            build_fcn_resnet101(weights=missing)
        assert str(missing) in str(info.value) and "--weights" in str(info.value)

    def test_a_missing_env_path_is_a_clear_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "missing.pth"))
        with pytest.raises(ModelUnavailableError, match=WEIGHTS_ENV):
            build_fcn_resnet101()

    def test_not_a_state_dict_is_a_clear_error(self, tmp_path: Path) -> None:
        garbage = tmp_path / "garbage.pth"
        garbage.write_bytes(b"not a checkpoint")
        with pytest.raises(ModelUnavailableError, match="cannot read"):
            build_fcn_resnet101(weights=garbage)
        wrong = tmp_path / "wrong.pth"
        torch.save({"classifier.4.weight": torch.zeros(2, 512, 1, 1)}, wrong)
        with pytest.raises(ModelUnavailableError, match="not an fcn_resnet101 state dict"):
            build_fcn_resnet101(weights=wrong, implementation="builtin")

    def test_resolution_order(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        assert resolve_weights() is None
        hub = tmp_path / "torch_home" / "hub" / "checkpoints" / PRETRAINED_FILENAME
        hub.parent.mkdir(parents=True)
        hub.write_bytes(b"x")
        assert resolve_weights() == hub
        cache = tmp_path / "cache"
        cache.mkdir()
        (cache / PRETRAINED_FILENAME).write_bytes(b"x")
        assert resolve_weights(cache_dir=cache) == cache / PRETRAINED_FILENAME
        env_file = tmp_path / "env.pth"
        env_file.write_bytes(b"x")
        monkeypatch.setenv(WEIGHTS_ENV, str(env_file))
        assert resolve_weights(cache_dir=cache) == env_file
        arg_file = tmp_path / "arg.pth"
        arg_file.write_bytes(b"x")
        assert resolve_weights(arg_file, cache_dir=cache) == arg_file


class TestRegistry:
    @pytest.mark.parametrize(("name", "cls"), [("fcn_resnet101", 15), ("fcn_resnet101_cat", 8)])
    def test_specs(self, name: str, cls: int) -> None:
        assert name in model_names()
        spec = get_model_spec(name)
        assert spec.name == name and spec.input_hw == (224, 224)
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        assert "fcn_resnet101" in spec.weights and "random" in spec.weights
        with pytest.warns(RandomWeightsWarning):
            net = spec.build(None)
        assert isinstance(net, FCNResNet101) and not net.training
        assert net.foreground_class == cls

    def test_build_loads_the_file_named_by_the_environment(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        state = fake_pretrained_state(random_model(seed=11))
        torch.save(state, tmp_path / "fake_pretrained.pth")
        monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "fake_pretrained.pth"))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RandomWeightsWarning)
            net = get_model_spec("fcn_resnet101_cat").build(None)
        assert net.weights_path == tmp_path / "fake_pretrained.pth"
        assert torch.equal(net.classifier[4].bias, state["classifier.4.bias"])

    def test_build_looks_for_torchvisions_file_in_the_cache_dir(self, tmp_path: Path) -> None:
        # A stand-in under the real file's name: found, and refused because its SHA-256 does
        # not start with the 7ecb50ca the name promises.
        torch.save(fake_pretrained_state(random_model(seed=11)), tmp_path / PRETRAINED_FILENAME)
        with pytest.raises(ModelUnavailableError, match="7ecb50ca"):
            get_model_spec("fcn_resnet101").build(tmp_path)


class TestCli:
    def test_info_with_random_weights(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert fcn.main(["info", "--class", "cat"]) == 0
        out = capsys.readouterr().out
        assert "RANDOM" in out and "8 (cat)" in out and "51949141" in out

    def test_info_with_a_missing_file(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert fcn.main(["info", "--weights", str(tmp_path / "x.pth")]) == 1
        assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(not fcn.torchvision_available(), reason="torchvision does not import here")
class TestAgainstTorchvision:
    def test_same_keys_and_same_output_as_torchvision(self, tmp_path: Path) -> None:
        from torchvision.models.segmentation import fcn_resnet101

        tv = fcn_resnet101(weights=None, weights_backbone=None, aux_loss=True).eval()
        fp16_safe_init_(tv)
        path = tmp_path / "tv.pth"
        torch.save(tv.state_dict(), path)
        builtin = build_fcn_resnet101(weights=path, implementation="builtin")
        via_tv = build_fcn_resnet101(weights=path, implementation="torchvision")
        assert via_tv.implementation == "torchvision"
        assert list(builtin.state_dict()) == list(via_tv.state_dict())
        x = torch.randn(2, 3, 64, 64)
        with torch.inference_mode():
            ref = torch.softmax(tv(x)["out"], dim=1)[:, 15:16]
            torch.testing.assert_close(builtin(x), ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(via_tv(x), ref, rtol=0, atol=1e-6)
