"""Whole-file video throughput: decode + blur + encode, client side (per decoder) and server side.

Figures, not tests. Starts the embedded Triton server (or uses ``--url``), makes (or takes) one
H.264 clip and, for each path and each number of concurrent streams, blurs the whole file once
per stream at the same time and reports aggregate frames/s (frames of all streams / wall time):

- ``client-pyav`` / ``client-nvdec`` / ``client-dali``: ``bgblur_client.video.blur_video`` with
  that decoder (frames to the server through ``--shared-memory``: ``cuda`` keeps NVDEC/DALI
  frames on the GPU), libx264 encode on the client;
- ``server``: ``bgblur_client.server_video`` (the compressed file to ``background_blur_video``,
  decode + blur + encode on the server);
- ``cpu-baseline``: the seed's CPU pipeline (``bench/cpu_baseline.py``: OpenCV decode, OpenCV
  pre/post on the CPU, the network with torch on the best device, OpenCV mp4v encode) on the
  same file, one process.

Paths whose decoder is missing are reported as skipped. Writes bench/results/video-<device>.json.

    python bench/video.py --size 1080p --frames 240 --streams 1,4,16 --shared-memory cuda
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
PATHS = ("client-pyav", "client-nvdec", "client-dali", "server", "cpu-baseline")
RESULTS = Path(__file__).resolve().parent / "results"


def device_label() -> str:
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        return name.lower().replace("nvidia ", "").replace(" ", "-")
    except Exception:
        return "cpu"


def make_clip(path: Path, size: str, frames: int) -> Path:
    from bgblur_client.samples import make_sample_video

    width, height = SIZES[size]
    return make_sample_video(path, width=width, height=height, seconds=frames / 30, fps=30)


def one_stream(path_name: str, url: str, clip: Path, out: Path, args: argparse.Namespace) -> int:
    if path_name == "server":
        from bgblur_client.server_video import blur_video_server_side

        return blur_video_server_side(
            url, clip, out, batch_size=args.batch, progress=False, timeout_s=600
        ).frames
    from bgblur_client.transport import BlurClient
    from bgblur_client.video import blur_video

    shared = args.shared_memory
    with BlurClient(url, shared_memory=shared, timeout_s=600) as client:
        return blur_video(
            client,
            clip,
            out,
            batch_size=args.batch,
            in_flight=args.in_flight,
            progress=False,
            decoder=path_name.removeprefix("client-"),
        ).frames


def run_streams(
    path_name: str, url: str, clip: Path, streams: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=streams) as pool:
        futures = [
            pool.submit(one_stream, path_name, url, clip, work / f"{path_name}-{i}.mp4", args)
            for i in range(streams)
        ]
        frames = sum(f.result() for f in futures)
    seconds = time.perf_counter() - started
    return {"frames": frames, "seconds": round(seconds, 3), "frames_per_s": frames / seconds}


def cpu_baseline(clip: Path, model: str, frames: int, work: Path) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location(
        "cpu_baseline", Path(__file__).with_name("cpu_baseline.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    started = time.perf_counter()
    result = module.run_one(str(clip), model, frames, 1, str(work))
    seconds = time.perf_counter() - started
    return result | {"frames_per_s": result["frames"] / seconds, "wall_seconds": seconds}


def available(path_name: str) -> bool:
    if path_name in ("client-nvdec", "client-dali"):
        from bgblur_client.video_decoders import decoder_available

        return decoder_available(path_name.removeprefix("client-"))
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, help="input file (default: a generated sample)")
    parser.add_argument("--size", choices=tuple(SIZES), default="1080p")
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--streams", default="1,4,16", help="comma list of concurrent streams")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {PATHS}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument("--shared-memory", choices=("none", "system", "cuda"), default="none")
    parser.add_argument("--model", default="selfie_general", help="segmentation network")
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from bgblur.launcher import TritonServer

    work = Path(tempfile.mkdtemp(prefix="bgblur-bench-video-"))
    clip = args.clip or make_clip(work / f"clip-{args.size}.mp4", args.size, args.frames)
    server = None
    if args.url is None:
        server = TritonServer(segmentation_model=args.model).start()
        url = server.grpc_url
    else:
        url = args.url
    report: dict[str, Any] = {
        "bench": "video",
        "device": device_label(),
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "clip": str(clip),
        "size": args.size if args.clip is None else None,
        "model": args.model,
        "rows": [],
    }
    try:
        for path_name in args.paths.split(","):
            if path_name == "cpu-baseline":
                row = {"path": path_name, "streams": 1}
                row |= cpu_baseline(clip, args.model, args.frames, work)
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                continue
            if not available(path_name):
                row = {"path": path_name, "skipped": "decoder not available here"}
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                continue
            for streams in (int(s) for s in args.streams.split(",")):
                row = {"path": path_name, "streams": streams}
                row |= run_streams(path_name, url, clip, streams, args, work)
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
    finally:
        if server is not None:
            server.stop()
    out = args.out or RESULTS / f"video-{report['device']}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
