"""smooth_probability's CUDA kernels against the NumPy twin: the same bits (probability gate
alone, and motion-aware with the frames)."""

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


def _motion_inputs(shape, p_dtype, x_dtype, seed):
    """Probabilities, a stream's frames (still, noisy, then a change), and the two states."""
    frames_count, _, h, w = shape
    rng = np.random.default_rng(seed)
    scene = rng.uniform(0.1, 0.9, (1, 3, h, w))
    frames = scene + rng.normal(0, 3 / 255, (frames_count, 3, h, w))
    frames[frames_count // 2 :] += 0.25  # the image changes mid-stream
    probabilities = rng.uniform(0, 1, shape).astype(p_dtype)
    state = rng.uniform(0, 1, (1, h, w)).astype(np.float32)
    luma = rng.uniform(0, 255, (1, h, w)).astype(np.float32)
    return probabilities, frames.astype(x_dtype), state, luma


@pytest.mark.parametrize("x_dtype", [np.float16, np.float32])
@pytest.mark.parametrize("p_dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (5, 1, 7, 13), (8, 1, 256, 256)])
@pytest.mark.parametrize(("start", "luma_start"), [(True, True), (False, False), (False, True)])
def test_motion_gate_gpu_matches_cpu(cupy, shape, p_dtype, x_dtype, start, luma_start):
    probabilities, frames, state, luma = _motion_inputs(shape, p_dtype, x_dtype, 7)
    kwargs = {
        "start": start,
        "luma_start": luma_start,
        "strength": 0.6,
        "input_mean": (0.485, 0.456, 0.406),
        "input_std": (0.229, 0.224, 0.225),
    }
    expected_state, expected_luma = state.copy(), luma.copy()
    expected = smooth_probability(
        probabilities,
        expected_state,
        frames_n3hw=frames,
        luma_1hw_f32=expected_luma,
        **kwargs,
    )
    gpu_state, gpu_luma = cupy.asarray(state), cupy.asarray(luma)
    actual = smooth_probability(
        cupy.asarray(probabilities),
        gpu_state,
        frames_n3hw=cupy.asarray(frames),
        luma_1hw_f32=gpu_luma,
        **kwargs,
    )
    assert isinstance(actual, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)
    np.testing.assert_array_equal(cupy.asnumpy(gpu_state), expected_state)
    np.testing.assert_array_equal(cupy.asnumpy(gpu_luma), expected_luma)


def test_motion_gate_gpu_on_non_contiguous_views(cupy):
    probabilities, frames, _, luma = _motion_inputs((4, 1, 16, 32), np.float32, np.float16, 8)
    expected_luma = luma[:, :, ::2].copy()
    expected = smooth_probability(
        np.ascontiguousarray(probabilities[:, :, :, ::2]),
        np.zeros((1, 16, 16), np.float32),
        start=True,
        strength=0.5,
        frames_n3hw=np.ascontiguousarray(frames[:, :, :, ::2]),
        luma_1hw_f32=expected_luma,
    )
    gpu_luma = cupy.asarray(luma)[:, :, ::2]
    actual = smooth_probability(
        cupy.asarray(probabilities)[:, :, :, ::2],
        cupy.zeros((1, 16, 16), np.float32),
        start=True,
        strength=0.5,
        frames_n3hw=cupy.asarray(frames)[:, :, :, ::2],
        luma_1hw_f32=gpu_luma,
    )
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)
    np.testing.assert_array_equal(cupy.asnumpy(gpu_luma), expected_luma)
