"""Encoder options and output containers, the same for client-side and server-side video.

``bgblur video`` takes ``--crf``, ``--preset`` and ``--encoder`` on both paths: client side they
set the encoder here (libx264, NVENC or, for ``.webm``, VP9 through libvpx); with
``--server-side`` they are sent as the video model's request parameters of the same names.

Containers, by the output's extension:

===========  ==============================  ==============================================
extension    client side                     ``--server-side``
===========  ==============================  ==============================================
.mp4 .m4v    H.264                           H.264, the server's fragmented MP4 as it is
.mov .mkv    H.264                           H.264, remuxed here from the server's MP4
.webm        VP9 (libvpx-vp9), Opus audio    refused: the server encodes H.264, which WebM
                                             cannot hold
===========  ==============================  ==============================================

NVENC (``--encoder nvenc`` or ``auto`` where a GPU encoder opens) runs through the server
library's encoder (:mod:`bgblur.video.encoders`, PyNvVideoCodec); a client installed without
it encodes with libx264.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from bgblur_client.errors import UsageError

ENCODER_CHOICES: tuple[str, ...] = ("auto", "nvenc", "x264")
# libx264's presets, fastest first; NVENC takes the matching P1..P7 preset.
X264_PRESETS: tuple[str, ...] = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)
DEFAULT_CRF = 18
DEFAULT_PRESET = "medium"
MAX_H264_CRF = 51
MAX_VP9_CRF = 63
H264_CONTAINERS: tuple[str, ...] = (".mp4", ".m4v", ".mov", ".mkv")
VP9_CONTAINERS: tuple[str, ...] = (".webm",)
VP9_ENCODER = "libvpx-vp9"
# libvpx's speed setting (cpu-used, 0 slowest .. 8 fastest) for each x264 preset.
_VP9_SPEED = {
    "ultrafast": 8,
    "superfast": 7,
    "veryfast": 6,
    "faster": 5,
    "fast": 5,
    "medium": 4,
    "slow": 3,
    "slower": 2,
    "veryslow": 1,
    "placebo": 0,
}


@dataclass(frozen=True)
class EncoderSettings:
    """How the blurred video is encoded.

    Attributes:
        crf: Constant rate factor, lower is better and larger: libx264 and NVENC 0..51 (NVENC's
            constant-quality target), VP9 0..63 (not the same scale).
        preset: A libx264 preset (:data:`X264_PRESETS`): speed against compression. NVENC
            takes P1 (ultrafast) .. P7 (veryslow), VP9 a ``cpu-used`` speed.
        encoder: ``auto``, ``nvenc`` or ``x264`` (H.264 outputs).
    """

    crf: int = DEFAULT_CRF
    preset: str = DEFAULT_PRESET
    encoder: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.crf, bool) or not isinstance(self.crf, int):
            raise UsageError(f"crf must be an integer, got {self.crf!r}")
        if not 0 <= self.crf <= MAX_VP9_CRF:
            raise UsageError(f"crf must be in 0..{MAX_VP9_CRF}, got {self.crf}")
        if self.preset not in X264_PRESETS:
            raise UsageError(
                f"preset must be one of {', '.join(X264_PRESETS)}, got {self.preset!r}"
            )
        if self.encoder not in ENCODER_CHOICES:
            raise UsageError(
                f"encoder must be one of {', '.join(ENCODER_CHOICES)}, got {self.encoder!r}"
            )

    def server_parameters(self) -> dict[str, int | str]:
        """The video model's request parameters for these settings (``encoder`` only when it
        is not the model's default, ``auto``)."""
        parameters: dict[str, int | str] = {"crf": self.crf, "preset": self.preset}
        if self.encoder != "auto":
            parameters["encoder"] = self.encoder
        return parameters

    def vp9_options(self) -> dict[str, str]:
        """libvpx-vp9 options: constant quality ``crf`` (with ``b:v`` 0), the preset's speed."""
        return {
            "crf": str(self.crf),
            "b": "0",
            "deadline": "good",
            "cpu-used": str(_VP9_SPEED[self.preset]),
            "row-mt": "1",
        }


def video_codec_for(path: str | Path, *, server_side: bool = False) -> str:
    """``"h264"`` or ``"vp9"``: what an output at ``path`` holds; checked before any work.

    Raises:
        UsageError: The extension is none of :data:`H264_CONTAINERS` and
            :data:`VP9_CONTAINERS`, WebM is asked of the server (it encodes H.264 only), or
            this PyAV has no VP9 encoder.
    """
    suffix = Path(path).suffix.lower()
    if suffix in H264_CONTAINERS:
        return "h264"
    if suffix not in VP9_CONTAINERS:
        every = ", ".join((*H264_CONTAINERS, *VP9_CONTAINERS))
        raise UsageError(
            f"cannot write video '{path}': unsupported extension {suffix or '(none)'!r}; "
            f"use one of {every}"
        )
    if server_side:
        raise UsageError(
            f"cannot write video '{path}' with --server-side: the server encodes H.264, which "
            f"WebM cannot hold; use {', '.join(H264_CONTAINERS)}, or drop --server-side to "
            "encode VP9 here"
        )
    import av  # here, not at import: the server's video model loads without PyAV

    if VP9_ENCODER not in av.codecs_available:
        raise UsageError(
            f"cannot write video '{path}': this PyAV (FFmpeg) has no {VP9_ENCODER} encoder; "
            f"use one of {', '.join(H264_CONTAINERS)}"
        )
    return "vp9"


def check_settings_for(codec: str, settings: EncoderSettings) -> None:
    """Refuse settings the output's codec cannot take (a CRF above 51 or an H.264 encoder
    choice for VP9).

    Raises:
        UsageError: With what to change.
    """
    if codec == "h264" and settings.crf > MAX_H264_CRF:
        raise UsageError(f"crf must be in 0..{MAX_H264_CRF} for H.264, got {settings.crf}")
    if codec == "vp9" and settings.encoder != "auto":
        raise UsageError(
            f"--encoder {settings.encoder} makes H.264; a .webm output is VP9 (leave --encoder "
            "at auto or write .mp4, .mkv or .mov)"
        )


def choose_h264_encoder(
    requested: str, *, width: int, height: int, rate: Fraction, gpu: int = 0
) -> tuple[str, str]:
    """``(kind, reason)``: ``"nvenc"`` or ``"x264"`` for ``requested`` (``auto``, ``nvenc``,
    ``x264``), through the server library's probe where it is installed.

    Raises:
        UsageError: ``nvenc`` was requested and cannot be used here (the message says why).
    """
    if requested not in ENCODER_CHOICES:
        raise UsageError(f"encoder must be one of {', '.join(ENCODER_CHOICES)}, got {requested!r}")
    if requested == "x264":
        return "x264", "requested"
    try:
        from bgblur.video.encoders import choose_encoder
    except ModuleNotFoundError:
        problem = "NVENC needs the bgblur server library (with PyNvVideoCodec) beside the client"
        if requested == "nvenc":
            raise UsageError(f"NVENC encoder requested but unavailable: {problem}") from None
        return "x264", problem
    try:
        return choose_encoder(requested, width=width, height=height, rate=rate, gpu=gpu)
    except (ValueError, RuntimeError) as exc:
        raise UsageError(str(exc)) from None
