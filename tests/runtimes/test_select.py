"""The runtime choice (bgblur.runtimes.select): per device, per network, per ``runtime`` config
parameter; the config's runtime options; ``describe_runtime``."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from bgblur.device import Device
from bgblur.errors import ModelUnavailableError
from bgblur.models.registry import get_model_spec
from bgblur.runtimes import select
from bgblur.runtimes.torch_runtime import DEFAULT_BATCH_SIZES, DEFAULT_COMPILE_MODE, TorchRuntime

CPU = Device("cpu")
GPU = Device("gpu", 0)
CONFIG = Path(__file__).resolve().parents[2] / "model_repository" / "segmentation" / "config.pbtxt"


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> dict[str, list]:
    """The three runtimes replaced by recorders; TensorRT plans found when ``plan`` is set."""
    from bgblur.runtimes import onnx_runtime, tensorrt_runtime, torch_runtime

    record: dict[str, list] = {"torch": [], "onnxruntime": [], "tensorrt": [], "plan": []}
    record["fail"] = []

    class FakeTorch:
        def __init__(self, spec, device, *, cache_dir=None, **options) -> None:
            record["torch"].append((spec.name, device, cache_dir, options))
            self.name = "torch"

    class FakeOnnx:
        def __init__(self, spec, device, *, cache_dir=None) -> None:
            if "onnxruntime" in record["fail"]:
                raise ModelUnavailableError("no onnxruntime here")
            record["onnxruntime"].append((spec.name, device, cache_dir))
            self.name = "onnxruntime"

    class FakeTensorRT:
        def __init__(self, spec, device, plan_path) -> None:
            record["tensorrt"].append((spec.name, device, plan_path))
            self.name = "tensorrt"

    monkeypatch.setattr(torch_runtime, "TorchRuntime", FakeTorch)
    monkeypatch.setattr(onnx_runtime, "OnnxRuntimeCPU", FakeOnnx)
    monkeypatch.setattr(tensorrt_runtime, "TensorRTRuntime", FakeTensorRT)

    def plan_for(spec, device, plan_dir=None, max_batch=None):
        return Path("/plans/x.plan") if record["plan"] and device.is_gpu else None

    monkeypatch.setattr(select, "tensorrt_plan_for", plan_for)
    return record


def build(name: str, device: Device, **kwargs) -> str:
    return select.build_runtime(get_model_spec(name), device, **kwargs).name


# --------------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["auto", "torch", "onnxruntime", "tensorrt", " TORCH "])
def test_runtime_choice_is_the_configured_name(value: str) -> None:
    assert select.runtime_choice(value) == value.strip().lower()


def test_runtime_choice_from_the_config_then_auto() -> None:
    assert select.runtime_choice() == "auto"
    assert select.runtime_choice("") == "auto"
    assert select.runtime_choice("onnxruntime") == "onnxruntime"


@pytest.mark.parametrize("bad", ["onnx", "trt", "cuda", "tensorrt,torch"])
def test_unknown_runtime_names_are_a_clear_error(bad: str, made: dict) -> None:
    choices = "auto, torch, onnxruntime, tensorrt"
    message = re.escape(f"the 'runtime' parameter must be one of {choices}, not {bad!r}")
    with pytest.raises(ValueError, match=message):
        select.runtime_choice(bad)
    with pytest.raises(ValueError, match=message):
        select.build_runtime(get_model_spec("fixed_ellipse"), CPU, choice=bad)
    assert not made["torch"] and not made["onnxruntime"]


@pytest.mark.parametrize(
    ("name", "runtime"),
    [
        ("selfie_general", "onnxruntime"),
        ("selfie_landscape", "onnxruntime"),
        ("fcn_resnet101", "onnxruntime"),
        ("fcn_resnet101_cat", "onnxruntime"),
        ("fixed_ellipse", "torch"),
    ],
)
def test_cpu_auto_takes_the_runtime_measured_faster(made: dict, name: str, runtime: str) -> None:
    assert select.cpu_runtime_for(get_model_spec(name)) == runtime
    assert build(name, CPU, cache_dir=Path("/w")) == runtime
    assert made[runtime][0][:3] == (name, CPU, Path("/w"))


def test_cpu_auto_falls_back_to_torch_when_onnxruntime_cannot_serve(
    made: dict, caplog: pytest.LogCaptureFixture
) -> None:
    made["fail"].append("onnxruntime")
    with caplog.at_level(logging.WARNING, logger=select.LOG.name):
        assert build("selfie_general", CPU) == "torch"
    assert "ONNX Runtime cannot serve selfie_general" in caplog.text


def test_explicit_choices_on_the_cpu(made: dict) -> None:
    assert build("selfie_general", CPU, choice="torch") == "torch"
    assert build("fixed_ellipse", CPU, choice="onnxruntime") == "onnxruntime"
    made["fail"].append("onnxruntime")
    with pytest.raises(ModelUnavailableError, match="no onnxruntime here"):
        build("selfie_general", CPU, choice="onnxruntime")  # asked for by name: no fall-back
    made["plan"].append(True)
    with pytest.raises(ModelUnavailableError, match="no usable TensorRT plan"):
        build("selfie_general", CPU, choice="tensorrt")


def test_gpu_auto_prefers_a_tensorrt_plan_then_torch(made: dict) -> None:
    assert build("selfie_general", GPU) == "torch"  # no plan: never onnxruntime on a GPU
    made["plan"].append(True)
    assert build("selfie_general", GPU) == "tensorrt"
    assert made["tensorrt"] == [("selfie_general", GPU, Path("/plans/x.plan"))]


def test_explicit_choices_on_a_gpu(made: dict) -> None:
    made["plan"].append(True)
    assert build("selfie_general", GPU, choice="torch") == "torch"
    with pytest.raises(ModelUnavailableError, match="CPU only"):
        build("selfie_general", GPU, choice="onnxruntime")
    assert build("selfie_general", GPU, choice="tensorrt") == "tensorrt"


def test_torch_options_reach_the_torch_runtime(made: dict) -> None:
    options = {"batch_sizes": (1, 4, 8), "compile": None}
    assert build("selfie_general", GPU, torch_options=options) == "torch"
    assert made["torch"][0][3] == options
    build("fixed_ellipse", CPU)
    assert made["torch"][1][3] == {}


# --------------------------------------------------------------------------------------------
# Config parameters
# --------------------------------------------------------------------------------------------


def config_parameters() -> tuple[dict[str, str], int]:
    text = CONFIG.read_text()
    pairs = re.findall(r'key: "([^"]+)", value: \{ string_value: "([^"]*)" \}', text)
    max_batch = int(re.search(r"max_batch_size: (\d+)", text).group(1))
    return dict(pairs), max_batch


def test_the_segmentation_config_parameters() -> None:
    parameters, max_batch = config_parameters()
    options = select.runtime_options(parameters, max_batch)
    assert options["choice"] == "auto"
    sizes = options["torch_options"]["batch_sizes"]
    assert sizes == DEFAULT_BATCH_SIZES and sizes[-1] >= max_batch
    assert options["torch_options"]["compile"] is None


def test_runtime_options() -> None:
    options = select.runtime_options({}, None)
    assert options == {
        "choice": "auto",
        "torch_options": {"batch_sizes": DEFAULT_BATCH_SIZES, "compile": None},
    }
    options = select.runtime_options(
        {"runtime": "torch", "cuda_graph_batch_sizes": "4, 1,2", "torch_compile": "on"}, 16
    )
    assert options["choice"] == "torch"
    assert options["torch_options"] == {
        "batch_sizes": (1, 2, 4, 16),
        "compile": DEFAULT_COMPILE_MODE,
    }
    for bad in ("1,x", "0,2", ","):
        with pytest.raises(ValueError, match="cuda_graph_batch_sizes"):
            select.runtime_options({"cuda_graph_batch_sizes": bad})
    with pytest.raises(ValueError, match=r"torch\.compile mode"):
        select.runtime_options({"torch_compile": "fast"})
    with pytest.raises(ValueError, match="'runtime' parameter"):
        select.runtime_options({"runtime": "onnx"})


# --------------------------------------------------------------------------------------------
# What was chosen, in words
# --------------------------------------------------------------------------------------------


def test_describe_runtime() -> None:
    runtime = TorchRuntime(get_model_spec("fixed_ellipse"), CPU)
    text = select.describe_runtime(runtime)
    assert text.startswith("torch-eager-cpu: torch ") and "fp32" in text

    class Bare:
        name = "bare"

    class WithPlan:
        name = "tensorrt-10.5-gpu:0"
        plan_path = Path("/plans/a.plan")

    assert select.describe_runtime(Bare()) == "bare"
    assert select.describe_runtime(WithPlan()) == "tensorrt-10.5-gpu:0: /plans/a.plan"


def test_real_cpu_choice_for_selfie_general_is_onnxruntime() -> None:
    pytest.importorskip("onnxruntime")
    from bgblur.runtimes.onnx_runtime import OnnxRuntimeCPU

    spec = get_model_spec("selfie_general")
    try:
        runtime = select.build_runtime(spec, CPU)
    except ModelUnavailableError as exc:
        pytest.skip(f"selfie weights not available here: {exc}")
    assert isinstance(runtime, OnnxRuntimeCPU)
    assert select.describe_runtime(runtime).startswith("onnxruntime-cpu: onnxruntime ")
    out = runtime(np.zeros((2, 3, *spec.input_hw), np.float16))
    assert out.shape == (2, 1, *spec.input_hw) and out.dtype == np.float16
