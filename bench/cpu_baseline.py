"""The reference CPU pipeline, measured: OpenCV decode, OpenCV pre/post on the CPU, the network with
PyTorch on the GPU (fp32 eager, as the CV-CUDA blog's baseline), OpenCV encode; batch 1.

One process gives the per-stage latency; ``--processes N`` runs N single-threaded copies at once
(each on its own copy of the clip) for the best aggregate throughput on the box (all cores).

    python bench/cpu_baseline.py --size 1080p --frames 120 --processes 1,16 --out J.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920)}


def make_clip(path: Path, size: str, frames: int) -> Path:
    """A slow zoom over scikit-image's astronaut photo, written with OpenCV (mp4v)."""
    import skimage.data

    height, width = SIZES[size]
    photo = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (width, height))
    for index in range(frames):
        crop = int(photo.shape[0] * (1.0 - 0.3 * index / max(frames - 1, 1)))
        top = (photo.shape[0] - crop) // 2
        frame = photo[top : top + crop, top : top + crop]
        writer.write(cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR))
    writer.release()
    return path


def run_one(clip: str, model: str, frames_limit: int, threads: int, out_dir: str) -> dict:
    """Decode -> pre -> network -> post -> encode, frame by frame; per-stage seconds."""
    import torch

    from bgblur.device import Device
    from bgblur.models.registry import get_model_spec
    from bgblur.parameters import BlurParams
    from bgblur.stages.postprocess import Postprocess
    from bgblur.stages.preprocess import Preprocess

    cv2.setNumThreads(threads)
    torch.set_num_threads(max(threads, 1))
    spec = get_model_spec(model)
    pre = Preprocess(spec, Device("cpu"))
    post = Postprocess(Device("cpu"))
    params = BlurParams()
    use_gpu = torch.cuda.is_available()
    device = "cuda" if use_gpu else "cpu"
    network = spec.build(None).eval().to(device)
    capture = cv2.VideoCapture(clip)
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    writer = cv2.VideoWriter(
        os.path.join(out_dir, f"out-{os.getpid()}.mp4"),
        cv2.VideoWriter_fourcc(*"mp4v"),
        fps,
        (width, height),
    )
    stages = dict.fromkeys(("decode", "pre", "inference", "post", "encode"), 0.0)
    count = 0
    with torch.inference_mode():
        while count < frames_limit:
            t0 = time.perf_counter()
            ok, bgr = capture.read()
            if not ok:
                break
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[None]
            t1 = time.perf_counter()
            inputs = pre(rgb)
            t2 = time.perf_counter()
            x = torch.from_numpy(inputs).float().to(device)
            probability = network(x).float().cpu().numpy()
            t3 = time.perf_counter()
            blurred, _ = post(rgb, probability, params)
            t4 = time.perf_counter()
            writer.write(cv2.cvtColor(blurred[0], cv2.COLOR_RGB2BGR))
            t5 = time.perf_counter()
            for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                stages[name] += dt
            count += 1
    writer.release()
    capture.release()
    total = sum(stages.values())
    return {
        "frames": count,
        "seconds": total,
        "inference_device": "cuda" if use_gpu else "cpu",
        "ms_per_frame": {k: 1e3 * v / max(count, 1) for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="1080p")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--model", default="selfie_general")
    parser.add_argument("--processes", default="1", help="comma list, e.g. 1,16")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bgblur-cpu-baseline-"))
    clip = make_clip(work / "clip.mp4", args.size, args.frames)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "model": args.model,
        "size": args.size,
        "command": "python bench/cpu_baseline.py " + " ".join(__import__("sys").argv[1:]),
        "runs": [],
    }
    for processes in map(int, args.processes.split(",")):
        threads = 0 if processes == 1 else 1  # one process: OpenCV's own threads (all cores)
        ctx = multiprocessing.get_context("spawn")
        start = time.perf_counter()
        with ctx.Pool(processes) as pool:
            results = pool.starmap(
                run_one, [(str(clip), args.model, args.frames, threads, str(work))] * processes
            )
        wall = time.perf_counter() - start
        frames = sum(r["frames"] for r in results)
        row = {
            "processes": processes,
            "frames": frames,
            # Throughput over the processes' own loop time (start-up excluded), summed.
            "frames_per_s": sum(r["frames"] / r["seconds"] for r in results),
            "wall_s_incl_startup": wall,
            "ms_per_frame_one_process": results[0]["ms_per_frame"],
            "inference_device": results[0]["inference_device"],
        }
        report["runs"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
