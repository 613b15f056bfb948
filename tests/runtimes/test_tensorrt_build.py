"""TensorRT: everything up to the TensorRT call (full TensorRT cannot be installed here).

trtexec's argv, the engine cache key and plan names, the Triton ``tensorrt_plan`` config against
the Python-backend segmentation config, the clear errors without TensorRT, the whole build job
against a stand-in trtexec, and the runtime choice in ``select.py``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from bgblur.device import Device
from bgblur.errors import ModelUnavailableError
from bgblur.models.registry import get_model_spec
from bgblur.runtimes import select, tensorrt_build
from bgblur.runtimes.tensorrt_build import (
    EngineKey,
    build_engine,
    build_for_model,
    decode_trt_version,
    find_plan,
    parse_plan_name,
    tensorrt_plan_config,
    trtexec_command,
)

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION_CONFIG = REPO / "model_repository" / "segmentation" / "config.pbtxt"


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import tensorrt`` fails, also where TensorRT is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A module that imports as ``tensorrt`` (only its version is read before a plan loads)."""
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.5.0.18"
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


def key(**changes) -> EngineKey:
    fields = dict(
        model="fcn_resnet101",
        compute_capability=(9, 0),
        trt_version="10.3.0",
        min_batch=1,
        opt_batch=4,
        max_batch=8,
        fp16=True,
        input_hw=(224, 224),
        onnx_sha256="ab" * 32,
    )
    fields.update(changes)
    return EngineKey(**fields)


class TestTrtexecCommand:
    def test_default_argv(self) -> None:
        argv = trtexec_command("m.onnx", "m.plan", input_hw=(224, 224))
        assert argv == [
            "trtexec",
            "--onnx=m.onnx",
            "--saveEngine=m.plan",
            "--minShapes=NETWORK_INPUT:1x3x224x224",
            "--optShapes=NETWORK_INPUT:4x3x224x224",
            "--maxShapes=NETWORK_INPUT:8x3x224x224",
            "--fp16",
            "--inputIOFormats=fp16:chw",
            "--outputIOFormats=fp16:chw",
            "--skipInference",
        ]

    def test_batches_size_paths_and_options(self, tmp_path: Path) -> None:
        argv = trtexec_command(
            tmp_path / "a.onnx",
            tmp_path / "a.plan",
            min_batch=2,
            opt_batch=3,
            max_batch=16,
            input_hw=(144, 256),
            workspace_mib=2048,
            timing_cache=tmp_path / "t.cache",
            trtexec="/opt/tensorrt/bin/trtexec",
        )
        assert argv[0] == "/opt/tensorrt/bin/trtexec"
        assert f"--onnx={tmp_path / 'a.onnx'}" in argv
        assert f"--saveEngine={tmp_path / 'a.plan'}" in argv
        assert "--minShapes=NETWORK_INPUT:2x3x144x256" in argv
        assert "--optShapes=NETWORK_INPUT:3x3x144x256" in argv
        assert "--maxShapes=NETWORK_INPUT:16x3x144x256" in argv
        assert "--memPoolSize=workspace:2048M" in argv
        assert f"--timingCacheFile={tmp_path / 't.cache'}" in argv
        assert argv[-1] == "--skipInference"

    def test_fp32_plan_keeps_fp16_io(self) -> None:
        argv = trtexec_command("m.onnx", "m.plan", fp16=False, input_hw=(8, 8))
        assert "--fp16" not in argv and "--inputIOFormats=fp16:chw" in argv

    @pytest.mark.parametrize(
        ("version", "flag"), [("8.6.1", True), ("10.5.0", True), ("11.4.0", False)]
    )
    def test_precision_flag_only_before_tensorrt_11(self, version: str, flag: bool) -> None:
        argv = trtexec_command("m.onnx", "m.plan", input_hw=(8, 8), trt_version=version)
        assert ("--fp16" in argv) is flag

    @pytest.mark.parametrize("batches", [(0, 1, 1), (2, 1, 4), (1, 5, 4)])
    def test_bad_batch_ranges(self, batches: tuple[int, int, int]) -> None:
        lo, opt, hi = batches
        with pytest.raises(ValueError, match="min_batch <= opt_batch <= max_batch"):
            trtexec_command(
                "m.onnx", "m.plan", min_batch=lo, opt_batch=opt, max_batch=hi, input_hw=(8, 8)
            )


class TestVersionsAndKeys:
    @pytest.mark.parametrize(
        ("code", "version"),
        [
            (100300, "10.3.0"),
            (100500, "10.5.0"),
            (110401, "11.4.1"),
            (8601, "8.6.1"),
            (8204, "8.2.4"),
        ],
    )
    def test_decode_trt_version(self, code: int, version: str) -> None:
        assert decode_trt_version(code) == version

    def test_file_name(self) -> None:
        assert key().file_name == "fcn_resnet101_sm90_trt10.3.0_b1-8_fp16.plan"
        assert key(trt_version="10.3.0.26").file_name == key().file_name
        assert (
            key(
                model="selfie_general", compute_capability=(8, 9), fp16=False, min_batch=2
            ).file_name
            == "selfie_general_sm89_trt10.3.0_b2-8_fp32.plan"
        )
        assert key(compute_capability=(12, 0)).sm == "sm120"

    def test_key_covers_what_a_plan_depends_on(self) -> None:
        base = key()
        for change in (
            {"compute_capability": (8, 0)},
            {"trt_version": "10.4.0"},
            {"model": "fcn_resnet101_cat"},
            {"onnx_sha256": "cd" * 32},
            {"max_batch": 16},
            {"opt_batch": 2},
            {"fp16": False},
        ):
            assert key(**change) != base, change
        assert key() == base and hash(key()) == hash(base)

    def test_json_round_trip(self) -> None:
        assert EngineKey.from_json(key().to_json()) == key()
        assert json.loads(key().to_json())["onnx_sha256"] == "ab" * 32

    def test_invalid_keys(self) -> None:
        with pytest.raises(ValueError, match="cannot name a file"):
            key(model="../x")
        with pytest.raises(ValueError, match="min_batch"):
            key(min_batch=9)

    @pytest.mark.parametrize("model", ["fcn_resnet101", "fcn_resnet101_cat", "selfie_general"])
    def test_parse_plan_name_round_trip(self, model: str) -> None:
        parts = parse_plan_name(key(model=model, compute_capability=(8, 6)).file_name)
        assert parts == {
            "model": model,
            "sm": "86",
            "trt": "10.3.0",
            "min_batch": 1,
            "max_batch": 8,
            "precision": "fp16",
        }

    @pytest.mark.parametrize(
        "name", ["model.plan", "fcn_resnet101.onnx", "x_sm90_trt10_b1_fp16.plan"]
    )
    def test_other_names_are_not_plans(self, name: str) -> None:
        assert parse_plan_name(name) is None

    def test_find_plan(self, tmp_path: Path) -> None:
        for k in (
            key(fp16=False, max_batch=32),
            key(max_batch=4, opt_batch=2),
            key(),
            key(model="fcn_resnet101_cat", max_batch=64),
            key(compute_capability=(8, 9), max_batch=64),
            key(trt_version="10.4.0", max_batch=64),
        ):
            (tmp_path / k.file_name).write_bytes(b"plan")
        found = find_plan(tmp_path, "fcn_resnet101", (9, 0), "10.3.0.26")
        assert found == tmp_path / key().file_name  # fp16 first, then the widest batch range
        assert find_plan(tmp_path, "fcn_resnet101_cat", (9, 0), "10.3.0") == (
            tmp_path / key(model="fcn_resnet101_cat", max_batch=64).file_name
        )
        assert find_plan(tmp_path, "fcn_resnet101", (7, 5), "10.3.0") is None
        assert find_plan(tmp_path, "selfie_general", (9, 0), "10.3.0") is None
        assert find_plan(tmp_path / "missing", "fcn_resnet101", (9, 0), "10.3.0") is None

    def test_find_plan_for_a_max_batch_takes_the_narrowest_profile_that_covers_it(
        self, tmp_path: Path
    ) -> None:
        """``--segmentation-batch 64``: a b1-64 plan beside the b1-8 one serves batches up to
        64; the default batch 8 keeps its own plan (each profile is tuned for its range)."""
        plans = {m: key(max_batch=m, opt_batch=min(4, m)) for m in (4, 8, 64)}
        for k in plans.values():
            (tmp_path / k.file_name).write_bytes(b"plan")

        def found(max_batch: int | None) -> Path | None:
            return find_plan(tmp_path, "fcn_resnet101", (9, 0), "10.3.0", max_batch)

        assert found(None) == tmp_path / plans[64].file_name  # the widest, as before
        assert found(8) == tmp_path / plans[8].file_name
        assert found(5) == tmp_path / plans[8].file_name
        assert found(4) == tmp_path / plans[4].file_name
        assert found(64) == tmp_path / plans[64].file_name
        assert found(16) == tmp_path / plans[64].file_name
        assert found(128) == tmp_path / plans[64].file_name  # none covers: widest, chunked
        # fp16 still comes first
        (tmp_path / key(max_batch=8, fp16=False).file_name).write_bytes(b"plan")
        assert found(8) == tmp_path / plans[8].file_name

    @pytest.mark.parametrize(
        ("max_batch", "min_batch", "opt"),
        [(8, 1, 4), (4, 1, 4), (2, 1, 2), (64, 1, 32), (16, 1, 8)],
    )
    def test_default_opt_batch(self, max_batch: int, min_batch: int, opt: int) -> None:
        assert tensorrt_build.default_opt_batch(max_batch, min_batch) == opt
        assert tensorrt_build.default_opt_batch(64, 40) == 40


@pytest.fixture(scope="module")
def pb():
    return pytest.importorskip("tritonclient.grpc.model_config_pb2")


class TestTritonConfig:
    def parse(self, pb, text: str):
        from google.protobuf import text_format

        return text_format.Parse(text, pb.ModelConfig())

    @pytest.mark.parametrize("model", ["fcn_resnet101", "selfie_landscape"])
    def test_matches_the_python_backend_segmentation_config(self, pb, model: str) -> None:
        h, w = get_model_spec(model).input_hw
        plan = self.parse(pb, tensorrt_plan_config(model, (h, w), 8))
        python = self.parse(pb, SEGMENTATION_CONFIG.read_text())
        assert plan.name == python.name == "segmentation"
        assert plan.platform == "tensorrt_plan" and python.backend == "python"
        assert plan.max_batch_size == python.max_batch_size == 8
        assert [t.name for t in plan.input] == [t.name for t in python.input] == ["NETWORK_INPUT"]
        assert [t.name for t in plan.output] == [t.name for t in python.output] == ["PROBABILITY"]
        for ours, theirs, channels in (
            (plan.input[0], python.input[0], 3),
            (plan.output[0], python.output[0], 1),
        ):
            assert ours.data_type == theirs.data_type == pb.TYPE_FP16
            assert list(ours.dims) == [channels, h, w]
            assert len(theirs.dims) == 3 and theirs.dims[0] == channels
            assert all(d in (-1, ours.dims[i + 1]) for i, d in enumerate(theirs.dims[1:]))
        assert plan.HasField("dynamic_batching")
        assert list(plan.dynamic_batching.preferred_batch_size) == [4, 8]
        assert plan.dynamic_batching.max_queue_delay_microseconds == 200
        assert [(g.kind, g.count) for g in plan.instance_group] == [
            (pb.ModelInstanceGroup.KIND_GPU, 1)
        ]
        assert plan.default_model_filename == "model.plan"
        assert plan.parameters["segmentation_model"].string_value == model

    def test_options(self, pb) -> None:
        config = self.parse(
            pb,
            tensorrt_plan_config(
                "selfie_general",
                (256, 256),
                16,
                name="segmentation_trt",
                preferred_batch_sizes=(8, 16),
                max_queue_delay_microseconds=500,
                instance_count=2,
            ),
        )
        assert config.name == "segmentation_trt" and config.max_batch_size == 16
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
        assert config.instance_group[0].count == 2
        small = self.parse(pb, tensorrt_plan_config("selfie_general", (256, 256), 1))
        assert list(small.dynamic_batching.preferred_batch_size) == [1]

    def test_bad_batches(self) -> None:
        with pytest.raises(ValueError):
            tensorrt_plan_config("fcn_resnet101", (224, 224), 0)
        with pytest.raises(ValueError, match="preferred"):
            tensorrt_plan_config("fcn_resnet101", (224, 224), 4, preferred_batch_sizes=(8,))


class TestWithoutTensorRT:
    def test_build_engine_raises_a_clear_error(self, tmp_path: Path, no_tensorrt: None) -> None:
        with pytest.raises(
            ModelUnavailableError, match="TensorRT's Python package does not import"
        ) as info:
            build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", input_hw=(224, 224))
        assert "trtexec" in str(info.value) and "tritonserver" in str(info.value)
        assert not (tmp_path / "m.plan").exists()

    def test_version_needs_tensorrt(self, no_tensorrt: None) -> None:
        with pytest.raises(ModelUnavailableError):
            tensorrt_build.tensorrt_version()

    def test_runtime_needs_a_gpu_and_tensorrt(self, tmp_path: Path, no_tensorrt: None) -> None:
        from bgblur.runtimes.tensorrt_runtime import TensorRTRuntime

        spec = get_model_spec("fixed_ellipse")
        with pytest.raises(ModelUnavailableError, match="CUDA GPU"):
            TensorRTRuntime(spec, Device("cpu"), tmp_path / "x.plan")
        with pytest.raises(ModelUnavailableError, match="TensorRT"):
            TensorRTRuntime(spec, Device("gpu", 0), tmp_path / "x.plan")

    def test_build_job_stops_at_tensorrt(self, tmp_path: Path, no_tensorrt: None) -> None:
        with pytest.raises(ModelUnavailableError, match="trt_version and compute_capability"):
            build_for_model("fixed_ellipse", tmp_path, compute_capability=(9, 0))
        with pytest.raises(ModelUnavailableError, match="does not import"):
            build_for_model(
                "fixed_ellipse", tmp_path, compute_capability=(9, 0), trt_version="10.5.0"
            )
        assert not list(tmp_path.glob("*.plan"))


class TestBuildJob:
    def test_dry_run_exports_and_writes_the_config(self, tmp_path: Path, no_tensorrt: None) -> None:
        report = build_for_model(
            "fixed_ellipse", tmp_path, dry_run=True, compute_capability=(9, 0), trt_version="10.5.0"
        )
        plan = tmp_path / "fixed_ellipse_sm90_trt10.5.0_b1-8_fp16.plan"
        assert report["plan"] == str(plan) and report["built"] is False and not plan.exists()
        assert Path(report["onnx"]).is_file()
        assert report["key"]["onnx_sha256"] == tensorrt_build.onnx_sha256(report["onnx"])
        assert report["trtexec"] == trtexec_command(
            report["onnx"], plan, input_hw=(64, 64), trt_version="10.5.0"
        )
        assert (tmp_path / "fixed_ellipse.config.pbtxt").read_text() == tensorrt_plan_config(
            "fixed_ellipse", (64, 64), 8
        )

    def test_python_builder_path_caches_by_key(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        calls: list[dict] = []

        def fake_build_engine(onnx, plan, **kwargs):
            calls.append(kwargs)
            Path(plan).write_bytes(b"engine")
            return Path(plan)

        monkeypatch.setattr(tensorrt_build, "build_engine", fake_build_engine)
        kwargs = dict(compute_capability=(9, 0), trt_version="10.5.0")
        first = build_for_model("fixed_ellipse", tmp_path, **kwargs)
        assert first["built"] is True and len(calls) == 1
        assert calls[0] == dict(fp16=True, min_batch=1, opt_batch=4, max_batch=8, input_hw=(64, 64))
        sidecar = Path(first["plan"] + ".json")
        assert EngineKey.from_json(sidecar.read_text()) == EngineKey(
            **{
                **first["key"],
                "compute_capability": (9, 0),
                "input_hw": (64, 64),
            }
        )
        assert build_for_model("fixed_ellipse", tmp_path, **kwargs)["built"] is False
        assert len(calls) == 1  # current: not rebuilt
        assert build_for_model("fixed_ellipse", tmp_path, force=True, **kwargs)["built"] is True
        sidecar.write_text(sidecar.read_text().replace(first["key"]["onnx_sha256"], "0" * 64))
        assert build_for_model("fixed_ellipse", tmp_path, **kwargs)["built"] is True  # stale
        assert len(calls) == 3
        model_dir = tmp_path / "repo" / "segmentation"
        build_for_model("fixed_ellipse", tmp_path, triton_model_dir=model_dir, **kwargs)
        assert (model_dir / "1" / "model.plan").read_bytes() == b"engine"
        assert (model_dir / "config.pbtxt").read_text().startswith("# fixed_ellipse")

    def test_trtexec_path_with_a_stand_in_trtexec(self, tmp_path: Path) -> None:
        log = tmp_path / "argv.txt"
        trtexec = tmp_path / "bin" / "trtexec"
        trtexec.parent.mkdir()
        trtexec.write_text(
            "#!/bin/sh\n"
            'echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100500] # trtexec $*"\n'
            f'echo "$@" >> {log}\n'
            'for a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#--saveEngine=}";; '
            "esac; done\n"
        )
        trtexec.chmod(trtexec.stat().st_mode | stat.S_IEXEC)
        report = build_for_model(
            "fixed_ellipse",
            tmp_path / "out",
            use_trtexec=True,
            trtexec=str(trtexec),
            compute_capability=(8, 9),
            max_batch=4,
            opt_batch=2,
        )
        assert report["built"] is True
        assert report["key"]["trt_version"] == "10.5.0"  # read from the banner
        assert Path(report["plan"]).name == "fixed_ellipse_sm89_trt10.5.0_b1-4_fp16.plan"
        assert Path(report["plan"]).read_text() == "plan\n"
        runs = log.read_text().splitlines()
        assert runs[0] == "--help" and runs[1] == " ".join(report["trtexec"][1:])

    def test_missing_trtexec(self, tmp_path: Path) -> None:
        with pytest.raises(ModelUnavailableError, match="not found"):
            build_for_model("fixed_ellipse", tmp_path, use_trtexec=True, trtexec="no-such-trtexec")

    def test_dry_run_names_an_fp32_plan_for_another_machine(
        self, tmp_path: Path, no_tensorrt: None
    ) -> None:
        report = build_for_model(
            "fixed_ellipse",
            tmp_path,
            dry_run=True,
            fp16=False,
            compute_capability=(9, 0),
            trt_version="11.4",
        )
        assert report["plan"] == str(tmp_path / "fixed_ellipse_sm90_trt11.4_b1-8_fp32.plan")
        assert Path(report["onnx"]).name == "fixed_ellipse_fp32.onnx"
        assert "--fp16" not in report["trtexec"] and report["built"] is False


class TestSelect:
    @pytest.fixture
    def plan_dir(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
        monkeypatch.setattr(tensorrt_build, "gpu_compute_capability", lambda index=0: (9, 0))
        k = key(model="fixed_ellipse", trt_version="10.5.0", input_hw=(64, 64))
        (tmp_path / k.file_name).write_bytes(b"plan")
        monkeypatch.setenv(tensorrt_build.PLAN_DIR_ENV, str(tmp_path))
        return tmp_path

    @pytest.fixture
    def stub_runtimes(self, monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
        """Both runtimes replaced by recorders (no GPU here)."""
        from bgblur.runtimes import tensorrt_runtime, torch_runtime

        made: dict[str, list] = {"torch": [], "tensorrt": [], "fail_tensorrt": []}

        class FakeTorch:
            def __init__(self, spec, device, *, cache_dir=None) -> None:
                made["torch"].append((spec.name, device, cache_dir))
                self.name = "torch"

        class FakeTensorRT:
            def __init__(self, spec, device, plan_path) -> None:
                if made["fail_tensorrt"]:
                    raise ModelUnavailableError("cannot load the plan")
                made["tensorrt"].append((spec.name, device, Path(plan_path)))
                self.name = "tensorrt"

        monkeypatch.setattr(torch_runtime, "TorchRuntime", FakeTorch)
        monkeypatch.setattr(tensorrt_runtime, "TensorRTRuntime", FakeTensorRT)
        return made

    spec = get_model_spec("fixed_ellipse")
    gpu = Device("gpu", 0)

    def test_plan_found_with_tensorrt(self, plan_dir: Path, fake_tensorrt) -> None:
        plan = select.tensorrt_plan_for(self.spec, self.gpu)
        assert plan == plan_dir / "fixed_ellipse_sm90_trt10.5.0_b1-8_fp16.plan"

    def test_no_plan_without_tensorrt_on_the_cpu_or_elsewhere(
        self, plan_dir: Path, no_tensorrt: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        assert select.tensorrt_plan_for(self.spec, self.gpu) is None  # tensorrt absent
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.5.0"))
        assert select.tensorrt_plan_for(self.spec, Device("cpu")) is None
        assert select.tensorrt_plan_for(get_model_spec("fcn_resnet101"), self.gpu) is None
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.6.0"))
        assert select.tensorrt_plan_for(self.spec, self.gpu) is None  # other TensorRT
        monkeypatch.delenv(tensorrt_build.PLAN_DIR_ENV)
        monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.5.0"))
        assert select.tensorrt_plan_for(self.spec, self.gpu) is None  # no plan folder
        assert select.tensorrt_plan_for(self.spec, self.gpu, plan_dir) is not None

    def test_build_runtime_prefers_tensorrt(
        self, plan_dir: Path, fake_tensorrt, stub_runtimes: dict
    ) -> None:
        runtime = select.build_runtime(self.spec, self.gpu)
        assert runtime.name == "tensorrt" and not stub_runtimes["torch"]
        assert stub_runtimes["tensorrt"][0][2].parent == plan_dir

    def test_build_runtime_takes_the_plan_that_covers_the_models_batch(
        self, plan_dir: Path, fake_tensorrt, stub_runtimes: dict
    ) -> None:
        wide = plan_dir / "fixed_ellipse_sm90_trt10.5.0_b1-64_fp16.plan"
        wide.write_bytes(b"plan")
        by_batch = {}
        for sizes in ((1, 2, 4, 8), (1, 2, 4, 8, 16, 32, 64)):
            options = {"batch_sizes": sizes, "compile": None}
            select.build_runtime(self.spec, self.gpu, torch_options=options)
            by_batch[sizes[-1]] = stub_runtimes["tensorrt"][-1][2].name
        assert by_batch == {8: "fixed_ellipse_sm90_trt10.5.0_b1-8_fp16.plan", 64: wide.name}

    def test_build_runtime_falls_back_to_torch_without_tensorrt(
        self, plan_dir: Path, no_tensorrt: None, stub_runtimes: dict, tmp_path: Path
    ) -> None:
        runtime = select.build_runtime(self.spec, self.gpu, cache_dir=tmp_path)
        assert runtime.name == "torch" and stub_runtimes["torch"] == [
            ("fixed_ellipse", self.gpu, tmp_path)
        ]

    def test_build_runtime_falls_back_when_the_plan_does_not_load(
        self, plan_dir: Path, fake_tensorrt, stub_runtimes: dict
    ) -> None:
        stub_runtimes["fail_tensorrt"].append(True)
        assert select.build_runtime(self.spec, self.gpu).name == "torch"

    def test_configured_runtime(self, plan_dir: Path, fake_tensorrt, stub_runtimes: dict) -> None:
        assert select.build_runtime(self.spec, self.gpu, choice="torch").name == "torch"
        assert select.build_runtime(self.spec, self.gpu, choice="tensorrt").name == "tensorrt"
        with pytest.raises(ModelUnavailableError, match="no usable TensorRT plan"):
            select.build_runtime(get_model_spec("fcn_resnet101"), self.gpu, choice="tensorrt")
        stub_runtimes["fail_tensorrt"].append(True)
        with pytest.raises(ModelUnavailableError, match="cannot load"):
            select.build_runtime(self.spec, self.gpu, choice="tensorrt")
        with pytest.raises(ValueError, match="'runtime' parameter"):
            select.build_runtime(self.spec, self.gpu, choice="onnx")

    def test_cpu_is_always_torch(self, plan_dir: Path, fake_tensorrt) -> None:
        from bgblur.runtimes.torch_runtime import TorchRuntime

        assert isinstance(select.build_runtime(self.spec, Device("cpu")), TorchRuntime)


def test_plan_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(tensorrt_build.PLAN_DIR_ENV, raising=False)
    assert tensorrt_build.default_plan_dir() is None
    monkeypatch.setenv(tensorrt_build.PLAN_DIR_ENV, str(tmp_path))
    assert tensorrt_build.default_plan_dir() == tmp_path
    assert os.environ[tensorrt_build.PLAN_DIR_ENV] == str(tmp_path)


# --------------------------------------------------------------------------------------------
# TensorRTRuntime's plumbing on a real GPU, behind a stand-in for TensorRT's runtime API
# --------------------------------------------------------------------------------------------


def stand_in_tensorrt(calls: list) -> types.ModuleType:
    """The part of TensorRT 10's Python API the runtime uses. The "engine" computes
    ``sigmoid(sum over channels)`` on the stream and buffers it is given, through raw pointers
    (as TensorRT would), so shapes, addresses, dtypes and streams are all exercised."""
    import cupy
    import torch

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.5.0.18"
    trt.float16, trt.float32 = "HALF", "FLOAT"
    np_dtype = {"HALF": "float16", "FLOAT": "float32"}

    class Logger:
        WARNING = 2

        def __init__(self, severity: int) -> None:
            self.severity = severity

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    def view(ptr: int, shape: tuple, dtype: str) -> torch.Tensor:
        size = int(np.prod(shape)) * np.dtype(np_dtype[dtype]).itemsize
        mem = cupy.cuda.UnownedMemory(ptr, size, owner=None)
        array = cupy.ndarray(shape, np_dtype[dtype], cupy.cuda.MemoryPointer(mem, 0))
        return torch.from_dlpack(array)  # aliases the memory

    class Context:
        def __init__(self, plan: dict) -> None:
            self.plan, self.shape, self.addresses = plan, None, {}

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            ok = name == "NETWORK_INPUT" and self.plan["min"] <= shape[0] <= self.plan["max"]
            self.shape = tuple(shape) if ok else None
            return ok

        def get_tensor_shape(self, name: str) -> tuple:
            return (self.shape[0], 1, *self.shape[2:])

        def set_tensor_address(self, name: str, ptr: int) -> None:
            self.addresses[name] = ptr

        def execute_async_v3(self, stream: int) -> bool:
            calls.append((self.shape[0], stream, self.addresses["NETWORK_INPUT"] % 256))
            x = view(self.addresses["NETWORK_INPUT"], self.shape, self.plan["in"])
            out = view(self.addresses["PROBABILITY"], self.get_tensor_shape(""), self.plan["out"])
            with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
                out.copy_(torch.sigmoid(x.float().sum(1, keepdim=True)))
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, plan: dict) -> None:
            self.plan = plan

        def get_tensor_name(self, i: int) -> str:
            return self.plan["names"][i]

        def get_tensor_mode(self, name: str) -> str:
            return "INPUT" if name == self.plan["names"][0] else "OUTPUT"

        def get_tensor_shape(self, name: str) -> tuple:
            c = 3 if self.get_tensor_mode(name) == "INPUT" else 1
            return (-1, c, *self.plan["hw"])

        def get_tensor_dtype(self, name: str) -> str:
            return self.plan["in"] if self.get_tensor_mode(name) == "INPUT" else self.plan["out"]

        def get_tensor_profile_shape(self, name: str, profile: int) -> list:
            return [(b, 3, *self.plan["hw"]) for b in (self.plan["min"], 2, self.plan["max"])]

        def create_execution_context(self) -> Context:
            return Context(self.plan)

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes):
            try:
                return Engine(json.loads(data))
            except ValueError:
                return None

    trt.Logger, trt.TensorIOMode, trt.Runtime = Logger, TensorIOMode, Runtime
    return trt


@pytest.mark.gpu
class TestTensorRTRuntimeOnTheGpu:
    HW = (5, 7)  # 210 bytes a frame: chunks start off 256-byte boundaries

    @pytest.fixture
    def calls(self, monkeypatch: pytest.MonkeyPatch) -> list:
        calls: list = []
        monkeypatch.setitem(sys.modules, "tensorrt", stand_in_tensorrt(calls))
        return calls

    def make(self, tmp_path: Path, **plan):
        from bgblur.models.registry import SegmentationModelSpec
        from bgblur.runtimes.tensorrt_runtime import TensorRTRuntime

        fields = {"names": ["NETWORK_INPUT", "PROBABILITY"], "hw": list(self.HW), "min": 1}
        fields.update({"max": 4, "in": "HALF", "out": "HALF"}, **plan)
        path = tmp_path / "x.plan"
        path.write_text(json.dumps(fields))
        spec = SegmentationModelSpec("stand_in", self.HW, (0, 0, 0), (1, 1, 1), "none", None)
        return TensorRTRuntime(spec, Device("gpu", 0), path)

    @pytest.mark.parametrize(
        ("plan", "batch", "chunks"),
        [
            ({}, 1, [1]),
            ({}, 4, [4]),
            ({}, 10, [4, 4, 2]),
            ({"min": 2}, 5, [4, 2]),  # the last single frame is padded up to the minimum
            ({"in": "FLOAT", "out": "FLOAT"}, 3, [3]),
        ],
    )
    def test_chunks_streams_and_values(
        self, tmp_path: Path, calls: list, plan: dict, batch: int, chunks: list
    ) -> None:
        import cupy
        import torch

        runtime = self.make(tmp_path, **plan)
        assert runtime.name.startswith("tensorrt-10.5.0")
        x = cupy.random.default_rng(0).standard_normal((batch, 3, *self.HW), dtype=cupy.float32)
        out = runtime(x)
        assert isinstance(out, torch.Tensor) and out.is_cuda and out.dtype == torch.float16
        assert out.shape == (batch, 1, *self.HW) and out.is_contiguous()
        engine_dtype = torch.float32 if plan.get("in") == "FLOAT" else torch.float16
        ref = torch.sigmoid(torch.as_tensor(x).to(engine_dtype).float().sum(1, keepdim=True))
        torch.testing.assert_close(out.float(), ref, rtol=0, atol=2e-3)
        assert [c[0] for c in calls] == chunks
        assert {c[1] for c in calls} == {runtime._stream.cuda_stream}
        assert all(c[2] == 0 for c in calls)  # every input address 256-byte aligned

    def test_torch_input_left_untouched(self, tmp_path: Path, calls: list) -> None:
        import torch

        runtime = self.make(tmp_path)
        x = torch.randn(2, 3, *self.HW, device="cuda", dtype=torch.float16)
        before = x.clone()
        runtime(x)
        assert torch.equal(x, before)

    def test_wrong_input_shape(self, tmp_path: Path, calls: list) -> None:
        import torch

        from bgblur.errors import InvalidInputError

        with pytest.raises(InvalidInputError, match=r"\[B, 3, 5, 7\]"):
            self.make(tmp_path)(torch.zeros(1, 3, 6, 7, device="cuda"))

    @pytest.mark.parametrize(
        ("plan", "message"),
        [
            ({"names": ["INPUT", "PROBABILITY"]}, "expected"),
            ({"hw": [6, 7]}, "needs"),
        ],
    )
    def test_plans_that_do_not_fit(
        self, tmp_path: Path, calls: list, plan: dict, message: str
    ) -> None:
        with pytest.raises(ModelUnavailableError, match=message):
            self.make(tmp_path, **plan)

    def test_unloadable_plan(self, tmp_path: Path, calls: list) -> None:
        from bgblur.runtimes.tensorrt_runtime import TensorRTRuntime

        (tmp_path / "bad.plan").write_bytes(b"\x00not an engine")
        spec = get_model_spec("fixed_ellipse")
        with pytest.raises(ModelUnavailableError, match="another GPU"):
            TensorRTRuntime(spec, Device("gpu", 0), tmp_path / "bad.plan")
        with pytest.raises(ModelUnavailableError, match="cannot read"):
            TensorRTRuntime(spec, Device("gpu", 0), tmp_path / "missing.plan")
