"""smooth_probability's CUDA kernel against the NumPy twin: the same bits."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur.ops.temporal import smooth_probability

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 1, 7, 13), (8, 1, 256, 256)])
@pytest.mark.parametrize("start", [True, False])
def test_smooth_probability_gpu_matches_cpu(cupy, shape, dtype, start):
    rng = np.random.default_rng(5)
    frames = rng.uniform(0, 1, shape).astype(dtype)
    state = rng.uniform(0, 1, (1, *shape[2:])).astype(np.float32)
    expected_state = state.copy()
    expected = smooth_probability(frames, expected_state, start=start, strength=0.7)
    gpu_state = cupy.asarray(state)
    actual = smooth_probability(cupy.asarray(frames), gpu_state, start=start, strength=0.7)
    assert isinstance(actual, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)
    np.testing.assert_array_equal(cupy.asnumpy(gpu_state), expected_state)


def test_smooth_probability_gpu_on_a_non_contiguous_view(cupy):
    frames = np.random.default_rng(6).uniform(0, 1, (4, 1, 16, 32)).astype(np.float32)
    view = cupy.asarray(frames)[:, :, :, ::2]
    expected = smooth_probability(
        np.ascontiguousarray(frames[:, :, :, ::2]),
        np.zeros((1, 16, 16), np.float32),
        start=True,
        strength=0.5,
    )
    actual = smooth_probability(view, cupy.zeros((1, 16, 16), np.float32), start=True, strength=0.5)
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)
