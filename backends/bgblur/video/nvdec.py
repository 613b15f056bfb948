"""NVDEC decode through PyNvVideoCodec: frames land in GPU memory as NV12, then RGB on the GPU.

The ``nvdec`` decoder of ``bgblur_client.decoders.DECODERS`` (:func:`decode_nvdec`, the
interface's ``VideoDecoder``, yielding ``DecodedBatch`` es): used by the server-side video model
on a GPU instance (``decoder="nvdec"``) and by the client's ``--decoder nvdec``. It lives here,
in the server library, beside the NV12 kernel it needs. PyNvVideoCodec (2.x) demuxes from a
file, or from memory (a callback feeds it the file's bytes), and decodes to NV12 surfaces in
device memory; each surface is taken zero-copy through DLPack (``[H * 3 // 2, W]`` uint8,
pitched) and converted by our NV12 -> RGB kernel (``bgblur.ops.nv12_to_rgb``, BT.601/709 and
range from the stream's metadata).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bgblur.errors import ModelUnavailableError
from bgblur.video.cuda_context import primary_context, thread_context_kept
from bgblur_client.decoders import DecodedBatch, DecodeSettings, VideoSource


def _import_nvc() -> Any:
    try:
        import PyNvVideoCodec as nvc  # noqa: N813
    except ImportError:
        raise ModelUnavailableError("PyNvVideoCodec is not installed: no NVDEC decode") from None
    return nvc


class _BufferFeeder:
    """Feeds the demuxer the file's bytes, one buffer at a time (PyNvVideoCodec's callback):
    from memory, or from a file object (a chunked stream's reader, which waits for its next
    chunk: ``bgblur.video.growing``)."""

    def __init__(self, data: bytes | memoryview | BinaryIO) -> None:
        self._reader = data if hasattr(data, "read") else None
        self._data = memoryview(b"") if self._reader is not None else memoryview(data).cast("B")
        self._position = 0

    def __call__(self, demuxer_buffer: Any) -> int:
        if self._reader is not None:
            chunk = self._reader.read(len(demuxer_buffer))
            demuxer_buffer[: len(chunk)] = chunk
            return len(chunk)
        remaining = len(self._data) - self._position
        size = min(remaining, len(demuxer_buffer))
        if size <= 0:
            return 0
        demuxer_buffer[:size] = self._data[self._position : self._position + size]
        self._position += size
        return size


def _nv12_view(frame: Any, cupy: Any) -> Any:
    """A decoded NV12 surface as a CuPy ``[H * 3 // 2, W]`` uint8 view (no copy)."""
    try:
        surface = cupy.from_dlpack(frame)
    except Exception:  # older bindings: the CUDA array interface of the planes
        planes = frame.cuda()
        luma = cupy.asarray(planes[0])
        chroma = cupy.asarray(planes[1])
        surface = cupy.concatenate(
            [luma.reshape(luma.shape[0], -1), chroma.reshape(chroma.shape[0], -1)]
        )
    if surface.ndim == 3 and surface.shape[-1] == 1:
        surface = surface[..., 0]
    return surface


def _frame_pts(frame: Any) -> int | None:
    for name in ("getPTS", "get_pts"):
        getter = getattr(frame, name, None)
        if callable(getter):
            return int(getter())
    for name in ("pts", "timestamp"):
        value = getattr(frame, name, None)
        if value is not None:
            return int(value)
    return None


def nvdec_decode_nv12(
    source: bytes | memoryview | BinaryIO | Path, gpu_index: int = 0
) -> Iterator[tuple[Any, int | None]]:
    """``(nv12 CuPy [H * 3 // 2, W] uint8 view, pts)`` per frame, in display order.

    ``source`` is a file path, the file's bytes (demuxed from memory) or a readable file
    object (read front to back). The view is valid
    until the next frame is decoded (the decoder reuses its surfaces): copy or convert it
    before asking for the next. The decoder works in the device's primary context (the one
    CuPy, torch and Triton use), named explicitly rather than left to PyNvVideoCodec
    (:mod:`bgblur.video.cuda_context`).
    """
    nvc = _import_nvc()
    import cupy

    if isinstance(source, Path):
        demuxer = nvc.CreateDemuxer(filename=str(source))
    else:
        demuxer = nvc.CreateDemuxer(_BufferFeeder(source))
    # No device context held across a yield: a generator may be closed from another thread
    # (the video model's session thread closing its decode thread's generator), where CuPy's
    # thread-local device stack has nothing to pop (IndexError).
    with cupy.cuda.Device(gpu_index), thread_context_kept("opening the NVDEC decoder"):
        decoder = nvc.CreateDecoder(
            gpuid=gpu_index,
            codec=demuxer.GetNvCodecId(),
            cudacontext=primary_context(gpu_index),
            cudastream=0,
            usedevicememory=True,
        )
    for packet in demuxer:
        with cupy.cuda.Device(gpu_index):
            views = [(_nv12_view(f, cupy), _frame_pts(f)) for f in decoder.Decode(packet)]
        yield from views
    flush = getattr(decoder, "Flush", None) or getattr(decoder, "flush", None)
    if callable(flush):
        with cupy.cuda.Device(gpu_index):
            views = [(_nv12_view(f, cupy), _frame_pts(f)) for f in flush() or ()]
        yield from views


def decode_nvdec(source: VideoSource, settings: DecodeSettings) -> Iterator[DecodedBatch]:
    """Upright RGB batches ``[B, H, W, 3]`` uint8, CuPy on GPU ``settings.gpu_index``, with
    the frames' pts: the ``VideoDecoder`` of ``DECODERS["nvdec"]``
    (:mod:`bgblur_client.decoders`).

    ``source`` is a file path, the file's bytes (demuxed from memory) or a callable returning
    a readable file object (read front to back). NV12 -> RGB with ``settings.color_matrix`` and
    ``settings.full_range``; each batch is complete on the GPU when yielded (one host
    synchronisation per batch, on the decoding thread). No audio (``decode_video`` reads it with
    PyAV).

    Raises:
        VideoDecodeError: the frame size changes mid-stream (whatever
            ``settings.on_size_change``: NVDEC's frames are not scaled).
        ModelUnavailableError: PyNvVideoCodec is not installed.
    """
    import cupy

    from bgblur.ops.nv12 import nv12_to_rgb

    gpu_index, batch_frames = settings.gpu_index, settings.batch_frames
    if callable(source):
        data: bytes | memoryview | BinaryIO | Path = source()
    elif isinstance(source, (str, Path)):
        data = Path(source)
    else:
        data = memoryview(source).cast("B")
    # The batch's NV12 frames, gathered out of the decoder's surfaces (which it reuses) into one
    # buffer, reused from batch to batch: the conversion below has finished reading it when a
    # batch is yielded (synchronised), so no frame allocates and nothing is stacked.
    batch_nv12: Any = None
    count = 0
    pts: list[int | None] = []

    def convert() -> DecodedBatch:
        with cupy.cuda.Device(gpu_index):
            rgb = nv12_to_rgb(
                batch_nv12[:count],
                matrix=settings.color_matrix,
                full_range=settings.full_range,
            )
            if settings.quarter_turns:
                rgb = cupy.rot90(rgb, settings.quarter_turns, axes=(1, 2))
            rgb = cupy.ascontiguousarray(rgb)
            # The hand-off: the batch is complete before it leaves this generator, for a reader
            # on another thread or in another process with a stream of its own (the video
            # model's BLS request into the ensemble); and the NV12 buffer is free again.
            cupy.cuda.get_current_stream().synchronize()
            return DecodedBatch(rgb, list(pts))

    for surface, frame_pts in nvdec_decode_nv12(data, gpu_index):
        with cupy.cuda.Device(gpu_index):
            if batch_nv12 is None:
                batch_nv12 = cupy.empty((batch_frames, *surface.shape), dtype=cupy.uint8)
            elif batch_nv12.shape[1:] != surface.shape:
                raise settings.size_changed(_nv12_size(batch_nv12[0]), _nv12_size(surface))
            batch_nv12[count] = surface  # one copy out of the (pitched) decoder surface
        count += 1
        pts.append(frame_pts)
        if count == batch_frames:
            yield convert()
            count, pts = 0, []
    if count:
        yield convert()


def _nv12_size(nv12: Any) -> tuple[int, int]:
    """(width, height) of an NV12 ``[H * 3 // 2, W]`` frame."""
    return int(nv12.shape[1]), int(nv12.shape[0]) * 2 // 3
