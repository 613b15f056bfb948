"""Temporal smoothing on streams: flicker on a still scene, lag on a moving one, on and off.

Figures, not tests. Runs the network (``--model``, default ``selfie_general``, CPU) and
``bgblur.stages.temporal.TemporalSmoother`` (the ``temporal_smoothing`` step of
``background_blur_stream``, fed the frames' network input as the ensemble feeds it) in this
process, three ways: off (strength 0), the probability gate alone (``gate: probability``: the
step without the network input, as it was before the motion-aware gate) and the motion-aware gate
(``gate: motion``, the served default), at ``--strength`` and the gates' defaults (or
``--still-grey``, ``--moving-grey``), on two clips made from real photos:

- ``still``: scikit-image's astronaut (512x512) for ``--frames`` frames, each with its own
  Gaussian sensor noise (sigma ``--noise`` grey levels): the scene does not move, so every change
  of the mask is flicker. Figures: mean ``|m_t - m_(t-1)|`` of the probability (x 255, grey
  levels) and the share of pixels whose foreground/background decision (p >= 0.5) flips per
  frame, over the whole frame.
- ``moving``: the astronaut cut out with an exact alpha (the network's own mask of the still
  photo, thresholded: the truth of this clip by construction) moving ``--step`` px a frame to the
  right over a real background (scikit-image's ``coffee``, resized), composited as
  ``alpha x person + (1 - alpha) x background``. Figure: the IoU per frame of the decision
  (probability upscaled bilinearly to the frame, >= 0.5) with the moved alpha: its mean and
  minimum, smoothing on and off; the difference is the lag the smoothing costs.

``--clip PATH`` (repeatable) adds the ``real`` scenario: a real camera clip, decoded with PyAV
(all its frames, or the first ``--clip-frames``), through the same network and smoothing, on
and off. Figures, on the network's probability (``[h, w]`` of the model input), for each pair of
consecutive frames, then averaged: mean ``|m_t - m_(t-1)|`` (x 255, grey levels) and the share of
pixels whose decision flips, over the whole frame and over the edge band: the pixels within
``--band`` px (network resolution) of the edge of the unsmoothed decision of ``t - 1`` or ``t``
(the same pixels with smoothing on and off), where flicker is visible. On a real clip part of
each change is the person's own motion, which smoothing must let through: these figures bound the
flicker from above, and their drop is the flicker removed plus any motion lagged. The
motion-compensated change ``|m_t - warp(m_(t-1))|`` (x 255; the previous mask moved by the
Farneback optical flow of the frames) leaves most of that motion out. Clips, their sources and
licences: ``bench/data/clips/README.md``::

    .venv/bin/python bench/temporal_quality.py --clip bench/data/clips/carphone.mp4 \\
        --clip bench/data/clips/foreman.mp4 --clip bench/data/clips/tears_of_steel_bridge.mp4 \\
        --out bench/results/temporal-cpu-$(date +%F)-clips.json

Writes JSON and prints a table::

    .venv/bin/python bench/temporal_quality.py --out bench/results/temporal-cpu-$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from quality import probability_of  # noqa: E402

from bgblur.device import Device  # noqa: E402
from bgblur.models.registry import DEFAULT_MODEL  # noqa: E402
from bgblur.ops.temporal import MOVING_GREY, STILL_GREY  # noqa: E402
from bgblur.parameters import DEFAULT_TEMPORAL_SMOOTHING  # noqa: E402
from bgblur.pipeline import BackgroundBlurPipeline  # noqa: E402
from bgblur.stages.temporal import TemporalSmoother  # noqa: E402

# (strength or None for --strength, gate): the rows of every scenario; the first is the baseline.
GATES = ((0.0, "off"), (None, "probability"), (None, "motion"))


def network_pass(
    pipeline: BackgroundBlurPipeline, frames: list[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``([1, 1, h, w] float32 probabilities, [1, 3, h, w] float16 network inputs)`` of each
    host frame (CPU, NumPy)."""
    probabilities, inputs = [], []
    for frame in frames:
        network_input, _ = pipeline.preprocess.with_device_frames(frame[None])
        probability = pipeline.runtime(network_input)
        probability = probability.cpu() if hasattr(probability, "cpu") else probability
        probabilities.append(np.asarray(probability).astype(np.float32))
        inputs.append(np.asarray(network_input))
    return probabilities, inputs


def still_clip(frames: int, noise: float, seed: int = 0) -> list[np.ndarray]:
    from skimage import data

    photo = data.astronaut().astype(np.float32)
    rng = np.random.default_rng(seed)
    return [
        np.clip(photo + rng.normal(0.0, noise, photo.shape), 0, 255).astype(np.uint8)
        for _ in range(frames)
    ]


def moving_clip(
    pipeline: BackgroundBlurPipeline, frames: int, step: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(frames, truth masks)``: the cut-out astronaut moving over a real background."""
    from skimage import data

    person = data.astronaut()
    h, w = person.shape[:2]
    probability = probability_of(pipeline, person)[0, 0].astype(np.float32)
    alpha = cv2.resize(probability, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
    background = cv2.resize(data.coffee(), (w, h), interpolation=cv2.INTER_AREA)
    clip, truth = [], []
    for t in range(frames):
        shift = np.float32([[1, 0, t * step], [0, 1, 0]])
        moved = cv2.warpAffine(person, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)
        moved_alpha = cv2.warpAffine(alpha.astype(np.uint8), shift, (w, h)) > 0
        a = moved_alpha[..., None].astype(np.float32)
        clip.append((a * moved + (1 - a) * background).astype(np.uint8))
        truth.append(moved_alpha)
    return clip, truth


def smoothed(
    probabilities: list[np.ndarray],
    strength: float,
    network_inputs: list[np.ndarray] | None = None,
    **smoother_options: Any,
) -> list[np.ndarray]:
    """The stream's probabilities through the temporal step, one frame per request; with the
    frames' network inputs, the motion-aware gate (``smoother_options``: TemporalSmoother's)."""
    smoother = TemporalSmoother(Device("cpu"), **smoother_options)
    out = []
    for t, p in enumerate(probabilities):
        last = t == len(probabilities) - 1
        x = None if network_inputs is None else network_inputs[t]
        s = smoother("clip", p, start=t == 0, end=last, strength=strength, network_input_n3hw=x)
        out.append(s[0, 0])
    return out


def smoothed_by_gate(
    probabilities: list[np.ndarray],
    network_inputs: list[np.ndarray],
    strength: float,
    gate: str,
    smoother_options: dict[str, Any],
) -> list[np.ndarray]:
    """``smoothed`` for one of ``GATES``: ``motion`` feeds the network inputs, the others not."""
    if gate == "motion":
        return smoothed(probabilities, strength, network_inputs, **smoother_options)
    return smoothed(probabilities, strength, **smoother_options)


def flicker(masks: list[np.ndarray]) -> dict[str, float]:
    diffs = [np.abs(b - a).mean() * 255 for a, b in itertools.pairwise(masks)]
    flips = [((a >= 0.5) != (b >= 0.5)).mean() * 100 for a, b in itertools.pairwise(masks)]
    return {"mean_abs_change_grey": float(np.mean(diffs)), "flip_percent": float(np.mean(flips))}


def decode_clip(path: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    """``(frames, fps)`` of a video file: ``[H, W, 3]`` uint8 RGB host frames, decode order."""
    import av

    frames: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        for frame in container.decode(stream):
            if max_frames is not None and len(frames) == max_frames:
                break
            frames.append(frame.to_ndarray(format="rgb24"))
    return frames, fps


def edge_bands(probabilities: list[np.ndarray], band_px: int) -> list[np.ndarray]:
    """``[h, w]`` bool band of each pair ``(t - 1, t)``: within ``band_px`` of either edge.

    The edge is that of the decision (p >= 0.5) of the given (unsmoothed) probabilities; one band
    per consecutive pair, ``len(probabilities) - 1`` in all.
    """
    size = 2 * band_px + 1
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    edges = []
    for p in probabilities:
        decided = (p >= 0.5).astype(np.uint8)
        edges.append(cv2.dilate(decided, kernel) != cv2.erode(decided, kernel))
    return [a | b for a, b in itertools.pairwise(edges)]


def backward_flows(frames: list[np.ndarray], hw: tuple[int, int]) -> list[np.ndarray]:
    """``[h, w]`` float32 sampling maps ``(map_x, map_y)`` of each pair ``(t - 1, t)``.

    Farneback optical flow from frame ``t`` to ``t - 1`` of the RGB frames resized (area) to the
    probability's ``hw``: ``cv2.remap(m_(t-1), map_x, map_y)`` is the previous mask moved along
    the scene's motion to frame ``t``.
    """
    h, w = hw
    grey = [
        cv2.cvtColor(cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        for f in frames
    ]
    grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    maps = []
    for before, after in itertools.pairwise(grey):
        flow = cv2.calcOpticalFlowFarneback(after, before, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        maps.append(np.stack([grid_x + flow[..., 0], grid_y + flow[..., 1]]))
    return maps


def clip_flicker(
    masks: list[np.ndarray], bands: list[np.ndarray], maps: list[np.ndarray]
) -> dict[str, Any]:
    """Flicker of ``[h, w]`` float probabilities over the frame and over each pair's edge band.

    Means over the consecutive pairs: ``|m_t - m_(t-1)|`` x 255 (grey levels), the percent of
    pixels whose decision (p >= 0.5) flips, and the motion-compensated change
    ``|m_t - warp(m_(t-1))|`` x 255 (previous mask moved by the pair's optical flow ``maps``: the
    change the scene's motion does not explain); the per-pair series of the whole frame too.
    """
    diffs, flips, band_diffs, band_flips, warped_diffs, band_warped = [], [], [], [], [], []
    for (a, b), band, (map_x, map_y) in zip(itertools.pairwise(masks), bands, maps, strict=True):
        change = np.abs(b - a) * 255
        flipped = (a >= 0.5) != (b >= 0.5)
        moved = cv2.remap(a, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        residual = np.abs(b - moved) * 255
        diffs.append(float(change.mean()))
        flips.append(float(flipped.mean() * 100))
        warped_diffs.append(float(residual.mean()))
        if band.any():
            band_diffs.append(float(change[band].mean()))
            band_flips.append(float(flipped[band].mean() * 100))
            band_warped.append(float(residual[band].mean()))

    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else 0.0

    return {
        "mean_abs_change_grey": mean(diffs),
        "flip_percent": mean(flips),
        "edge_mean_abs_change_grey": mean(band_diffs),
        "edge_flip_percent": mean(band_flips),
        "warped_abs_change_grey": mean(warped_diffs),
        "edge_warped_abs_change_grey": mean(band_warped),
        "mean_abs_change_grey_per_frame": diffs,
        "flip_percent_per_frame": flips,
        "warped_abs_change_grey_per_frame": warped_diffs,
    }


def real_clip(
    pipeline: BackgroundBlurPipeline,
    path: Path,
    gates: tuple[tuple[float, str], ...],
    band_px: int,
    max_frames: int | None,
    smoother_options: dict[str, Any],
) -> dict[str, Any]:
    """Flicker of one real clip, one row per ``(strength, gate)`` (the first: the baseline)."""
    frames, fps = decode_clip(path, max_frames)
    if len(frames) < 2:
        raise SystemExit(f"{path}: {len(frames)} frame(s) decoded, need at least 2")
    probabilities, network_inputs = network_pass(pipeline, frames)
    raw = [p[0, 0] for p in probabilities]
    bands = edge_bands(raw, band_px)
    maps = backward_flows(frames, raw[0].shape)
    rows = [
        {
            "temporal_smoothing": strength,
            "gate": gate,
            **clip_flicker(
                smoothed_by_gate(probabilities, network_inputs, strength, gate, smoother_options),
                bands,
                maps,
            ),
        }
        for strength, gate in gates
    ]
    off = rows[0]
    for row in rows:
        for key in (
            "mean_abs_change_grey",
            "edge_mean_abs_change_grey",
            "warped_abs_change_grey",
            "edge_warped_abs_change_grey",
        ):
            row[f"{key}_reduction_percent"] = (
                float((1 - row[key] / off[key]) * 100) if off[key] else 0.0
            )
    h, w = frames[0].shape[:2]
    return {
        "clip": str(path),
        "frames": len(frames),
        "frame_hw": [h, w],
        "fps": fps,
        "probability_hw": list(raw[0].shape),
        "band_px": band_px,
        "edge_band_percent": float(np.mean([b.mean() * 100 for b in bands])),
        "rows": rows,
    }


def ious(masks: list[np.ndarray], truth: list[np.ndarray]) -> list[float]:
    out = []
    for m, t in zip(masks, truth, strict=True):
        decided = cv2.resize(m, t.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
        union = np.logical_or(decided, t).sum()
        out.append(float(np.logical_and(decided, t).sum() / union) if union else 1.0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--noise", type=float, default=4.0, help="sensor noise sigma, grey")
    parser.add_argument("--step", type=int, default=4, help="px a frame of the moving clip")
    parser.add_argument("--strength", type=float, default=DEFAULT_TEMPORAL_SMOOTHING)
    parser.add_argument(
        "--clip", type=Path, action="append", default=[], help="real clip (repeatable)"
    )
    parser.add_argument("--clip-frames", type=int, help="first frames of each clip (all)")
    parser.add_argument("--band", type=int, default=4, help="edge band half-width, network px")
    parser.add_argument(
        "--still-grey", type=float, default=STILL_GREY, help="motion gate: still below, grey"
    )
    parser.add_argument(
        "--moving-grey", type=float, default=MOVING_GREY, help="motion gate: moving above, grey"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    pipeline = BackgroundBlurPipeline(args.model, Device("cpu"))
    smoother_options = {
        "still_grey": args.still_grey,
        "moving_grey": args.moving_grey,
        "input_mean": pipeline.spec.mean,
        "input_std": pipeline.spec.std,
    }
    gates = tuple((args.strength if s is None else s, gate) for s, gate in GATES)
    still, still_inputs = network_pass(pipeline, still_clip(args.frames, args.noise))
    clip, truth = moving_clip(pipeline, args.frames, args.step)
    moving, moving_inputs = network_pass(pipeline, clip)
    rows: list[dict[str, Any]] = []
    for strength, gate in gates:
        still_masks = smoothed_by_gate(still, still_inputs, strength, gate, smoother_options)
        moving_masks = smoothed_by_gate(moving, moving_inputs, strength, gate, smoother_options)
        moving_iou = ious(moving_masks, truth)
        rows.append(
            {
                "temporal_smoothing": strength,
                "gate": gate,
                "still": flicker(still_masks),
                "moving_iou_mean": float(np.mean(moving_iou)),
                "moving_iou_min": float(np.min(moving_iou)),
                "moving_iou": moving_iou,
            }
        )
    print(
        f"{args.model}, {args.frames} frames; still: noise sigma {args.noise}; moving: "
        f"{args.step} px/frame"
    )
    print(
        f"{'smoothing':>10}{'gate':>12}{'|dm| grey':>11}{'flips %':>9}{'IoU mean':>10}"
        f"{'IoU min':>9}"
    )
    for row in rows:
        print(
            f"{row['temporal_smoothing']:>10.2f}{row['gate']:>12}"
            f"{row['still']['mean_abs_change_grey']:>11.3f}"
            f"{row['still']['flip_percent']:>9.3f}{row['moving_iou_mean']:>10.4f}"
            f"{row['moving_iou_min']:>9.4f}"
        )
    clips = [
        real_clip(pipeline, path, gates, args.band, args.clip_frames, smoother_options)
        for path in args.clip
    ]
    if clips:
        print(f"real clips: edge band {args.band} px of the {clips[0]['probability_hw']} mask")
        print(
            f"{'clip':>22}{'frames':>7}{'smoothing':>10}{'gate':>12}{'|dm| grey':>10}"
            f"{'flips %':>8}"
            f"{'edge |dm|':>10}{'edge flip%':>11}{'warped':>8}{'edge warped':>12}"
            f"{'|dm| -%':>8}{'edge -%':>8}{'warped -%':>10}"
        )
    for clip in clips:
        for row in clip["rows"]:
            print(
                f"{Path(clip['clip']).stem:>22}{clip['frames']:>7}"
                f"{row['temporal_smoothing']:>10.2f}{row['gate']:>12}"
                f"{row['mean_abs_change_grey']:>10.3f}"
                f"{row['flip_percent']:>8.3f}{row['edge_mean_abs_change_grey']:>10.3f}"
                f"{row['edge_flip_percent']:>11.3f}{row['warped_abs_change_grey']:>8.3f}"
                f"{row['edge_warped_abs_change_grey']:>12.3f}"
                f"{row['mean_abs_change_grey_reduction_percent']:>8.1f}"
                f"{row['edge_mean_abs_change_grey_reduction_percent']:>8.1f}"
                f"{row['warped_abs_change_grey_reduction_percent']:>10.1f}"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "date": datetime.date.today().isoformat(),
            "host": platform.node(),
            "device": "cpu",
            "model": args.model,
            "command": " ".join(
                ["bench/temporal_quality.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "frames": args.frames,
            "noise_sigma": args.noise,
            "step_px": args.step,
            "still_grey": args.still_grey,
            "moving_grey": args.moving_grey,
            "rows": rows,
        }
        if clips:
            result["band_px"] = args.band
            result["clips"] = clips
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
