"""perf_analyzer load test of the ensemble with real frames (``make perf``).

Writes perf_analyzer's input data (a directory with the raw ``FRAMES`` tensor: scikit-image's
astronaut photo resized to the chosen size), starts the embedded server unless ``--url`` is
given, and runs a concurrency sweep per shared-memory mode, one CSV each in ``--out-dir``.

perf_analyzer (PyPI ``perf-analyzer``) is built for glibc >= 2.38: it runs on Ubuntu 24.04 (the
GPU machine) but not on Debian 12; there this script says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import skimage.data

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}


def glibc_ok() -> tuple[bool, str]:
    name, version = platform.libc_ver()
    if name != "glibc":
        return False, f"{name or 'unknown libc'}"
    major, minor = (int(v) for v in version.split(".")[:2])
    return (major, minor) >= (2, 38), f"glibc {version}"


def write_input_data(directory: Path, size: str, batch: int) -> list[int]:
    """Raw bytes of one frame (perf_analyzer repeats it ``-b`` times) in ``DIR/FRAMES``;
    returns the request's shape ``[batch, H, W, 3]``."""
    height, width = SIZES[size]
    photo = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_LINEAR)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "FRAMES").write_bytes(np.ascontiguousarray(photo).tobytes())
    return [batch, height, width, 3]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one)")
    parser.add_argument("--size", choices=tuple(SIZES), default="1080p")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--concurrency", default="1:8:1", help="perf_analyzer concurrency range")
    parser.add_argument("--shared-memory", default="none,system", help="none, system, cuda")
    parser.add_argument("--measurement-ms", type=int, default=4000)
    parser.add_argument("--out-dir", type=Path, default=Path("out/perf"))
    args = parser.parse_args()

    binary = shutil.which("perf_analyzer")
    ok, libc = glibc_ok()
    if binary is None or not ok:
        reason = "perf_analyzer is not on PATH" if binary is None else f"this machine has {libc}"
        print(
            f"make perf: cannot run perf_analyzer here ({reason}); the PyPI build needs glibc "
            ">= 2.38 (Ubuntu 24.04). Use `python bench/e2e.py` for the same sweep without it.",
            file=sys.stderr,
        )
        return 2

    from bgblur.launcher import TritonServer

    data_dir = args.out_dir / f"input-{args.size}-b{args.batch}"
    shape = write_input_data(data_dir, args.size, args.batch)
    server = None if args.url else TritonServer().start()
    url = args.url or server.grpc_url
    output_bytes = int(np.prod(shape)) + int(np.prod(shape[:3]))
    try:
        for mode in args.shared_memory.split(","):
            csv = args.out_dir / f"perf-{args.size}-b{args.batch}-{mode}.csv"
            command = [
                binary,
                "-m", "background_blur",
                "-u", url,
                "-i", "grpc",
                "-b", str(args.batch),
                "--input-data", str(data_dir),
                "--shape", "FRAMES:" + ",".join(map(str, shape[1:])),
                "--concurrency-range", args.concurrency,
                "--measurement-interval", str(args.measurement_ms),
                "--shared-memory", mode,
                "--output-shared-memory-size", str(output_bytes),
                "-f", str(csv),
            ]  # fmt: skip
            print("$", " ".join(command), flush=True)
            subprocess.run(command, check=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
