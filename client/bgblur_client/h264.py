"""H.264 (libx264, yuv420p) encoding shared by the video writer and the sample generator.

Colour handling: an RGB frame is converted to YUV with the matrix and range in its
:class:`ColorTags`, and the same tags are written into the stream, so a player converts it
back the way it was made. Copying the source's tags therefore round-trips colours exactly
(up to compression), whatever the source used.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc

CRF = 18
PRESET = "medium"
PIXEL_FORMAT = "yuv420p"

# FFmpeg's AVColorSpace code for BT.709; PyAV has no enum for AVColorSpace.
_AVCOL_SPC_BT709 = 1


@dataclass(frozen=True)
class ColorTags:
    """Colour metadata of a video stream, as FFmpeg ``AVCOL_*`` integer codes."""

    colorspace: int
    color_range: int
    color_primaries: int
    color_trc: int

    @classmethod
    def of_frame(cls, frame: av.VideoFrame) -> ColorTags:
        """The tags a decoded frame carries (``UNSPECIFIED`` ones included)."""
        return cls(
            colorspace=int(frame.colorspace),
            color_range=int(frame.color_range),
            color_primaries=int(frame.color_primaries),
            color_trc=int(frame.color_trc),
        )

    def apply_to(self, target: av.VideoFrame | av.video.codeccontext.VideoCodecContext) -> None:
        """Set the four tags on a frame or an encoder context."""
        target.colorspace = self.colorspace
        target.color_range = self.color_range
        target.color_primaries = self.color_primaries
        target.color_trc = self.color_trc


BT709_LIMITED = ColorTags(
    colorspace=_AVCOL_SPC_BT709,
    color_range=int(ColorRange.MPEG),
    color_primaries=int(ColorPrimaries.BT709),
    color_trc=int(ColorTrc.BT709),
)


def add_h264_stream(
    container: av.container.OutputContainer,
    *,
    width: int,
    height: int,
    rate: Fraction,
    time_base: Fraction,
    color: ColorTags,
    rotation: int = 0,
    sample_aspect_ratio: Fraction | None = None,
    threads: int = 0,
    crf: int = CRF,
    preset: str = PRESET,
) -> av.video.stream.VideoStream:
    """Add a libx264 yuv420p stream (CRF 18, preset medium by default) to ``container``.

    Args:
        container: Output container, before anything was muxed into it.
        width: Frame width in pixels; must be even (yuv420p halves the chroma).
        height: Frame height in pixels; must be even.
        rate: Nominal frame rate (written as the stream's average rate).
        time_base: Unit of the ``pts`` given to :func:`encode_image`.
        color: Colour tags written to the stream and used for RGB->YUV conversion.
        rotation: Counter-clockwise display rotation in degrees stored as metadata.
        sample_aspect_ratio: Pixel aspect ratio of anamorphic sources; ``None`` for square.
        threads: Encoder threads; 0 lets x264 choose. Output is bit-identical across runs
            only for a fixed non-zero count.
        crf: Constant rate factor 0..51 (lower: better and larger).
        preset: libx264 preset (``ultrafast`` .. ``placebo``).

    Returns:
        The new stream.
    """
    if width % 2 or height % 2:
        raise ValueError(f"{PIXEL_FORMAT} needs an even width and height, got {width}x{height}")
    stream = container.add_stream("libx264", rate=rate, options={"crf": str(crf), "preset": preset})
    stream.width = width
    stream.height = height
    stream.pix_fmt = PIXEL_FORMAT
    stream.codec_context.time_base = time_base
    stream.codec_context.thread_count = threads
    color.apply_to(stream.codec_context)
    if sample_aspect_ratio:
        stream.codec_context.sample_aspect_ratio = sample_aspect_ratio
    if rotation:
        stream.set_display_rotation(rotation)
    return stream


def encode_image(
    stream: av.video.stream.VideoStream, image_u8: np.ndarray, *, pts: int, color: ColorTags
) -> list[av.Packet]:
    """Encode one frame; returns the packets the encoder emitted (possibly none).

    Args:
        stream: A stream made by :func:`add_h264_stream`.
        image_u8: uint8 RGB ``[H, W, 3]`` or grayscale ``[H, W]`` at the stream's size.
        pts: Presentation time in the stream's codec ``time_base``.
        color: The stream's colour tags (selects the RGB->YUV matrix and range).
    """
    pixel_format = "rgb24" if image_u8.ndim == 3 else "gray"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_u8), format=pixel_format)
    color.apply_to(frame)
    frame.pts = pts
    return stream.encode(frame)
