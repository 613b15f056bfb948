"""GPU resizes (bgblur.ops.resize_gpu) against the CPU twins (cv2.resize; INTER_AREA for the
preprocessing's ``interpolation="area"``)."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur import ops
from bgblur.ops import resize_gpu
from tests.ops.resize_area_reference import ENLARGE_CASES, SHRINK_CASES

pytestmark = pytest.mark.gpu

# Odd sizes: 1x1, widths that are no multiple of 4, a single row, 1080p plus one; None is the
# photo's own size (astronaut 512x512, chelsea 300x451; random 300x451).
SIZES = [(1, 1), (7, 13), (1, 1919), (33, 66), (1081, 1921), None]
KINDS = ["random", "astronaut", "chelsea"]

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# float32: identical arithmetic, so any difference is a bug; float16: the same float32 value
# rounded once, so identical too; the tolerances are the brief's bars.
FLOAT_TOL = {np.float32: {"rtol": 1e-3, "atol": 1e-6}, np.float16: {"rtol": 2**-10, "atol": 2**-14}}


def size_id(size):
    return "native" if size is None else f"{size[0]}x{size[1]}"


def hw_id(hw):
    return f"{hw[0]}x{hw[1]}"


# ---- resize_normalize_nchw ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("kind", KINDS)
def test_resize_normalize_nchw_gpu_matches_cpu(
    cupy, make_frames, assert_float_close, kind, size, batch, dtype
):
    frames = make_frames(kind, batch, size)
    expected = ops.resize_normalize_nchw(frames, (256, 256), MEAN, STD, out_dtype=dtype)
    actual = ops.resize_normalize_nchw(cupy.asarray(frames), (256, 256), MEAN, STD, out_dtype=dtype)
    assert isinstance(actual, cupy.ndarray)
    assert actual.dtype == dtype and actual.shape == (batch, 3, 256, 256)
    assert_float_close(
        cupy.asnumpy(actual), expected, case=f"{kind} {frames.shape}", **FLOAT_TOL[dtype]
    )


@pytest.mark.parametrize(
    "out_hw", [(1, 1), (7, 13), (144, 256), (513, 511), (1080, 1920)], ids=hw_id
)
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_resize_normalize_nchw_gpu_output_sizes(
    cupy, make_frames, assert_float_close, out_hw, dtype
):
    frames = make_frames("astronaut", 3)
    expected = ops.resize_normalize_nchw(frames, out_hw, MEAN, STD, out_dtype=dtype)
    actual = ops.resize_normalize_nchw(cupy.asarray(frames), out_hw, MEAN, STD, out_dtype=dtype)
    assert_float_close(cupy.asnumpy(actual), expected, case=f"-> {out_hw}", **FLOAT_TOL[dtype])


def test_resize_normalize_nchw_gpu_non_contiguous_input(cupy, make_frames, assert_float_close):
    rgba = cupy.asarray(make_frames("chelsea", 3, channels=4))
    frames = rgba[:, 5:-3, 7:-2, :3]
    assert not frames.flags.c_contiguous
    expected = ops.resize_normalize_nchw(cupy.asnumpy(frames), (224, 224), MEAN, STD)
    actual = ops.resize_normalize_nchw(frames, (224, 224), MEAN, STD)
    assert_float_close(cupy.asnumpy(actual), expected, case="view", **FLOAT_TOL[np.float16])


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_resize_normalize_nchw_gpu_out_is_honoured(
    cupy, make_frames, assert_float_close, padded_out, dtype
):
    frames = make_frames("astronaut", 3, (97, 131))
    out, check_border = padded_out((3, 3, 40, 50), dtype)
    result = ops.resize_normalize_nchw(
        cupy.asarray(frames), (40, 50), MEAN, STD, out_dtype=dtype, out=out
    )
    assert result is out
    expected = ops.resize_normalize_nchw(frames, (40, 50), MEAN, STD, out_dtype=dtype)
    assert_float_close(cupy.asnumpy(out), expected, case="out=", **FLOAT_TOL[dtype])
    check_border("resize_normalize_nchw")


def test_resize_normalize_nchw_gpu_non_default_stream(cupy, make_frames):
    frames = cupy.asarray(make_frames("random", 3, (1081, 1921)))
    expected = cupy.asnumpy(ops.resize_normalize_nchw(frames, (256, 256), MEAN, STD))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.resize_normalize_nchw(frames, (256, 256), MEAN, STD)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_resize_normalize_nchw_gpu_changing_shapes(cupy, make_frames, assert_float_close):
    cases = [((1080, 1920), (256, 256)), ((17, 33), (64, 48)), ((1080, 1920), (144, 256))]
    for i, (size, out_hw) in enumerate([*cases, cases[0]]):
        frames = make_frames("random", 1 + i % 3, size, seed=i)
        for dtype in (np.float32, np.float16):
            expected = ops.resize_normalize_nchw(frames, out_hw, MEAN, STD, out_dtype=dtype)
            actual = ops.resize_normalize_nchw(
                cupy.asarray(frames), out_hw, MEAN, STD, out_dtype=dtype
            )
            assert_float_close(
                cupy.asnumpy(actual), expected, case=f"call {i} {dtype}", **FLOAT_TOL[dtype]
            )


# ---- resize_linear_nhwc ------------------------------------------------------------------------


@pytest.mark.parametrize("out_hw", [(256, 256), (1080, 1920), (7, 5), (13, 1)], ids=hw_id)
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", SIZES, ids=size_id)
@pytest.mark.parametrize("kind", KINDS)
def test_resize_linear_nhwc_gpu_matches_cpu(
    cupy, make_frames, assert_u8_close, kind, size, batch, out_hw
):
    frames = make_frames(kind, batch, size)
    expected = ops.resize_linear_nhwc(frames, out_hw)
    actual = ops.resize_linear_nhwc(cupy.asarray(frames), out_hw)
    assert isinstance(actual, cupy.ndarray)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"{kind} {frames.shape} -> {out_hw}")


@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("out_hw", [(256, 256), (1080, 1920)], ids=hw_id)
def test_resize_linear_nhwc_gpu_other_channel_counts(
    cupy, make_frames, assert_u8_close, channels, out_hw
):
    frames = make_frames("chelsea", 2, channels=channels)
    expected = ops.resize_linear_nhwc(frames, out_hw)
    actual = ops.resize_linear_nhwc(cupy.asarray(frames), out_hw)
    assert_u8_close(cupy.asnumpy(actual), expected, case=f"C={channels} -> {out_hw}")


def test_resize_linear_nhwc_gpu_non_contiguous_input(cupy, make_frames, assert_u8_close):
    big = cupy.asarray(make_frames("astronaut", 4))
    for frames in (big[1:, 11:-5, 3:-8], big[::2, ::3, 1::2], big[:, :, :, ::-1]):
        assert not frames.flags.c_contiguous
        for out_hw in ((256, 256), (1080, 1920)):
            expected = ops.resize_linear_nhwc(cupy.asnumpy(frames), out_hw)
            actual = ops.resize_linear_nhwc(frames, out_hw)
            assert_u8_close(cupy.asnumpy(actual), expected, case=f"{frames.strides} {out_hw}")


def test_resize_linear_nhwc_gpu_out_is_honoured(cupy, make_frames, assert_u8_close, padded_out):
    frames = make_frames("chelsea", 3)
    out, check_border = padded_out((3, 101, 77, 3))
    result = ops.resize_linear_nhwc(cupy.asarray(frames), (101, 77), out=out)
    assert result is out
    expected = ops.resize_linear_nhwc(frames, (101, 77))
    assert_u8_close(cupy.asnumpy(out), expected, case="out=")
    check_border("resize_linear_nhwc")


def test_resize_linear_nhwc_gpu_non_default_stream(cupy, make_frames):
    frames = cupy.asarray(make_frames("random", 3, (256, 256)))
    expected = cupy.asnumpy(ops.resize_linear_nhwc(frames, (1080, 1920)))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.resize_linear_nhwc(frames, (1080, 1920))
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_resize_linear_nhwc_gpu_changing_shapes(cupy, make_frames, assert_u8_close):
    cases = [((1080, 1920), (256, 256)), ((17, 33), (64, 48)), ((256, 256), (1080, 1920))]
    for i, (size, out_hw) in enumerate([*cases, cases[0]]):
        frames = make_frames("random", 1 + i % 3, size, seed=i)
        actual = ops.resize_linear_nhwc(cupy.asarray(frames), out_hw)
        expected = ops.resize_linear_nhwc(frames, out_hw)
        assert_u8_close(cupy.asnumpy(actual), expected, case=f"call {i} {size} -> {out_hw}")


# ---- upscale_mask ------------------------------------------------------------------------------

MASK_RESIZES = [
    ((1080, 1920), (256, 256)),  # downscale
    ((256, 256), (1080, 1920)),  # upscale
    ((144, 256), (1081, 1921)),
    ((1, 1), (7, 13)),
    ((7, 13), (1, 1919)),
    ((1000, 999), (1080, 1920)),  # nearest: floor(x * double scale) != x * src // dst here
    ((1080, 1920), (999, 1000)),
    ((256, 256), (256, 256)),  # identity
]


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("kind", ["random", "astronaut"])
@pytest.mark.parametrize(
    ("in_hw", "out_hw"), MASK_RESIZES, ids=[f"{hw_id(a)}-{hw_id(b)}" for a, b in MASK_RESIZES]
)
@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_upscale_mask_gpu_matches_cpu(
    cupy, make_masks, assert_u8_close, interpolation, in_hw, out_hw, kind, batch
):
    masks = make_masks(kind, batch, in_hw)
    expected = ops.upscale_mask(masks, out_hw, interpolation=interpolation)
    actual = ops.upscale_mask(cupy.asarray(masks), out_hw, interpolation=interpolation)
    assert isinstance(actual, cupy.ndarray)
    assert_u8_close(
        cupy.asnumpy(actual),
        expected,
        case=f"{interpolation} {masks.shape} -> {out_hw}",
        max_diff=0 if interpolation == "nearest" else 1,  # nearest only copies bytes
    )


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_upscale_mask_gpu_non_contiguous_input(cupy, make_masks, assert_u8_close, interpolation):
    big = cupy.asarray(make_masks("astronaut", 4, (300, 400)))
    for masks in (big[1:, 10:-7, 3:-20], big[::2, ::3, 1::2], big[:, ::-1]):
        assert not masks.flags.c_contiguous
        expected = ops.upscale_mask(cupy.asnumpy(masks), (1080, 1920), interpolation=interpolation)
        actual = ops.upscale_mask(masks, (1080, 1920), interpolation=interpolation)
        assert_u8_close(cupy.asnumpy(actual), expected, case=f"{masks.strides}")


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_upscale_mask_gpu_out_is_honoured(
    cupy, make_masks, assert_u8_close, padded_out, interpolation
):
    masks = make_masks("astronaut", 3, (64, 64))
    out, check_border = padded_out((3, 270, 481))
    result = ops.upscale_mask(cupy.asarray(masks), (270, 481), interpolation=interpolation, out=out)
    assert result is out
    expected = ops.upscale_mask(masks, (270, 481), interpolation=interpolation)
    assert_u8_close(cupy.asnumpy(out), expected, case="out=")
    check_border(f"upscale_mask {interpolation}")


@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
def test_upscale_mask_gpu_non_default_stream(cupy, make_masks, interpolation):
    masks = cupy.asarray(make_masks("random", 3, (256, 256)))
    expected = cupy.asnumpy(ops.upscale_mask(masks, (1080, 1920), interpolation=interpolation))
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.upscale_mask(masks, (1080, 1920), interpolation=interpolation)
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_upscale_mask_gpu_changing_shapes(cupy, make_masks, assert_u8_close):
    for i, (in_hw, out_hw) in enumerate([*MASK_RESIZES, MASK_RESIZES[0]]):
        masks = make_masks("random", 1 + i % 3, in_hw, seed=i)
        for interpolation in ("nearest", "linear"):
            actual = ops.upscale_mask(cupy.asarray(masks), out_hw, interpolation=interpolation)
            expected = ops.upscale_mask(masks, out_hw, interpolation=interpolation)
            assert_u8_close(cupy.asnumpy(actual), expected, case=f"call {i} {interpolation}")


# ---- resize_normalize_nchw_varshape: mixed sizes, one launch -----------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_resize_normalize_nchw_varshape_gpu_mixed_sizes_equal_each_alone(
    cupy, make_frames, assert_float_close, dtype
):
    batches = [
        make_frames("astronaut", 2, (1081, 1921)),
        make_frames("random", 1, (1, 1)),
        make_frames("chelsea", 3, (33, 66)),
        make_frames("random", 1, (1, 1919), seed=3),
        make_frames("astronaut", 1),
    ]
    expected = np.concatenate(
        [ops.resize_normalize_nchw(b, (256, 144), MEAN, STD, out_dtype=dtype) for b in batches]
    )
    on_gpu = [cupy.asarray(b) for b in batches]
    on_gpu[2] = cupy.asarray(make_frames("chelsea", 3, (33, 66), channels=4))[..., :3]  # a view
    out = cupy.empty((8, 3, 256, 144), dtype)
    actual = ops.resize_normalize_nchw_varshape(
        on_gpu, (256, 144), MEAN, STD, out_dtype=dtype, out=out
    )
    assert actual is out
    assert_float_close(cupy.asnumpy(actual), expected, case="mixed", **FLOAT_TOL[dtype])


def test_resize_normalize_nchw_varshape_gpu_on_a_stream_and_repeated(
    cupy, make_frames, assert_float_close
):
    stream = cupy.cuda.Stream(non_blocking=True)
    for sizes in ([(720, 1280), (1080, 1920)], [(7, 13)], [(1080, 1920), (2, 2), (720, 1280)]):
        batches = [make_frames("random", 2, s, seed=i) for i, s in enumerate(sizes)]
        expected = np.concatenate(
            [ops.resize_normalize_nchw(b, (256, 256), MEAN, STD) for b in batches]
        )
        with stream:
            actual = ops.resize_normalize_nchw_varshape(
                [cupy.asarray(b) for b in batches], (256, 256), MEAN, STD
            )
            host = cupy.asnumpy(actual, stream=stream)
        stream.synchronize()
        assert_float_close(host, expected, case=str(sizes), **FLOAT_TOL[np.float16])


# ---- resize_normalize_nchw(interpolation="area") ----------------------------------------------

# 1 LSB of the uint8 resize in normalized units, plus the output's own rounding.
AREA_ATOL = {np.float32: 1 / (255 * min(STD)) + 1e-5, np.float16: 1 / (255 * min(STD)) + 2**-9}


def case_id(case):
    return f"{hw_id(case[0])}-{hw_id(case[1])}"


def to_u8_grid(out_nchw):
    """Normalized ``[B, 3, h, w]`` values back on the uint8 grid: ``(out * std + mean) * 255``,
    rounded (exact for both float16 and float32 outputs: their error is far below 0.5 LSB)."""
    mean = np.asarray(MEAN).reshape(3, 1, 1)
    std = np.asarray(STD).reshape(3, 1, 1)
    values = (out_nchw.astype(np.float64) * std + mean) * 255
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def assert_area_close(assert_u8_close, assert_float_close, actual, expected, case):
    """GPU vs CPU (cv2.INTER_AREA): within 1 LSB of the uint8 resize, differing on at most 1% of
    the values (BGBLUR_GPU_EXACT=1: bit-exact; the kernel does OpenCV's arithmetic), and the
    normalized values within that LSB plus rounding."""
    assert_u8_close(to_u8_grid(actual), to_u8_grid(expected), case=f"{case} (uint8 grid)")
    assert_float_close(actual, expected, case=case, rtol=0.0, atol=AREA_ATOL[expected.dtype.type])


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", SHRINK_CASES, ids=case_id)
@pytest.mark.parametrize("kind", KINDS)
def test_resize_area_normalize_nchw_gpu_matches_cpu(
    cupy, make_frames, assert_u8_close, assert_float_close, kind, case, dtype
):
    src_hw, out_hw = case
    frames = make_frames(kind, 2, src_hw)
    expected = ops.resize_normalize_nchw(
        frames, out_hw, MEAN, STD, out_dtype=dtype, interpolation="area"
    )
    actual = ops.resize_normalize_nchw(
        cupy.asarray(frames), out_hw, MEAN, STD, out_dtype=dtype, interpolation="area"
    )
    assert isinstance(actual, cupy.ndarray)
    assert actual.dtype == dtype and actual.shape == (2, 3, *out_hw)
    assert_area_close(
        assert_u8_close, assert_float_close, cupy.asnumpy(actual), expected, f"{kind} {case}"
    )


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", ENLARGE_CASES, ids=case_id)
def test_resize_area_normalize_nchw_gpu_enlarged_axis_is_linear(
    cupy, make_frames, assert_float_close, case, dtype
):
    src_hw, out_hw = case
    frames = cupy.asarray(make_frames("random", 3, src_hw))
    area = ops.resize_normalize_nchw(
        frames, out_hw, MEAN, STD, out_dtype=dtype, interpolation="area"
    )
    linear = ops.resize_normalize_nchw(frames, out_hw, MEAN, STD, out_dtype=dtype)
    np.testing.assert_array_equal(cupy.asnumpy(area), cupy.asnumpy(linear))
    expected = ops.resize_normalize_nchw(
        cupy.asnumpy(frames), out_hw, MEAN, STD, out_dtype=dtype, interpolation="area"
    )
    assert_float_close(cupy.asnumpy(area), expected, case=str(case), **FLOAT_TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_resize_area_normalize_nchw_gpu_view_into_out(
    cupy, make_frames, assert_u8_close, assert_float_close, padded_out, dtype
):
    rgba = cupy.asarray(make_frames("chelsea", 3, channels=4))
    frames = rgba[:, 5:-3, 7:-2, 2::-1]  # strided crop, BGR order of the RGBA bytes
    assert not frames.flags.c_contiguous
    out, check_border = padded_out((3, 3, 97, 131), dtype)
    result = ops.resize_normalize_nchw(
        frames, (97, 131), MEAN, STD, out_dtype=dtype, out=out, interpolation="area"
    )
    assert result is out
    expected = ops.resize_normalize_nchw(
        cupy.asnumpy(frames), (97, 131), MEAN, STD, out_dtype=dtype, interpolation="area"
    )
    assert_area_close(assert_u8_close, assert_float_close, cupy.asnumpy(out), expected, "view")
    check_border("resize_normalize_nchw area")


def test_resize_area_normalize_nchw_gpu_non_default_stream(cupy, make_frames):
    frames = cupy.asarray(make_frames("random", 3, (1081, 1921)))
    expected = cupy.asnumpy(
        ops.resize_normalize_nchw(frames, (256, 256), MEAN, STD, interpolation="area")
    )
    with cupy.cuda.Stream(non_blocking=True) as stream:
        actual = ops.resize_normalize_nchw(frames, (256, 256), MEAN, STD, interpolation="area")
        stream.synchronize()
    np.testing.assert_array_equal(cupy.asnumpy(actual), expected)


def test_resize_normalize_nchw_gpu_alternating_interpolations(
    cupy, make_frames, assert_u8_close, assert_float_close
):
    cases = [((1080, 1920), (256, 256)), ((17, 33), (64, 48)), ((1024, 1024), (256, 256))]
    for i, (size, out_hw) in enumerate([*cases, cases[0]]):
        frames = make_frames("random", 1 + i % 3, size, seed=i)
        for interpolation in ("area", "linear"):
            expected = ops.resize_normalize_nchw(
                frames, out_hw, MEAN, STD, interpolation=interpolation
            )
            actual = ops.resize_normalize_nchw(
                cupy.asarray(frames), out_hw, MEAN, STD, interpolation=interpolation
            )
            assert_area_close(
                assert_u8_close,
                assert_float_close,
                cupy.asnumpy(actual),
                expected,
                f"call {i} {interpolation}",
            )


def test_resize_normalize_nchw_gpu_bad_interpolation(cupy, make_frames):
    frames = cupy.asarray(make_frames("random", 1, (7, 13)))
    match = "interpolation must be 'linear' or 'area', got 'cubic'"
    with pytest.raises(ValueError, match=match):
        ops.resize_normalize_nchw(frames, (3, 5), MEAN, STD, interpolation="cubic")
    with pytest.raises(ValueError, match=match):
        ops.resize_normalize_nchw_varshape([frames], (3, 5), MEAN, STD, interpolation="cubic")
    with pytest.raises(ValueError, match=match):
        resize_gpu.resize_normalize_nchw(frames, (3, 5), MEAN, STD, interpolation="cubic")


@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["fp16", "fp32"])
def test_resize_area_normalize_nchw_varshape_gpu_mixed_sizes(
    cupy, make_frames, assert_u8_close, assert_float_close, dtype
):
    batches = [
        make_frames("astronaut", 2, (1081, 1921)),  # general ratio
        make_frames("random", 1, (1, 1)),  # enlarged: linear
        make_frames("chelsea", 2, (288, 512)),  # 2x2 integer ratio
        make_frames("random", 1, (100, 1000), seed=3),  # enlarged in y only: linear
        make_frames("astronaut", 1, (576, 1024)),  # 4x4 integer ratio
        make_frames("chelsea", 1, (2160, 3840)),  # x ratio 15, y 15: integer
        make_frames("random", 2, (721, 1283), seed=4),  # general ratio
    ]
    total = sum(b.shape[0] for b in batches)
    expected = np.concatenate(
        [
            ops.resize_normalize_nchw(
                b, (144, 256), MEAN, STD, out_dtype=dtype, interpolation="area"
            )
            for b in batches
        ]
    )
    on_gpu = [cupy.asarray(b) for b in batches]
    on_gpu[2] = cupy.asarray(make_frames("chelsea", 2, (288, 512), channels=4))[..., :3]  # a view
    out = cupy.empty((total, 3, 144, 256), dtype)
    actual = ops.resize_normalize_nchw_varshape(
        on_gpu, (144, 256), MEAN, STD, out_dtype=dtype, out=out, interpolation="area"
    )
    assert actual is out
    assert_area_close(assert_u8_close, assert_float_close, cupy.asnumpy(actual), expected, "mixed")
    # Each image alone through the single-size kernel: the same arithmetic, the same bits.
    alone = np.concatenate(
        [
            cupy.asnumpy(
                ops.resize_normalize_nchw(
                    b, (144, 256), MEAN, STD, out_dtype=dtype, interpolation="area"
                )
            )
            for b in on_gpu
        ]
    )
    np.testing.assert_array_equal(cupy.asnumpy(actual), alone)


def test_resize_area_normalize_nchw_varshape_gpu_on_a_stream_and_repeated(
    cupy, make_frames, assert_u8_close, assert_float_close
):
    stream = cupy.cuda.Stream(non_blocking=True)
    for sizes in ([(720, 1280), (1080, 1920)], [(7, 13)], [(2160, 3840), (2, 2), (512, 512)]):
        batches = [make_frames("random", 2, s, seed=i) for i, s in enumerate(sizes)]
        expected = np.concatenate(
            [
                ops.resize_normalize_nchw(b, (256, 256), MEAN, STD, interpolation="area")
                for b in batches
            ]
        )
        with stream:
            actual = ops.resize_normalize_nchw_varshape(
                [cupy.asarray(b) for b in batches], (256, 256), MEAN, STD, interpolation="area"
            )
            host = cupy.asnumpy(actual, stream=stream)
        stream.synchronize()
        assert_area_close(assert_u8_close, assert_float_close, host, expected, str(sizes))
