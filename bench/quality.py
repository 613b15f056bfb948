"""Background effects: the blur's halo around the person, and each effect's cost per frame.

Figures, not tests. Runs the pipeline's own objects in this process (no server): the network
(``--model``, default ``selfie_general``) on the CPU, then ``bgblur.stages.postprocess.Postprocess``
on ``--device`` (cpu, or gpu for the CuPy twins).

Frames. Real photos of people: scikit-image's ``astronaut`` (512x512 RGB) and ``camera``
(512x512 grey, as RGB), the photos behind ``tests/data/selfie_*_astronaut.png`` and
``selfie_general_camera.png`` (``tests/data/selfie_README.md``); the synthetic composite of
``selfie_general_synthetic.png`` (a striped gradient wall with the astronaut pasted in, 256x256);
and the astronaut's top 288 rows (16:9, head and shoulders) upscaled (``cv2.INTER_LANCZOS4``) to
1920x1080, the service's usual frame.

Halo. Per frame, the person is the pipeline's own final mask (MASK, with ``halo_free`` off: the
same mask either way) thresholded at 128; ``d`` is each pixel's distance to the nearest person
pixel (``cv2.distanceTransform``, L2, exact). The reference background is a background-only blur
of the same strength, at full resolution in float64: with ``W = 1`` outside the person and ``0``
inside (the hard mask, an exact weight), ``ref = G(frame * W) / G(W)``, ``G`` a Gaussian of
sigma ``blur_sigma x H / h`` rows and ``blur_sigma x W / w`` columns (the working-resolution
sigma in frame pixels; ``cv2.GaussianBlur``, BORDER_REFLECT_101, float64). The reference output
is ``composite(frame, ref, mask)`` with the pipeline's own mask, so only the background
differs. The figure is the mean absolute difference (grey levels, over the three channels)
between the output and that reference in the band ``6 <= d <= 24`` pixels outside the person
(``halo``), and, as a control, in ``d >= 48`` (``far``: both blurs should agree there, up to the
working resolution's resampling). Rows for ``halo_free`` on (the default) and off (CV-CUDA's
sample).

Cost. ``Postprocess.outputs`` (mask, refinement, background, composite, foreground share) of a
1920x1080 frame, batch 1, for each effect (blur halo-free, blur whole-frame, colour, image),
median of ``--reps`` runs after one warm-up; on the GPU each run ends with the stage's stream
synchronised. On the GPU also the fused postprocess alone (``FusedPostprocess``, CUDA events
around ``20 x --reps`` calls back to back) at 1080p, batch 1 and 8: what the halo-free blur adds
to the whole-frame blur per frame. Writes JSON and prints tables::

    .venv/bin/python bench/quality.py --out bench/results/quality-cpu-$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))  # make_selfie_goldens: the synthetic composite

from bgblur.device import Device  # noqa: E402
from bgblur.models.registry import DEFAULT_MODEL  # noqa: E402
from bgblur.parameters import BlurParams  # noqa: E402
from bgblur.pipeline import BackgroundBlurPipeline  # noqa: E402
from bgblur.stages.postprocess import Postprocess  # noqa: E402

HALO_BAND_PX = (6, 24)
FAR_PX = 48
PERSON_THRESHOLD = 128
COST_HW = (1080, 1920)


def frames() -> dict[str, np.ndarray]:
    """name -> ``[H, W, 3]`` uint8 RGB photo of a person."""
    from make_selfie_goldens import synthetic_composite
    from skimage import data

    astronaut = data.astronaut()
    camera = np.ascontiguousarray(np.repeat(data.camera()[..., None], 3, axis=2))
    hd = cv2.resize(astronaut[:288], (1920, 1080), interpolation=cv2.INTER_LANCZOS4)
    return {
        "astronaut_512": astronaut,
        "camera_512": camera,
        "synthetic_256": synthetic_composite(astronaut),
        "astronaut_1080p": hd,
    }


def probability_of(pipeline: BackgroundBlurPipeline, frame: np.ndarray) -> np.ndarray:
    """``[1, 1, h, w]`` float probability of the network for one frame (CPU, NumPy)."""
    inputs, _ = pipeline.preprocess.with_device_frames(frame[None])
    probability = pipeline.runtime(inputs)
    return np.asarray(probability.cpu() if hasattr(probability, "cpu") else probability)


def to_host(array: Any) -> np.ndarray:
    return array.get() if hasattr(array, "get") else np.asarray(array)


def reference_output(
    frame: np.ndarray, mask: np.ndarray, params: BlurParams, working_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(composite of the background-only blur, [H, W] float64 distance to the person)``."""
    h, w = frame.shape[:2]
    person = mask >= PERSON_THRESHOLD
    weight = (~person).astype(np.float64)
    sigma_y = params.blur_sigma * h / working_hw[0]
    sigma_x = params.blur_sigma * w / working_hw[1]

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y)

    den = blur(weight)
    num = blur(frame.astype(np.float64) * weight[..., None])
    background = num / np.maximum(den, 1e-12)[..., None]
    m = mask.astype(np.float64)[..., None] / 255.0
    expected = frame * m + background * (1.0 - m)
    distance = cv2.distanceTransform((~person).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return expected, distance


def halo_rows(
    pipeline: BackgroundBlurPipeline, post: Postprocess, device: Device
) -> list[dict[str, Any]]:
    rows = []
    for name, frame in frames().items():
        probability = probability_of(pipeline, frame)
        batch = frame[None]
        if device.is_gpu:
            import cupy

            batch, probability = cupy.asarray(batch), cupy.asarray(probability)
        base = BlurParams(halo_free=False)
        _, mask = post(batch, probability, base)
        mask = to_host(mask)[0]
        expected, distance = reference_output(frame, mask, base, post.blur_working_hw)
        band = (distance >= HALO_BAND_PX[0]) & (distance <= HALO_BAND_PX[1])
        far = distance >= FAR_PX
        for halo_free in (True, False):
            params = BlurParams(halo_free=halo_free)
            out = to_host(post(batch, probability, params)[0])[0].astype(np.float64)
            diff = np.abs(out - expected).mean(axis=2)
            rows.append(
                {
                    "frame": name,
                    "size": f"{frame.shape[1]}x{frame.shape[0]}",
                    "halo_free": halo_free,
                    "halo_mad": round(float(diff[band].mean()), 3),
                    "far_mad": round(float(diff[far].mean()), 3) if far.any() else None,
                    "band_pixels": int(band.sum()),
                    "far_pixels": int(far.sum()),
                    "person_share": round(float((mask >= PERSON_THRESHOLD).mean()), 4),
                }
            )
    return rows


def cost_rows(
    pipeline: BackgroundBlurPipeline, post: Postprocess, device: Device, reps: int
) -> list[dict[str, Any]]:
    from skimage import data

    frame = frames()["astronaut_1080p"]
    probability = probability_of(pipeline, frame)
    batch = frame[None]
    replacement = cv2.resize(data.coffee(), (1280, 853))[None]  # a 3:2 photo, cover-fitted
    if device.is_gpu:
        import cupy

        batch, probability = cupy.asarray(batch), cupy.asarray(probability)
        replacement = cupy.asarray(replacement)
    effects = {
        "blur (halo-free)": (BlurParams(), None),
        "blur (whole frame)": (BlurParams(halo_free=False), None),
        "color": (BlurParams(background="color"), None),
        "image": (BlurParams(background="image"), replacement),
    }
    rows = []
    for effect, (params, background) in effects.items():
        post.outputs(batch, probability, params, background)  # warm-up
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            post.outputs(batch, probability, params, background)
            times.append(time.perf_counter() - start)
        rows.append(
            {
                "effect": effect,
                "frame": f"{COST_HW[1]}x{COST_HW[0]}",
                "median_ms": round(1000 * statistics.median(times), 3),
                "min_ms": round(1000 * min(times), 3),
                "reps": reps,
            }
        )
    return rows


def fused_gpu_rows(reps: int) -> list[dict[str, Any]]:
    """GPU time of ``FusedPostprocess`` per call at 1080p (CUDA events around ``reps`` calls
    back to back, after a warm-up), halo-free against the whole-frame blur, batch 1 and 8."""
    import cupy

    from bgblur.stages.postprocess_fused import FusedPostprocess

    frame = frames()["astronaut_1080p"]
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 8):
        batch_frames = cupy.asarray(np.stack([frame] * batch))
        probability = cupy.asarray(rng.random((batch, 1, 256, 256)).astype(np.float16))
        fused = FusedPostprocess()
        for effect, params in (
            ("blur (whole frame)", BlurParams(halo_free=False)),
            ("blur (halo-free)", BlurParams()),
            ("color", BlurParams(background="color")),
        ):
            for _ in range(10):
                fused(batch_frames, probability, params)
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            for _ in range(reps):
                fused(batch_frames, probability, params)
            stop.record()
            stop.synchronize()
            per_call_us = 1000 * cupy.cuda.get_elapsed_time(start, stop) / reps
            rows.append(
                {
                    "effect": effect,
                    "batch": batch,
                    "launches": fused.launches,
                    "us_per_call": round(per_call_us, 1),
                    "us_per_frame": round(per_call_us / batch, 1),
                    "reps": reps,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--out", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)

    device = Device(args.device)
    pipeline = BackgroundBlurPipeline(args.model, Device("cpu"))
    post = Postprocess(device)
    post.warm_up()
    halo = halo_rows(pipeline, post, device)
    cost = cost_rows(pipeline, post, device, args.reps)
    fused = fused_gpu_rows(20 * args.reps) if device.is_gpu else []

    print(f"halo: mean |output - background-only blur| (grey levels), {args.device}")
    print(f"{'frame':<18}{'halo_free':>10}{'6-24 px':>10}{'>=48 px':>10}")
    for row in halo:
        far = "-" if row["far_mad"] is None else f"{row['far_mad']:.2f}"
        print(f"{row['frame']:<18}{row['halo_free']!s:>10}{row['halo_mad']:>10.2f}{far:>10}")
    print(f"\ncost per {COST_HW[1]}x{COST_HW[0]} frame (postprocess), {args.device}")
    for row in cost:
        print(f"{row['effect']:<22}{row['median_ms']:>10.2f} ms (min {row['min_ms']:.2f})")
    if fused:
        print("\nfused postprocess on the GPU, 1920x1080 (CUDA events)")
        for row in fused:
            print(
                f"{row['effect']:<22} batch {row['batch']}: {row['us_per_frame']:>8.1f} us/frame "
                f"({row['launches']} launches)"
            )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "date": datetime.date.today().isoformat(),
            "host": platform.node(),
            "device": args.device,
            "cpu_threads": cv2.getNumThreads(),
            "model": args.model,
            "versions": {"numpy": np.__version__, "opencv": cv2.__version__},
            "command": " ".join(["bench/quality.py", *(sys.argv[1:] if argv is None else argv)]),
            "halo_band_px": list(HALO_BAND_PX),
            "far_px": FAR_PX,
            "halo": halo,
            "cost": cost,
            "fused_gpu": fused,
        }
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
