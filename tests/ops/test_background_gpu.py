"""GPU background ops (bgblur.ops.background_gpu, the foreground share on CuPy) against their
CPU twins: the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur import ops
from tests.ops.test_background_cpu import blob_probability

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("grow_px", [0, 1, 3])
@pytest.mark.parametrize(("ksize", "sigma"), [(15, 5.0), (1, 1.0), (31, 9.0)])
@pytest.mark.parametrize(
    ("small_hw", "prob_hw"), [((224, 224), (256, 256)), ((224, 224), (144, 256)), ((7, 13), (5, 9))]
)
def test_halo_free_blur_gpu_equals_cpu(
    cupy, make_frames, dtype, grow_px, ksize, sigma, small_hw, prob_hw
):
    small = make_frames("astronaut", 3, small_hw)
    probability = blob_probability(3, prob_hw).astype(dtype)
    want = ops.halo_free_blur(small, probability, ksize, sigma, grow_px=grow_px)
    got = ops.halo_free_blur(
        cupy.asarray(small), cupy.asarray(probability), ksize, sigma, grow_px=grow_px
    )
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)


def test_halo_free_blur_gpu_weight_arguments_and_strided_views(cupy, make_frames):
    small = make_frames("chelsea", 2, (224, 224))
    probability = blob_probability(2, (128, 128))
    kwargs = {"weight_lo": 10, "weight_hi": 250, "min_weight": 200, "grow_px": 2}
    want = ops.halo_free_blur(small[:, ::2], probability[..., ::2], 9, 3.0, **kwargs)
    got = ops.halo_free_blur(
        cupy.asarray(small)[:, ::2], cupy.asarray(probability)[..., ::2], 9, 3.0, **kwargs
    )
    np.testing.assert_array_equal(cupy.asnumpy(got), want)


def test_cover_resize_and_foreground_share_on_the_gpu(cupy, make_frames):
    images = make_frames("chelsea", 2, (300, 451))
    np.testing.assert_array_equal(
        cupy.asnumpy(ops.cover_resize_nhwc(cupy.asarray(images), (181, 263))),
        ops.cover_resize_nhwc(images, (181, 263)),
    )
    masks = np.random.default_rng(1).integers(0, 256, (3, 181, 263), dtype=np.uint8)
    share = ops.foreground_share(cupy.asarray(masks))
    assert isinstance(share, cupy.ndarray) and share.dtype == np.float32
    np.testing.assert_array_equal(cupy.asnumpy(share), ops.foreground_share(masks))
