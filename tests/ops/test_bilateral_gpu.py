"""GPU joint_bilateral_filter (bgblur.ops.bilateral_gpu) against the CPU twin
(cv2.ximgproc.jointBilateralFilter, or its NumPy twin where OpenCV lacks ximgproc)."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur import ops

pytestmark = pytest.mark.gpu

# Odd sizes: 1x1, widths that are no multiple of 4, a single row, 1080p plus one; None is the
# photo's own size (astronaut 512x512, chelsea 300x451; random 300x451).
SIZES = [(1, 1), (7, 13), (1, 1919), (33, 66), (1081, 1921), None]
KINDS = ["random", "astronaut", "chelsea"]


def size_id(size):
    return "native" if size is None else f"{size[0]}x{size[1]}"


def _inputs(make_frames, make_masks, kind, batch, size=None):
    """(mask, guide) of one kind. The guide is kept <= 254: ximgproc's 8-bit colour table has
    255 entries and a guide difference of 255 reads past it (undefined), so such windows are
    left out of the comparison."""
    guide = ops.rgb_to_grey(make_frames(kind, batch, size))
    mask = make_masks(kind, batch, guide.shape[1:])
    return mask, np.minimum(guide, 254)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("kind", KINDS)
def test_joint_bilateral_filter_gpu_matches_cpu(
    cupy, make_frames, make_masks, assert_u8_close, kind, size, batch
):
    mask, guide = _inputs(make_frames, make_masks, kind, batch, size)
    expected = ops.joint_bilateral_filter(mask, guide, 9, 25.0, 3.0)
    actual = ops.joint_bilateral_filter(cupy.asarray(mask), cupy.asarray(guide), 9, 25.0, 3.0)
    assert isinstance(actual, cupy.ndarray)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{kind} {mask.shape} d=9")


@pytest.mark.parametrize("sigma_color", [10.0, 40.0])
@pytest.mark.parametrize("sigma_space", [1.0, 3.0])
@pytest.mark.parametrize("diameter", [0, 1, 2, 5, 9])
@pytest.mark.parametrize("kind", ["astronaut", "random"])
def test_joint_bilateral_filter_gpu_parameters(
    cupy, make_frames, make_masks, assert_u8_close, kind, diameter, sigma_space, sigma_color
):
    mask, guide = _inputs(make_frames, make_masks, kind, 3)
    expected = ops.joint_bilateral_filter(mask, guide, diameter, sigma_color, sigma_space)
    actual = ops.joint_bilateral_filter(
        cupy.asarray(mask), cupy.asarray(guide), diameter, sigma_color, sigma_space
    )
    case = f"{kind} {mask.shape} d={diameter} sc={sigma_color} ss={sigma_space}"
    assert_u8_close(cupy.asnumpy(actual), expected, case=case)


@pytest.mark.parametrize("diameter", [57, 59], ids=["d57-shared", "d59-global"])
def test_joint_bilateral_filter_gpu_large_diameters(
    cupy, make_frames, make_masks, assert_u8_close, diameter
):
    # d=57 is the largest window staged in shared memory, d=59 takes the global-memory kernel;
    # the 40x50 image is smaller than the window, so borders reflect several times.
    mask, guide = _inputs(make_frames, make_masks, "chelsea", 2, (40, 50))
    expected = ops.joint_bilateral_filter(mask, guide, diameter, 30.0, 20.0)
    actual = ops.joint_bilateral_filter(
        cupy.asarray(mask), cupy.asarray(guide), diameter, 30.0, 20.0
    )
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"d={diameter}")


def test_joint_bilateral_filter_gpu_non_contiguous_input(
    cupy, make_frames, make_masks, assert_u8_close
):
    mask, guide = (cupy.asarray(a) for a in _inputs(make_frames, make_masks, "astronaut", 4))
    views = [
        (mask[1:, 11:-5, 3:-8], guide[1:, 11:-5, 3:-8]),
        (mask[::2, ::3, 1::2], guide[::2, ::3, 1::2]),
        (mask[:, ::-1], guide[:, ::-1]),
    ]
    for mask_v, guide_v in views:
        assert not mask_v.flags.c_contiguous
        expected = ops.joint_bilateral_filter(
            cupy.asnumpy(mask_v), cupy.asnumpy(guide_v), 9, 25.0, 3.0
        )
        actual = ops.joint_bilateral_filter(mask_v, guide_v, 9, 25.0, 3.0)
        assert_u8_close(cupy.asnumpy(actual), expected, case=f"{mask_v.strides}")


@pytest.mark.parametrize("diameter", [0, 9])
def test_joint_bilateral_filter_gpu_out_is_honoured(
    cupy, make_frames, make_masks, assert_u8_close, padded_out, diameter
):
    mask, guide = _inputs(make_frames, make_masks, "chelsea", 3, (101, 77))
    out, check_border = padded_out(mask.shape)
    result = ops.joint_bilateral_filter(
        cupy.asarray(mask), cupy.asarray(guide), diameter, 25.0, 3.0, out=out
    )
    assert result is out
    expected = ops.joint_bilateral_filter(mask, guide, diameter, 25.0, 3.0)
    assert_u8_close(cupy.asnumpy(out), expected, case=f"out= d={diameter}")
    check_border("joint_bilateral_filter")


def test_joint_bilateral_filter_gpu_non_default_stream(cupy, make_frames, make_masks):
    mask, guide = (cupy.asarray(a) for a in _inputs(make_frames, make_masks, "random", 3))
    expected = cupy.asnumpy(ops.joint_bilateral_filter(mask, guide, 9, 25.0, 3.0))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.joint_bilateral_filter(mask, guide, 9, 25.0, 3.0)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_joint_bilateral_filter_gpu_changing_shapes(cupy, make_frames, make_masks, assert_u8_close):
    cases = [((64, 80), 9, 3.0), ((17, 33), 5, 1.0), ((64, 80), 15, 5.0), ((1, 1), 9, 3.0)]
    for i, (size, diameter, sigma_space) in enumerate([*cases, cases[0]]):
        mask, guide = _inputs(make_frames, make_masks, "random", 1 + i % 3, size)
        actual = ops.joint_bilateral_filter(
            cupy.asarray(mask), cupy.asarray(guide), diameter, 25.0, sigma_space
        )
        expected = ops.joint_bilateral_filter(mask, guide, diameter, 25.0, sigma_space)
        assert_u8_close(cupy.asnumpy(actual), expected, case=f"call {i} {size} d={diameter}")
