"""GPU rgb_to_grey (bgblur.ops.color_gpu) against the CPU twin (cv2.cvtColor RGB2GRAY)."""

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


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("kind", KINDS)
def test_rgb_to_grey_gpu_matches_cpu(cupy, make_frames, assert_u8_close, kind, size, batch):
    frames = make_frames(kind, batch, size)
    expected = ops.rgb_to_grey(frames)
    actual = ops.rgb_to_grey(cupy.asarray(frames))
    assert isinstance(actual, cupy.ndarray)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{kind} {frames.shape}")


@pytest.mark.parametrize(
    "view",
    [
        (slice(None), slice(3, -2), slice(5, -4), slice(0, 3)),  # RGBA -> RGB: pixel stride 4
        (slice(None, None, 2), slice(None, None, 3), slice(1, None, 2), slice(0, 3)),
    ],
    ids=["crop-of-rgba", "strided"],
)
def test_rgb_to_grey_gpu_non_contiguous_input(cupy, make_frames, assert_u8_close, view):
    rgba = cupy.asarray(make_frames("astronaut", 3, (61, 83), channels=4))
    frames = rgba[view]
    assert not frames.flags.c_contiguous
    expected = ops.rgb_to_grey(cupy.asnumpy(frames))
    assert_u8_close(cupy.asnumpy(ops.rgb_to_grey(frames)), expected, case=str(frames.shape))


def test_rgb_to_grey_gpu_out_is_honoured(cupy, make_frames, assert_u8_close, padded_out):
    frames = make_frames("chelsea", 3, (45, 67))
    out, check_border = padded_out((3, 45, 67))
    result = ops.rgb_to_grey(cupy.asarray(frames), out=out)
    assert result is out
    assert_u8_close(cupy.asnumpy(out), ops.rgb_to_grey(frames), case="out=")
    check_border("rgb_to_grey")


def test_rgb_to_grey_gpu_non_default_stream(cupy, make_frames):
    frames = cupy.asarray(make_frames("random", 3, (1081, 1921)))
    expected = cupy.asnumpy(ops.rgb_to_grey(frames))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.rgb_to_grey(frames)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_rgb_to_grey_gpu_changing_shapes(cupy, make_frames, assert_u8_close):
    for i, size in enumerate([(64, 80), (17, 33), (64, 80), (1, 1), (301, 7)]):
        frames = make_frames("random", 1 + i % 3, size, seed=i)
        actual = ops.rgb_to_grey(cupy.asarray(frames))
        assert_u8_close(cupy.asnumpy(actual), ops.rgb_to_grey(frames), case=f"call {i} {size}")


def test_rgb_to_grey_gpu_rejects_non_uint8(cupy):
    with pytest.raises(ValueError, match="uint8"):
        ops.rgb_to_grey(cupy.zeros((1, 4, 4, 3), np.float32))
