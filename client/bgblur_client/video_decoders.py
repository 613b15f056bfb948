"""Client-side video decoders: PyAV on the CPU, or NVDEC / DALI with frames in GPU memory.

``bgblur video --decoder auto|pyav|nvdec|dali``. ``auto`` takes the first present of nvdec
(PyNvVideoCodec + CuPy + a CUDA GPU), dali (``nvidia-dali`` + a GPU), pyav (always).

The GPU decoders yield upright RGB batches ``[B, H, W, 3]`` uint8 as CuPy arrays on the chosen
GPU; with ``--shared-memory cuda`` they reach the server without leaving the GPU, otherwise
they are copied to the host first. Their presentation timestamps come from PyAV demuxing the
same file (packets only, no decode): the i-th frame in display order gets the i-th smallest
packet pts. The audio is copied by the caller with PyAV, as on the CPU path.

- nvdec: PyNvVideoCodec demux + NVDEC decode to NV12 surfaces, our NV12 -> RGB CUDA kernel
  (``bgblur.ops.nv12_to_rgb``, BT.601/709 and range from the stream's tags); needs the
  ``bgblur`` library (this repository) beside the client.
- dali: ``fn.readers.video`` (NVDEC inside DALI, RGB out), sequences of ``batch`` frames.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av

from bgblur_client.errors import UsageError

DECODER_CHOICES: tuple[str, ...] = ("auto", "pyav", "nvdec", "dali")


def _module_present(name: str) -> bool:
    """Whether ``name`` can be imported (a missing parent package counts as absent)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _gpu_present() -> bool:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount()) > 0
    except Exception:
        return False


def decoder_available(name: str) -> bool:
    """Whether decoder ``name`` can run here (its package imports and, for GPU ones, a GPU)."""
    if name == "pyav":
        return True
    if name == "nvdec":
        return (
            _module_present("PyNvVideoCodec")
            and _module_present("bgblur.video.nvdec")
            and _gpu_present()
        )
    if name == "dali":
        return _module_present("nvidia.dali") and _gpu_present()
    raise ValueError(f"decoder must be one of {DECODER_CHOICES}, got {name!r}")


def resolve_decoder(choice: str) -> str:
    """``choice`` or, for ``auto``, the best decoder present (nvdec, dali, pyav)."""
    if choice not in DECODER_CHOICES:
        raise UsageError(f"--decoder must be one of {', '.join(DECODER_CHOICES)}, got {choice!r}")
    if choice == "auto":
        return next(name for name in ("nvdec", "dali", "pyav") if decoder_available(name))
    if not decoder_available(choice):
        need = {"nvdec": "PyNvVideoCodec, the bgblur server library", "dali": "nvidia-dali"}[choice]
        raise UsageError(f"--decoder {choice} needs {need}, CuPy and an NVIDIA GPU on this machine")
    return choice


def display_timestamps(path: Path) -> list[int | None]:
    """Presentation timestamps of the first video stream's frames, in display order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stamps = [p.pts for p in container.demux(stream) if p.dts is not None or p.pts is not None]
    known = sorted(s for s in stamps if s is not None)
    return [*known, *([None] * (len(stamps) - len(known)))]


def gpu_rgb_batches(
    decoder: str,
    path: Path,
    *,
    batch_size: int,
    quarter_turns: int,
    color_matrix: str,
    full_range: bool,
    device: int = 0,
) -> Iterator[tuple[Any, list[int | None]]]:
    """``(upright RGB [B, H, W, 3] uint8 CuPy, source pts)`` batches from a GPU decoder."""
    stamps = display_timestamps(path)
    if decoder == "nvdec":
        from bgblur.video.nvdec import nvdec_batches

        batches = (
            (b.frames_nhwc_u8, b.pts)
            for b in nvdec_batches(
                path, quarter_turns, batch_size, device, color_matrix, full_range
            )
        )
    elif decoder == "dali":
        batches = _dali_batches(path, batch_size, quarter_turns, device)
    else:
        raise ValueError(f"not a GPU decoder: {decoder!r}")
    index = 0
    for frames, _ in batches:
        count = int(frames.shape[0])
        pts = stamps[index : index + count]
        pts += [None] * (count - len(pts))
        index += count
        yield frames, pts


def _dali_batches(
    path: Path, batch_size: int, quarter_turns: int, device: int
) -> Iterator[tuple[Any, list[int | None]]]:
    """DALI's GPU video reader, ``batch_size`` consecutive frames per sequence."""
    import cupy
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=2, device_id=device, prefetch_queue_depth=2)
    def reader() -> Any:
        # No enable_frame_num: DALI 2.4 allows it only with labels or a file list, and the
        # frames are taken in order (step = sequence length), so their numbers are known.
        return fn.readers.video(
            device="gpu",
            filenames=[str(path)],
            sequence_length=batch_size,
            step=batch_size,
            stride=1,
            pad_sequences=True,
            random_shuffle=False,
            skip_vfr_check=True,
            image_type=types.RGB,
            dtype=types.UINT8,
            name="reader",
        )

    pipe = reader()
    pipe.build()
    sequences = int(pipe.epoch_size("reader"))
    first_frame = 0
    for _ in range(sequences):
        (frames,) = pipe.run()
        with cupy.cuda.Device(device):
            sequence = cupy.asarray(frames.as_tensor())[0]  # [F, H, W, 3]
            # pad_sequences zero-fills past the end; the frame count says how many are real.
            real = int(min(batch_size, _frame_count(path) - first_frame))
            sequence = sequence[: max(real, 0)]
            if quarter_turns:
                sequence = cupy.rot90(sequence, quarter_turns, axes=(1, 2))
            batch = cupy.ascontiguousarray(sequence)
        first_frame += batch_size
        if batch.shape[0]:
            yield batch, []


_frame_counts: dict[Path, int] = {}


def _frame_count(path: Path) -> int:
    if path not in _frame_counts:
        _frame_counts[path] = len(display_timestamps(path))
    return _frame_counts[path]
