"""The guards' cost: requests through the HTTP or gRPC guard and straight to Triton's own port
of the same server, interleaved in one run (same server, same models, same frames). The server
runs as the service does (``bgblur-server`` in its own process), so the clients here do not
share the guards' interpreter.

For each transport (protocol and shared memory: ``http:none`` binary HTTP, ``grpc:none`` raw
gRPC, ``grpc:cuda`` CUDA shared memory), size and concurrency it prints latency p50/p99 and
frames/s both ways and the ratio; ``--out`` records the rows as JSON with the device, date and
command.

    python bench/guard.py --transports http:none,grpc:none --sizes 1080p --concurrency 1,8 \
        --seconds 10 --out bench/results/x.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path

from e2e import _gpu_name, frames_of, run_served  # bench/ is the script's folder: on sys.path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", default="http:none", help="PROTOCOL:SHM,...")
    parser.add_argument("--sizes", default="1080p")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2, help="guard/direct pairs per row")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--segmentation-model", default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from bgblur.server.launcher import free_port

    http, triton_http, grpc, triton_grpc = (free_port() for _ in range(4))
    command = [
        sys.executable, "-m", "bgblur.server.launcher", "--quiet", "--device", args.device,
        "--http-port", str(http), "--triton-http-port", str(triton_http),
        "--grpc-port", str(grpc), "--triton-grpc-port", str(triton_grpc),
        "--metrics-port", str(free_port()),
        *(["--segmentation-model", args.segmentation_model] if args.segmentation_model else []),
    ]  # fmt: skip
    service = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    rows = []
    try:
        for line in service.stderr:  # the service says when it is ready, and on which device
            print(line, end="", file=sys.stderr)
            if "ready on" in line:
                device = line.split("ready on", 1)[1].split()[0]
                break
        else:
            raise SystemExit(f"bgblur-server exited with {service.wait()}")
        # Keep reading what it says (a full pipe would block it).
        threading.Thread(target=lambda: [None for _ in service.stderr], daemon=True).start()
        ports = {"http": (http, triton_http), "grpc": (grpc, triton_grpc)}
        cases = [
            (transport.split(":")[0], transport.split(":")[1], size, concurrency)
            for transport in args.transports.split(",")
            for size in args.sizes.split(",")
            for concurrency in (int(c) for c in args.concurrency.split(","))
        ]
        for protocol, shm, size, concurrency in cases:
            guarded, direct = ports[protocol]
            urls = {"guard": f"localhost:{guarded}", "direct": f"localhost:{direct}"}
            frames = frames_of(size, args.batch)
            runs: dict[str, list[dict]] = {"guard": [], "direct": []}
            for _ in range(args.rounds):
                for path, url in urls.items():
                    runs[path].append(
                        run_served(url, protocol, frames, concurrency, args.seconds, shm)
                    )
            best = {p: max(r, key=lambda x: x["frames_per_s"]) for p, r in runs.items()}
            row = {
                "protocol": protocol,
                "shared_memory": shm,
                "size": size,
                "batch": args.batch,
                "concurrency": concurrency,
                **{
                    f"{p}_{k}": round(best[p][k], 2)
                    for p in best
                    for k in ("frames_per_s", "latency_ms_p50", "latency_ms_p99")
                },
            }
            row["throughput_ratio"] = round(
                row["guard_frames_per_s"] / row["direct_frames_per_s"], 3
            )
            row["p50_added_ms"] = round(
                row["guard_latency_ms_p50"] - row["direct_latency_ms_p50"], 2
            )
            rows.append(row)
            print(
                f"{protocol}:{shm} {size} b{args.batch} c{concurrency}: guard "
                f"{row['guard_frames_per_s']:.1f} fps p50 {row['guard_latency_ms_p50']:.2f} ms"
                f" | direct {row['direct_frames_per_s']:.1f} fps p50 "
                f"{row['direct_latency_ms_p50']:.2f} ms | ratio {row['throughput_ratio']:.3f},"
                f" +{row['p50_added_ms']:.2f} ms",
                flush=True,
            )
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(60)
    if args.out:
        record = {
            "date": datetime.date.today().isoformat(),
            "command": " ".join(["python", "bench/guard.py", *(argv or sys.argv[1:])]),
            "host": platform.node(),
            "server_device": device,
            "gpu": _gpu_name() if device == "gpu" else None,
            "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
