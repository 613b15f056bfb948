"""Trim and re-encode the source videos into the short clips of this folder (PyAV, libx264).

Each clip keeps its source's resolution and frame rate (no rescaling: the network resamples to
its own input anyway), keeps frames ``[first, first + count)`` of the source's decode order, and
is written as H.264 (libx264, CRF 18, preset slow, yuv420p, no audio). Sources are named in
README.md; run from the repository root::

    .venv/bin/python bench/data/clips/make_clips.py \\
        --carphone /path/to/carphone_pristine.mp4 --foreman /path/to/foreman_cif.mp4 \\
        --tears_of_steel_bridge /path/to/clip_01_tears_of_steel.mp4
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path

import av

HERE = Path(__file__).resolve().parent

# name -> (first frame, frame count) of the source kept in the clip.
TRIMS: dict[str, tuple[int, int]] = {
    "carphone": (0, 120),  # the whole source: 4 s
    "foreman": (0, 150),  # 5 s, before the camera pans away from the person
    "tears_of_steel_bridge": (21, 44),  # one shot, between the source's cuts at 21 and 65
}


def trim_reencode(source: Path, target: Path, first: int, count: int) -> int:
    """Write frames ``[first, first + count)`` of ``source`` to ``target``; returns the count."""
    with av.open(str(source)) as inp:
        stream_in = inp.streams.video[0]
        rate = Fraction(stream_in.average_rate)
        with av.open(str(target), "w") as out:
            stream = out.add_stream("libx264", rate=rate)
            stream.width, stream.height = stream_in.width, stream_in.height
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "slow"}
            written = 0
            for index, frame in enumerate(inp.decode(stream_in)):
                if index < first:
                    continue
                if written == count:
                    break
                image = frame.to_ndarray(format="yuv420p")
                picture = av.VideoFrame.from_ndarray(image, format="yuv420p")
                picture.pts = written
                picture.time_base = 1 / rate
                for packet in stream.encode(picture):
                    out.mux(packet)
                written += 1
            for packet in stream.encode():
                out.mux(packet)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in TRIMS:
        parser.add_argument(f"--{name}", type=Path, help=f"source video of {name}.mp4")
    args = parser.parse_args(argv)
    for name, (first, count) in TRIMS.items():
        source = getattr(args, name)
        if source is None:
            continue
        target = HERE / f"{name}.mp4"
        written = trim_reencode(source, target, first, count)
        print(f"{target}: {written} frames, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main()
