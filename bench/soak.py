"""Soak: N minutes at concurrency C against the embedded server, sampling its memory.

Figures, not a test. Starts the embedded Triton server (``bgblur.server.launcher``, GPU when
usable),
runs C client threads sending the same frames back to back, and every few seconds samples the
RSS of the server and its Python stubs, the server's ``/dev/shm`` regions (and all of /dev/shm),
and GPU memory when ``nvidia-smi`` is present (the whole device, and the server's own processes).
Reports failed requests, throughput and the memory slopes (least squares) after the warm-up;
writes ``bench/results/soak-<device>.json``.

    python bench/soak.py --minutes 10 --concurrency 16              # the H100 run
    python bench/soak.py --minutes 2.5 --concurrency 4 --size 640x360  # the CPU run
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bgblur.server.launcher import TritonServer
from bgblur.server.supervisor import process_tree_rss_bytes, shm_regions, stub_processes
from bgblur_client.transport import BlurClient

RESULTS = Path(__file__).resolve().parent / "results"


def nvidia_smi_csv(query: str) -> str | None:
    """``nvidia-smi <query> --format=csv,noheader,nounits`` output; None without nvidia-smi or
    when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError):
        return None


def gpu_memory_mib() -> list[int] | None:
    """Used memory per GPU (MiB) from nvidia-smi, None without one."""
    out = nvidia_smi_csv("--query-gpu=memory.used")
    return None if out is None else [int(v) for v in out.split()]


def process_gpu_memory_mib() -> dict[int, int] | None:
    """GPU memory (MiB) each compute process holds, by PID, from nvidia-smi; None without one.

    The soak's server share: the device-wide figure also counts anything else on the GPU (the
    client's CUDA shared-memory buffers, other jobs), which would hide or fake a leak.
    """
    out = nvidia_smi_csv("--query-compute-apps=pid,used_memory")
    if out is None:
        return None
    used: dict[int, int] = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0].isdigit() and fields[1].isdigit():
            used[int(fields[0])] = used.get(int(fields[0]), 0) + int(fields[1])
    return used


def slope_per_minute(samples: list[dict[str, Any]], key: str, after_s: float) -> float | None:
    """Least-squares slope of ``key`` (per minute) over the samples taken after ``after_s``."""
    points = [(s["t_s"], s[key]) for s in samples if s["t_s"] >= after_s and s[key] is not None]
    if len(points) < 3:
        return None
    t, v = np.array(points, dtype=float).T
    return float(np.polyfit(t / 60.0, v, 1)[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the frames")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    parser.add_argument("--shared-memory", choices=("none", "system", "cuda"), default="none")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--model", default=None, help="segmentation network (default: repo's)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.25, help="fraction left out of slopes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)
    duration = args.minutes * 60.0
    counts = {"ok": 0, "failed": 0}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    with TritonServer(device=args.device, segmentation_model=args.model) as server:
        url = server.grpc_url if args.protocol == "grpc" else server.http_url

        def worker() -> None:
            with BlurClient(url, protocol=args.protocol, shared_memory=args.shared_memory) as c:
                while not stop.is_set():
                    started = time.perf_counter()
                    try:
                        c.blur(frames)
                        ok, message = True, ""
                    except Exception as exc:
                        ok, message = False, f"{type(exc).__name__}: {exc}"[:200]
                    took = time.perf_counter() - started
                    with lock:
                        if ok:
                            counts["ok"] += 1
                            latencies.append(took)
                        else:
                            counts["failed"] += 1
                            errors[message] = errors.get(message, 0) + 1

        threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
        start = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[dict[str, Any]] = []
        while True:
            now = time.monotonic() - start
            pid = server.server_pid()
            own = {s.shm_region for s in stub_processes(pid)} if pid else set()
            regions = shm_regions()
            gpu = gpu_memory_mib()
            per_process = process_gpu_memory_mib()
            tree = {pid, *(s.pid for s in stub_processes(pid))} if pid else set()
            with lock:
                done = counts["ok"]
            samples.append(
                {
                    "t_s": round(now, 2),
                    "requests_ok": done,
                    "server_rss_mib": round(process_tree_rss_bytes(pid) / 2**20, 1)
                    if pid
                    else None,
                    "server_shm_mib": round(sum(regions.get(r, 0) for r in own) / 2**20, 1),
                    "dev_shm_total_mib": round(
                        sum(e.stat().st_blocks * 512 for e in os.scandir("/dev/shm")) / 2**20, 1
                    ),
                    "gpu_used_mib": sum(gpu) if gpu else None,
                    "server_gpu_mib": sum(v for p, v in per_process.items() if p in tree)
                    if per_process is not None and gpu
                    else None,
                }
            )
            print(json.dumps(samples[-1]), flush=True)
            if now >= duration:
                break
            time.sleep(min(args.interval, max(0.0, duration - now)))
        stop.set()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - start
        device = server.device
        restarts = len(server.supervisor.events) if server.supervisor else 0

    warm = duration * args.warmup
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    result = {
        "benchmark": "soak",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "minutes": args.minutes,
        "concurrency": args.concurrency,
        "frames": [args.batch, height, width, 3],
        "protocol": args.protocol,
        "shared_memory": args.shared_memory,
        "requests_ok": counts["ok"],
        "requests_failed": counts["failed"],
        "errors": errors,
        "supervisor_restarts": restarts,
        "frames_per_s": round(counts["ok"] * args.batch / elapsed, 2),
        "latency_ms": {
            q: round(float(np.percentile(lat, p)), 2)
            for q, p in (("p50", 50), ("p90", 90), ("p99", 99))
        },
        "warmup_s": warm,
        "slope_after_warmup_mib_per_min": {
            key: slope_per_minute(samples, key, warm)
            for key in (
                "server_rss_mib",
                "server_shm_mib",
                "dev_shm_total_mib",
                "gpu_used_mib",
                "server_gpu_mib",
            )
        },
        "samples": samples,
    }
    out = args.out or RESULTS / f"soak-{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}")
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
