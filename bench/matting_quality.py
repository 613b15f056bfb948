"""Matting error of the service's masks against an exact alpha: MAD, MSE, Grad, Conn, dtSSD.

Figures, not tests. Runs the networks (``--models``, CPU) and the service's own postprocess
(``bgblur.stages.postprocess.Postprocess``, CPU) in this process, optionally after the
``temporal_smoothing`` step (``bgblur.stages.temporal.TemporalSmoother``), on clips whose alpha is
known exactly.

Material. No public portrait with a ground-truth alpha under a licence this project can ship was
found (``bench/data/matting/README.md``), so the foreground is scikit-image's ``astronaut`` (a
public-domain NASA photo) with an alpha built without the networks under test
(``bench/data/matting/astronaut_alpha.png``: seeded GrabCut and a guided-filter edge, made by
``make_astronaut_alpha.py`` there). Both are scaled (``cv2.INTER_AREA``) to 288x288, stood on
the bottom edge and moved ``--step`` px a frame to the right, from x = 40, over a real photo
(scikit-image's ``coffee``: a cup and saucer whose warm colours touch the person once she moves
over them; ``rocket``: a launch pad; cover-fitted to the frame with ``cv2.INTER_AREA``),
``--frames`` frames a clip, in two layouts (``--layouts``): ``wide``, 512x288 (16:9, the size of
Robust Video Matting's low-resolution VideoMatte benchmark), and ``square``, 448x448
(selfie_general's own aspect). Every frame is the exact composite
``I = alpha x F + (1 - alpha) x B`` (float, rounded to uint8) and its truth is that ``alpha``
(8-bit, as the PNG), moved by whole pixels: nothing is estimated. The network sees the frame as
the service's preprocess makes it (resized to its input without keeping the aspect;
``--resize-interpolation``, default ``auto``: bilinear on the CPU, area on the GPU).

Predicted alpha (8-bit, / 255), per frame:

- ``upscaled``: the network's probability as the service turns it into a mask before refinement:
  ``probability_to_mask`` (x 255, rounded) then ``upscale_mask`` to the frame size with the
  postprocess's interpolation (nearest, as CV-CUDA's sample);
- ``refined``: the service's MASK output, after the joint bilateral refinement (default
  ``BlurParams``).

Each with ``temporal_smoothing`` 0 (off) and the service's default strength, one frame per request
as a stream (``smoothed`` of ``bench/temporal_quality.py``).

Metrics: the definitions and scaling of Robust Video Matting's evaluation (Lin et al., "Robust
High-Resolution Video Matting with Temporal Guidance", WACV 2022; ``evaluation/evaluate_lr.py``
of github.com/PeterL1n/RobustVideoMatting), reimplemented here from those definitions, on alphas
in [0, 1]:

- MAD = mean ``|p - g|`` x 1e3; MSE = mean ``(p - g)^2`` x 1e3;
- Grad = sum ``(|grad G * g'| - |grad G * p'|)^2`` / 1e3, where ``p'``, ``g'`` are min-max
  normalised to [0, 1] and ``grad G`` the first derivative of a Gaussian (sigma 1.4, support
  cut where its density falls below 1e-2, unit L2 norm; ``cv2.filter2D``, BORDER_REPLICATE);
- Conn = sum ``|phi(g) - phi(p)|`` / 1e3 (Rhemann et al. 2009): over thresholds
  ``t = 0.1, ..., 1.0``, a pixel's level ``l`` is ``t - 0.1`` for the first ``t`` at which it is
  outside the largest 4-connected component of ``(g >= t) & (p >= t)`` (1 if never),
  ``d = alpha - l`` and ``phi = 1 - d x [d >= 0.15]``;
- dtSSD = sqrt(sum ``((p_t - p_(t-1)) - (g_t - g_(t-1)))^2`` / pixels) x 1e2, per consecutive
  pair.

A clip's figure is the mean over its frames (dtSSD: over its ``frames - 1`` pairs; RVM's sheet
also averages a 0 for the first frame, i.e. ``(frames - 1) / frames`` of this). Reference rows, the
same metrics for masks made from the truth itself: ``truth >= 0.5`` (a perfect hard
segmentation: the part of the error that is not matting but the lack of soft edges) and the
truth area-downscaled to the network's input size then upscaled as ``upscaled`` (a perfect
network at its own resolution). Networks without their pretrained weights here (``fcn_resnet101``
unless its torchvision file is found) are listed as skipped, not measured: random weights give
meaningless masks. Writes JSON and prints a table::

    .venv/bin/python bench/matting_quality.py --out bench/results/matting-cpu-$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from quality import probability_of  # noqa: E402
from temporal_quality import smoothed  # noqa: E402

from bgblur.device import Device  # noqa: E402
from bgblur.models.registry import get_model_spec  # noqa: E402
from bgblur.ops import probability_to_mask, upscale_mask  # noqa: E402
from bgblur.parameters import DEFAULT_TEMPORAL_SMOOTHING, BlurParams  # noqa: E402
from bgblur.pipeline import BackgroundBlurPipeline  # noqa: E402
from bgblur.stages.postprocess import Postprocess  # noqa: E402
from bgblur.stages.preprocess import STAGE_INTERPOLATIONS, resolve_interpolation  # noqa: E402

ALPHA_PNG = REPO / "bench" / "data" / "matting" / "astronaut_alpha.png"
# layout -> frame (h, w): 16:9 (Robust Video Matting's low-resolution size) and square (the
# selfie_general network's own aspect). The person is PERSON_SIZE px square, on the bottom edge,
# from x = START_X.
LAYOUTS = {"wide": (288, 512), "square": (448, 448)}
PERSON_SIZE = 288
START_X = 40
BACKGROUNDS = ("coffee", "rocket")
DEFAULT_MODELS = ("selfie_general", "selfie_landscape", "fcn_resnet101")
METRICS = ("mad", "mse", "grad", "conn", "dtssd")
MATERIAL = {
    "foreground": "scikit-image data.astronaut() (NASA photo, public domain), 512x512 -> 288x288",
    "alpha": "bench/data/matting/astronaut_alpha.png: seeded GrabCut + guided-filter edge "
    "(make_astronaut_alpha.py), built without the networks under test; exact for these "
    "composites by construction, not the photo's own matte",
    "fallback": True,
    "why_fallback": "no public portrait with a ground-truth alpha under a licence compatible "
    "with Apache-2.0 was found (PPM-100 mattes: CC BY-NC-SA 4.0; P3M-10k, AIM-500: release "
    "agreements; the P3M repository's sample mattes are network outputs; alphamatting.com and "
    "pymatting's samples are not people); see bench/data/matting/README.md",
    "backgrounds": "scikit-image data.coffee(), data.rocket(), cover-fitted to the frame",
}


# --- metrics (Robust Video Matting's definitions and scaling) ---------------------------------


def mad(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean absolute difference x 1e3 of two ``[H, W]`` float alphas in [0, 1]."""
    return float(np.abs(pred - true).mean() * 1e3)


def mse(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean squared error x 1e3 of two ``[H, W]`` float alphas in [0, 1]."""
    return float(((pred - true) ** 2).mean() * 1e3)


def gaussian_derivative_filters(
    sigma: float = 1.4, epsilon: float = 1e-2
) -> tuple[np.ndarray, np.ndarray]:
    """``(d/dx, d/dy)`` ``[k, k]`` float64 kernels: a Gaussian times its derivative, cut where
    the Gaussian's density falls below ``epsilon``, scaled to unit L2 norm."""
    half = int(np.ceil(sigma * np.sqrt(-2.0 * np.log(np.sqrt(2.0 * np.pi) * sigma * epsilon))))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    gauss = np.exp(-(offsets**2) / (2.0 * sigma**2)) / (sigma * np.sqrt(2.0 * np.pi))
    dgauss = -offsets * gauss / sigma**2
    d_dx = np.outer(gauss, dgauss)  # rows: Gaussian, columns: its derivative
    d_dx /= np.sqrt((d_dx**2).sum())
    return d_dx, d_dx.T.copy()


_GRAD_FILTERS = gaussian_derivative_filters()


def _gradient_magnitude(alpha: np.ndarray) -> np.ndarray:
    low, high = float(alpha.min()), float(alpha.max())
    normed = (alpha - low) / (high - low) if high > low else np.zeros_like(alpha)
    normed = normed.astype(np.float32)
    gx = cv2.filter2D(normed, -1, _GRAD_FILTERS[0], borderType=cv2.BORDER_REPLICATE)
    gy = cv2.filter2D(normed, -1, _GRAD_FILTERS[1], borderType=cv2.BORDER_REPLICATE)
    return np.sqrt(gx**2 + gy**2)


def grad(pred: np.ndarray, true: np.ndarray) -> float:
    """Gradient error / 1e3 of two ``[H, W]`` float alphas in [0, 1] (each min-max normalised)."""
    diff = _gradient_magnitude(true).astype(np.float64) - _gradient_magnitude(pred)
    return float((diff**2).sum() / 1e3)


def conn(pred: np.ndarray, true: np.ndarray, step: float = 0.1) -> float:
    """Connectivity error / 1e3 of two ``[H, W]`` float alphas in [0, 1]."""
    thresholds = np.arange(0.0, 1.0 + step, step)
    level = np.full(true.shape, -1.0)
    for previous, threshold in itertools.pairwise(thresholds):
        both = ((true >= threshold) & (pred >= threshold)).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(both, connectivity=4)
        largest = np.zeros(true.shape, bool)
        if count > 1:
            largest = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        level[(level == -1) & ~largest] = previous
    level[level == -1] = 1.0
    true_d, pred_d = true - level, pred - level
    true_phi = 1.0 - true_d * (true_d >= 0.15)
    pred_phi = 1.0 - pred_d * (pred_d >= 0.15)
    return float(np.abs(true_phi - pred_phi).sum() / 1e3)


def dtssd(
    pred_t: np.ndarray, pred_tm1: np.ndarray, true_t: np.ndarray, true_tm1: np.ndarray
) -> float:
    """Temporal coherence error x 1e2 of frame ``t`` against ``t - 1`` (``[H, W]`` float alphas)."""
    diff = (pred_t - pred_tm1) - (true_t - true_tm1)
    return float(np.sqrt((diff**2).sum() / true_t.size) * 1e2)


def clip_metrics(preds: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """Means over a clip's frames of MAD, MSE, Grad, Conn and over its pairs of dtSSD."""
    out = {
        name: float(np.mean([fn(p, t) for p, t in zip(preds, truths, strict=True)]))
        for name, fn in (("mad", mad), ("mse", mse), ("grad", grad), ("conn", conn))
    }
    pairs = range(1, len(preds))
    out["dtssd"] = float(
        np.mean([dtssd(preds[t], preds[t - 1], truths[t], truths[t - 1]) for t in pairs])
    )
    return out


# --- material ---------------------------------------------------------------------------------


def cover_fit(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``image`` scaled (INTER_AREA) to cover ``hw`` and centre-cropped to it."""
    h, w = hw
    scale = max(h / image.shape[0], w / image.shape[1])
    size = (max(w, round(image.shape[1] * scale)), max(h, round(image.shape[0] * scale)))
    scaled = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    top, left = (scaled.shape[0] - h) // 2, (scaled.shape[1] - w) // 2
    return np.ascontiguousarray(scaled[top : top + h, left : left + w])


def moving_clip(
    background: str, frames: int, step: int, frame_hw: tuple[int, int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(frames [H, W, 3] uint8 RGB, truths [H, W] float32 in [0, 1])``, ``(H, W) = frame_hw``:
    the astronaut with its exact alpha moving ``step`` px a frame to the right over
    ``skimage.data.<background>``."""
    from skimage import data

    alpha_u8 = cv2.imread(str(ALPHA_PNG), cv2.IMREAD_GRAYSCALE)
    if alpha_u8 is None:
        raise FileNotFoundError(f"{ALPHA_PNG} is missing (make_astronaut_alpha.py builds it)")
    size = (PERSON_SIZE, PERSON_SIZE)
    person = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_AREA).astype(np.float32)
    person_alpha_u8 = cv2.resize(alpha_u8, size, interpolation=cv2.INTER_AREA)
    back = cover_fit(getattr(data, background)(), frame_hw).astype(np.float32)
    h, w = frame_hw
    if START_X + step * (frames - 1) + PERSON_SIZE > w:
        raise ValueError(f"{frames} frames of {step} px leave the {w}x{h} frame")
    clip, truths = [], []
    for t in range(frames):
        x = START_X + step * t
        alpha_u8_t = np.zeros(frame_hw, np.uint8)
        alpha_u8_t[h - PERSON_SIZE :, x : x + PERSON_SIZE] = person_alpha_u8
        foreground = np.zeros((h, w, 3), np.float32)
        foreground[h - PERSON_SIZE :, x : x + PERSON_SIZE] = person
        alpha = alpha_u8_t.astype(np.float32)[..., None] / 255.0
        frame = alpha * foreground + (1.0 - alpha) * back
        clip.append(np.clip(np.rint(frame), 0, 255).astype(np.uint8))
        truths.append(alpha_u8_t.astype(np.float32) / 255.0)
    return clip, truths


Clips = dict[tuple[str, str], tuple[list[np.ndarray], list[np.ndarray]]]


# --- predictions ------------------------------------------------------------------------------


def as_alpha(mask_u8: np.ndarray) -> np.ndarray:
    """``[H, W]`` uint8 mask -> float32 alpha in [0, 1]."""
    return mask_u8.astype(np.float32) / 255.0


def upscaled_alpha(
    post: Postprocess, probability: np.ndarray, params: BlurParams, frame_hw: tuple[int, int]
) -> np.ndarray:
    """``[1, 1, h, w]`` float probability -> ``[H, W]`` (``frame_hw``) float32 alpha: the
    service's mask before refinement."""
    mask = probability_to_mask(probability, soft=params.soft_mask, threshold=params.mask_threshold)
    return as_alpha(upscale_mask(mask, frame_hw, interpolation=post.mask_interpolation)[0])


def refined_alpha(
    post: Postprocess, frame: np.ndarray, probability: np.ndarray, params: BlurParams
) -> np.ndarray:
    """The service's MASK output for one ``[H, W, 3]`` uint8 frame and its ``[1, 1, h, w]``
    probability (joint bilateral refinement), as ``[H, W]`` float32 alpha."""
    _, mask = post(frame[None], probability, params)
    return as_alpha(np.asarray(mask)[0])


def weights_missing(model: str) -> str | None:
    """Why ``model`` cannot be measured here, or None (only the FCN networks can lack weights)."""
    if not model.startswith("fcn_"):
        return None
    from bgblur.models import fcn
    from bgblur.models.selfie import default_cache_dir

    if fcn.resolve_weights(None, default_cache_dir()) is not None:
        return None
    return (
        f"no weights here: torchvision's {fcn.PRETRAINED_FILENAME} is not in ${fcn.WEIGHTS_ENV}, "
        "the weights cache or torch hub's cache, and random weights give meaningless masks"
    )


def network_rows(
    model: str, clips: Clips, strength: float, resize_interpolation: str
) -> list[dict[str, Any]]:
    """One row per (layout, background, mask kind, smoothing) of ``model`` on ``clips``."""
    pipeline = BackgroundBlurPipeline(
        model, Device("cpu"), resize_interpolation=resize_interpolation
    )
    post = pipeline.postprocess
    params = BlurParams()
    rows = []
    for (layout, background), (frames, truths) in clips.items():
        frame_hw = truths[0].shape
        raw = [probability_of(pipeline, f).astype(np.float32) for f in frames]
        for smoothing in (0.0, strength):
            probabilities = [p[None, None] for p in smoothed(raw, smoothing)]
            kinds = {
                "upscaled": [upscaled_alpha(post, p, params, frame_hw) for p in probabilities],
                "refined": [
                    refined_alpha(post, f, p, params)
                    for f, p in zip(frames, probabilities, strict=True)
                ],
            }
            for kind, preds in kinds.items():
                rows.append(
                    {
                        "model": model,
                        "layout": layout,
                        "background": background,
                        "mask": kind,
                        "temporal_smoothing": smoothing,
                        **clip_metrics(preds, truths),
                    }
                )
    return rows


def reference_rows(clips: Clips, input_hw: Iterable[tuple[int, int]]) -> list[dict[str, Any]]:
    """The metrics of masks made from the truth: thresholded, and through a network's input size."""
    post = Postprocess(Device("cpu"))
    rows = []
    for (layout, background), (_, truths) in clips.items():
        frame_hw = truths[0].shape
        candidates = {"truth >= 0.5": [(t >= 0.5).astype(np.float32) for t in truths]}
        for h, w in sorted(set(input_hw)):
            candidates[f"truth at {w}x{h}, upscaled"] = [
                upscaled_alpha(
                    post,
                    cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA)[None, None],
                    BlurParams(),
                    frame_hw,
                )
                for t in truths
            ]
        for name, preds in candidates.items():
            rows.append(
                {
                    "reference": name,
                    "layout": layout,
                    "background": background,
                    **clip_metrics(preds, truths),
                }
            )
    return rows


def mean_over_backgrounds(
    rows: list[dict[str, Any]], keys: tuple[str, ...]
) -> list[dict[str, Any]]:
    """Rows averaged over ``background``, grouped by ``keys``, metrics rounded to 3 places."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    return [
        {
            **dict(zip(keys, key, strict=True)),
            **{m: round(float(np.mean([r[m] for r in group])), 3) for m in METRICS},
        }
        for key, group in groups.items()
    ]


def rounded(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: round(v, 3) if k in METRICS else v for k, v in row.items()} for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--frames", type=int, default=30)
    parser.add_argument("--step", type=int, default=4, help="px a frame the person moves")
    parser.add_argument("--layouts", nargs="+", choices=sorted(LAYOUTS), default=list(LAYOUTS))
    parser.add_argument("--backgrounds", nargs="+", default=list(BACKGROUNDS))
    parser.add_argument("--strength", type=float, default=DEFAULT_TEMPORAL_SMOOTHING)
    parser.add_argument(
        "--resize-interpolation",
        choices=STAGE_INTERPOLATIONS,
        default="auto",
        help="the preprocess's downscale (auto: linear on the CPU, area on the GPU)",
    )
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be >= 2 (dtSSD needs pairs)")

    clips: Clips = {
        (layout, background): moving_clip(background, args.frames, args.step, LAYOUTS[layout])
        for layout in args.layouts
        for background in args.backgrounds
    }
    measured, skipped, rows = [], {}, []
    for model in args.models:
        reason = weights_missing(model)
        if reason is not None:
            skipped[model] = reason
            continue
        measured.append(model)
        rows += network_rows(model, clips, args.strength, args.resize_interpolation)
    references = reference_rows(clips, [get_model_spec(m).input_hw for m in measured])
    summary = mean_over_backgrounds(rows, ("model", "layout", "mask", "temporal_smoothing"))
    reference_summary = mean_over_backgrounds(references, ("reference", "layout"))
    interpolation = resolve_interpolation(args.resize_interpolation, Device("cpu"))

    print(
        f"matting error, {args.frames} frames, {args.step} px/frame; preprocess {interpolation} "
        "(RVM scaling: MAD, MSE x1e3; Grad, Conn /1e3; dtSSD x1e2)"
    )
    metric_columns = "".join(f"{m:>9}" for m in METRICS)
    print(
        f"{'network':<18}{'layout':<8}{'background':<12}{'mask':<10}{'smooth':>7}{metric_columns}"
    )
    for row in [*rows, *({**r, "background": "mean"} for r in summary)]:
        print(
            f"{row['model']:<18}{row['layout']:<8}{row['background']:<12}{row['mask']:<10}"
            f"{row['temporal_smoothing']:>7.2f}" + "".join(f"{row[m]:>9.2f}" for m in METRICS)
        )
    print(f"\n{'reference (from the truth)':<30}{'layout':<8}{'background':<12}{metric_columns}")
    for row in [*references, *({**r, "background": "mean"} for r in reference_summary)]:
        print(
            f"{row['reference']:<30}{row['layout']:<8}{row['background']:<12}"
            + "".join(f"{row[m]:>9.2f}" for m in METRICS)
        )
    for model, reason in skipped.items():
        print(f"{model}: skipped ({reason})")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "date": datetime.date.today().isoformat(),
            "host": platform.node(),
            "device": "cpu",
            "cpu_threads": cv2.getNumThreads(),
            "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
            "command": " ".join(
                ["bench/matting_quality.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "metrics": "Robust Video Matting's evaluation (evaluate_lr.py): MAD, MSE x 1e3; "
            "Grad, Conn / 1e3; dtSSD x 1e2 (mean over frames 1..N-1)",
            "material": MATERIAL,
            "layouts": {
                name: f"{w}x{h}" for name, (h, w) in LAYOUTS.items() if name in args.layouts
            },
            "person_px": PERSON_SIZE,
            "frames": args.frames,
            "step_px": args.step,
            "temporal_smoothing": [0.0, args.strength],
            "preprocess_interpolation": interpolation,
            "measured": measured,
            "skipped": skipped,
            "summary": summary,
            "reference_summary": reference_summary,
            "rows": rounded(rows),
            "references": rounded(references),
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
