"""Temporal smoothing on streams: flicker on a still scene, lag on a moving one, on and off.

Figures, not tests. Runs the network (``--model``, default ``selfie_general``, CPU) and
``bgblur.stages.temporal.TemporalSmoother`` (the ``temporal_smoothing`` step of
``background_blur_stream``) in this process, on two clips made from real photos:

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
from bgblur.parameters import DEFAULT_TEMPORAL_SMOOTHING  # noqa: E402
from bgblur.pipeline import BackgroundBlurPipeline  # noqa: E402
from bgblur.stages.temporal import TemporalSmoother  # noqa: E402


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


def smoothed(probabilities: list[np.ndarray], strength: float) -> list[np.ndarray]:
    """The stream's probabilities through the temporal step, one frame per request."""
    smoother = TemporalSmoother(Device("cpu"))
    out = []
    for t, p in enumerate(probabilities):
        last = t == len(probabilities) - 1
        s = smoother("clip", p, start=t == 0, end=last, strength=strength)
        out.append(s[0, 0])
    return out


def flicker(masks: list[np.ndarray]) -> dict[str, float]:
    diffs = [np.abs(b - a).mean() * 255 for a, b in itertools.pairwise(masks)]
    flips = [((a >= 0.5) != (b >= 0.5)).mean() * 100 for a, b in itertools.pairwise(masks)]
    return {"mean_abs_change_grey": float(np.mean(diffs)), "flip_percent": float(np.mean(flips))}


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
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    pipeline = BackgroundBlurPipeline(args.model, Device("cpu"))
    still = [
        probability_of(pipeline, f).astype(np.float32) for f in still_clip(args.frames, args.noise)
    ]
    clip, truth = moving_clip(pipeline, args.frames, args.step)
    moving = [probability_of(pipeline, f).astype(np.float32) for f in clip]
    rows: list[dict[str, Any]] = []
    for strength in (0.0, args.strength):
        still_masks = smoothed(still, strength)
        moving_iou = ious(smoothed(moving, strength), truth)
        rows.append(
            {
                "temporal_smoothing": strength,
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
    print(f"{'smoothing':>10}{'|dm| grey':>11}{'flips %':>9}{'IoU mean':>10}{'IoU min':>9}")
    for row in rows:
        print(
            f"{row['temporal_smoothing']:>10.2f}{row['still']['mean_abs_change_grey']:>11.3f}"
            f"{row['still']['flip_percent']:>9.3f}{row['moving_iou_mean']:>10.4f}"
            f"{row['moving_iou_min']:>9.4f}"
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
            "rows": rows,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
