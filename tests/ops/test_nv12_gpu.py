"""GPU NV12 -> RGB (bgblur.ops.nv12_gpu, kernels/nv12.cu) against the CPU twin and OpenCV."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from bgblur.ops.nv12 import COLOR_MATRICES, nv12_to_rgb

pytestmark = pytest.mark.gpu

SIZES = [(2, 2), (6, 10), (1080, 1920), (242, 322)]


def random_nv12(batch: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, h * 3 // 2, w), dtype=np.uint8)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_nv12_gpu_within_1_lsb_of_opencv(cupy, size) -> None:
    nv12 = random_nv12(2, *size)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_YUV2RGB_NV12) for f in nv12])
    actual = cupy.asnumpy(nv12_to_rgb(cupy.asarray(nv12)))
    assert np.abs(actual.astype(int) - expected).max() <= 1
    np.testing.assert_array_equal(actual, expected)  # same integer formula: exact in practice


@pytest.mark.parametrize("matrix", COLOR_MATRICES)
@pytest.mark.parametrize("full_range", [False, True], ids=["limited", "full"])
def test_nv12_gpu_matches_cpu_twin(cupy, matrix, full_range) -> None:
    nv12 = random_nv12(3, 98, 130, seed=1)
    expected = nv12_to_rgb(nv12, matrix=matrix, full_range=full_range)
    actual = nv12_to_rgb(cupy.asarray(nv12), matrix=matrix, full_range=full_range)
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_nv12_gpu_pitched_input_and_out(cupy) -> None:
    padded = cupy.asarray(random_nv12(2, 64, 128, seed=2))
    view = padded[:, :, :100]  # NVDEC surfaces are pitched like this
    out = cupy.zeros((2, 64, 100, 3), np.uint8)
    assert nv12_to_rgb(view, matrix="bt709", out=out) is out
    expected = nv12_to_rgb(cupy.asnumpy(view).copy(), matrix="bt709")
    np.testing.assert_array_equal(cupy.asnumpy(out), expected)
