"""ONNX export: the Triton segmentation model's tensor names and dims, a dynamic batch axis, the
same numbers as torch under onnxruntime (CPU), the float16 variants, BatchNorm folding, the CLI."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bgblur.errors import ModelUnavailableError
from bgblur.models.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    build_module,
    compare_with_onnxruntime,
    export_onnx,
    fold_batchnorm,
    main,
)
from bgblur.models.fcn import RandomWeightsWarning, build_fcn_resnet101
from bgblur.models.registry import get_model_spec

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

FCN_HW = (64, 64)  # ResNet-101 at its real 224x224 is slow on a 2-core CPU; the graph is the same


def selfie_available() -> bool:
    try:
        get_model_spec("selfie_general").build(None)
    except ModelUnavailableError:
        return False
    return True


needs_selfie = pytest.mark.skipif(
    not selfie_available(), reason="selfie weights not in the cache (make setup)"
)


def network_inputs(spec_name: str, batch: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Normalized RGB like the preprocess stage makes: (uniform pixels / 255 - mean) / std."""
    spec = get_model_spec(spec_name)
    pixels = np.random.default_rng(seed).random((batch, 3, *hw))
    mean = np.array(spec.mean)[:, None, None]
    std = np.array(spec.std)[:, None, None]
    return ((pixels - mean) / std).astype(np.float32)


def io_signature(path: Path) -> dict[str, tuple[int, list]]:
    model = onnx.load(str(path))
    sig = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
        sig[value.name] = (value.type.tensor_type.elem_type, dims)
    return sig


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def fcn_module() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return build_fcn_resnet101("person", implementation="builtin")


@pytest.fixture(scope="module")
def fcn_onnx(tmp_path_factory: pytest.TempPathFactory, fcn_module: nn.Module) -> Path:
    out = tmp_path_factory.mktemp("fcn") / "fcn.onnx"
    return export_onnx("fcn_resnet101", out, input_hw=FCN_HW, module=fcn_module)


@pytest.fixture(scope="module")
def selfie_module() -> nn.Module:
    if not selfie_available():
        pytest.skip("selfie weights not in the cache (make setup)")
    return get_model_spec("selfie_general").build(None)


@pytest.fixture(scope="module")
def selfie_onnx(tmp_path_factory: pytest.TempPathFactory, selfie_module: nn.Module) -> Path:
    out = tmp_path_factory.mktemp("selfie") / "selfie.onnx"
    return export_onnx("selfie_general", out, module=selfie_module)


class TestSelfieGeneral:
    def test_names_dims_and_dtypes(self, selfie_onnx: Path) -> None:
        f32 = onnx.TensorProto.FLOAT
        assert io_signature(selfie_onnx) == {
            INPUT_NAME: (f32, ["batch", 3, 256, 256]),
            OUTPUT_NAME: (f32, ["batch", 1, 256, 256]),
        }
        assert (INPUT_NAME, OUTPUT_NAME) == ("NETWORK_INPUT", "PROBABILITY")

    @pytest.mark.parametrize("batch", [1, 3])
    def test_onnxruntime_matches_torch(
        self, selfie_onnx: Path, selfie_module: nn.Module, batch: int
    ) -> None:
        x = network_inputs("selfie_general", batch, (256, 256), seed=batch)
        got, want = compare_with_onnxruntime(selfie_onnx, selfie_module, x)
        assert got.shape == want.shape == (batch, 1, 256, 256) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    def test_metadata(self, selfie_onnx: Path) -> None:
        meta = metadata(selfie_onnx)
        assert meta["bgblur.model"] == "selfie_general"
        assert meta["bgblur.input_hw"] == "256x256" and meta["bgblur.precision"] == "fp32"
        assert "bgblur.weights" not in meta

    def test_float16_graph(self, tmp_path: Path, selfie_module: nn.Module) -> None:
        path = export_onnx("selfie_general", tmp_path / "h.onnx", fp16=True, module=selfie_module)
        f16 = onnx.TensorProto.FLOAT16
        sig = io_signature(path)
        assert sig[INPUT_NAME] == (f16, ["batch", 3, 256, 256])
        assert sig[OUTPUT_NAME] == (f16, ["batch", 1, 256, 256])
        weights = [t for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 4]
        assert weights and all(t.data_type == f16 for t in weights)
        assert metadata(path)["bgblur.precision"] == "fp16"
        x = network_inputs("selfie_general", 2, (256, 256))
        got, want = compare_with_onnxruntime(path, selfie_module, x)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=0, atol=1e-2)
        assert next(selfie_module.parameters()).dtype == torch.float32  # caller's module kept

    def test_float16_interface_float32_body(self, tmp_path: Path, selfie_module: nn.Module) -> None:
        path = export_onnx(
            "selfie_general", tmp_path / "io.onnx", fp16_io=True, module=selfie_module
        )
        f16 = onnx.TensorProto.FLOAT16
        assert [v[0] for v in io_signature(path).values()] == [f16, f16]
        weights = [t for t in onnx.load(str(path)).graph.initializer if len(t.dims) == 4]
        assert weights and all(t.data_type == onnx.TensorProto.FLOAT for t in weights)
        x = network_inputs("selfie_general", 1, (256, 256))
        got, want = compare_with_onnxruntime(path, selfie_module, x)
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=0, atol=1e-3)

    def test_static_batch(self, tmp_path: Path, selfie_module: nn.Module) -> None:
        path = export_onnx(
            "selfie_general",
            tmp_path / "b2.onnx",
            dynamic_batch=False,
            batch=2,
            module=selfie_module,
        )
        assert io_signature(path)[INPUT_NAME][1] == [2, 3, 256, 256]
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        x = network_inputs("selfie_general", 2, (256, 256))
        assert session.run(None, {INPUT_NAME: x})[0].shape == (2, 1, 256, 256)
        with pytest.raises(Exception, match=r"(?i)dimension|shape"):
            session.run(None, {INPUT_NAME: network_inputs("selfie_general", 3, (256, 256))})


class TestFcnResnet101:
    def test_names_dims_and_metadata(self, fcn_onnx: Path) -> None:
        f32 = onnx.TensorProto.FLOAT
        assert io_signature(fcn_onnx) == {
            INPUT_NAME: (f32, ["batch", 3, *FCN_HW]),
            OUTPUT_NAME: (f32, ["batch", 1, *FCN_HW]),
        }
        meta = metadata(fcn_onnx)
        assert meta["bgblur.model"] == "fcn_resnet101" and meta["bgblur.weights"] == "random"
        assert meta["bgblur.mean"] == "0.485,0.456,0.406"

    @pytest.mark.parametrize("batch", [1, 3])
    def test_onnxruntime_matches_torch(
        self, fcn_onnx: Path, fcn_module: nn.Module, batch: int
    ) -> None:
        x = network_inputs("fcn_resnet101", batch, FCN_HW, seed=batch)
        got, want = compare_with_onnxruntime(fcn_onnx, fcn_module, x)
        assert got.shape == want.shape == (batch, 1, *FCN_HW)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    def test_graph_ends_in_softmax_and_resize(self, fcn_onnx: Path) -> None:
        ops = [n.op_type for n in onnx.load(str(fcn_onnx)).graph.node]
        assert "Softmax" in ops and "Resize" in ops and ops.count("Conv") >= 100


class TestFoldBatchnorm:
    def test_fcn_output_unchanged_and_no_batchnorm_left(self, fcn_module: nn.Module) -> None:
        net = copy.deepcopy(fcn_module)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():  # non-trivial statistics, so that folding has work to do
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                    m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
        x = torch.from_numpy(network_inputs("fcn_resnet101", 2, (32, 32)))
        with torch.inference_mode():
            want = net.logits(x)
            fold_batchnorm(net)
            got = net.logits(x)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    def test_module_without_batchnorm_is_unchanged(self) -> None:
        net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        before = copy.deepcopy(net.state_dict())
        fold_batchnorm(net)
        assert net.state_dict().keys() == before.keys()


class TestErrorsAndCli:
    def test_unknown_model(self, tmp_path: Path) -> None:
        with pytest.raises(ModelUnavailableError, match="unknown segmentation model"):
            export_onnx("nope", tmp_path / "x.onnx")

    def test_weights_apply_to_fcn_only(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="fcn"):
            build_module(get_model_spec("fixed_ellipse"), weights=tmp_path / "w.pth")

    def test_missing_weights_file(self, tmp_path: Path) -> None:
        with pytest.raises(ModelUnavailableError, match="does not exist"):
            build_module(get_model_spec("fcn_resnet101"), weights=tmp_path / "w.pth")

    def test_bad_batch(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="batch"):
            export_onnx("fixed_ellipse", tmp_path / "x.onnx", batch=0)

    def test_no_partial_file_is_left_on_failure(self, tmp_path: Path) -> None:
        class Broken(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            export_onnx("fixed_ellipse", tmp_path / "x.onnx", module=Broken())
        assert list(tmp_path.iterdir()) == []

    @needs_selfie
    def test_cli_exports_and_checks(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        out = tmp_path / "sub" / "selfie.onnx"
        rc = main(["onnx", "--model", "selfie_general", "--out", str(out), "--check"])
        assert rc == 0 and out.is_file()
        text = capsys.readouterr().out
        assert str(out) in text and "max abs difference" in text

    def test_cli_static_batch_input_size_and_fp16(self, tmp_path: Path) -> None:
        out = tmp_path / "e.onnx"
        args = ["onnx", "--model", "fixed_ellipse", "--out", str(out), "--static-batch", "4"]
        assert main([*args, "--input-hw", "32x48", "--fp16"]) == 0
        sig = io_signature(out)
        assert sig[INPUT_NAME] == (onnx.TensorProto.FLOAT16, [4, 3, 32, 48])
        assert sig[OUTPUT_NAME] == (onnx.TensorProto.FLOAT16, [4, 1, 32, 48])

    def test_cli_reports_errors(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        args = ["onnx", "--model", "fcn_resnet101", "--out", str(tmp_path / "x.onnx")]
        assert main([*args, "--weights", str(tmp_path / "missing.pth")]) == 1
        assert "does not exist" in capsys.readouterr().err
        with pytest.raises(SystemExit):
            main(["onnx", "--model", "fixed_ellipse", "--out", "x.onnx", "--fp16", "--fp16-io"])
