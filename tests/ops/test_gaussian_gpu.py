"""GPU gaussian_blur (bgblur.ops.gaussian_gpu) against the CPU twin (cv2.GaussianBlur)."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur import ops

pytestmark = pytest.mark.gpu

# Odd sizes: 1x1, widths that are no multiple of 4, a single row, 1080p plus one; None is the
# photo's own size (astronaut 512x512, chelsea 300x451; random 300x451).
SIZES = [(1, 1), (7, 13), (1, 1919), (33, 66), (1081, 1921), None]
KINDS = ["random", "astronaut", "chelsea"]
KERNELS = [(1, 1.0), (3, 0.8), (5, 1.5), (9, 2.0), (21, 5.0), (31, 11.0), (61, 20.0), (99, 30.0)]


def size_id(size):
    return "native" if size is None else f"{size[0]}x{size[1]}"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("kind", KINDS)
def test_gaussian_blur_gpu_matches_cpu(cupy, make_frames, assert_u8_close, kind, size, batch):
    frames = make_frames(kind, batch, size)
    expected = ops.gaussian_blur(frames, 21, 5.0)
    actual = ops.gaussian_blur(cupy.asarray(frames), 21, 5.0)
    assert isinstance(actual, cupy.ndarray)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{kind} {frames.shape} k=21 s=5")


@pytest.mark.parametrize("size", [(7, 13), (1, 1919), (1081, 1921)], ids=size_id)
@pytest.mark.parametrize(("ksize", "sigma"), KERNELS, ids=[f"k{k}-s{s}" for k, s in KERNELS])
def test_gaussian_blur_gpu_kernel_sizes(cupy, make_frames, assert_u8_close, ksize, sigma, size):
    frames = make_frames("astronaut", 3, size)
    expected = ops.gaussian_blur(frames, ksize, sigma)
    actual = ops.gaussian_blur(cupy.asarray(frames), ksize, sigma)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{frames.shape} k={ksize} s={sigma}")


@pytest.mark.parametrize(
    ("shape", "ksize", "sigma"),
    [
        ((2, 50, 40, 3), 721, 150.0),  # vertical window too large for shared memory
        ((2, 20, 30, 16), 2501, 400.0),  # horizontal window too (16 channels)
        ((1, 7, 13, 3), 4095, 30.0),  # largest ksize served, many reflections
    ],
    ids=["k721", "k2501-C16", "k4095"],
)
def test_gaussian_blur_gpu_large_kernels(cupy, assert_u8_close, shape, ksize, sigma):
    frames = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    expected = ops.gaussian_blur(frames, ksize, sigma)
    actual = ops.gaussian_blur(cupy.asarray(frames), ksize, sigma)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{shape} k={ksize} s={sigma}")


@pytest.mark.parametrize("channels", [1, 4])
def test_gaussian_blur_gpu_other_channel_counts(cupy, make_frames, assert_u8_close, channels):
    frames = make_frames("chelsea", 2, channels=channels)
    expected = ops.gaussian_blur(frames, 15, 4.0)
    actual = ops.gaussian_blur(cupy.asarray(frames), 15, 4.0)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"C={channels}")


def test_gaussian_blur_gpu_non_contiguous_input(cupy, make_frames, assert_u8_close):
    big = cupy.asarray(make_frames("astronaut", 4, channels=4))
    for frames in (big[1:, 11:-5, 3:-8, :3], big[::2, ::3, 1::2, :3], big[:, :, :, 2::-1]):
        assert not frames.flags.c_contiguous
        expected = ops.gaussian_blur(cupy.asnumpy(frames), 31, 8.0)
        actual = ops.gaussian_blur(frames, 31, 8.0)
        assert_u8_close(cupy.asnumpy(actual), expected, case=f"{frames.strides}")


def test_gaussian_blur_gpu_out_is_honoured(cupy, make_frames, assert_u8_close, padded_out):
    frames = make_frames("chelsea", 3, (101, 77))
    out, check_border = padded_out(frames.shape)
    result = ops.gaussian_blur(cupy.asarray(frames), 21, 6.0, out=out)
    assert result is out
    assert_u8_close(cupy.asnumpy(out), ops.gaussian_blur(frames, 21, 6.0), case="out=")
    check_border("gaussian_blur")


def test_gaussian_blur_gpu_non_default_stream(cupy, make_frames):
    frames = cupy.asarray(make_frames("random", 3, (1081, 1921)))
    expected = cupy.asnumpy(ops.gaussian_blur(frames, 31, 9.0))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.gaussian_blur(frames, 31, 9.0)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_gaussian_blur_gpu_changing_shapes(cupy, make_frames, assert_u8_close):
    cases = [((64, 80), 21, 5.0), ((17, 33), 5, 1.0), ((64, 80), 61, 20.0), ((1, 1), 3, 1.0)]
    for i, (size, ksize, sigma) in enumerate([*cases, cases[0]]):
        frames = make_frames("random", 1 + i % 3, size, seed=i)
        actual = ops.gaussian_blur(cupy.asarray(frames), ksize, sigma)
        expected = ops.gaussian_blur(frames, ksize, sigma)
        assert_u8_close(cupy.asnumpy(actual), expected, case=f"call {i} {size} k={ksize}")


def test_gaussian_blur_gpu_rejects_oversized_kernel(cupy):
    with pytest.raises(ValueError, match="ksize"):
        ops.gaussian_blur(cupy.zeros((1, 8, 8, 3), np.uint8), 4097, 100.0)
