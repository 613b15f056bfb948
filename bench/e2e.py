"""End-to-end throughput and latency of the served ensemble, and of the in-process pipeline.

Starts the embedded Triton server (or uses ``--url``), sends real frames (scikit-image's
astronaut photo resized to each size) and prints/records, per (size, batch, concurrency,
transport): latency p50/p90/p99 per request and frames/s; the per-stage split from Triton's
statistics (queue and compute per composing model, bgblur_client.stats); GPU utilization,
memory and energy per frame from NVML when present (bgblur.nvml). ``--in-process`` also times
the library pipeline without Triton on the same device (the stages alone) and the CPU pipeline
(OpenCV pre/post on the CPU, the network with torch on the best device: the reference CPU baseline
shape). ``--instances postprocess=2`` sets instances per GPU of the Python models (tuning).
The performance levers of the server (``bgblur.server.launcher``) are options here too:
``--segmentation-batch 64`` (segmentation merges the requests of several clients; the row's
``stages.segmentation.frames_per_execution`` says how many frames it ran at once),
``--segmentation-queue-delay-us``, ``--mps`` (server and this client process under one CUDA MPS
daemon: started here, before this process's first CUDA call, unless
``$CUDA_MPS_PIPE_DIRECTORY`` names a running one; the server then runs as this process's user,
as MPS serves one user at a time).

    python bench/e2e.py --sizes 720p,1080p --batches 1,4 --concurrency 1,4 --seconds 10
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

SIZES = {"360p": (360, 640), "720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}


def frames_of(size: str, batch: int) -> np.ndarray:
    height, width = SIZES[size]
    photo = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(np.broadcast_to(photo, (batch, height, width, 3)))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_served(
    url: str,
    protocol: str,
    frames: np.ndarray,
    concurrency: int,
    seconds: float,
    shared_memory: str = "none",
    gpus: tuple[int, ...] = (0,),
    served_model: str = "background_blur",
) -> dict:
    """``concurrency`` threads, each with its own connection, sending ``frames`` back to back.

    With ``shared_memory="cuda"`` the frames are put on the GPU first (as if decoded there) and
    the results stay on the GPU (the client's copy out of the region is included). Client ``i``
    uses GPU ``gpus[i % len(gpus)]`` for its frames and regions, so a server spread over several
    GPUs gets one stream of work per GPU (Triton places each region's data on its device);
    NVML samples every GPU in ``gpus``."""
    from bgblur_client.transport import BlurClient

    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds
    frames_on = {gpu: frames for gpu in gpus}
    if shared_memory == "cuda":
        import cupy

        for gpu in gpus:
            with cupy.cuda.Device(gpu):
                frames_on[gpu] = cupy.asarray(frames)

    warmed = threading.Barrier(concurrency + 1)
    go = threading.Barrier(concurrency + 1)

    def worker(index: int) -> int:
        done = 0
        gpu = gpus[index % len(gpus)]
        frames = frames_on[gpu]
        with BlurClient(
            url,
            protocol=protocol,
            model=served_model,
            shared_memory=shared_memory,
            cuda_device=gpu,
        ) as client:
            client.blur(frames)  # warm-up, region registration
            warmed.wait()
            go.wait()  # the main thread has set the deadline
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                client.blur(frames)
                with lock:
                    latencies.append(time.perf_counter() - start)
                done += 1
        return done

    from bgblur.nvml import GpuSampler

    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        results = [pool.submit(worker, i) for i in range(concurrency)]
        warmed.wait()  # every worker warmed up: measure from here
        with BlurClient(url, protocol=protocol) as probe:
            before = probe.statistics()
            deadline = time.perf_counter() + seconds
            start = time.perf_counter()
            go.wait()
            samplers = [GpuSampler(gpu).start() for gpu in gpus]
            requests = sum(r.result() for r in results)
            elapsed = time.perf_counter() - start
            per_gpu = [s.stop().summary() for s in samplers]
            stages = probe.statistics().since(before)
    frames_sent = requests * frames.shape[0]
    gpu = _gpu_totals(per_gpu)
    energy = gpu.pop("energy_j")
    return {
        "requests": requests,
        "frames_per_s": frames_sent / elapsed,
        "latency_ms_p50": 1e3 * percentile(latencies, 50),
        "latency_ms_p90": 1e3 * percentile(latencies, 90),
        "latency_ms_p99": 1e3 * percentile(latencies, 99),
        "gpu": gpu
        | {"energy_j_per_frame": energy / frames_sent if energy and frames_sent else None},
        # Requests still in flight at the deadline finish after it: counted in the split.
        "stages": {name: {k: round(v, 1) for k, v in row.items()} for name, row in stages.items()},
        "per_gpu": per_gpu if len(gpus) > 1 else None,
    }


def _gpu_totals(per_gpu: list[dict]) -> dict:
    """One summary over several GPUs: mean utilization, max memory, summed energy (None where
    NVML gave nothing)."""

    def values(key: str) -> list[float]:
        return [g[key] for g in per_gpu if g.get(key) is not None]

    util, peak, memory, energy = (
        values(k)
        for k in ("gpu_util_pct_mean", "gpu_util_pct_max", "memory_used_mib_max", "energy_j")
    )
    return {
        "window_s": max(g["window_s"] for g in per_gpu),
        "gpus": len(per_gpu),
        "gpu_util_pct_mean": sum(util) / len(util) if util else None,
        "gpu_util_pct_max": max(peak) if peak else None,
        "memory_used_mib_max": max(memory) if memory else None,
        "energy_j": sum(energy) if energy else None,
    }


def run_in_process(pipeline: Any, frames: np.ndarray, seconds: float) -> dict:
    pipeline(frames)  # warm-up (CUDA graphs, kernel compilation)
    latencies = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        blurred, _ = pipeline(frames)
        if hasattr(blurred, "get"):
            blurred.get()
        latencies.append(time.perf_counter() - start)
    return {
        "requests": len(latencies),
        "frames_per_s": len(latencies) * frames.shape[0] / sum(latencies),
        "latency_ms_p50": 1e3 * percentile(latencies, 50),
        "latency_ms_p99": 1e3 * percentile(latencies, 99),
    }


def main() -> None:
    from bgblur.server.launcher import add_lever_arguments, add_model_param_argument

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start the embedded one)")
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument(
        "--served-model",
        choices=("background_blur", "background_blur_direct"),
        default="background_blur",
        help="the ensemble (three Python-backend hops) or the same service in one model",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--model", default=None, help="segmentation network")
    parser.add_argument("--sizes", default="720p,1080p")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--concurrency", default="1,4")
    parser.add_argument(
        "--pairs",
        default="",
        help="only these batch x clients rows, e.g. 8x16,1x1 (instead of --batches x "
        "--concurrency)",
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--shared-memory", default="none", help="comma list of none, system, cuda (transports)"
    )
    parser.add_argument(
        "--instances",
        default="",
        help="instances per GPU of the Python models, e.g. postprocess=2,preprocess=1",
    )
    parser.add_argument("--queue-delay-us", type=int, help="Python models' max queue delay")
    parser.add_argument(
        "--client-gpus",
        default="0",
        help="GPUs the clients spread over (CUDA shm regions, NVML), e.g. 0,1,2,3; 'all'",
    )
    parser.add_argument("--in-process", action="store_true", help="also time the library alone")
    parser.add_argument(
        "--cpu-baseline",
        default="",
        help="also run the reference CPU pipeline in this run with these process counts (e.g. "
        "1,16: one process for latency, all cores for throughput) and report the ratios",
    )
    parser.add_argument("--cpu-baseline-frames", type=int, default=60)
    add_model_param_argument(parser)
    add_lever_arguments(parser)
    parser.add_argument(
        "--profile-dir",
        type=Path,
        help="profile every model process's execute into this folder (bgblur.serving.profiling; "
        "slows Python-heavy stages: a diagnostic run, not a figure)",
    )
    parser.add_argument("--out", type=Path, help="JSON file for the results")
    args = parser.parse_args()
    if args.profile_dir is not None:
        from bgblur.serving.profiling import PROFILE_DIR_ENV

        os.environ[PROFILE_DIR_ENV] = str(args.profile_dir.resolve())  # the server inherits it

    from bgblur.device import Device, cuda_device_count
    from bgblur.models.registry import DEFAULT_MODEL
    from bgblur.server.launcher import TritonServer, parse_key_values

    model = args.model or DEFAULT_MODEL
    server = None
    url = args.url
    mps = None
    if args.mps and url is None:
        # Before this process's first CUDA call: its client work (CUDA shared memory) and the
        # server's share one MPS server (the launcher then attaches to this daemon).
        import tempfile

        from bgblur.server.mps import MpsDaemon

        mps = MpsDaemon.attach_or_start(Path(tempfile.mkdtemp(prefix="bgblur-mps-")))
        os.environ.update(mps.client_environment())
    if url is None:
        instances = {k: int(v) for k, v in (i.split("=") for i in args.instances.split(",") if i)}
        starting = TritonServer(
            device=args.device,
            segmentation_model=model,
            instance_counts=instances,
            queue_delay_us=args.queue_delay_us,
            model_parameters=parse_key_values(args.model_param),
            direct_model=args.served_model == "background_blur_direct",
            segmentation_batch=args.segmentation_batch,
            segmentation_queue_delay_us=args.segmentation_queue_delay_us,
            mps=args.mps,
            # MPS runs one user's processes at a time: the server as this client's user.
            **({"user": None} if args.mps else {}),
        )
        try:
            server = starting.start()
        except BaseException:
            if mps is not None:
                mps.stop()
            raise
        url = server.grpc_url if args.protocol == "grpc" else server.http_url
    device = server.device if server else args.device
    if args.client_gpus == "all":
        client_gpus = tuple(range(max(cuda_device_count(), 1)))
    else:
        client_gpus = tuple(int(g) for g in args.client_gpus.split(","))
    report: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "gpu": _gpu_name(),
        "device": device,
        "model": model,
        "protocol": args.protocol,
        "served_model": args.served_model,
        "instances": server.instance_counts if server else args.instances or None,
        "queue_delay_us": args.queue_delay_us,
        "segmentation_batch": args.segmentation_batch,
        "segmentation_queue_delay_us": args.segmentation_queue_delay_us,
        "mps": args.mps,
        "model_parameters": parse_key_values(args.model_param),
        "server_gpus": server.gpus if server else None,
        "client_gpus": list(client_gpus),
        "command": "python bench/e2e.py " + " ".join(_argv()),
        "served": [],
        "in_process": [],
    }

    def write_report() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")

    plan = served_plan(args.batches, args.concurrency, args.shared_memory, args.pairs)
    try:
        for size in args.sizes.split(","):
            frames_by_batch: dict[int, np.ndarray] = {}
            for batch, transport, concurrency in plan:
                frames = frames_by_batch.setdefault(batch, frames_of(size, batch))
                row = {
                    "size": size,
                    "batch": batch,
                    "concurrency": concurrency,
                    "transport": f"{args.protocol}+{transport}-shm"
                    if transport != "none"
                    else args.protocol,
                }
                row |= run_served(
                    url,
                    args.protocol,
                    frames,
                    concurrency,
                    args.seconds,
                    transport,
                    client_gpus,
                    args.served_model,
                )
                report["served"].append(row)
                print(json.dumps(row), flush=True)
                write_report()  # a run cut short keeps the rows it measured
    finally:
        if server is not None:
            server.stop()
        if mps is not None:
            # This process is a client of the daemon too: quit waits for it, so give the
            # daemon little time before it is stopped by force.
            mps.stop(timeout_s=2)
    if args.profile_dir is not None:
        # First line of each model process's summary (the stages write theirs at unload).
        report["profile"] = {
            path.name: path.read_text().splitlines()[0]
            for path in sorted(args.profile_dir.glob("*.txt"))
        }

    if args.in_process:
        from bgblur.pipeline import BackgroundBlurPipeline

        targets = [("cpu", Device("cpu"))]
        if cuda_device_count():
            targets.append(("gpu", Device("gpu", 0)))
        for name, dev in targets:
            pipeline = BackgroundBlurPipeline(model, dev)
            for size in args.sizes.split(","):
                for batch in map(int, args.batches.split(",")):
                    row = {"pipeline": name, "size": size, "batch": batch}
                    row |= run_in_process(pipeline, frames_of(size, batch), args.seconds)
                    report["in_process"].append(row)
                    print(json.dumps(row), flush=True)
    if args.cpu_baseline:
        report["cpu_baseline"] = run_cpu_baseline(
            model, args.sizes.split(",")[0], args.cpu_baseline, args.cpu_baseline_frames
        )
        report["ratios"] = ratios_against(report["served"], report["cpu_baseline"])
        print(json.dumps({"ratios": report["ratios"]}), flush=True)
    write_report()


def served_plan(
    batches: str, concurrency: str, transports: str, pairs: str = ""
) -> list[tuple[int, str, int]]:
    """The served rows per size, in order, as ``(batch, transport, concurrency)``: every batch
    x transport x concurrency of the comma lists, or, with ``pairs`` (``"8x16,1x1"``: batch x
    clients), those pairs alone, each over every transport."""
    kinds = [t for t in transports.split(",") if t]
    if pairs:
        chosen = []
        for item in pairs.split(","):
            batch, sep, clients = item.strip().lower().partition("x")
            if not sep or not batch.isdigit() or not clients.isdigit():
                raise ValueError(f"--pairs takes BATCHxCLIENTS items, e.g. 8x16,1x1; got {item!r}")
            chosen.append((int(batch), int(clients)))
        return [(b, t, c) for b, c in chosen for t in kinds]
    return [
        (b, t, c)
        for b in map(int, batches.split(","))
        for t in kinds
        for c in map(int, concurrency.split(","))
    ]


def run_cpu_baseline(model: str, size: str, processes: str, frames: int) -> dict:
    """The reference CPU pipeline (bench/cpu_baseline.py) on this machine, in this run."""
    import subprocess
    import sys
    import tempfile

    script = Path(__file__).with_name("cpu_baseline.py")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        command = [sys.executable, str(script), "--size", size, "--frames", str(frames)]
        command += ["--model", model, "--processes", processes, "--out", str(out)]
        subprocess.run(command, check=True)
        return json.loads(out.read_text())


def ratios_against(served: list[dict], baseline: dict) -> dict:
    """The reference's comparison: its batch-1 latency (one process, per frame) over ours (p50 at
    batch 1, one client, per transport), and our best frames/s over its best (any number of
    processes), at the baseline's frame size."""
    size = baseline["size"]
    one = next(r for r in baseline["runs"] if r["processes"] == 1)
    baseline_ms = sum(one["ms_per_frame_one_process"].values())
    baseline_fps = max(r["frames_per_s"] for r in baseline["runs"])
    rows = [r for r in served if r["size"] == size and r["requests"] > 0]
    latency = {
        r["transport"]: baseline_ms / r["latency_ms_p50"]
        for r in rows
        if r["batch"] == 1 and r["concurrency"] == 1
    }
    best = max(rows, key=lambda r: r["frames_per_s"], default=None)
    return {
        "size": size,
        "cpu_pipeline_ms_per_frame": baseline_ms,
        "cpu_pipeline_best_frames_per_s": baseline_fps,
        "latency_ratio_batch1_by_transport": latency,
        "throughput_ratio_best": best["frames_per_s"] / baseline_fps if best else None,
        "best_served": {k: best[k] for k in ("transport", "batch", "concurrency")}
        if best
        else None,
    }


def _argv() -> list[str]:
    import sys

    return sys.argv[1:]


def _gpu_name() -> str | None:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:
        return None


if __name__ == "__main__":
    main()
