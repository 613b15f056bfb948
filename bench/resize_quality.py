"""Model-input downscale: INTER_LINEAR (what the preprocess ships) against INTER_AREA.

Figures, not tests. Does a box-filtered (``cv2.INTER_AREA``) downscale of camera frames give the
segmentation network (``selfie_general``, 256x256, the MediaPipe port) better input than the
2x2-tap bilinear one (``bgblur.ops.resize_normalize_nchw``, ``cv2.INTER_LINEAR`` conventions)?

Frames. Real photos of people that scikit-image ships (``astronaut``; ``camera``, grey, as RGB),
both 512x512: the top 288 rows (16:9, head and shoulders) upscaled with ``cv2.INTER_LANCZOS4`` to
1280x720, 1920x1080 and 3840x2160. Three variants of each frame:

* ``clean``: the upscaled photo, smooth (it has no detail finer than the 512-pixel photo);
* ``noise``: plus Gaussian sensor noise, sigma ``--noise-sigma`` grey levels (default 4) per pixel
  and channel, a fresh draw per frame (the same draw for both arms);
* ``texture+noise``: plus a real fine texture on the background, then the noise. The texture is
  scikit-image's ``brick`` photo (thin mortar lines, period ~25 px), high-passed (minus its
  Gaussian blur, sigma 6 px), mirror-tiled at the frame's own pixel scale (a camera resolves a
  wall at its own pixel pitch) and added where the reference mask of the clean frame says
  background (weight ``1 - p``, p upscaled bilinearly).

Metrics per (photo, variant, resolution, arm):

* flicker: the frame translated by ``(k, k)`` frame pixels, k = 0..``--shifts``-1
  (``cv2.warpAffine``, integer shifts, so exact; ``BORDER_REFLECT_101``): 1/15 (4K, x) to 0.36
  (720p, y) of a network pixel per step. Each probability ``[256, 256]`` is upscaled bilinearly
  to the frame and shifted back; between consecutive shifts: mean |dp| and IoU of the p > 0.5
  masks, over the frame less a border of ``shifts`` frame pixels plus 2 network pixels. Mean and
  worst over the pairs; the reference (below) gets the same figure, the floor for this network.
* agreement: against a reference, the network run on the best downscale argued for here: an
  antialiased bicubic resize (``F.interpolate(..., antialias=True)``, PIL's filter: the cubic
  kernel stretched by the downscale factor, so its support spans 4 x factor source pixels) of
  the noise-free frame, in float (no uint8 rounding). Mean |dp| and IoU at 256x256, mean over
  the shifts; and the two arms against each other.
* cost: ``cv2.resize`` to 256x256 (LINEAR vs AREA), and the whole arm (resize + normalize to
  float32 NCHW), median of ``--reps`` calls, with ``cv2.setNumThreads(1)`` and the default.

Summary per (resolution, variant): flicker pooled over photos and shift pairs, with the paired
difference ``area - linear`` and its standard error (consecutive pairs share a frame, so the error
is approximate); "significant" means beyond 2 standard errors. The ``conclusion`` is computed
from these figures.

Writes JSON (date, host, versions, command, rows, cost, conclusion) and prints tables::

    .venv/bin/python bench/resize_quality.py --out bench/results/resize-quality-cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from skimage import data

from bgblur.models.registry import SegmentationModelSpec, get_model_spec
from bgblur.ops import resize_normalize_nchw

RESOLUTIONS: dict[str, tuple[int, int]] = {
    "720p": (720, 1280),
    "1080p": (1080, 1920),
    "4k": (2160, 3840),
}
"""Frame ``(H, W)`` per name."""

VARIANTS = ("clean", "noise", "texture+noise")
ARMS = ("linear", "area")
PHOTO_ROWS = 288  # 512 x 288: 16:9
TEXTURE_HIGHPASS_SIGMA_PX = 6.0
THRESHOLD = 0.5


# --------------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------------


def load_photos() -> dict[str, np.ndarray]:
    """name -> ``[288, 512, 3]`` uint8 RGB: the top rows (16:9) of scikit-image's people photos."""
    astronaut = data.astronaut()
    camera = np.repeat(data.camera()[..., None], 3, axis=2)
    return {
        "astronaut": np.ascontiguousarray(astronaut[:PHOTO_ROWS]),
        "camera": np.ascontiguousarray(camera[:PHOTO_ROWS]),
    }


def upscale_photo(photo_hwc_u8: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8: the photo upscaled to the frame with ``cv2.INTER_LANCZOS4``."""
    h, w = frame_hw
    return cv2.resize(photo_hwc_u8, (w, h), interpolation=cv2.INTER_LANCZOS4)


def brick_texture_hw(frame_hw: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` float32 grey levels, zero mean: the high-passed ``brick`` photo, mirror-tiled
    (seamless) at one photo pixel per frame pixel."""
    brick_f32 = data.brick().astype(np.float32)
    highpass = brick_f32 - cv2.GaussianBlur(brick_f32, (0, 0), TEXTURE_HIGHPASS_SIGMA_PX)
    tile = np.block([[highpass, highpass[:, ::-1]], [highpass[::-1], highpass[::-1, ::-1]]])
    h, w = frame_hw
    reps = (math.ceil(h / tile.shape[0]), math.ceil(w / tile.shape[1]))
    return np.ascontiguousarray(np.tile(tile, reps)[:h, :w])


def add_background_texture(
    frame_hwc_u8: np.ndarray, background_weight_hw: np.ndarray, texture_hw: np.ndarray
) -> np.ndarray:
    """``[H, W, 3]`` float32: ``frame + weight * texture`` (grey texture on all channels),
    clipped to [0, 255]. ``background_weight_hw`` is ``[H, W]`` float32 in [0, 1]."""
    textured = frame_hwc_u8.astype(np.float32) + (background_weight_hw * texture_hw)[..., None]
    return np.clip(textured, 0.0, 255.0)


def shift_frame(frame_hwc: np.ndarray, shift_px: int) -> np.ndarray:
    """``frame`` moved right and down by ``shift_px`` pixels (exact), borders reflected (101).
    Same shape and dtype: ``out[y, x] = frame[y - shift_px, x - shift_px]``."""
    h, w = frame_hwc.shape[:2]
    matrix = np.float32([[1, 0, shift_px], [0, 1, shift_px]])
    return cv2.warpAffine(
        frame_hwc, matrix, (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101
    )


def add_sensor_noise(
    frame_hwc_f32: np.ndarray, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """``[H, W, 3]`` uint8: ``frame + N(0, sigma^2)`` per pixel and channel, rounded, clipped."""
    noise = rng.standard_normal(frame_hwc_f32.shape, dtype=np.float32)
    noise *= np.float32(sigma)
    noise += frame_hwc_f32
    return np.clip(np.rint(noise), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Network inputs: the two arms and the reference
# --------------------------------------------------------------------------------------------


def _scale_bias(spec: SegmentationModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """``[3, 1, 1]`` float32 ``scale`` and ``bias`` with ``x = pixel * scale + bias``, the
    constants of ``resize_normalize_nchw``'s CPU path."""
    std = np.asarray(spec.std, np.float32)
    scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
    bias = (-np.asarray(spec.mean, np.float32) / std).reshape(3, 1, 1)
    return scale, bias


def input_linear_chw(frame_hwc_u8: np.ndarray, spec: SegmentationModelSpec) -> np.ndarray:
    """``[3, h, w]`` float32 network input, as shipped: ``bgblur.ops.resize_normalize_nchw``
    (CPU path: ``cv2.INTER_LINEAR`` to uint8, then normalized)."""
    out_nchw = resize_normalize_nchw(
        frame_hwc_u8[None], spec.input_hw, spec.mean, spec.std, out_dtype=np.float32
    )
    return out_nchw[0]


def input_area_chw(frame_hwc_u8: np.ndarray, spec: SegmentationModelSpec) -> np.ndarray:
    """``[3, h, w]`` float32 network input: ``cv2.INTER_AREA`` to uint8, then the same
    normalization as ``input_linear_chw``."""
    h, w = spec.input_hw
    resized = cv2.resize(frame_hwc_u8, (w, h), interpolation=cv2.INTER_AREA)
    scale, bias = _scale_bias(spec)
    return resized.transpose(2, 0, 1).astype(np.float32) * scale + bias


def input_reference_chw(frame_hwc_f32: np.ndarray, spec: SegmentationModelSpec) -> np.ndarray:
    """``[3, h, w]`` float32 network input: an antialiased bicubic downscale (PIL's filter,
    ``F.interpolate(antialias=True)``) of the float frame, clipped to [0, 255], normalized."""
    frame_nchw = torch.from_numpy(frame_hwc_f32).permute(2, 0, 1)[None]
    resized = F.interpolate(
        frame_nchw, size=spec.input_hw, mode="bicubic", antialias=True, align_corners=False
    )
    scale, bias = _scale_bias(spec)
    return resized[0].clamp_(0.0, 255.0).numpy() * scale + bias


ARM_INPUTS: dict[str, Callable[[np.ndarray, SegmentationModelSpec], np.ndarray]] = {
    "linear": input_linear_chw,
    "area": input_area_chw,
}


def probability_nhw(net: torch.nn.Module, inputs_nchw_f32: np.ndarray) -> np.ndarray:
    """``[B, h, w]`` float32 foreground probability of ``[B, 3, h, w]`` float32 inputs."""
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(inputs_nchw_f32)))[:, 0].numpy()


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.count_nonzero(mask_a | mask_b)
    return 1.0 if union == 0 else np.count_nonzero(mask_a & mask_b) / union


def flicker(
    probability_shifts_nhw: np.ndarray, frame_hw: tuple[int, int], margin_px: int
) -> dict[str, Any]:
    """Frame-to-frame change of the mask under the frame's translation.

    Args:
        probability_shifts_nhw: ``[S, h, w]`` float32, the probability of the frame shifted by
            ``(k, k)`` pixels, k = 0..S-1.
        frame_hw: ``(H, W)`` of the frame.
        margin_px: border (frame pixels) left out of the comparison.

    Returns:
        per consecutive pair, mean |dp| and the IoU of the p > 0.5 masks, over the frame less the
        border, each mask upscaled (bilinear, float) and shifted back; their mean and worst.
    """
    h, w = frame_hw
    mads: list[float] = []
    ious: list[float] = []
    previous = None
    for shift_px, probability_hw in enumerate(probability_shifts_nhw):
        full_hw = cv2.resize(probability_hw, (w, h), interpolation=cv2.INTER_LINEAR)
        aligned_hw = full_hw[
            margin_px + shift_px : h - margin_px + shift_px,
            margin_px + shift_px : w - margin_px + shift_px,
        ]
        if previous is not None:
            mads.append(float(np.mean(np.abs(aligned_hw - previous))))
            ious.append(iou(aligned_hw > THRESHOLD, previous > THRESHOLD))
        previous = aligned_hw
    return {
        "mad_mean": statistics.fmean(mads),
        "mad_worst": max(mads),
        "iou_mean": statistics.fmean(ious),
        "iou_worst": min(ious),
        "mad_pairs": mads,
    }


def agreement(probability_a_nhw: np.ndarray, probability_b_nhw: np.ndarray) -> dict[str, float]:
    """Mean |pa - pb| and mean (over the batch) IoU of the p > 0.5 masks of two ``[B, h, w]``
    float32 probabilities, at the network resolution."""
    ious = [
        iou(a > THRESHOLD, b > THRESHOLD)
        for a, b in zip(probability_a_nhw, probability_b_nhw, strict=True)
    ]
    return {
        "mad": float(np.mean(np.abs(probability_a_nhw - probability_b_nhw))),
        "iou": statistics.fmean(ious),
    }


# --------------------------------------------------------------------------------------------
# One (photo, resolution): every variant, shift and arm
# --------------------------------------------------------------------------------------------


def variant_bases(
    frame_hwc_u8: np.ndarray, net: torch.nn.Module, spec: SegmentationModelSpec
) -> dict[str, np.ndarray]:
    """variant -> ``[H, W, 3]`` float32 noise-free frame (``noise`` shares ``clean``'s)."""
    h, w = frame_hwc_u8.shape[:2]
    clean_f32 = frame_hwc_u8.astype(np.float32)
    reference_hw = probability_nhw(net, input_reference_chw(clean_f32, spec)[None])[0]
    background_weight_hw = 1.0 - cv2.resize(reference_hw, (w, h), interpolation=cv2.INTER_LINEAR)
    textured_f32 = add_background_texture(
        frame_hwc_u8, np.clip(background_weight_hw, 0.0, 1.0), brick_texture_hw((h, w))
    )
    return {"clean": clean_f32, "noise": clean_f32, "texture+noise": textured_f32}


def measure_variant(
    base_hwc_f32: np.ndarray,
    noisy: bool,
    net: torch.nn.Module,
    spec: SegmentationModelSpec,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    """Flicker of each arm, agreement with the reference and between the arms, over the shifts."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, list[np.ndarray]] = {arm: [] for arm in (*ARMS, "reference")}
    for shift_px in range(args.shifts):
        shifted_f32 = shift_frame(base_hwc_f32, shift_px)
        if noisy:
            frame_u8 = add_sensor_noise(shifted_f32, args.noise_sigma, rng)
        else:
            frame_u8 = np.clip(np.rint(shifted_f32), 0, 255).astype(np.uint8)
        for arm, make_input in ARM_INPUTS.items():
            inputs[arm].append(make_input(frame_u8, spec))
        inputs["reference"].append(input_reference_chw(shifted_f32, spec))
    probability = {name: probability_nhw(net, np.stack(x)) for name, x in inputs.items()}
    frame_hw = base_hwc_f32.shape[:2]
    network_px = math.ceil(max(frame_hw[0] / spec.input_hw[0], frame_hw[1] / spec.input_hw[1]))
    margin_px = args.shifts + 2 * network_px
    result: dict[str, Any] = {"margin_px": margin_px}
    for arm in ARMS:
        result[arm] = {
            "flicker": flicker(probability[arm], frame_hw, margin_px),
            "vs_reference": agreement(probability[arm], probability["reference"]),
            "foreground_fraction": float(np.mean(probability[arm] > THRESHOLD)),
        }
    result["reference_flicker"] = flicker(probability["reference"], frame_hw, margin_px)
    result["linear_vs_area"] = agreement(probability["linear"], probability["area"])
    return result


def measure_photo(
    photo_hwc_u8: np.ndarray,
    photo_index: int,
    net: torch.nn.Module,
    spec: SegmentationModelSpec,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """Rows (one per variant and resolution) for one photo."""
    rows = []
    for res_index, (res_name, frame_hw) in enumerate(RESOLUTIONS.items()):
        if res_name not in args.resolutions:
            continue
        frame_hwc_u8 = upscale_photo(photo_hwc_u8, frame_hw)
        for variant_index, (variant, base_f32) in enumerate(
            variant_bases(frame_hwc_u8, net, spec).items()
        ):
            t0 = time.perf_counter()
            seed = 1000 * photo_index + 100 * res_index + variant_index
            figures = measure_variant(base_f32, variant != "clean", net, spec, args, seed)
            rows.append(
                {
                    "resolution": res_name,
                    "frame_hw": list(frame_hw),
                    "downscale_xy": [
                        round(frame_hw[1] / spec.input_hw[1], 3),
                        round(frame_hw[0] / spec.input_hw[0], 3),
                    ],
                    "variant": variant,
                    **figures,
                    "seconds": round(time.perf_counter() - t0, 2),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------


def median_ms(call: Callable[[], Any], reps: int) -> float:
    """Median wall time of ``call()`` in ms over ``reps`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_arms(frame_hwc_u8: np.ndarray, spec: SegmentationModelSpec, reps: int) -> dict[str, float]:
    """ms per ``[H, W, 3]`` uint8 frame of ``cv2.resize`` LINEAR / AREA to the network size and
    of each whole arm (resize + normalize to ``[3, h, w]`` float32), at cv2's current threads."""
    h, w = spec.input_hw
    figures = {}
    for arm, flag in (("linear", cv2.INTER_LINEAR), ("area", cv2.INTER_AREA)):
        figures[f"resize_{arm}_ms"] = median_ms(
            lambda flag=flag: cv2.resize(frame_hwc_u8, (w, h), interpolation=flag), reps
        )
        figures[f"arm_{arm}_ms"] = median_ms(
            lambda arm=arm: ARM_INPUTS[arm](frame_hwc_u8, spec), reps
        )
    return figures


def measure_cost(
    photo_hwc_u8: np.ndarray, spec: SegmentationModelSpec, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """``time_arms`` per resolution (the noisy frame of the photo), with ``cv2.setNumThreads(1)``
    and with cv2's default thread count."""
    default_threads = cv2.getNumThreads()
    rows = []
    for res_name, frame_hw in RESOLUTIONS.items():
        if res_name not in args.resolutions:
            continue
        rng = np.random.default_rng(7)
        frame_u8 = add_sensor_noise(
            upscale_photo(photo_hwc_u8, frame_hw).astype(np.float32), args.noise_sigma, rng
        )
        for threads in (1, default_threads):
            cv2.setNumThreads(threads)
            figures = time_arms(frame_u8, spec, args.reps)
            rows.append({"resolution": res_name, "cv2_threads": threads, **figures})
    cv2.setNumThreads(default_threads)
    return rows


def shipped_path_check(photo_hwc_u8: np.ndarray, spec: SegmentationModelSpec) -> dict[str, Any]:
    """How the shipped linear arm compares with plain ``cv2.resize`` INTER_LINEAR + normalize,
    and with a float (unrounded) bilinear resize, at 1080p."""
    frame_u8 = upscale_photo(photo_hwc_u8, RESOLUTIONS["1080p"])
    h, w = spec.input_hw
    scale, bias = _scale_bias(spec)
    shipped = input_linear_chw(frame_u8, spec)
    cv2_u8 = cv2.resize(frame_u8, (w, h), interpolation=cv2.INTER_LINEAR)
    cv2_f32 = cv2.resize(frame_u8.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return {
        "frame": "astronaut clean 1080p",
        "max_abs_vs_cv2_linear_u8": float(
            np.max(np.abs(shipped - (cv2_u8.transpose(2, 0, 1).astype(np.float32) * scale + bias)))
        ),
        "max_abs_vs_cv2_linear_float_grey_levels": float(
            np.max(np.abs(shipped - (cv2_f32.transpose(2, 0, 1) * scale + bias))) * 255.0
        ),
    }


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------


def paired_flicker(rows: list[dict[str, Any]], variant: str, resolution: str) -> dict[str, Any]:
    """Flicker (mean |dp|) of both arms pooled over photos and shift pairs, with the paired
    difference ``area - linear``: mean, standard error, and its ratio to linear's mean."""
    selected = [r for r in rows if r["variant"] == variant and r["resolution"] == resolution]
    linear = [v for r in selected for v in r["linear"]["flicker"]["mad_pairs"]]
    area = [v for r in selected for v in r["area"]["flicker"]["mad_pairs"]]
    diffs = [a - b for a, b in zip(area, linear, strict=True)]
    stderr = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    linear_mean = statistics.fmean(linear)
    diff_mean = statistics.fmean(diffs)
    return {
        "variant": variant,
        "resolution": resolution,
        "n_pairs": len(diffs),
        "linear_mad": linear_mean,
        "area_mad": statistics.fmean(area),
        "reference_mad": statistics.fmean(r["reference_flicker"]["mad_mean"] for r in selected),
        "diff_mean": diff_mean,
        "diff_stderr": stderr,
        "relative_change": diff_mean / linear_mean if linear_mean > 0 else 0.0,
        "significant": abs(diff_mean) > 2 * stderr,
        "linear_vs_reference_mad": statistics.fmean(
            r["linear"]["vs_reference"]["mad"] for r in selected
        ),
        "area_vs_reference_mad": statistics.fmean(
            r["area"]["vs_reference"]["mad"] for r in selected
        ),
        "linear_vs_reference_iou": statistics.fmean(
            r["linear"]["vs_reference"]["iou"] for r in selected
        ),
        "area_vs_reference_iou": statistics.fmean(
            r["area"]["vs_reference"]["iou"] for r in selected
        ),
    }


def _area_better(s: dict[str, Any]) -> bool:
    """INTER_AREA flickers less beyond 2 standard errors and agrees no worse with the reference."""
    return (
        s["significant"]
        and s["diff_mean"] < 0
        and s["area_vs_reference_mad"] <= s["linear_vs_reference_mad"]
    )


def _area_worse(s: dict[str, Any]) -> bool:
    """INTER_AREA flickers more beyond 2 standard errors."""
    return s["significant"] and s["diff_mean"] > 0


def _max_downscale(resolution: str, spec: SegmentationModelSpec) -> float:
    """The larger per-axis downscale factor from the frame to the network input."""
    frame_h, frame_w = RESOLUTIONS[resolution]
    return max(frame_h / spec.input_hw[0], frame_w / spec.input_hw[1])


def conclusion(
    summary: list[dict[str, Any]], cost: list[dict[str, Any]], spec: SegmentationModelSpec
) -> str:
    """A recommendation computed from the pooled figures (``paired_flicker`` rows, cost rows)."""
    sentences = []
    area_wins: dict[str, bool] = {}
    for resolution in dict.fromkeys(s["resolution"] for s in summary):
        selected = [s for s in summary if s["resolution"] == resolution]
        parts = []
        for s in selected:
            sign = "less" if s["diff_mean"] < 0 else "more"
            verdict = "" if s["significant"] else ", within noise"
            parts.append(
                f"{s['variant']} {abs(s['relative_change']) * 100:.0f}% {sign} flicker "
                f"(mean |dp| {s['linear_mad']:.4f} -> {s['area_mad']:.4f}{verdict}), "
                f"|dp| to reference {s['linear_vs_reference_mad']:.4f} -> "
                f"{s['area_vs_reference_mad']:.4f}"
            )
        area_wins[resolution] = all(_area_better(s) for s in selected if s["variant"] != "clean")
        area_wins[resolution] &= not any(_area_worse(s) for s in selected)
        sentences.append(f"{resolution}: INTER_LINEAR -> INTER_AREA: " + "; ".join(parts) + ".")
    for resolution in area_wins:
        single = [c for c in cost if c["resolution"] == resolution and c["cv2_threads"] == 1]
        if single:
            c = single[0]
            sentences.append(
                f"{resolution} cost (1 thread): resize {c['resize_linear_ms']:.2f} -> "
                f"{c['resize_area_ms']:.2f} ms/frame, whole arm {c['arm_linear_ms']:.2f} -> "
                f"{c['arm_area_ms']:.2f} ms/frame."
            )
    better = sum(s["significant"] and s["diff_mean"] < 0 for s in summary)
    worse = sum(_area_worse(s) for s in summary)
    closer = sum(s["area_vs_reference_mad"] < s["linear_vs_reference_mad"] for s in summary)
    sentences.append(
        f"Over the {len(summary)} (resolution, variant) cells, INTER_AREA flickers less beyond 2 "
        f"standard errors in {better}, more in {worse}, and is closer to the reference in "
        f"{closer}."
    )
    winning = [r for r, won in area_wins.items() if won]
    if winning:
        factor = min(_max_downscale(r, spec) for r in winning)
        below = [_max_downscale(r, spec) for r in area_wins if _max_downscale(r, spec) < factor]
        bracket = f"between {max(below):.1f} and {factor:.1f}" if below else f"<= {factor:.1f}"
        extra_ms = [
            c["arm_area_ms"] - c["arm_linear_ms"]
            for c in cost
            if c["resolution"] in winning and c["cv2_threads"] == 1
        ]
        extra_text = "/".join(f"{ms:.1f}" for ms in extra_ms)
        cost_text = f", at {extra_text} ms more per frame on one CPU core" if extra_ms else ""
        sentences.append(
            f"Recommendation: INTER_AREA wins (less flicker beyond 2 standard errors with noise "
            f"and texture, no worse agreement with the reference, not worse on clean frames) at "
            f"{', '.join(winning)}{cost_text}: use it when the larger per-axis downscale factor "
            f"is >= {factor:.1f} (the measured threshold lies {bracket})."
        )
    else:
        sentences.append(
            "Recommendation: keep INTER_LINEAR: INTER_AREA does not reduce flicker beyond noise "
            "on noisy and textured frames with no worse agreement at any measured resolution."
        )
    return " ".join(sentences)


def print_tables(rows: list[dict[str, Any]], cost: list[dict[str, Any]]) -> None:
    """Compact tables of the rows and the cost on stdout."""
    print(
        f"{'photo':<10}{'res':<6}{'variant':<14}"
        f"{'flick |dp| L/A/ref':>25}{'IoU mean L/A':>15}{'IoU worst L/A':>15}"
        f"{'ref |dp| L/A':>17}{'ref IoU L/A':>14}{'L-A |dp|':>9}{'L-A IoU':>8}"
    )
    for r in rows:
        lf, af = r["linear"]["flicker"], r["area"]["flicker"]
        lr, ar = r["linear"]["vs_reference"], r["area"]["vs_reference"]
        print(
            f"{r['photo']:<10}{r['resolution']:<6}{r['variant']:<14}"
            f"{lf['mad_mean']:>9.4f}/{af['mad_mean']:.4f}/{r['reference_flicker']['mad_mean']:.4f}"
            f"{lf['iou_mean']:>8.4f}/{af['iou_mean']:.4f}"
            f"{lf['iou_worst']:>8.4f}/{af['iou_worst']:.4f}"
            f"{lr['mad']:>10.4f}/{ar['mad']:.4f}"
            f"{lr['iou']:>7.4f}/{ar['iou']:.4f}"
            f"{r['linear_vs_area']['mad']:>9.4f}{r['linear_vs_area']['iou']:>8.4f}"
        )
    print()
    print(
        f"{'res':<6}{'threads':>8}{'resize L ms':>13}{'resize A ms':>13}"
        f"{'arm L ms':>10}{'arm A ms':>10}"
    )
    for c in cost:
        print(
            f"{c['resolution']:<6}{c['cv2_threads']:>8}{c['resize_linear_ms']:>13.3f}"
            f"{c['resize_area_ms']:>13.3f}{c['arm_linear_ms']:>10.3f}{c['arm_area_ms']:>10.3f}"
        )


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--model", default="selfie_general")
    parser.add_argument("--shifts", type=int, default=16, help="shifts (k, k), k = 0..shifts-1")
    parser.add_argument("--noise-sigma", type=float, default=4.0, help="grey levels")
    parser.add_argument("--reps", type=int, default=25, help="timed calls per cost figure")
    parser.add_argument(
        "--resolutions", default=",".join(RESOLUTIONS), help="comma-separated subset"
    )
    args = parser.parse_args(argv)
    args.resolutions = args.resolutions.split(",")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    spec = get_model_spec(args.model)
    default_cache = Path(__file__).resolve().parents[1] / ".cache" / "bgblur"  # the Makefile's
    cache_dir = Path(os.environ.get("BGBLUR_CACHE", default_cache))
    net = spec.build(cache_dir).eval().float()
    photos = load_photos()
    rows = []
    for photo_index, (photo_name, photo_hwc_u8) in enumerate(photos.items()):
        for row in measure_photo(photo_hwc_u8, photo_index, net, spec, args):
            rows.append({"photo": photo_name, **row})
            print(f"# {photo_name} {row['resolution']} {row['variant']}: {row['seconds']} s")
    cost = measure_cost(photos["astronaut"], spec, args)
    summary = [
        paired_flicker(rows, variant, resolution)
        for resolution in args.resolutions
        for variant in VARIANTS
    ]
    text = conclusion(summary, cost, spec)
    print_tables(rows, cost)
    print()
    print(text)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "torch": torch.__version__,
        },
        "model": {"name": spec.name, "input_hw": list(spec.input_hw), "weights": spec.weights},
        "settings": {
            "shifts_px": list(range(args.shifts)),
            "noise_sigma_grey_levels": args.noise_sigma,
            "texture": f"skimage brick, high-passed (sigma {TEXTURE_HIGHPASS_SIGMA_PX} px), "
            "mirror-tiled at frame pixel scale, added on the background",
            "photos": {name: "top 288 rows of the 512x512 photo" for name in photos},
            "upscale": "cv2.INTER_LANCZOS4",
            "reference": "network on F.interpolate(bicubic, antialias=True) of the noise-free "
            "float frame",
            "torch_threads": torch.get_num_threads(),
        },
        "shipped_path_check": shipped_path_check(photos["astronaut"], spec),
        "rows": rows,
        "summary": summary,
        "cost": cost,
        "conclusion": text,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
