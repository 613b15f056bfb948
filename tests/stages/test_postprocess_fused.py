"""Fused GPU postprocess (bgblur.stages.postprocess_fused) against the per-op GPU chain and the
CPU stage.

The fused kernels must give the same BLURRED and MASK as the unfused chain of GPU ops (bit for
bit: they share every piece of arithmetic) and as the CPU stage (OpenCV; within the tolerance of
``assert_u8_close``, exact with ``BGBLUR_GPU_EXACT=1``).
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

from bgblur.device import Device
from bgblur.parameters import BlurParams
from bgblur.stages.postprocess import Postprocess
from bgblur.stages.postprocess_fused import (
    FusedPostprocess,
    bilateral_radius,
    fits_fused,
    fused_shared_bytes,
)

gpu = pytest.mark.gpu

GPU = Device("gpu")
CPU = Device("cpu")


def probability(batch: int, low_hw: tuple[int, int], dtype=np.float16, seed: int = 0):
    """``[batch, 1, h, w]`` foreground probabilities like a network's: a soft off-centre blob,
    noise, values slightly outside [0, 1] (clipped by the soft mask), different per frame."""
    rng = np.random.default_rng(seed)
    h, w = low_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    out = []
    for i in range(batch):
        cy, cx = h * (0.45 + 0.05 * i), w * (0.5 - 0.04 * i)
        blob = np.exp(-(((yy - cy) / (0.3 * h + 0.5)) ** 2 + ((xx - cx) / (0.22 * w + 0.5)) ** 2))
        out.append(np.clip(1.1 * blob + rng.normal(0.0, 0.08, (h, w)), -0.05, 1.05))
    return np.stack(out)[:, None].astype(dtype)


def run_all(cupy, frames, prob, params, *, working_hw=(224, 224), interpolation="nearest"):
    """(fused, unfused GPU, CPU stage) results, each ``(blurred, mask)`` as NumPy."""
    kwargs = {"blur_working_hw": working_hw, "mask_interpolation": interpolation}
    fused = Postprocess(GPU, **kwargs)
    assert fused.fused is not None
    unfused = Postprocess(GPU, fused=False, **kwargs)
    assert unfused.fused is None
    results = []
    for stage in (fused, unfused):
        blurred, mask = stage(cupy.asarray(frames), cupy.asarray(prob), params)
        assert isinstance(blurred, cupy.ndarray) and isinstance(mask, cupy.ndarray)
        results.append((cupy.asnumpy(blurred), cupy.asnumpy(mask)))
    results.append(Postprocess(CPU, **kwargs)(frames, prob, params))
    return results


def check_all(cupy, assert_u8_close, frames, prob, params, case, *, max_diff=1, **kwargs):
    (fb, fm), (ub, um), (cb, cm) = run_all(cupy, frames, prob, params, **kwargs)
    assert fb.shape == frames.shape and fm.shape == frames.shape[:3]
    if max_diff:
        # Fused vs the per-op GPU chain: the same arithmetic, so bit for bit.
        np.testing.assert_array_equal(fm, um, err_msg=f"{case}: mask, fused vs unfused GPU")
        np.testing.assert_array_equal(fb, ub, err_msg=f"{case}: blurred, fused vs unfused GPU")
    # Fused vs the CPU stage (OpenCV / the ximgproc twin).
    assert_u8_close(fm, cm, case=f"{case}: mask vs CPU", max_diff=max_diff)
    assert_u8_close(fb, cb, case=f"{case}: blurred vs CPU", max_diff=max_diff)


def size_id(size):
    return f"{size[0]}x{size[1]}"


@gpu
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("size", [(1, 1), (7, 13), (1, 1919), (33, 66), (1081, 1921)], ids=size_id)
def test_fused_matches_unfused_and_cpu_on_odd_sizes(
    cupy, make_frames, assert_u8_close, size, batch
):
    frames = make_frames("astronaut", batch, size)
    prob = probability(batch, (64, 64), seed=batch)
    check_all(cupy, assert_u8_close, frames, prob, BlurParams(), f"{size} b{batch}")


@gpu
@pytest.mark.parametrize("kind", ["astronaut", "chelsea", "random"])
def test_fused_matches_on_photos_at_native_size(cupy, make_frames, assert_u8_close, kind):
    frames = make_frames(kind, 3)
    prob = probability(3, (256, 256), seed=7)
    check_all(cupy, assert_u8_close, frames, prob, BlurParams(), kind)


PARAMS = {
    "d0": BlurParams(bilateral_diameter=0),
    "d1": BlurParams(bilateral_diameter=1),
    "d2": BlurParams(bilateral_diameter=2),
    "d5-default": BlurParams(),
    "d9": BlurParams(bilateral_diameter=9, bilateral_sigma_color=20.0, bilateral_sigma_space=3.0),
    "d31": BlurParams(bilateral_diameter=31, bilateral_sigma_color=80.0, bilateral_sigma_space=9.0),
    "hard": BlurParams(soft_mask=False, mask_threshold=0.7),
    "hard-d0": BlurParams(soft_mask=False, mask_threshold=0.3, bilateral_diameter=0),
    "blur-k1": BlurParams(blur_ksize=1, blur_sigma=1.0),
    "blur-k99": BlurParams(blur_ksize=99, blur_sigma=100.0),
}


@gpu
@pytest.mark.parametrize("interpolation", ["nearest", "linear"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
@pytest.mark.parametrize("name", list(PARAMS))
def test_fused_parameters(cupy, make_frames, assert_u8_close, name, dtype, interpolation):
    frames = make_frames("chelsea", 3, (181, 243))
    prob = probability(3, (48, 40), dtype=dtype, seed=3)
    case = f"{name} {np.dtype(dtype).name} {interpolation}"
    check_all(cupy, assert_u8_close, frames, prob, PARAMS[name], case, interpolation=interpolation)


@gpu
@pytest.mark.parametrize("working_hw", [(100, 180), (31, 17), (300, 400)], ids=size_id)
def test_fused_working_sizes(cupy, make_frames, assert_u8_close, working_hw):
    frames = make_frames("astronaut", 2, (250, 199))
    prob = probability(2, (64, 64))
    check_all(
        cupy, assert_u8_close, frames, prob, BlurParams(), f"{working_hw}", working_hw=working_hw
    )


@gpu
def test_fused_probability_edge_values_and_float64(cupy, make_frames, assert_u8_close):
    """Values at the threshold (0.69999999 is float32(0.7): the CPU stage compares in float32),
    x255 ties, values outside [0, 1], float64 input: the fused masks equal the CPU stage's
    exactly (the per-op GPU chain is left out here: CuPy's own scalar rules decide its edges)."""
    frames = make_frames("astronaut", 2, (64, 96))
    values = np.array([-1.0, 0.0, 0.3, 0.5, 0.7, 127.5 / 255, 1.0, 2.0, 0.69999999], np.float64)
    prob = np.resize(values, (2, 1, 9, 16))
    hard = BlurParams(soft_mask=False, mask_threshold=0.7)
    for dtype in (np.float16, np.float32, np.float64):
        for params in (BlurParams(bilateral_diameter=0), hard):
            case = f"{np.dtype(dtype).name} soft={params.soft_mask}"
            check_all(cupy, assert_u8_close, frames, prob.astype(dtype), params, case, max_diff=0)


@gpu
def test_fused_repeated_calls_with_changing_shapes_and_params(cupy, make_frames):
    """One instance (one workspace), shapes, batches, params and probability sizes changing from
    call to call, then the first call again: every result equals the per-op chain's; steady-state
    calls launch 5 kernels, 4 without halo_free (the weight tables are built once per parameter
    set)."""
    fused = FusedPostprocess((224, 224), "nearest")
    unfused = Postprocess(GPU, fused=False)
    cases = [
        ((64, 80), 1, (32, 32), BlurParams()),
        ((17, 33), 3, (5, 9), BlurParams(bilateral_diameter=9, bilateral_sigma_space=3.0)),
        ((64, 80), 2, (32, 32), BlurParams(bilateral_diameter=0, blur_ksize=31)),
        ((1, 1), 1, (1, 1), BlurParams()),
        ((120, 70), 3, (64, 64), BlurParams(soft_mask=False)),
    ]
    first = None
    for i, (size, batch, low, params) in enumerate([*cases, cases[0]]):
        frames = cupy.asarray(make_frames("chelsea", batch, size))
        prob = cupy.asarray(probability(batch, low, seed=i % len(cases)))
        blurred, mask = fused(frames, prob, params)
        expected_blurred, expected_mask = unfused(frames, prob, params)
        np.testing.assert_array_equal(cupy.asnumpy(mask), cupy.asnumpy(expected_mask), f"{i}")
        np.testing.assert_array_equal(
            cupy.asnumpy(blurred), cupy.asnumpy(expected_blurred), f"call {i} {size}"
        )
        if first is None:
            first = cupy.asnumpy(blurred), cupy.asnumpy(mask)
    np.testing.assert_array_equal(cupy.asnumpy(blurred), first[0])
    np.testing.assert_array_equal(cupy.asnumpy(mask), first[1])
    # Params of cases[0] seen before: tables cached. Halo-free (the default): weights (with the
    # resize), two Gaussian passes, normalisation, fused; the whole-frame blur: resize, two
    # passes, fused.
    assert fused.launches == 5
    fused(frames, prob, cases[1][3])
    assert fused.launches == 5
    fused(frames, prob, dataclasses.replace(cases[1][3], halo_free=False))
    assert fused.launches == 4
    fused(frames, prob, BlurParams(bilateral_sigma_color=12.0, blur_sigma=2.0))
    assert fused.launches == 7  # new bilateral tables and Gaussian taps
    fused(frames, prob, BlurParams(background="color"))
    assert fused.launches == 1  # the colour needs no blur: the fused kernel alone


@gpu
def test_fused_on_non_default_streams(cupy, make_frames):
    frames = cupy.asarray(make_frames("astronaut", 3, (90, 161)))
    prob = cupy.asarray(probability(3, (64, 64)))
    fused = FusedPostprocess()
    expected = [cupy.asnumpy(a) for a in Postprocess(GPU, fused=False)(frames, prob, BlurParams())]
    streams = [cupy.cuda.Stream(non_blocking=True) for _ in range(2)]
    for i in range(4):  # alternate streams: the workspace is shared between the calls
        with streams[i % 2] as stream:
            blurred, mask = fused(frames, prob, BlurParams())
            stream.synchronize()
        np.testing.assert_array_equal(cupy.asnumpy(blurred), expected[0], f"call {i}")
        np.testing.assert_array_equal(cupy.asnumpy(mask), expected[1], f"call {i}")


@gpu
def test_fused_non_contiguous_inputs_and_out_views(cupy, make_frames, padded_out):
    big = cupy.asarray(make_frames("astronaut", 4))
    prob2 = cupy.asarray(np.concatenate([probability(4, (64, 64), seed=1)] * 2, axis=1))
    views = [
        (big[1:, 11:-5, 3:-8], prob2[1:, 1:]),
        (big[::2, ::3, 1::2], prob2[::2, :1, ::2, ::-1]),
        (big[:, ::-1], prob2[:, 1:, 3:-2]),
        (big[:, :, :, ::-1], prob2[:, :1]),  # BGR view: channel stride -1
    ]
    fused = FusedPostprocess()
    unfused = Postprocess(GPU, fused=False)
    for frames, prob in views:
        expected = [cupy.asnumpy(a) for a in unfused(frames, prob, BlurParams())]
        blurred, mask = fused(frames, prob, BlurParams())
        np.testing.assert_array_equal(cupy.asnumpy(mask), expected[1], f"{frames.strides}")
        np.testing.assert_array_equal(cupy.asnumpy(blurred), expected[0], f"{frames.strides}")
        out, check_out = padded_out(frames.shape)
        mask_out, check_mask = padded_out(frames.shape[:3])
        result = fused(frames, prob, BlurParams(), out=out, mask_out=mask_out)
        assert result[0] is out and result[1] is mask_out
        np.testing.assert_array_equal(cupy.asnumpy(out), expected[0])
        np.testing.assert_array_equal(cupy.asnumpy(mask_out), expected[1])
        check_out("fused out=")
        check_mask("fused mask_out=")


@gpu
def test_fused_large_diameter_takes_the_per_op_chain(cupy, make_frames):
    # BlurParams caps the diameter at 31; the op itself serves any: beyond what its shared memory
    # holds it runs the per-op chain.
    assert not fits_fused(45)
    params = types.SimpleNamespace(**dataclasses.asdict(BlurParams()))
    params.bilateral_diameter = 45
    frames = cupy.asarray(make_frames("chelsea", 2, (70, 90)))
    prob = cupy.asarray(probability(2, (16, 16)))
    blurred, mask = FusedPostprocess()(frames, prob, params)
    unfused = Postprocess(GPU, fused=False)(frames, prob, params)
    np.testing.assert_array_equal(cupy.asnumpy(mask), cupy.asnumpy(unfused[1]))
    np.testing.assert_array_equal(cupy.asnumpy(blurred), cupy.asnumpy(unfused[0]))


@gpu
def test_fused_empty_and_invalid_inputs(cupy):
    fused = FusedPostprocess()
    frames = cupy.zeros((0, 4, 5, 3), np.uint8)
    blurred, mask = fused(frames, cupy.zeros((0, 1, 2, 2), np.float16), BlurParams())
    assert blurred.shape == (0, 4, 5, 3) and mask.shape == (0, 4, 5)
    frames = cupy.zeros((2, 4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="batch sizes differ"):
        fused(frames, cupy.zeros((1, 1, 2, 2), np.float16), BlurParams())
    with pytest.raises(ValueError, match=r"\[B, 1, h, w\]"):
        fused(frames, cupy.zeros((2, 2, 2, 2), np.float16), BlurParams())
    with pytest.raises(ValueError, match="uint8"):
        fused(frames.astype(np.float32), cupy.zeros((2, 1, 2, 2), np.float16), BlurParams())
    with pytest.raises(ValueError, match="empty"):
        fused(frames, cupy.zeros((2, 1, 0, 2), np.float16), BlurParams())


@gpu
def test_postprocess_stage_takes_host_arrays_and_matches_cpu(make_frames, assert_u8_close):
    frames = make_frames("astronaut", 2)
    prob = probability(2, (256, 256))
    blurred, mask = Postprocess(GPU)(frames, prob, BlurParams())
    expected = Postprocess(CPU)(frames, prob, BlurParams())
    assert_u8_close(blurred.get(), expected[0], case="stage blurred")
    assert_u8_close(mask.get(), expected[1], case="stage mask")


@pytest.mark.parametrize("diameter", range(32))
def test_every_allowed_diameter_fits_the_fused_kernel(diameter):
    # CPU-only: BlurParams allows diameters up to 31; all of them take the fused kernel.
    assert fits_fused(diameter)
    radius = bilateral_radius(diameter)
    assert radius == (0 if diameter <= 1 else max(diameter // 2, 1))
    assert fused_shared_bytes(radius, radius > 0) <= 48 * 1024


# ---- backgrounds: halo-free blur, colour, image ------------------------------------------------

BACKGROUND_PARAMS = {
    "halo-free": BlurParams(),
    "halo-free-d0-hard": BlurParams(bilateral_diameter=0, soft_mask=False),
    "halo-free-k31": BlurParams(blur_ksize=31, blur_sigma=9.0),
    "whole-frame": BlurParams(halo_free=False),
    "color": BlurParams(background="color", background_color=(0, 177, 64)),
    "color-d31": BlurParams(background="color", bilateral_diameter=31),
}


@gpu
@pytest.mark.parametrize("name", list(BACKGROUND_PARAMS))
@pytest.mark.parametrize("dtype", [np.float16, np.float32], ids=["f16", "f32"])
def test_fused_backgrounds_match_the_chain_and_cpu(cupy, make_frames, assert_u8_close, name, dtype):
    frames = make_frames("astronaut", 2, (181, 263))
    prob = probability(2, (64, 48), dtype=dtype)
    check_all(cupy, assert_u8_close, frames, prob, BACKGROUND_PARAMS[name], name, max_diff=0)


@gpu
@pytest.mark.parametrize("image_batch", [1, 3])
@pytest.mark.parametrize("image_hw", [(120, 333), (500, 90), (181, 263)], ids=size_id)
def test_fused_image_background_matches_the_chain_and_cpu(
    cupy, make_frames, assert_u8_close, image_batch, image_hw
):
    """A replacement image (one for every frame, or one each), wider, taller and of the frame's
    own size: fused == per-op GPU chain == CPU stage, bit for bit."""
    frames = make_frames("astronaut", 3, (181, 263))
    prob = probability(3, (64, 48))
    images = make_frames("chelsea", image_batch, image_hw, seed=4)
    params = BlurParams(background="image")
    kwargs = {"blur_working_hw": (224, 224), "mask_interpolation": "nearest"}
    results = []
    for stage in (Postprocess(GPU, **kwargs), Postprocess(GPU, fused=False, **kwargs)):
        blurred, mask = stage(
            cupy.asarray(frames), cupy.asarray(prob), params, cupy.asarray(images)
        )
        results.append((cupy.asnumpy(blurred), cupy.asnumpy(mask)))
    results.append(Postprocess(CPU, **kwargs)(frames, prob, params, images))
    (fb, fm), (ub, um), (cb, cm) = results
    np.testing.assert_array_equal(fb, ub)
    np.testing.assert_array_equal(fm, um)
    assert_u8_close(fb, cb, case=f"image {image_hw} x{image_batch}", max_diff=0)
    assert_u8_close(fm, cm, case="mask", max_diff=0)


@gpu
def test_fused_foreground_share_equals_the_cpu_stage(cupy, make_frames):
    frames = make_frames("astronaut", 2, (181, 263))
    prob = probability(2, (64, 48))
    gpu_outputs = Postprocess(GPU).outputs(cupy.asarray(frames), cupy.asarray(prob), BlurParams())
    cpu_outputs = Postprocess(CPU).outputs(frames, prob, BlurParams())
    share = cupy.asnumpy(gpu_outputs.foreground_share)
    assert share.dtype == np.float32 and share.shape == (2, 1)
    np.testing.assert_array_equal(share, cpu_outputs.foreground_share)
    np.testing.assert_array_equal(
        share[:, 0], (cupy.asnumpy(gpu_outputs.mask).mean(axis=(1, 2)) / 255).astype(np.float32)
    )
