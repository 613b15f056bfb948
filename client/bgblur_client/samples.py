"""Deterministic sample inputs: a photo of a person and a short clip made from it.

The clip is a slow Ken Burns pan and zoom over ``skimage.data.astronaut()`` (a portrait
photo, so the segmentation has a real person to find), H.264 in MP4 with an optional quiet
sine-tone AAC track. The pictures are generated deterministically; the encoded bytes can differ
between runs (seen under load), so compare clips by what they decode to.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from bgblur_client.errors import ClientError, UsageError
from bgblur_client.h264 import BT709_LIMITED, add_h264_stream, encode_image

AUDIO_SAMPLE_RATE = 48_000
AUDIO_TONE_HZ = 440.0
AUDIO_AMPLITUDE = 0.05  # about -26 dBFS: audible, not loud
_AUDIO_FADE_S = 0.01  # fade the tone in and out so it starts and stops without a click
_ZOOM_END = 1.3  # the window shrinks to 1/1.3 of its starting size
_FACE_CENTER_XY = (250.0, 170.0)  # the astronaut's face in the 512x512 photo
# x264's output depends on its thread count; fixing it keeps runs comparable.
_ENCODER_THREADS = 4


def sample_image_rgb() -> np.ndarray:
    """The astronaut portrait (Eileen Collins) from scikit-image, uint8 RGB ``[512, 512, 3]``.

    Raises:
        UsageError: scikit-image is not installed (it is the ``samples`` extra of the client:
            ``pip install 'bgblur-client[samples]'`` or ``pip install scikit-image``).
    """
    try:
        import skimage.data
    except ModuleNotFoundError:
        raise UsageError(
            "the sample photo comes from scikit-image, which is not installed: "
            "pip install scikit-image (or the client's 'samples' extra)"
        ) from None
    return skimage.data.astronaut()


def make_sample_video(
    path: str | Path,
    *,
    width: int = 1280,
    height: int = 720,
    seconds: float = 3.0,
    fps: int = 30,
    audio: bool = True,
) -> Path:
    """Write a sample clip and return its path.

    Args:
        path: Output file; the container follows its extension (``.mp4`` recommended).
        width: Frame width in pixels (even, as yuv420p requires).
        height: Frame height in pixels (even).
        seconds: Duration; the clip has ``round(seconds * fps)`` frames.
        fps: Frame rate (frames per second).
        audio: Add a stereo 48 kHz AAC track with a quiet 440 Hz tone.

    Raises:
        ValueError: Invalid size, duration or rate.
        ClientError: The file cannot be written.
    """
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and >= 2, got {width}x{height}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    frame_count = round(seconds * fps)
    if frame_count < 1:
        raise ValueError(f"{seconds} s at {fps} frames/s gives no frames")
    path = Path(path)
    photo_rgb = sample_image_rgb()
    tone_cs = _sine_tone_cs(frame_count / fps) if audio else None
    try:
        with av.open(str(path), "w") as container:
            video = add_h264_stream(
                container,
                width=width,
                height=height,
                rate=Fraction(fps),
                time_base=Fraction(1, fps),
                color=BT709_LIMITED,
                threads=_ENCODER_THREADS,
            )
            audio_stream = None
            if tone_cs is not None:
                audio_stream = container.add_stream("aac", rate=AUDIO_SAMPLE_RATE)
                audio_stream.layout = "stereo"
            for index in range(frame_count):
                progress = index / (frame_count - 1) if frame_count > 1 else 0.0
                frame_rgb = _ken_burns_frame(photo_rgb, progress, width, height)
                container.mux(encode_image(video, frame_rgb, pts=index, color=BT709_LIMITED))
                if audio_stream is not None:
                    start = index * AUDIO_SAMPLE_RATE // fps
                    stop = (index + 1) * AUDIO_SAMPLE_RATE // fps
                    chunk = av.AudioFrame.from_ndarray(
                        np.ascontiguousarray(tone_cs[:, start:stop]), format="fltp", layout="stereo"
                    )
                    chunk.sample_rate = AUDIO_SAMPLE_RATE
                    chunk.pts = start
                    container.mux(audio_stream.encode(chunk))
            container.mux(video.encode(None))
            if audio_stream is not None:
                container.mux(audio_stream.encode(None))
    except (OSError, av.FFmpegError) as exc:
        raise ClientError(f"cannot write sample video '{path}': {exc}") from exc
    return path


def _ken_burns_frame(photo_rgb: np.ndarray, progress: float, width: int, height: int) -> np.ndarray:
    """Render one ``[height, width, 3]`` uint8 frame of the pan/zoom at ``progress`` in [0, 1].

    The crop window has the output's aspect ratio, starts as the largest such window centred
    on the photo and eases towards the face while shrinking by ``_ZOOM_END``.
    """
    photo_h, photo_w = photo_rgb.shape[:2]
    aspect = width / height
    base_w, base_h = (photo_w, photo_w / aspect) if aspect >= 1 else (photo_h * aspect, photo_h)
    eased = (1.0 - math.cos(math.pi * progress)) / 2.0
    zoom = 1.0 + (_ZOOM_END - 1.0) * eased
    window_w, window_h = base_w / zoom, base_h / zoom
    center_x = photo_w / 2 + (_FACE_CENTER_XY[0] - photo_w / 2) * eased
    center_y = photo_h / 2 + (_FACE_CENTER_XY[1] - photo_h / 2) * eased
    # Keep the window inside the photo.
    center_x = min(max(center_x, window_w / 2), photo_w - window_w / 2)
    center_y = min(max(center_y, window_h / 2), photo_h - window_h / 2)
    scale = width / window_w
    photo_to_frame = np.array(
        [
            [scale, 0.0, -(center_x - window_w / 2) * scale],
            [0.0, scale, -(center_y - window_h / 2) * scale],
        ]
    )
    return cv2.warpAffine(
        photo_rgb,
        photo_to_frame,
        (width, height),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT,
    )


def _sine_tone_cs(seconds: float) -> np.ndarray:
    """A quiet stereo sine tone, float32 planar ``[2, samples]`` in [-1, 1]."""
    sample_count = round(seconds * AUDIO_SAMPLE_RATE)
    t = np.arange(sample_count) / AUDIO_SAMPLE_RATE
    tone = AUDIO_AMPLITUDE * np.sin(2 * np.pi * AUDIO_TONE_HZ * t)
    fade = np.clip(np.minimum(t, seconds - t) / _AUDIO_FADE_S, 0.0, 1.0)
    return np.stack([tone * fade, tone * fade]).astype(np.float32)
