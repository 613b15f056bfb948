"""``StageStream``: a GPU stage runs on its own non-blocking stream, yet reads its inputs only
after the work the caller queued for them on the caller's stream.

The regression this guards (H200, 2026-12-02, GPU busy with a soak): ``cupy.asarray(frames)``
queued the upload on the caller's stream, the stage's stream did not wait for it, and the stage
blurred a stale buffer. Here the caller's stream fills the inputs late on purpose (a kernel that
spins ~50 ms first), so a stage that does not wait reads zeros.
"""

from __future__ import annotations

import numpy as np
import pytest

from bgblur.device import Device
from bgblur.models.registry import get_model_spec
from bgblur.parameters import BlurParams
from bgblur.stages.postprocess import Postprocess
from bgblur.stages.preprocess import Preprocess
from bgblur.stages.stream import StageStream

pytestmark = pytest.mark.gpu

COPY_LATE = r"""
extern "C" __global__ void copy_late(const unsigned char* src, unsigned char* dst, long long n,
                                     long long spin_cycles) {
    long long start = clock64();
    while (clock64() - start < spin_cycles) {
    }
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        dst[i] = src[i];
    }
}
"""


def filled_late_on(stream, source_u8):
    """A device copy of ``source_u8`` that ``stream`` writes only after ~50 ms of spinning."""
    import cupy

    src = cupy.asarray(source_u8)
    cupy.cuda.Device().synchronize()
    dst = cupy.zeros_like(src)
    kernel = cupy.RawKernel(COPY_LATE, "copy_late")
    with stream:
        kernel((64,), (256,), (src, dst, np.int64(src.size), np.int64(100_000_000)))
    return dst


def frames_and_probability() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (2, 72, 96, 3), dtype=np.uint8)
    probability = np.zeros((2, 1, 32, 32), np.float16)
    probability[:, :, 8:24, 10:22] = 1.0
    return frames, probability


def test_postprocess_waits_for_inputs_made_on_the_callers_stream() -> None:
    import cupy

    frames, probability = frames_and_probability()
    params = BlurParams()
    expected_blurred, expected_mask = Postprocess(Device("gpu"))(frames, probability, params)
    caller = cupy.cuda.Stream(non_blocking=True)
    late_frames = filled_late_on(caller, frames)
    with caller:
        blurred, mask = Postprocess(Device("gpu"))(late_frames, cupy.asarray(probability), params)
    np.testing.assert_array_equal(cupy.asnumpy(blurred), cupy.asnumpy(expected_blurred))
    np.testing.assert_array_equal(cupy.asnumpy(mask), cupy.asnumpy(expected_mask))


def test_preprocess_waits_for_inputs_made_on_the_callers_stream() -> None:
    import cupy

    frames, _ = frames_and_probability()
    spec = get_model_spec("selfie_general")
    expected = Preprocess(spec, Device("gpu"))(frames)
    caller = cupy.cuda.Stream(non_blocking=True)
    late_frames = filled_late_on(caller, frames)
    with caller:
        network_input = Preprocess(spec, Device("gpu"))(late_frames)
    np.testing.assert_array_equal(cupy.asnumpy(network_input), cupy.asnumpy(expected))


def test_activate_makes_the_stage_stream_current_on_its_device() -> None:
    import cupy

    stage = StageStream(Device("gpu"))
    before = cupy.cuda.get_current_stream().ptr
    with stage.activate():
        assert cupy.cuda.get_current_stream().ptr == stage.cuda_stream.ptr != before
    assert cupy.cuda.get_current_stream().ptr == before
