"""Record two scrapes of the real embedded Triton server's ``/metrics`` around a burst of load.

The Kubernetes autoscaling rule (``docker/kubernetes/prometheus-adapter/values.yaml``) divides
the rate of one counter by the rate of another; ``tests/docker/test_kubernetes.py`` evaluates it
on the two scrapes this script writes and compares the result with Triton's statistics API,
read at the same two moments (an independent count of the same requests).

What it does: start the embedded server (CPU unless ``--device gpu``, no hang probe so that no
request but ours reaches the models), warm it up, read ``/metrics`` and ``/v2/models/stats``,
send ``--clients`` concurrent gRPC clients' requests of ``--batch`` frames of ``--size`` for
``--seconds``, wait for every answer, then read both again. Out (``--out-dir``, default
``tests/data``):

- ``metrics_scrape_0.txt``, ``metrics_scrape_1.txt``: the two scrapes as served (Prometheus text
  format), each preceded by one comment line ``# bgblur-scrape unix_time_s=<t>``;
- ``metrics_scrape_meta.json``: the command line, the device, the scrape times, the load sent,
  and per model the statistics API's increments (``success_count``, ``queue_ns``).

Command line: ``python bench/k8s_metrics_scrape.py [--clients 4] [--batch 4] [--size 96x128]
[--seconds 8] [--out-dir tests/data]``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import platform
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from bgblur.server.launcher import TritonServer

REPO = Path(__file__).resolve().parents[1]
ENTRY_MODEL = "background_blur"
SCRAPE_MARKER = "# bgblur-scrape unix_time_s="


def read_metrics(server: TritonServer) -> tuple[float, str]:
    """``(unix time of the read, the /metrics text)``."""
    with urllib.request.urlopen(f"http://{server.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return time.time(), text


def read_statistics(server: TritonServer) -> dict[str, dict[str, int]]:
    """Per model: ``success_count`` and ``queue_ns`` from Triton's statistics API."""
    with urllib.request.urlopen(f"http://{server.http_url}/v2/models/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"]
    return {
        m["name"]: {
            "success_count": int(m["inference_stats"]["success"]["count"]),
            "queue_ns": int(m["inference_stats"]["queue"]["ns"]),
        }
        for m in stats
    }


def send_for(url: str, frames_nhwc_u8: np.ndarray, seconds: float) -> int:
    """Requests of ``frames_nhwc_u8`` (uint8 ``[N, H, W, 3]``) one after the other for
    ``seconds``; returns how many were answered."""
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("FRAMES", list(frames_nhwc_u8.shape), "UINT8")
    tensor.set_data_from_numpy(frames_nhwc_u8)
    outputs = [grpcclient.InferRequestedOutput("BLURRED")]
    answered = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            client.infer(ENTRY_MODEL, [tensor], outputs=outputs)
            answered += 1
    finally:
        client.close()
    return answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4, help="frames per request")
    parser.add_argument("--size", default="96x128", help="frame HxW")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.size.lower().split("x"))
    rng = np.random.default_rng(0)
    frames_nhwc_u8 = rng.integers(0, 256, (args.batch, height, width, 3), dtype=np.uint8)

    with TritonServer(device=args.device, supervision={"probe_interval_s": 0}) as server:
        send_for(server.grpc_url, frames_nhwc_u8, 1.0)  # warm-up: every counter exists
        time_0, scrape_0 = read_metrics(server)
        stats_0 = read_statistics(server)
        with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
            answered = sum(
                pool.map(
                    lambda _: send_for(server.grpc_url, frames_nhwc_u8, args.seconds),
                    range(args.clients),
                )
            )
        time_1, scrape_1 = read_metrics(server)
        stats_1 = read_statistics(server)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for index, (when, text) in enumerate(((time_0, scrape_0), (time_1, scrape_1))):
        path = args.out_dir / f"metrics_scrape_{index}.txt"
        path.write_text(f"{SCRAPE_MARKER}{when:.3f}\n{text}")
    increments: dict[str, Any] = {
        name: {key: stats_1[name][key] - stats_0[name].get(key, 0) for key in stats_1[name]}
        for name in stats_1
        if name in stats_0
    }
    meta = {
        "command": " ".join(["python", "bench/k8s_metrics_scrape.py", *(argv or sys.argv[1:])]),
        "date": datetime.date.today().isoformat(),
        "device": args.device,
        "host": platform.processor() or platform.machine(),
        "scrape_unix_time_s": [round(time_0, 3), round(time_1, 3)],
        "load": {
            "clients": args.clients,
            "frames_per_request": args.batch,
            "frame_hw": [height, width],
            "seconds": args.seconds,
            "requests_answered": answered,
        },
        "statistics_api_increments": increments,
    }
    (args.out_dir / "metrics_scrape_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(meta["load"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
