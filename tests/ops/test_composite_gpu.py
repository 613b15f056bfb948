"""GPU composite (bgblur.ops.composite_gpu) against the CPU twin (exact integer blend)."""

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


def _inputs(make_frames, make_masks, kind, batch, size, channels=3):
    fg = make_frames(kind, batch, size, channels=channels)
    bg = make_frames("random", batch, fg.shape[1:3], channels=channels, seed=7)
    mask = make_masks(kind, batch, fg.shape[1:3])
    return fg, bg, mask


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("kind", KINDS)
def test_composite_gpu_matches_cpu(
    cupy, make_frames, make_masks, assert_u8_close, kind, size, batch
):
    fg, bg, mask = _inputs(make_frames, make_masks, kind, batch, size)
    expected = ops.composite(fg, bg, mask)
    actual = ops.composite(cupy.asarray(fg), cupy.asarray(bg), cupy.asarray(mask))
    assert isinstance(actual, cupy.ndarray)
    # Exact integer arithmetic on both sides: no difference allowed at all.
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{kind} {fg.shape}", max_diff=0)


@pytest.mark.parametrize("channels", [1, 4])
def test_composite_gpu_other_channel_counts(
    cupy, make_frames, make_masks, assert_u8_close, channels
):
    fg, bg, mask = _inputs(make_frames, make_masks, "random", 2, (19, 23), channels)
    expected = ops.composite(fg, bg, mask)
    actual = ops.composite(cupy.asarray(fg), cupy.asarray(bg), cupy.asarray(mask))
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"C={channels}", max_diff=0)


def test_composite_gpu_all_mask_values(cupy, assert_u8_close):
    # Every (fg, bg, mask) byte triple with fg, bg on a grid, mask 0..255.
    values = np.arange(0, 256, 5, dtype=np.uint8)
    fg, bg = np.meshgrid(values, values, indexing="ij")
    fg = np.broadcast_to(fg[None, :, :, None], (256, *fg.shape, 1))
    bg = np.broadcast_to(bg[None, :, :, None], (256, *bg.shape, 1))
    mask = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], fg.shape[:3])
    fg, bg, mask = (np.ascontiguousarray(a) for a in (fg, bg, mask))
    expected = ops.composite(fg, bg, mask)
    actual = ops.composite(cupy.asarray(fg), cupy.asarray(bg), cupy.asarray(mask))
    assert_u8_close(cupy.asnumpy(actual), expected, case="all masks", max_diff=0)


def test_composite_gpu_non_contiguous_inputs(cupy, make_frames, make_masks, assert_u8_close):
    fg4 = cupy.asarray(make_frames("astronaut", 3, (64, 90), channels=4))
    bg = cupy.asarray(make_frames("random", 3, (64, 90), seed=3))
    mask = cupy.asarray(make_masks("astronaut", 3, (64, 90)))
    fg_v, bg_v, mask_v = fg4[:, 2:-3, 4:-1, :3], bg[:, 2:-3, 4:-1], mask[:, 2:-3, 4:-1]
    assert not (fg_v.flags.c_contiguous or bg_v.flags.c_contiguous or mask_v.flags.c_contiguous)
    expected = ops.composite(*(cupy.asnumpy(a) for a in (fg_v, bg_v, mask_v)))
    actual = ops.composite(fg_v, bg_v, mask_v)
    assert_u8_close(cupy.asnumpy(actual), expected, case="views", max_diff=0)
    # Reversed channel order (negative stride) works too.
    expected = ops.composite(*(cupy.asnumpy(a) for a in (fg_v[..., ::-1], bg_v, mask_v)))
    actual = ops.composite(fg_v[..., ::-1], bg_v, mask_v)
    assert_u8_close(cupy.asnumpy(actual), expected, case="BGR view", max_diff=0)


def test_composite_gpu_out_is_honoured(cupy, make_frames, make_masks, assert_u8_close, padded_out):
    fg, bg, mask = _inputs(make_frames, make_masks, "chelsea", 3, (41, 57))
    out, check_border = padded_out(fg.shape)
    result = ops.composite(cupy.asarray(fg), cupy.asarray(bg), cupy.asarray(mask), out=out)
    assert result is out
    assert_u8_close(cupy.asnumpy(out), ops.composite(fg, bg, mask), case="out=", max_diff=0)
    check_border("composite")


def test_composite_gpu_non_default_stream(cupy, make_frames, make_masks):
    args = [cupy.asarray(a) for a in _inputs(make_frames, make_masks, "random", 3, (1081, 1921))]
    expected = cupy.asnumpy(ops.composite(*args))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.composite(*args)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_composite_gpu_changing_shapes(cupy, make_frames, make_masks, assert_u8_close):
    for i, size in enumerate([(64, 80), (17, 33), (64, 80), (1, 1), (301, 7)]):
        fg, bg, mask = _inputs(make_frames, make_masks, "random", 1 + i % 3, size)
        actual = ops.composite(cupy.asarray(fg), cupy.asarray(bg), cupy.asarray(mask))
        assert_u8_close(
            cupy.asnumpy(actual), ops.composite(fg, bg, mask), case=f"call {i}", max_diff=0
        )
