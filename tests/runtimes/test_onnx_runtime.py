"""OnnxRuntimeCPU: the network exported once (cached by weights), run by ONNX Runtime on the CPU,
equal to TorchRuntime on the CPU within float16 tolerance."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bgblur.device import Device
from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.models.registry import get_model_spec
from bgblur.runtimes import onnx_runtime
from bgblur.runtimes.onnx_runtime import OnnxRuntimeCPU, cpu_cores, weights_digest
from bgblur.runtimes.torch_runtime import TorchRuntime

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MODELS = ("selfie_general", "fixed_ellipse")
FP16_ATOL = 2e-3  # both compute in float32; the float16 output rounds to ~1e-3 near 1


def weights_cache() -> Path | None:
    env = os.environ.get("BGBLUR_CACHE")
    return Path(env) if env else None


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def runtimes(onnx_dir: Path) -> dict[str, tuple[OnnxRuntimeCPU, TorchRuntime]]:
    made = {}
    for name in MODELS:
        spec = get_model_spec(name)
        try:
            made[name] = (
                OnnxRuntimeCPU(spec, Device("cpu"), cache_dir=weights_cache(), onnx_dir=onnx_dir),
                TorchRuntime(spec, Device("cpu"), cache_dir=weights_cache()),
            )
        except ModelUnavailableError as exc:
            if name == "fixed_ellipse":
                raise
            print(f"{name} not available here: {exc}", file=sys.stderr)
    return made


def pair(runtimes: dict, name: str) -> tuple[OnnxRuntimeCPU, TorchRuntime]:
    if name not in runtimes:
        pytest.skip(f"{name} weights not available here")
    return runtimes[name]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_equals_torch_within_fp16_tolerance(runtimes: dict, name: str, batch: int, dtype) -> None:
    ort_runtime, torch_runtime = pair(runtimes, name)
    h, w = ort_runtime.spec.input_hw
    x = np.random.default_rng(batch).random((batch, 3, h, w)).astype(dtype)
    got, want = ort_runtime(x), torch_runtime(x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float16
    assert got.shape == (batch, 1, h, w) and got.flags.c_contiguous
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=FP16_ATOL)


def test_selfie_on_a_photo_equals_torch(runtimes: dict) -> None:
    import cv2
    import skimage.data

    ort_runtime, torch_runtime = pair(runtimes, "selfie_general")
    h, w = ort_runtime.spec.input_hw
    photo = cv2.resize(skimage.data.astronaut(), (w, h)).astype(np.float32) / 255
    x = np.ascontiguousarray(photo.transpose(2, 0, 1)[None]).astype(np.float16)
    got, want = ort_runtime(x), torch_runtime(x)
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=FP16_ATOL)
    assert (got > 0.5).mean() > 0.1  # the astronaut is found: a real mask, not zeros


def test_contract(runtimes: dict) -> None:
    runtime, _ = pair(runtimes, "fixed_ellipse")
    assert runtime.name == "onnxruntime-cpu"
    empty = runtime(np.zeros((0, 3, 64, 64), np.float16))
    assert empty.shape == (0, 1, 64, 64) and empty.dtype == np.float16
    x = np.zeros((2, 4, 64, 128), np.float16)[:, 1:, :, ::2]  # not contiguous
    assert runtime(x).shape == (2, 1, 64, 64)
    before = x.copy()
    runtime(x)
    np.testing.assert_array_equal(x, before)
    for bad in ((1, 3, 64, 63), (3, 64, 64), (1, 1, 64, 64)):
        with pytest.raises(InvalidInputError, match=r"\[B, 3, 64, 64\]"):
            runtime(np.zeros(bad, np.float16))


def test_threads_are_the_cores_and_describe_says_so(runtimes: dict) -> None:
    runtime, _ = pair(runtimes, "fixed_ellipse")
    assert runtime.threads == cpu_cores() == len(os.sched_getaffinity(0))
    assert runtime._session.get_session_options().intra_op_num_threads == cpu_cores()
    assert runtime._session.get_providers() == ["CPUExecutionProvider"]
    text = runtime.describe()
    assert "CPUExecutionProvider" in text and f"{cpu_cores()} intra-op threads" in text
    assert runtime.onnx_path.name in text


def test_export_is_cached_and_reused(
    onnx_dir: Path, runtimes: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, _ = pair(runtimes, "fixed_ellipse")
    assert first.onnx_path.parent == onnx_dir and first.onnx_path.is_file()
    assert first.onnx_path.name.startswith("fixed_ellipse_64x64_fp32_opset17_")
    mtime = first.onnx_path.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr("bgblur.models.export.export_onnx", no_export)
    again = OnnxRuntimeCPU(get_model_spec("fixed_ellipse"), Device("cpu"), onnx_dir=onnx_dir)
    assert again.onnx_path == first.onnx_path and not again.exported
    assert "(cached)" in again.describe()
    assert again.onnx_path.stat().st_mtime_ns == mtime


def test_a_damaged_cache_file_is_exported_again(tmp_path: Path) -> None:
    spec = get_model_spec("fixed_ellipse")
    first = OnnxRuntimeCPU(spec, Device("cpu"), onnx_dir=tmp_path)
    assert first.exported
    first.onnx_path.write_bytes(b"not an onnx file")
    again = OnnxRuntimeCPU(spec, Device("cpu"), onnx_dir=tmp_path)
    assert again.exported and again.onnx_path == first.onnx_path
    assert again(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 1, 64, 64)


def test_other_weights_get_another_file() -> None:
    a = torch.nn.Conv2d(3, 1, 1)
    b = torch.nn.Conv2d(3, 1, 1)
    with torch.no_grad():
        b.weight.copy_(a.weight)
        b.bias.copy_(a.bias)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.bias.add_(1e-6)
    assert weights_digest(a) != weights_digest(b)
    spec = get_model_spec("selfie_general")
    path_a = onnx_runtime.onnx_cache_path(spec, Path("/x"), weights_digest(a))
    path_b = onnx_runtime.onnx_cache_path(spec, Path("/x"), weights_digest(b))
    assert path_a != path_b and path_a.parent == Path("/x")


def test_refuses_a_gpu() -> None:
    with pytest.raises(ModelUnavailableError, match="runs on the CPU"):
        OnnxRuntimeCPU(get_model_spec("fixed_ellipse"), Device("gpu", 0))


def test_without_onnxruntime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ModelUnavailableError, match="pip install onnxruntime"):
        OnnxRuntimeCPU(get_model_spec("fixed_ellipse"), Device("cpu"), onnx_dir=tmp_path)
