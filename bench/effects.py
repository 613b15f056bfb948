"""Output effects: the time per frame of each, on the CPU and the GPU, and what each adds.

Figures, not tests. Per frame size (``--sizes``, default 720p and 1080p) and batch (``--batches``,
default 1 and 8), the postprocess stage of each effect and the stream ensemble's temporal step:

- ``blur (whole frame)``: ``BlurParams(halo_free=False)``, CV-CUDA's sample (the baseline);
- ``blur (halo-free)``: ``BlurParams()``, the default;
- ``color``: ``background="color"`` (the default grey);
- ``image``: ``background="image"``, one replacement photo for the batch (scikit-image's
  ``coffee`` at 1280x853, 3:2: cover-fitted to the frame in every call, as a request's
  BACKGROUND is);
- ``temporal step``: ``bgblur.stages.temporal.TemporalSmoother`` (the ``temporal_smoothing``
  model of ``background_blur_stream``) on the batch's probabilities as consecutive frames of one
  stream, float16 in and out, strength ``DEFAULT_TEMPORAL_SMOOTHING``, state carried from call to
  call. It works on the network's probability (``[B, 1, 256, 256]``), so its cost does not
  depend on the frame size; it runs in addition to the postprocess.

Each row also gives what the effect adds to the whole-frame blur per frame (``added_us``: its
time minus the baseline's of the same device, size and batch; the temporal step adds its whole
time) and that as a share of the baseline.

Inputs. Frames: the astronaut's top 288 rows (scikit-image, 16:9, head and shoulders) upscaled
(``cv2.INTER_LANCZOS4``) to the frame size, as ``bench/quality.py``; the batch is copies of it
(separate memory). Probability: the real network's (``--model``, default ``selfie_general``, on
the CPU, once per frame size: ``bench/quality.py``'s ``probability_of``), float16
``[1, 1, 256, 256]``, copied for the batch. Parameters: ``BlurParams`` defaults otherwise
(bilateral d=5, Gaussian 15x15 sigma 5 at 224x224, soft mask).

Timing.

- CPU (``--device cpu``): the stage objects the CPU service runs, NumPy/OpenCV:
  ``Postprocess(Device("cpu")).outputs`` (mask, refinement, background, composite, foreground
  share) and ``TemporalSmoother(Device("cpu"))``; wall time (``perf_counter``), one warm-up call
  each, then ``--cpu-reps`` rounds in which the five rows of a size and batch run in turn (load
  from other processes falls on all of them alike), the median (and the minimum) per row.
  OpenCV's thread count is recorded (``--cpu-threads`` sets it).
- GPU (``--device gpu``, CuPy and a CUDA GPU): what ``Postprocess(Device("gpu")).outputs``
  enqueues, on the current stream: the fused postprocess (``FusedPostprocess``, four or five
  launches) and ``foreground_share``; the temporal step through the stage object on its own
  stream (``synchronize=False``, the events recorded on that stream). ``bench/ops.py``'s
  ``GpuTimer``: ``--warmup`` calls, then CUDA events around each of up to ``--gpu-reps``
  back-to-back calls queued behind a spin kernel (GPU time, not Python launch time), the median;
  ``wall`` is one call + synchronise (median of 3).
- ``--device auto`` (the default): the CPU rows, and the GPU rows when a GPU is present.

Writes JSON (device, date, command, inputs, method, rows) and prints a table::

    .venv/bin/python bench/effects.py --device cpu --cpu-reps 11 \\
        --out bench/results/effects-cpu-$(date +%F).json
    python bench/effects.py --device gpu --out bench/results/effects-h100-$(date +%F).json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from ops import SIZES, GpuTimer  # noqa: E402
from quality import probability_of  # noqa: E402

from bgblur.device import Device, cuda_device_count  # noqa: E402
from bgblur.models.registry import DEFAULT_MODEL  # noqa: E402
from bgblur.parameters import DEFAULT_TEMPORAL_SMOOTHING, BlurParams  # noqa: E402
from bgblur.pipeline import BackgroundBlurPipeline  # noqa: E402
from bgblur.stages.postprocess import Postprocess  # noqa: E402
from bgblur.stages.temporal import TemporalSmoother  # noqa: E402

BASELINE = "blur (whole frame)"
TEMPORAL = "temporal step"
EFFECTS: dict[str, BlurParams] = {
    BASELINE: BlurParams(halo_free=False),
    "blur (halo-free)": BlurParams(),
    "color": BlurParams(background="color"),
    "image": BlurParams(background="image"),
}
REPLACEMENT_WH = (1280, 853)  # the replacement photo's size (3:2): cover-fitted to any frame
PHOTO_ROWS = 288  # the astronaut's top rows: 512x288 is 16:9


# ---- inputs ---------------------------------------------------------------------------------


def parse_size(name: str) -> tuple[str, tuple[int, int]]:
    """``"720p"`` (a name of ``bench/ops.py``'s ``SIZES``) or ``"WIDTHxHEIGHT"`` ->
    ``(label, (height, width))``."""
    if name in SIZES:
        return name, SIZES[name]
    match = re.fullmatch(r"(\d+)x(\d+)", name)
    if match is None or min(int(match[1]), int(match[2])) < 16:
        raise argparse.ArgumentTypeError(
            f"size must be one of {', '.join(SIZES)} or WIDTHxHEIGHT (>= 16), got {name!r}"
        )
    return name, (int(match[2]), int(match[1]))


def photo_frame(frame_hw: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB: the astronaut's head and shoulders upscaled to ``frame_hw``."""
    from skimage import data

    height, width = frame_hw
    return cv2.resize(
        data.astronaut()[:PHOTO_ROWS], (width, height), interpolation=cv2.INTER_LANCZOS4
    )


def replacement_image() -> np.ndarray:
    """``[1, 853, 1280, 3]`` uint8 RGB replacement photo (scikit-image's ``coffee``)."""
    from skimage import data

    return cv2.resize(data.coffee(), REPLACEMENT_WH, interpolation=cv2.INTER_AREA)[None]


def batch_of(array_1xyz: np.ndarray, batch: int) -> np.ndarray:
    """``[batch, ...]`` contiguous copies of a ``[1, ...]`` array (separate memory per frame)."""
    return np.ascontiguousarray(np.repeat(array_1xyz, batch, axis=0))


# ---- rows -----------------------------------------------------------------------------------


def timing_row(
    device: str,
    impl: str,
    effect: str,
    size: str,
    frame_hw: tuple[int, int],
    batch: int,
    timing: dict[str, Any],
) -> dict[str, Any]:
    """One row: ``timing`` is ``time_cpu_interleaved``'s or ``GpuTimer``'s dict (microseconds
    per call); ``us_per_frame`` is the GPU time where there is one, else the wall time."""
    per_call = timing.get("gpu_us_per_call", timing["wall_us_per_call"])
    row: dict[str, Any] = {
        "device": device,
        "impl": impl,
        "effect": effect,
        "size": size,
        "frame": f"{frame_hw[1]}x{frame_hw[0]}",
        "batch": batch,
        "us_per_frame": round(per_call / batch, 2),
        "wall_us_per_frame": round(timing["wall_us_per_call"] / batch, 2),
        "reps": timing["reps"],
    }
    fastest = timing.get("gpu_us_per_call_min", timing.get("min_us_per_call"))
    if fastest is not None:
        row["min_us_per_frame"] = round(fastest / batch, 2)
    if "queued" in timing:
        row["queued"] = timing["queued"]
    return row


def add_costs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row with what it adds to the whole-frame blur of its device, size and batch.

    ``added_us`` (per frame): the row's ``us_per_frame`` minus the baseline's; the temporal step
    runs in addition to the postprocess, so it adds its whole time. ``added_pct``: that in
    percent of the baseline. Both None where the group has no baseline row.
    """
    baselines = {
        (r["device"], r["size"], r["batch"]): r["us_per_frame"]
        for r in rows
        if r["effect"] == BASELINE
    }
    out = []
    for row in rows:
        base = baselines.get((row["device"], row["size"], row["batch"]))
        if base is None:
            added = None
        elif row["effect"] == TEMPORAL:
            added = row["us_per_frame"]
        else:
            added = row["us_per_frame"] - base
        out.append(
            {
                **row,
                "added_us": None if added is None else round(added, 2),
                "added_pct": None if added is None or base <= 0 else round(100 * added / base, 1),
            }
        )
    return out


# ---- CPU ------------------------------------------------------------------------------------


def time_cpu_interleaved(
    calls: dict[str, Callable[[], Any]], reps: int
) -> dict[str, dict[str, Any]]:
    """Wall time of each of ``calls`` (``perf_counter``): one warm-up call each, then ``reps``
    rounds in which every call runs once, in turn, so that load from other processes on the
    host falls on every row alike (the differences between rows are the point). Per call:
    ``wall_us_per_call`` (median), ``min_us_per_call`` and ``reps``."""
    for call in calls.values():
        call()
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            began = time.perf_counter()
            call()
            seconds[name].append(time.perf_counter() - began)
    return {
        name: {
            "wall_us_per_call": 1e6 * statistics.median(times),
            "min_us_per_call": 1e6 * min(times),
            "reps": reps,
        }
        for name, times in seconds.items()
    }


def cpu_rows(
    size: str,
    frame: np.ndarray,
    probability: np.ndarray,
    replacement: np.ndarray,
    batches: list[int],
    reps: int,
) -> list[dict[str, Any]]:
    """The CPU stage objects (NumPy/OpenCV) per batch: ``time_cpu_interleaved`` of the four
    effects' ``Postprocess.outputs`` and of the temporal step."""
    post = Postprocess(Device("cpu"))
    post.warm_up()
    rows = []
    for batch in batches:
        frames = batch_of(frame[None], batch)
        probabilities = batch_of(probability, batch)
        calls = {}
        for effect, params in EFFECTS.items():
            background = replacement if params.background == "image" else None
            calls[effect] = postprocess_call(post, frames, probabilities, params, background)
        smoother = TemporalSmoother(Device("cpu"))
        smoother(
            "stream", probabilities, start=True, end=False, strength=DEFAULT_TEMPORAL_SMOOTHING
        )
        calls[TEMPORAL] = temporal_call(smoother, probabilities)
        for effect, timing in time_cpu_interleaved(calls, reps).items():
            impl = "numpy" if effect == TEMPORAL else "opencv"
            rows.append(timing_row("cpu", impl, effect, size, frame.shape[:2], batch, timing))
            print_row(rows[-1])
    return rows


def postprocess_call(
    post: Postprocess, frames: Any, probabilities: Any, params: BlurParams, background: Any
) -> Callable[[], Any]:
    """One request to the postprocess stage: ``Postprocess.outputs`` (BLURRED, MASK, share)."""

    def run() -> Any:
        return post.outputs(frames, probabilities, params, background)

    return run


def temporal_call(
    smoother: TemporalSmoother, probabilities: Any, **kwargs: Any
) -> Callable[[], Any]:
    """One request of a live stream to the temporal step (``start`` only on its first call,
    made before timing), float16 out as the ``temporal_smoothing`` model returns."""

    def run() -> Any:
        return smoother(
            "stream",
            probabilities,
            start=False,
            end=False,
            strength=DEFAULT_TEMPORAL_SMOOTHING,
            out_dtype=np.float16,
            **kwargs,
        )

    return run


# ---- GPU ------------------------------------------------------------------------------------


def gpu_name() -> str:
    import cupy

    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def fused_call(
    fused: Any, frames: Any, probabilities: Any, params: BlurParams, background: Any
) -> Callable[[], Any]:
    """What ``Postprocess(Device("gpu")).outputs`` enqueues, on the current stream (CuPy
    arrays): ``FusedPostprocess`` then ``foreground_share`` of its mask; no host wait."""
    from bgblur.ops import foreground_share

    def run() -> Any:
        _, mask = fused(frames, probabilities, params, background_nhwc_u8=background)
        return foreground_share(mask)

    return run


def gpu_rows(
    size: str,
    frame: np.ndarray,
    probability: np.ndarray,
    replacement: np.ndarray,
    batches: list[int],
    timer: GpuTimer,
) -> list[dict[str, Any]]:
    """GPU work of the stages (CuPy), CUDA-event medians (``GpuTimer``).

    The postprocess: ``FusedPostprocess`` + ``foreground_share`` on the current stream (what
    ``Postprocess(Device("gpu")).outputs`` enqueues on its stage stream before its host wait).
    The temporal step: the ``TemporalSmoother`` stage with ``synchronize=False``, timed on the
    stage's own stream (made current around the timer, so the events bracket its kernels).
    """
    import cupy

    from bgblur.stages.postprocess_fused import FusedPostprocess

    rows = []
    replacement_gpu = cupy.asarray(replacement)
    for batch in batches:
        frames = cupy.asarray(batch_of(frame[None], batch))
        probabilities = cupy.asarray(batch_of(probability, batch))
        cupy.cuda.get_current_stream().synchronize()
        fused = FusedPostprocess()
        for effect, params in EFFECTS.items():
            background = replacement_gpu if params.background == "image" else None
            timing = timer(fused_call(fused, frames, probabilities, params, background))
            row = timing_row("gpu", "fused", effect, size, frame.shape[:2], batch, timing)
            row["launches"] = fused.launches
            rows.append(row)
            print_row(row)
        smoother = TemporalSmoother(Device("gpu"))
        smoother(
            "stream", probabilities, start=True, end=False, strength=DEFAULT_TEMPORAL_SMOOTHING
        )
        with smoother.stream.activate():
            timing = timer(temporal_call(smoother, probabilities, synchronize=False))
        smoother.synchronize()
        rows.append(timing_row("gpu", "cupy", TEMPORAL, size, frame.shape[:2], batch, timing))
        print_row(rows[-1])
        del frames, probabilities, fused, smoother
        cupy.get_default_memory_pool().free_all_blocks()
    return rows


# ---- report ---------------------------------------------------------------------------------


def print_row(row: dict[str, Any]) -> None:
    print(
        f"  {row['device']:4s} {row['size']:>6s} b{row['batch']:<2d} {row['effect']:20s}"
        f"{row['us_per_frame']:12.1f} us/frame  (wall {row['wall_us_per_frame']:.1f}, "
        f"{row['reps']} reps)",
        flush=True,
    )


def format_time(us: float | None, device: str, sign: str = "") -> str:
    """Microseconds as text: ms with 2 decimals on the CPU, us with 1 on the GPU; ``-`` for
    None. ``sign="+"`` shows the sign."""
    if us is None:
        return "-"
    if device == "cpu":
        return f"{us * 1e-3:{sign}.2f} ms"
    return f"{us:{sign}.1f} us"


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, per frame: median and fastest call, what the effect adds
    (median against median); CPU in ms, GPU in us."""
    lines = [
        "| device | size | batch | effect | per frame | fastest | added to whole-frame blur "
        "| added % |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        added, pct = format_time(r["added_us"], r["device"], "+"), "-"
        if r["added_pct"] is not None:
            pct = f"{r['added_pct']:+.1f}"
        if r["effect"] == BASELINE:
            added, pct = "(baseline)", "-"
        lines.append(
            f"| {r['device']} | {r['size']} | {r['batch']} | {r['effect']} | "
            f"{format_time(r['us_per_frame'], r['device'])} | "
            f"{format_time(r.get('min_us_per_frame'), r['device'])} | {added} | {pct} |"
        )
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument(
        "--sizes", default="720p,1080p", help=f"comma-separated: {', '.join(SIZES)} or WxH"
    )
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="network of the probability")
    parser.add_argument("--cpu-reps", type=int, default=5, help="timed calls per CPU row")
    parser.add_argument("--cpu-threads", type=int, default=None, help="cv2.setNumThreads")
    parser.add_argument("--gpu-reps", type=int, default=100, help="timed calls per GPU row (max)")
    parser.add_argument("--warmup", type=int, default=10, help="GPU warm-up calls per row")
    parser.add_argument(
        "--row-seconds", type=float, default=1.0, help="fewer GPU reps for rows slower than this"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    batches = [int(b) for b in args.batches.split(",") if b]
    if not sizes or not batches or min(batches) < 1:
        parser.error("need at least one size and batch sizes >= 1")
    if min(args.cpu_reps, args.gpu_reps) < 1 or args.warmup < 1:
        parser.error("--cpu-reps, --gpu-reps and --warmup must be >= 1")

    has_gpu = cuda_device_count() > 0
    if args.device == "gpu" and not has_gpu:
        parser.error("--device gpu needs CuPy and a CUDA GPU")
    run_cpu = args.device in ("auto", "cpu")
    run_gpu = args.device == "gpu" or (args.device == "auto" and has_gpu)
    if args.cpu_threads is not None:
        cv2.setNumThreads(args.cpu_threads)
    devices = []
    if run_cpu:
        devices.append(f"cpu: {cpu_name()}, {os.cpu_count()} cores, {cv2.getNumThreads()} threads")
    timer = None
    if run_gpu:
        import cupy

        devices.append(f"gpu: {gpu_name()}")
        timer = GpuTimer(cupy, args.gpu_reps, args.warmup, args.row_seconds)
    print(f"# bench/effects.py on {'; '.join(devices)}", flush=True)

    started = time.perf_counter()
    pipeline = BackgroundBlurPipeline(args.model, Device("cpu"))
    replacement = replacement_image()
    rows: list[dict[str, Any]] = []
    probability_share = {}
    for size, frame_hw in sizes:
        frame = photo_frame(frame_hw)
        probability = probability_of(pipeline, frame).astype(np.float16)
        probability_share[size] = round(float(np.mean(probability >= 0.5)), 4)
        if run_cpu:
            rows += cpu_rows(size, frame, probability, replacement, batches, args.cpu_reps)
        if timer is not None:
            rows += gpu_rows(size, frame, probability, replacement, batches, timer)
    rows = add_costs(rows)

    table = markdown(rows)
    print()
    print(table)
    if args.out is not None:
        versions = {"python": platform.python_version(), "numpy": np.__version__}
        versions["opencv"] = cv2.__version__
        if run_gpu:
            import cupy

            versions["cupy"] = cupy.__version__
            versions["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
            versions["driver"] = cupy.cuda.runtime.driverGetVersion()
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": "; ".join(devices),
            "command": " ".join(["bench/effects.py", *(sys.argv[1:] if argv is None else argv)]),
            "host": {
                "name": platform.node(),
                "cpu_count": os.cpu_count(),
                "cv2_threads": cv2.getNumThreads(),
            },
            "versions": versions,
            "model": args.model,
            "inputs": {
                "frames": f"skimage astronaut, top {PHOTO_ROWS} rows (16:9), INTER_LANCZOS4 to "
                "the frame size; batch = copies",
                "probability": f"{args.model} on the CPU (bench/quality.py probability_of), "
                "float16 [1, 1, 256, 256] per size, copied for the batch",
                "probability_share_ge_0_5": probability_share,
                "replacement": f"skimage coffee at {REPLACEMENT_WH[0]}x{REPLACEMENT_WH[1]}, "
                "[1, h, w, 3] for the batch, cover-fitted in each call",
                "params": "BlurParams defaults (d=5, sigma_color 50, sigma_space 1, Gaussian "
                "15x15 sigma 5 at 224x224, soft mask, nearest upscale) but for each effect's "
                "halo_free / background",
                "temporal": f"TemporalSmoother, strength {DEFAULT_TEMPORAL_SMOOTHING}, the batch "
                "as consecutive frames of one live stream, float16 out",
            },
            "method": {
                "cpu": "Postprocess(Device('cpu')).outputs / TemporalSmoother(Device('cpu')): "
                "perf_counter, 1 warm-up each, then the rows of a size and batch in turn for "
                f"--cpu-reps ({args.cpu_reps}) rounds: median (and min) per row",
                "gpu": "FusedPostprocess + foreground_share on the current stream; "
                "TemporalSmoother (synchronize=False) on its stage stream: bench/ops.py "
                "GpuTimer (CUDA events, median of back-to-back calls behind a spin kernel, "
                f"after {args.warmup} warm-up calls; wall = one call + sync)",
                "added": "us_per_frame minus the whole-frame blur's (same device, size, batch); "
                "the temporal step adds its whole time",
            },
            "elapsed_s": round(time.perf_counter() - started, 1),
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {args.out} ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
