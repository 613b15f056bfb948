"""bgblur.serving.triton_io.execute_grouped without Triton: a minimal stand-in for ``pb_utils``
(tensors, responses, errors with codes), and the GPU out-of-memory path: the failing group is
answered UNAVAILABLE naming the stage and the batch, the other groups are served, cached GPU
memory is released. (A real GPU out of memory: tests/reliability/test_gpu_oom.py.)"""

from __future__ import annotations

import sys
import types
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from bgblur.errors import InvalidInputError
from bgblur.serving import triton_io
from bgblur.serving.triton_io import (
    PreparedRequest,
    execute_grouped,
    gpu_oom_message,
    is_gpu_out_of_memory,
    release_gpu_memory,
)

# --------------------------------------------------------------------------------------------
# A stand-in for pb_utils: what execute_grouped uses of it
# --------------------------------------------------------------------------------------------


class FakeTritonError:
    """``pb_utils.TritonError``: a message and a code (the stub's code constants)."""

    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED = range(6)

    def __init__(self, message: str, code: int = INTERNAL) -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, array

    @classmethod
    def from_dlpack(cls, name: str, owner: Any) -> FakeTensor:
        return cls(name, np.from_dlpack(owner).copy())


class FakeResponse:
    def __init__(self, output_tensors: list[FakeTensor] | None = None, error: Any = None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors or []}
        self.error = error

    def has_error(self) -> bool:
        return self.error is not None


class FakePbUtils:
    Tensor = FakeTensor
    InferenceResponse = FakeResponse
    TritonError = FakeTritonError


class FakeInput:
    def __init__(self, array: np.ndarray) -> None:
        self._shape = array.shape

    def shape(self) -> list[int]:
        return list(self._shape)


class FakeRequest:
    """A request of one input (``FRAMES``); ``inputs()`` as the stub's request has it."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames

    def inputs(self) -> list[FakeInput]:
        return [FakeInput(self.frames)]


class RecordingMetrics:
    """What execute_grouped tells ``StageMetrics`` (bgblur.serving.metrics: tested there)."""

    stage = "segmentation"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def batch(self, frames: int, seconds: float) -> None:
        self.calls.append(("batch", frames))

    def rejected(self, exc: BaseException, frames: int) -> None:
        self.calls.append(("rejected", frames))

    def rejected_batch(self, exc: BaseException, frame_counts: list[int]) -> None:
        self.calls.append(("rejected_batch", tuple(frame_counts)))

    def failed(self, requests: int, reason: str = "error") -> None:
        self.calls.append(("failed", requests, reason))


@pytest.fixture
def released(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Calls of the cache-release hook (``triton_io.release_gpu_memory``) during the test."""
    calls: list[int] = []
    monkeypatch.setattr(triton_io, "release_gpu_memory", lambda: calls.append(1))
    return calls


def frames(batch: int, height: int, width: int, value: int = 0) -> np.ndarray:
    return np.full((batch, height, width, 3), value, np.uint8)


def prepare(request: FakeRequest) -> PreparedRequest:
    return PreparedRequest(key=tuple(request.frames.shape[1:]), arrays=(request.frames,))


def invert(arrays: tuple[Any, ...], options: Any) -> list[np.ndarray]:
    return [255 - arrays[0]]


def oom_for(height: int, error: BaseException) -> Any:
    """A ``run`` that raises ``error`` for the group of frames ``height`` rows high."""

    def run(arrays: tuple[Any, ...], options: Any) -> list[np.ndarray]:
        if arrays[0].shape[1] == height:
            raise error
        return invert(arrays, options)

    return run


def code_and_message(response: FakeResponse) -> tuple[int, str]:
    assert response.has_error()
    return response.error.code(), response.error.message()


# --------------------------------------------------------------------------------------------
# execute_grouped
# --------------------------------------------------------------------------------------------


def test_oom_in_run_fails_its_group_unavailable_and_the_other_group_is_served(released) -> None:
    metrics = RecordingMetrics()
    requests = [
        FakeRequest(frames(2, 24, 32, 1)),  # group A: 24x32, 3 frames in all
        FakeRequest(frames(3, 16, 16, 2)),  # group B
        FakeRequest(frames(1, 24, 32, 3)),  # group A
    ]
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")
    responses = execute_grouped(
        FakePbUtils, requests, prepare, oom_for(24, error), ["OUT"], metrics
    )

    assert len(responses) == 3
    expected = (
        "GPU out of memory in segmentation for a batch of 3 frames of 32x24: "
        "retry later or send smaller batches"
    )
    for index in (0, 2):
        assert code_and_message(responses[index]) == (FakeTritonError.UNAVAILABLE, expected)
        assert responses[index] is not responses[2 - index]  # one response object per request
    assert not responses[1].has_error()
    np.testing.assert_array_equal(responses[1].outputs["OUT"], 255 - requests[1].frames)
    assert released == [1]
    assert ("failed", 2, "gpu_oom") in metrics.calls
    assert ("batch", 3) in metrics.calls
    assert not any(c[0] == "failed" and c[2] == "error" for c in metrics.calls)


def test_after_an_oom_the_next_execute_serves_the_same_batch(released) -> None:
    """The model keeps serving: nothing is left broken by the failed batch."""
    state = {"fail": True}

    def run(arrays: tuple[Any, ...], options: Any) -> list[np.ndarray]:
        if state.pop("fail", False):
            raise torch.OutOfMemoryError("CUDA out of memory")
        return invert(arrays, options)

    request = FakeRequest(frames(8, 24, 32, 7))
    first = execute_grouped(FakePbUtils, [request], prepare, run, ["OUT"], stage="postprocess")
    assert code_and_message(first[0])[0] == FakeTritonError.UNAVAILABLE
    assert (
        "GPU out of memory in postprocess for a batch of 8 frames of 32x24"
        in (code_and_message(first[0])[1])
    )
    second = execute_grouped(FakePbUtils, [request], prepare, run, ["OUT"], stage="postprocess")
    assert not second[0].has_error()
    np.testing.assert_array_equal(second[0].outputs["OUT"], 255 - request.frames)
    assert released == [1]


def test_oom_in_prepare_fails_that_request_alone(released) -> None:
    """CuPy raising while copying one request's frames to the GPU (before any batch runs)."""
    cupy_oom = type("OutOfMemoryError", (MemoryError,), {"__module__": "cupy.cuda.memory"})
    metrics = RecordingMetrics()
    metrics.stage = "preprocess"

    def prepare_oom(request: FakeRequest) -> PreparedRequest:
        if request.frames.shape[0] == 8:
            raise cupy_oom("Out of memory allocating 199,065,600 bytes")
        return prepare(request)

    requests = [FakeRequest(frames(8, 2160, 3840)), FakeRequest(frames(1, 24, 32, 9))]
    responses = execute_grouped(FakePbUtils, requests, prepare_oom, invert, ["OUT"], metrics)
    assert code_and_message(responses[0]) == (
        FakeTritonError.UNAVAILABLE,
        "GPU out of memory in preprocess for a batch of 8 frames of 3840x2160: "
        "retry later or send smaller batches",
    )
    assert not responses[1].has_error()
    assert released == [1]
    assert metrics.calls == [("failed", 1, "gpu_oom"), ("batch", 1)]


def test_other_errors_stay_internal_and_release_nothing(released) -> None:
    metrics = RecordingMetrics()
    requests = [FakeRequest(frames(2, 24, 32)), FakeRequest(frames(1, 16, 16))]
    run = oom_for(24, RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"))
    responses = execute_grouped(FakePbUtils, requests, prepare, run, ["OUT"], metrics)
    assert code_and_message(responses[0]) == (
        FakeTritonError.INTERNAL,
        "internal error: RuntimeError: cuDNN error: CUDNN_STATUS_EXECUTION_FAILED",
    )
    assert not responses[1].has_error()
    assert released == []
    assert ("failed", 1, "error") in metrics.calls


def test_an_unexpected_error_in_prepare_fails_that_request_alone(released) -> None:
    def prepare_fails(request: FakeRequest) -> PreparedRequest:
        if request.frames.shape[0] == 2:
            raise KeyError("boom")
        return prepare(request)

    requests = [FakeRequest(frames(2, 24, 32)), FakeRequest(frames(1, 24, 32))]
    responses = execute_grouped(FakePbUtils, requests, prepare_fails, invert, ["OUT"])
    assert code_and_message(responses[0]) == (
        FakeTritonError.INTERNAL,
        "internal error: KeyError: 'boom'",
    )
    assert not responses[1].has_error()
    assert released == []


def test_invalid_input_is_still_invalid_arg(released) -> None:
    def run(arrays: tuple[Any, ...], options: Any) -> list[np.ndarray]:
        raise InvalidInputError("NETWORK_INPUT must be [batch, 3, 256, 256]")

    responses = execute_grouped(FakePbUtils, [FakeRequest(frames(1, 4, 4))], prepare, run, ["O"])
    assert code_and_message(responses[0]) == (
        FakeTritonError.INVALID_ARG,
        "NETWORK_INPUT must be [batch, 3, 256, 256]",
    )
    assert released == []


# --------------------------------------------------------------------------------------------
# Recognising a GPU out of memory; the message; releasing the caches
# --------------------------------------------------------------------------------------------


def gpu_error(module: str, name: str, base: type = RuntimeError) -> type:
    """An exception class as a GPU library defines it (without that library installed)."""
    return type(name, (base,), {"__module__": module})


def chained() -> BaseException:
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("forward failed") from inner
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (torch.cuda.OutOfMemoryError("CUDA out of memory"), True),
        (gpu_error("cupy.cuda.memory", "OutOfMemoryError", MemoryError)("Out of memory"), True),
        (
            gpu_error("cupy_backends.cuda.api.runtime", "CUDARuntimeError")(
                "cudaErrorMemoryAllocation: out of memory"
            ),
            True,
        ),
        (RuntimeError("CUDA error: out of memory"), True),
        (RuntimeError("CUDA driver error: CUDA_ERROR_OUT_OF_MEMORY"), True),
        (RuntimeError("CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), True),
        (gpu_error("tensorrt", "OutOfMemoryError")("allocation failed"), True),
        (chained(), True),
        (MemoryError("out of memory"), False),  # the host's, not the GPU's
        (ValueError("ran out of memory budget"), False),
        (gpu_error("myapp.errors", "OutOfMemoryError")("quota"), False),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False),
        (InvalidInputError("FRAMES exceeds the per-request maximum"), False),
    ],
)
def test_is_gpu_out_of_memory(error: BaseException, expected: bool) -> None:
    assert is_gpu_out_of_memory(error) is expected


@pytest.mark.parametrize(
    ("frames_", "sizes", "expected"),
    [
        (8, ["3840x2160"], "a batch of 8 frames of 3840x2160:"),
        (1, ["256x256"], "a batch of 1 frame of 256x256:"),
        (3, ["640x360", "1920x1080", "640x360"], "a batch of 3 frames of 640x360 and 1920x1080:"),
        (2, [], "a batch of 2 frames:"),
    ],
)
def test_gpu_oom_message(frames_: int, sizes: list[str], expected: str) -> None:
    message = gpu_oom_message("postprocess", frames_, sizes)
    assert message.startswith(f"GPU out of memory in postprocess for {expected}")
    assert message.endswith("retry later or send smaller batches")


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((8, 2160, 3840, 3), "3840x2160"),  # frames, NHWC
        ((8, 3, 256, 256), "256x256"),  # network input, NCHW
        ((2, 1, 144, 256), "256x144"),  # probability, NCHW
        ((8, 100), None),
    ],
)
def test_frame_size_reads_nhwc_and_nchw(shape: tuple[int, ...], expected: str | None) -> None:
    assert triton_io._frame_size(shape) == expected


class FakeCupy(types.ModuleType):
    freed: ClassVar[list[int]] = []

    def get_default_memory_pool(self) -> Any:
        return types.SimpleNamespace(free_all_blocks=lambda: self.freed.append(1))


def test_release_gpu_memory_frees_cupy_pool_and_torch_cache(monkeypatch) -> None:
    FakeCupy.freed = []
    emptied: list[int] = []
    monkeypatch.setitem(sys.modules, "cupy", FakeCupy("cupy"))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    release_gpu_memory()
    assert FakeCupy.freed == [1] and emptied == [1]


def test_release_gpu_memory_imports_nothing_and_never_raises(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)

    def broken() -> None:
        raise RuntimeError("CUDA driver gone")

    monkeypatch.setattr(torch.cuda, "empty_cache", broken)
    release_gpu_memory()  # logged, not raised
    assert "cupy" not in sys.modules
