"""Whole-file video throughput: decode + blur + encode, client side (per decoder) and server side.

Figures, not tests. Starts the embedded Triton server (or uses ``--url``), makes (or takes) one
H.264 clip and, for each path and each number of concurrent streams, blurs the whole file once
per stream at the same time and reports aggregate frames/s (frames of all streams / wall time):

- ``client-pyav`` / ``client-nvdec`` / ``client-dali``: ``bgblur_client.video.blur_video`` with
  that decoder (frames to the server through ``--shared-memory``: ``cuda`` keeps NVDEC/DALI
  frames on the GPU), libx264 encode on the client;
- ``decode-pyav`` / ``decode-nvdec``: decode + blur only, the blurred frames back in this
  process's memory and nothing encoded (``bgblur_client.video.blurred_frames``; NumPy on the
  host, or CuPy in the client's GPU memory for NVDEC with ``--shared-memory cuda``): the
  issue's ">= 1000 frames/s of 1080p over 16 streams" figure;
- ``nvdec-only``: NVDEC + the NV12 -> RGB kernel alone, no blur and no server: the decode
  ceiling of the streams in this process, beside which ``decode-nvdec`` is read;
- ``server``: ``bgblur_client.server_video`` (the compressed file to ``background_blur_video``,
  decode + blur + encode on the server), the model blurring by BLS calls into the ensemble;
- ``server-chunked``: the server side with the file sent as a stream (remuxed to fragmented
  MP4, 64 KiB chunks under one sequence ID, ``bgblur_client.server_video.
  blur_stream_server_side``): what a live stream's chunking costs beside ``server``;
- ``server-inprocess``: the same with the model's ``blur: in_process`` (its own pipeline, no
  BLS hops): a second embedded server started with the model parameter ``blur=in_process`` (the
  setting is per model, not per request), so skipped with ``--url``;
- ``--client-model background_blur_direct``: the client-* and decode-* paths call the one-hop
  model (the whole service in one Python model) instead of the ensemble: one server-side CUDA
  process per instance instead of three models' stubs time-slicing the GPU with the client's
  decoder;
- ``cpu-baseline``: the reference CPU pipeline (``bench/cpu_baseline.py``: OpenCV decode, OpenCV
  pre/post on the CPU, the network with torch on the best device, OpenCV mp4v encode) on the
  same file, one process.

Each path runs once unmeasured first (``--no-warmup`` skips it: first-request costs such as the
in-process pipeline's construction). Paths whose decoder is missing are reported as skipped.
Writes bench/results/video-<device>.json after every row, so a run cut short keeps the rows it
finished; ``--merge`` keeps the rows of an existing file and replaces those measured again
(same path, streams and client processes).

    python bench/video.py --size 1080p --frames 240 --streams 1,4,16 --shared-memory cuda
    python bench/video.py --paths decode-pyav,decode-nvdec --streams 16 --merge
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

SIZES = {"360p": (640, 360), "720p": (1280, 720), "1080p": (1920, 1080), "4k": (3840, 2160)}
PATHS = (
    "client-pyav",
    "client-nvdec",
    "client-dali",
    "decode-pyav",
    "decode-nvdec",
    "nvdec-only",
    "server",
    "server-inprocess",
    "server-chunked",
    "cpu-baseline",
)
CLIENT_MODELS = ("background_blur", "background_blur_direct")
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
    if path_name == "nvdec-only":  # the decode ceiling: NVDEC + NV12 -> RGB, no blur, no server
        from bgblur.video.nvdec import decode_nvdec
        from bgblur_client.decoders import DecodeSettings

        # each batch is complete on the GPU when yielded: the count is of finished frames
        settings = DecodeSettings(batch_frames=args.batch, color_matrix="bt709")
        return sum(len(batch) for batch in decode_nvdec(clip, settings))
    if path_name in ("server", "server-inprocess"):
        from bgblur_client.server_video import blur_video_server_side

        return blur_video_server_side(
            url, clip, out, batch_size=args.batch, progress=False, timeout_s=600
        ).frames
    if path_name == "server-chunked":  # the same file as a stream: 64 KiB chunks, fMP4
        from bgblur_client.server_video import blur_stream_server_side

        data = fragmented_copy(clip, out.parent).read_bytes()
        pieces = (data[start : start + CHUNK_BYTES] for start in range(0, len(data), CHUNK_BYTES))
        return blur_stream_server_side(
            url, pieces, out, batch_size=args.batch, progress=False, timeout_s=600
        ).frames
    from bgblur_client.transport import BlurClient
    from bgblur_client.video import blur_video, blurred_frames

    shared = args.shared_memory
    with BlurClient(url, model=args.client_model, shared_memory=shared, timeout_s=600) as client:
        if path_name.startswith("decode-"):
            batches = blurred_frames(
                client,
                clip,
                batch_size=args.batch,
                in_flight=args.in_flight,
                decoder=path_name.removeprefix("decode-"),
            )
            return sum(len(timestamps) for timestamps, _ in batches)
        return blur_video(
            client,
            clip,
            out,
            batch_size=args.batch,
            in_flight=args.in_flight,
            progress=False,
            decoder=path_name.removeprefix("client-"),
        ).frames


def timed_streams(
    path_name: str,
    url: str,
    clip: Path,
    streams: int,
    args: argparse.Namespace,
    work: Path,
    first: int = 0,
    barrier: Any = None,
) -> tuple[int, float, float]:
    """``streams`` streams at once in threads of this process: ``(frames, start, end)`` with
    ``time.monotonic`` (one clock for every process of the host); after ``barrier`` if given."""
    if barrier is not None:
        barrier.wait()
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=streams) as pool:
        futures = [
            pool.submit(one_stream, path_name, url, clip, work / f"{path_name}-{i}.mp4", args)
            for i in range(first, first + streams)
        ]
        frames = sum(f.result() for f in futures)
    return frames, started, time.monotonic()


def run_streams(
    path_name: str, url: str, clip: Path, streams: int, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """The streams in this process (threads), or spread over ``--client-processes`` processes
    that start together (a barrier): whether one Python client process is what limits."""
    processes = max(1, min(args.client_processes, streams))
    if processes == 1:
        frames, started, ended = timed_streams(path_name, url, clip, streams, args, work)
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager:
            barrier = manager.Barrier(processes)
            shares = [streams // processes + (i < streams % processes) for i in range(processes)]
            firsts = [sum(shares[:i]) for i in range(processes)]
            with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
                futures = [
                    pool.submit(timed_streams, path_name, url, clip, n, args, work, first, barrier)
                    for n, first in zip(shares, firsts, strict=True)
                ]
                results = [f.result() for f in futures]
        frames = sum(r[0] for r in results)
        started, ended = min(r[1] for r in results), max(r[2] for r in results)
    seconds = ended - started
    return {
        "frames": frames,
        "seconds": round(seconds, 3),
        "frames_per_s": frames / seconds,
        "client_processes": processes,
    }


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


CHUNK_BYTES = 1 << 16
_FRAGMENTED_MP4 = {"movflags": "frag_keyframe+empty_moov+default_base_moof"}


def fragmented_copy(clip: Path, work: Path) -> Path:
    """``clip`` remuxed (no re-encode) into a fragmented MP4 in the folder ``work`` (not beside
    a ``--clip`` of the user's), made once: a stream the server can decode front to back
    (``server-chunked``)."""
    out = work / f"{clip.stem}-fragmented.mp4"
    if out.exists():
        return out
    import av

    # one partial file per process and thread: streams of one row may start together
    partial = out.with_suffix(f".{os.getpid()}-{threading.get_ident()}.part")
    with (
        av.open(str(clip)) as source,
        av.open(str(partial), "w", format="mp4", options=_FRAGMENTED_MP4) as target,
    ):
        mapping = {
            s: target.add_stream_from_template(s)
            for s in source.streams
            if s.type in ("video", "audio")
        }
        for packet in source.demux(list(mapping)):
            if packet.dts is None:
                continue
            packet.stream = mapping[packet.stream]
            target.mux(packet)
    partial.replace(out)
    return out


def available(path_name: str) -> bool:
    if path_name in ("client-nvdec", "client-dali", "decode-nvdec", "nvdec-only"):
        from bgblur_client.decoders import DECODERS

        decoder = "nvdec" if path_name == "nvdec-only" else path_name.split("-", 1)[1]
        return DECODERS[decoder].available()
    return True


def start_server(
    model: str,
    video_blur: str | None = None,
    log_path: Path | None = None,
    direct_model: bool = False,
) -> Any:
    """The embedded server; ``video_blur`` sets ``background_blur_video``'s ``blur``; its log
    is kept at ``log_path`` when given; ``direct_model`` also serves ``background_blur_direct``."""
    from bgblur.server.launcher import TritonServer

    return TritonServer(
        segmentation_model=model,
        log_path=log_path,
        direct_model=direct_model,
        model_parameters={"blur": video_blur} if video_blur is not None else {},
    ).start()


def merged_rows(earlier: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``earlier`` with the rows measured again (same path, streams, client processes and
    client model) replaced, then the rest."""

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (
            row["path"],
            row.get("streams"),
            row.get("client_processes", 1),
            row.get("client_model", CLIENT_MODELS[0]),
        )

    fresh = {key(row): row for row in rows}
    kept = [fresh.pop(key(row), row) for row in earlier]
    return kept + [row for row in rows if key(row) in fresh]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, help="input file (default: a generated sample)")
    parser.add_argument(
        "--server-log-dir", type=Path, help="keep the embedded servers' logs in this folder"
    )
    parser.add_argument("--size", choices=tuple(SIZES), default="1080p")
    parser.add_argument("--frames", type=int, default=240)
    parser.add_argument("--streams", default="1,4,16", help="comma list of concurrent streams")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma list of {PATHS}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--in-flight", type=int, default=2)
    parser.add_argument(
        "--client-processes",
        type=int,
        default=1,
        help="spread each row's streams over this many client processes (default: threads of one)",
    )
    parser.add_argument("--shared-memory", choices=("none", "system", "cuda"), default="none")
    parser.add_argument("--model", default="selfie_general", help="segmentation network")
    parser.add_argument(
        "--client-model",
        choices=CLIENT_MODELS,
        default=CLIENT_MODELS[0],
        help="the Triton model the client-* and decode-* paths call: the ensemble, or the "
        "one-hop model (one Python model, no hops between models; the embedded server then "
        "serves it too)",
    )
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-warmup", action="store_true", help="measure the first run too")
    parser.add_argument(
        "--merge", action="store_true", help="keep the other rows of an existing --out file"
    )
    args = parser.parse_args()
    paths = args.paths.split(",")
    unknown = sorted(set(paths) - set(PATHS))
    if unknown:
        parser.error(f"unknown paths {unknown}; choose from {PATHS}")
    # the generated clip and every output go to a temporary folder, removed however the run ends
    with tempfile.TemporaryDirectory(prefix="bgblur-bench-video-") as work:
        measure(args, paths, Path(work))


def measure(args: argparse.Namespace, paths: list[str], work: Path) -> None:
    """Every path of ``paths`` measured as ``args`` says, the rows written to the report after
    each one; ``work`` holds the generated clip and the outputs."""
    clip = args.clip or make_clip(work / f"clip-{args.size}.mp4", args.size, args.frames)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    report: dict[str, Any] = {
        "bench": "video",
        "device": device_label(),
        "date": datetime.date.today().isoformat(),
        "host": platform.node(),
        "command": command,
        "clip": str(clip),
        "size": args.size if args.clip is None else None,
        "model": args.model,
        "client_model": args.client_model,
        "rows": [],
    }
    out = args.out or RESULTS / f"video-{report['device']}.json"
    earlier: list[dict[str, Any]] = []
    if args.merge and out.exists():
        previous = json.loads(out.read_text())
        earlier = previous.get("rows", [])
        commands = [*previous.get("earlier_commands", []), previous.get("command")]
        report["earlier_commands"] = [c for c in commands if c]
    rows: list[dict[str, Any]] = []

    def add(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        report["rows"] = merged_rows(earlier, rows)
        out.write_text(json.dumps(report, indent=2) + "\n")  # after every row

    servers: dict[str, Any] = {}

    def url_for(path_name: str) -> str | None:
        blur = "in_process" if path_name == "server-inprocess" else "default"
        if args.url is not None:
            return None if blur == "in_process" else args.url
        if blur not in servers:
            log_path = None
            if args.server_log_dir is not None:
                args.server_log_dir.mkdir(parents=True, exist_ok=True)
                log_path = args.server_log_dir / f"tritonserver-{blur}.log"
            servers[blur] = start_server(
                args.model,
                "in_process" if blur == "in_process" else None,
                log_path,
                direct_model=args.client_model != CLIENT_MODELS[0],
            )
        return servers[blur].grpc_url

    try:
        for path_name in paths:
            if path_name == "cpu-baseline":
                row = {"path": path_name, "streams": 1}
                add(row | cpu_baseline(clip, args.model, args.frames, work))
                continue
            if not available(path_name):
                add({"path": path_name, "skipped": "decoder not available here"})
                continue
            url = "" if path_name == "nvdec-only" else url_for(path_name)
            if url is None:
                add({"path": path_name, "skipped": "needs the embedded server (not --url)"})
                continue
            try:  # a path that fails is recorded as such; the other paths still run
                if not args.no_warmup:
                    run_streams(path_name, url, clip, 1, args, work)
                for streams in (int(s) for s in args.streams.split(",")):
                    row = {"path": path_name, "streams": streams}
                    if path_name.startswith(("client-", "decode-")):
                        row["client_model"] = args.client_model
                    if path_name.startswith("decode-"):
                        gpu_frames = path_name == "decode-nvdec" and args.shared_memory == "cuda"
                        row["frames_in"] = (
                            "client GPU memory" if gpu_frames else "client host memory"
                        )
                    row |= run_streams(path_name, url, clip, streams, args, work)
                    row["warmup"] = not args.no_warmup
                    add(row)
            except Exception as exc:  # reported in the row and on stderr
                traceback.print_exc()
                add({"path": path_name, "error": f"{type(exc).__name__}: {exc}"})
            if path_name == "server-inprocess" and "in_process" in servers:
                servers.pop("in_process").stop()  # free its memory and cores
    finally:
        for server in servers.values():
            server.stop()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
