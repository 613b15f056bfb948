"""perf_analyzer load test of the ensemble with real frames (``make perf``).

Writes perf_analyzer's input data per target model (a directory with one raw file per input:
scikit-image's astronaut photo at the chosen size, or what the stage before would hand on),
starts the embedded server unless ``--url`` is given, and runs a concurrency sweep per target
(the ensemble, or a composing model alone) and shared-memory mode, one CSV each in ``--out-dir``.

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


TARGETS = ("background_blur", "preprocess", "segmentation", "postprocess")


def input_tensors(
    target: str, size: str, segmentation_model: str | None = None
) -> dict[str, np.ndarray]:
    """One request's worth (one frame: perf_analyzer repeats it ``-b`` times) of real input for
    ``target``: the ensemble and preprocess take the astronaut photo at ``size``; segmentation
    takes that photo as preprocessed for the network; postprocess takes the photo and a centred
    ellipse of probability (bgblur.models.fixed) at the network's resolution."""
    from bgblur.device import Device
    from bgblur.models.fixed import FixedEllipse
    from bgblur.models.registry import DEFAULT_MODEL, get_model_spec
    from bgblur.stages.preprocess import Preprocess

    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    height, width = SIZES[size]
    photo = cv2.resize(skimage.data.astronaut(), (width, height), interpolation=cv2.INTER_LINEAR)
    frames = np.ascontiguousarray(photo[None])
    spec = get_model_spec(segmentation_model or DEFAULT_MODEL)
    network_input = Preprocess(spec, Device("cpu"))(frames)
    if target in ("background_blur", "preprocess"):
        tensors = {"FRAMES": frames}
    elif target == "segmentation":
        tensors = {"NETWORK_INPUT": network_input}
    else:
        import torch

        probability = FixedEllipse()(torch.from_numpy(network_input.astype(np.float32)))
        tensors = {"FRAMES": frames, "PROBABILITY": probability.numpy().astype(np.float16)}
    return {name: array[0] for name, array in tensors.items()}  # without the batch dimension


def write_input_data(directory: Path, tensors: dict[str, np.ndarray]) -> list[str]:
    """Raw bytes of each tensor in ``DIR/<name>`` (perf_analyzer's directory input format);
    returns the ``--shape NAME:dims`` arguments for the variable dimensions."""
    directory.mkdir(parents=True, exist_ok=True)
    shapes = []
    for name, array in tensors.items():
        (directory / name).write_bytes(np.ascontiguousarray(array).tobytes())
        shapes.append(f"{name}:" + ",".join(map(str, array.shape)))
    return shapes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one)")
    parser.add_argument("--targets", default="background_blur", help=f"comma list of {TARGETS}")
    parser.add_argument("--segmentation-model", default=None, help="network (default: selfie)")
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

    from bgblur.server.launcher import TritonServer
    from bgblur_client.admin_key import admin_headers, read_admin_key

    server = None
    if not args.url:
        server = TritonServer(segmentation_model=args.segmentation_model).start()
    url = args.url or server.grpc_url
    server_key = read_admin_key() or "<none>"
    try:
        for target in args.targets.split(","):
            tensors = input_tensors(target, args.size, args.segmentation_model)
            data_dir = args.out_dir / f"input-{target}-{args.size}"
            shapes = write_input_data(data_dir, tensors)
            # Outputs: BLURRED + MASK (ensemble, postprocess), else the first input's size is an
            # upper bound for NETWORK_INPUT/PROBABILITY; per frame times the batch.
            frame_bytes = int(np.prod(SIZES[args.size])) * 4
            output_bytes = args.batch * max(frame_bytes, 3 * 1024 * 1024 * 2)
            for mode in args.shared_memory.split(","):
                csv = args.out_dir / f"perf-{target}-{args.size}-b{args.batch}-{mode}.csv"
                command = [
                    binary,
                    "-m", target,
                    "-u", url,
                    "-i", "grpc",
                    "-b", str(args.batch),
                    "--input-data", str(data_dir),
                    *(f"--shape={shape}" for shape in shapes),
                    "--concurrency-range", args.concurrency,
                    "--measurement-interval", str(args.measurement_ms),
                    "--shared-memory", mode,
                    "--output-shared-memory-size", str(output_bytes),
                    "-f", str(csv),
                    # Shared-memory registration needs the admin key (bgblur_client.admin_key).
                    *(a for n, v in admin_headers("grpc").items() for a in ("-H", f"{n}:{v}")),
                ]  # fmt: skip
                print("$", " ".join(command).replace(server_key, "<admin key>"), flush=True)
                subprocess.run(command, check=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
