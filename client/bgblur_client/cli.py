"""Command line: ``bgblur image|video|sample-video ...`` (also ``python -m bgblur_client``).

Exit status (:data:`EXIT_STATUS_HELP`, also in ``bgblur --help``): 0 on success; 2 for usage
errors (argparse's, and :class:`~bgblur_client.errors.UsageError`: bad or conflicting options,
an input that is missing or a directory, an output format that cannot hold the video, an
option that needs a package not installed here); 1 when the work fails (any other
:class:`~bgblur_client.errors.ClientError`: server down or speaking the other protocol, model
not served, request refused by the server, unreadable input); 130 when interrupted with
Ctrl-C. Errors are one line, ``bgblur: error: ...``.

Models (``--model`` overrides): ``bgblur image`` uses ``background_blur``; ``bgblur video`` uses
``background_blur_stream`` (the video as one Triton sequence, one frame per request, masks
smoothed over time), or the stateless ``background_blur`` (batched requests, the most frames per
second) with ``--param temporal_smoothing=0``. Where the server does not serve
``background_blur_stream`` and no ``--model`` was given, the video falls back to
``background_blur`` with a warning. ``--server-side`` uses ``background_blur_video``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgblur_client.decoders import DECODER_CHOICES
from bgblur_client.encoding import (
    DEFAULT_CRF,
    DEFAULT_PRESET,
    ENCODER_CHOICES,
    MAX_VP9_CRF,
    X264_PRESETS,
    EncoderSettings,
    check_settings_for,
    video_codec_for,
)
from bgblur_client.errors import ClientError, ModelNotFoundError, UsageError
from bgblur_client.files import check_output_path
from bgblur_client.image import blur_image_file, check_image_writable, parse_background
from bgblur_client.preview import write_preview
from bgblur_client.samples import make_sample_video
from bgblur_client.server_video import (
    DEFAULT_VIDEO_MODEL,
    blur_stream_server_side,
    blur_video_server_side,
)
from bgblur_client.shm import SHARED_MEMORY_CHOICES, require_cupy
from bgblur_client.transport import (
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT_S,
    PROTOCOLS,
    STREAM_MODEL,
    TEMPORAL_SMOOTHING,
    BlurClient,
    ParameterValue,
    default_url,
)
from bgblur_client.video import blur_video

STDIN = "-"
STDIN_CHUNK_BYTES = 1 << 20  # a chunk of a piped stream, at most

log = logging.getLogger(__name__)

PROG = "bgblur"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# Distributions that hold this package: the client alone, or the repository's development
# install of server and client together.
_DISTRIBUTIONS = ("bgblur-client", "bgblur")

EXIT_STATUS_HELP = """\
exit status:
  0    success
  1    the work failed: the server is unreachable or its port speaks the other protocol,
       the model is not served, the server refused the request (e.g. a bad --param value,
       a corrupt video), the input cannot be decoded, an output cannot be written
  2    usage error: a bad or conflicting option, an input that is missing or a directory,
       an output extension that cannot hold the video, an option that needs a package not
       installed here (e.g. --shared-memory cuda without CuPy)
  130  interrupted (Ctrl-C)
A failed run leaves existing output files as they were: outputs are written beside them
and take their names only when complete."""


def client_version() -> str:
    """This client's version, from the installed package metadata ("unknown" when run from
    a source tree that is not installed)."""
    for name in _DISTRIBUTIONS:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def crf_value(text: str) -> int:
    """argparse ``type`` for ``--crf``: an integer 0..63 (H.264 takes 0..51)."""
    try:
        value = int(text)
    except ValueError:
        message = f"expected an integer 0..{MAX_VP9_CRF}, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not 0 <= value <= MAX_VP9_CRF:
        raise argparse.ArgumentTypeError(f"expected an integer 0..{MAX_VP9_CRF}, got {text!r}")
    return value


def parse_param_value(text: str) -> ParameterValue:
    """Type a ``--param`` value: ``true``/``false`` (any case) -> bool, then int, float, str.

    >>> parse_param_value("31"), parse_param_value("2.5"), parse_param_value("True")
    (31, 2.5, True)
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for number_type in (int, float):
        try:
            return number_type(text)
        except ValueError:
            pass
    return text


def parse_param(text: str) -> tuple[str, ParameterValue]:
    """Split one ``--param KEY=VALUE`` into its key and typed value (argparse ``type``)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, parse_param_value(value)


def throughput_line(frames: int, seconds: float) -> str:
    """``blurred 90 frames in 3.1 s (29.0 frames/s)``."""
    rate = frames / seconds if seconds > 0 else 0.0
    noun = "frame" if frames == 1 else "frames"
    return f"blurred {frames} {noun} in {seconds:.1f} s ({rate:.1f} frames/s)"


def positive_int(text: str) -> int:
    """argparse ``type`` for counts >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse ``type`` for durations > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Blur the background behind people in images and videos, on a Triton "
        "Inference Server running the background_blur ensemble.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {client_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = argparse.ArgumentParser(add_help=False)
    group = server.add_argument_group("server")
    group.add_argument(
        "--url",
        metavar="HOST:PORT",
        help="Triton endpoint (default: localhost:8001 for grpc, localhost:8000 for http)",
    )
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default: grpc")
    group.add_argument(
        "--model",
        help=f"model to call (default: {DEFAULT_MODEL} for image; for video {STREAM_MODEL}, "
        f"frames one per request and smoothed over time, or {DEFAULT_MODEL} in batches with "
        f"--param {TEMPORAL_SMOOTHING}=0, the most frames per second; {DEFAULT_VIDEO_MODEL} "
        "with --server-side)",
    )
    group.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY_CHOICES,
        default="auto",
        help="how frames reach the server: cuda (GPU memory shared with a server on this "
        "host, needs CuPy: pip install cupy-cuda12x), system (RAM shared with a server on "
        "this host) or none (in the request); default: auto, the first of those the server "
        "really maps (tried at connect)",
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"longest wait for one request (default: {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--param",
        type=parse_param,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="server parameter, repeatable, e.g. blur_ksize=31, soft_mask=false "
        "(values are typed: true/false, int, float, else string)",
    )

    outputs = argparse.ArgumentParser(add_help=False)
    group = outputs.add_argument_group("extra outputs")
    group.add_argument("--preview", type=Path, metavar="PNG", help="before|after image")

    image = commands.add_parser(
        "image",
        parents=[server, outputs],
        help="blur the background of an image",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    image.add_argument("input", type=Path, help="input image (any format OpenCV reads)")
    image.add_argument("output", type=Path, help="output image; format from the extension")
    image.add_argument("--mask", type=Path, metavar="PNG", help="write the foreground mask")
    image.add_argument(
        "--background",
        metavar="FILE|#RRGGBB",
        help="replace the background instead of blurring it: an image file (scaled to cover "
        "the picture, centre-cropped) or a colour such as #00B140",
    )
    image.add_argument(
        "--halo-free",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="blur the background from background pixels only, no glow around the person "
        "(the server's default); --no-halo-free blurs the whole picture (CV-CUDA's sample)",
    )

    video = commands.add_parser(
        "video",
        parents=[server, outputs],
        help="blur the background of a video",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    video.add_argument(
        "input",
        type=Path,
        help="input video (any format FFmpeg reads); '-' reads a stream from stdin and sends "
        "it to the server in chunks as it comes (--server-side; a format readable front to "
        "back, e.g. ffmpeg ... -f mpegts -)",
    )
    video.add_argument(
        "output",
        type=Path,
        help="output video: .mp4, .m4v, .mkv or .mov (H.264), or .webm (VP9, client side "
        "only); written beside it and renamed into place when complete",
    )
    video.add_argument("--mask", type=Path, metavar="MP4", help="write the mask as a video")
    video.add_argument(
        "--batch",
        type=positive_int,
        default=4,
        metavar="N",
        help="frames per request (default: 4; with background_blur_stream, frames decoded "
        "together, each its own request)",
    )
    video.add_argument(
        "--in-flight",
        type=positive_int,
        default=2,
        metavar="N",
        help="requests outstanding at once (default: 2; with background_blur_stream, batches "
        "decoded ahead: one request outstanding, the frames go in order)",
    )
    video.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    video.add_argument(
        "--server-side",
        action="store_true",
        help="send the compressed file to the server's background_blur_video model (gRPC "
        "streaming) and receive the blurred file: no decoding or encoding here",
    )
    video.add_argument(
        "--decoder",
        choices=DECODER_CHOICES,
        default="auto",
        help="client-side decoder: pyav (CPU), nvdec (PyNvVideoCodec, frames in GPU memory), "
        "dali (DALI's GPU reader); default auto: the best one present",
    )
    video.add_argument(
        "--encoder",
        choices=ENCODER_CHOICES,
        default="auto",
        help="H.264 encoder: x264 (libx264 on the CPU), nvenc (the GPU's NVENC through "
        "PyNvVideoCodec; an error where there is none); default auto: NVENC where an encoder "
        "session opens, else x264. With --server-side it is sent as the 'encoder' parameter",
    )
    encoding = video.add_argument_group("encoder settings (client side and --server-side alike)")
    encoding.add_argument(
        "--crf",
        type=crf_value,
        metavar="N",
        help=f"constant rate factor, lower is better and larger: 0..51 for H.264 (libx264; "
        f"NVENC's quality target), 0..{MAX_VP9_CRF} for VP9 (default: {DEFAULT_CRF})",
    )
    encoding.add_argument(
        "--preset",
        choices=X264_PRESETS,
        metavar="NAME",
        help=f"libx264 preset, {X264_PRESETS[0]} .. {X264_PRESETS[-1]} (speed against size; "
        f"NVENC takes the matching P1..P7, VP9 a matching speed; default: {DEFAULT_PRESET})",
    )

    sample = commands.add_parser(
        "sample-video", help="write a sample clip (pan/zoom over a portrait photo)"
    )
    sample.add_argument("output", type=Path, help="output video (.mp4)")
    sample.add_argument("--width", type=positive_int, default=1280)
    sample.add_argument("--height", type=positive_int, default=720)
    sample.add_argument("--seconds", type=positive_float, default=3.0)
    sample.add_argument("--fps", type=positive_int, default=30)
    sample.add_argument("--no-audio", action="store_true", help="omit the sine-tone track")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    parameters = _collect_parameters(parser, getattr(args, "param", []))
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s: %(message)s")
    try:
        if args.command == "sample-video":
            return _run_sample_video(args)
        if args.shared_memory == "cuda" and not getattr(args, "server_side", False):
            require_cupy("--shared-memory cuda")  # before any work: it maps the GPU memory
        if args.command == "image":
            return _run_image(args, parameters)
        return _run_video(args, parameters)
    except ClientError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UsageError) else EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_image(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> int:
    _require_input(args.input, "image")
    for path in (args.output, args.mask, args.preview):
        if path is not None:
            check_image_writable(path)
    background = None if args.background is None else parse_background(args.background)
    if args.halo_free is not None:
        parameters = {**parameters, "halo_free": args.halo_free}
    with _connect(args, args.model or DEFAULT_MODEL) as client:
        outcome = blur_image_file(
            client,
            args.input,
            args.output,
            mask_path=args.mask,
            parameters=parameters,
            background=background,
        )
    if args.preview is not None:
        write_preview(
            args.preview, outcome.input_rgb, outcome.blurred_rgb, label=_preview_label(parameters)
        )
    print(f"{throughput_line(1, outcome.seconds)} -> {args.output}")
    return EXIT_OK


def _encoder_settings(args: argparse.Namespace) -> EncoderSettings:
    crf = DEFAULT_CRF if args.crf is None else args.crf
    preset = DEFAULT_PRESET if args.preset is None else args.preset
    return EncoderSettings(crf=crf, preset=preset, encoder=args.encoder)


def _check_video_outputs(args: argparse.Namespace, settings: EncoderSettings) -> None:
    """Everything about the outputs that can be checked before connecting."""
    check_settings_for(video_codec_for(args.output, server_side=args.server_side), settings)
    check_output_path(args.output, "video")
    if args.mask is not None:
        check_settings_for(video_codec_for(args.mask), settings)
        check_output_path(args.mask, "video")
    if args.preview is not None:
        check_image_writable(args.preview)


def _run_video(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> int:
    if str(args.input) == STDIN:
        if not args.server_side:
            raise UsageError("reading the video from stdin ('-') needs --server-side")
    else:
        _require_input(args.input, "video")
    if args.server_side:
        return _run_server_side_video(args, parameters)
    settings = _encoder_settings(args)
    _check_video_outputs(args, settings)
    with _connect_video(args, parameters) as client:
        summary = blur_video(
            client,
            args.input,
            args.output,
            batch_size=args.batch,
            in_flight=args.in_flight,
            parameters=parameters,
            mask_path=args.mask,
            preview_path=args.preview,
            preview_label=_preview_label(parameters),
            progress=not args.no_progress,
            decoder=args.decoder,
            encoder=args.encoder,
            crf=settings.crf,
            preset=settings.preset,
        )
        transport = f"frames via {client.shared_memory} shared memory"
        if client.shared_memory == "none":
            transport = "frames in the requests"
        if args.shared_memory == "auto":
            transport += f" (auto: {client.shared_memory_reason})"
        if client.sequence_model:
            requests = "one frame per request, in sequence"
        else:
            requests = f"batches of {args.batch} frames, {args.in_flight} in flight"
        model = f"model {client.model} ({requests})"
    headline = throughput_line(summary.frames, summary.seconds)
    encoder = f"{summary.encoder}: {summary.encoder_reason}"
    print(f"{headline} -> {args.output} (audio {summary.audio}, encoder {encoder})")
    print(transport)
    print(model)
    return EXIT_OK


def _run_server_side_video(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> int:
    if args.protocol != "grpc":
        raise UsageError("--server-side streams over gRPC: use --protocol grpc")
    for option in ("mask", "preview"):
        if getattr(args, option) is not None:
            raise UsageError(f"--{option} needs the client-side path (drop --server-side)")
    settings = _encoder_settings(args)
    _check_video_outputs(args, settings)
    # Only settings given are sent: the model's defaults are the same (CRF 18, medium, auto).
    given = args.crf is not None or args.preset is not None or args.encoder != "auto"
    url = default_url("grpc") if args.url is None else args.url
    common: dict[str, Any] = {
        "model": DEFAULT_VIDEO_MODEL if args.model in (None, DEFAULT_MODEL) else args.model,
        "parameters": parameters,
        "batch_size": args.batch,
        "timeout_s": args.timeout,
        "progress": not args.no_progress,
        "settings": settings if given else None,
    }
    if str(args.input) == STDIN:  # a pipe: sent in chunks as it is read
        stdin = sys.stdin.buffer
        pieces = iter(lambda: stdin.read1(STDIN_CHUNK_BYTES), b"")
        summary = blur_stream_server_side(url, pieces, args.output, label="stdin", **common)
    else:
        summary = blur_video_server_side(url, args.input, args.output, **common)
    headline = throughput_line(summary.frames, summary.seconds)
    print(f"{headline} -> {args.output} (server side, audio {summary.audio})")
    return EXIT_OK


def _run_sample_video(args: argparse.Namespace) -> int:
    try:
        path = make_sample_video(
            args.output,
            width=args.width,
            height=args.height,
            seconds=args.seconds,
            fps=args.fps,
            audio=not args.no_audio,
        )
    except ValueError as exc:  # size/duration checks of make_sample_video
        raise UsageError(str(exc)) from exc
    frames = round(args.seconds * args.fps)
    audio = "no audio" if args.no_audio else "AAC audio"
    size = f"{args.width}x{args.height}"
    print(f"wrote {path} ({size}, {frames} frames at {args.fps} frames/s, {audio})")
    return EXIT_OK


def _require_input(path: Path, kind: str) -> None:
    # Checked before connecting: a missing file must not be reported as "server unreachable".
    if path.is_dir():
        a_file = "an image file" if kind == "image" else f"a {kind} file"
        raise UsageError(f"cannot read {kind} '{path}': it is a directory, not {a_file}")
    if not path.is_file():
        raise UsageError(f"cannot read {kind} '{path}': no such file")


def _connect(args: argparse.Namespace, model: str) -> BlurClient:
    return BlurClient(
        default_url(args.protocol) if args.url is None else args.url,
        protocol=args.protocol,
        model=model,
        timeout_s=args.timeout,
        shared_memory=args.shared_memory,
    )


def smoothing_off(parameters: dict[str, ParameterValue]) -> bool:
    """Whether ``--param temporal_smoothing=0`` (or 0.0) was given."""
    value = parameters.get(TEMPORAL_SMOOTHING)
    return isinstance(value, int | float) and not isinstance(value, bool) and value == 0


def video_model(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> str:
    """The model of a client-side ``bgblur video``: ``--model``, else the stream model unless
    temporal smoothing is turned off (then the stateless, batched one)."""
    if args.model is not None:
        return args.model
    return DEFAULT_MODEL if smoothing_off(parameters) else STREAM_MODEL


def _connect_video(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> BlurClient:
    """A client of :func:`video_model`; the stream model by default, falling back to
    ``background_blur`` (with a warning) where the server does not serve it."""
    model = video_model(args, parameters)
    try:
        return _connect(args, model)
    except ModelNotFoundError:
        if args.model is not None or model != STREAM_MODEL:
            raise
    log.warning(
        "the server does not serve %s: using %s, frames in batches without temporal smoothing",
        STREAM_MODEL,
        DEFAULT_MODEL,
    )
    return _connect(args, DEFAULT_MODEL)


def _collect_parameters(
    parser: argparse.ArgumentParser, pairs: list[tuple[str, ParameterValue]]
) -> dict[str, ParameterValue]:
    parameters: dict[str, ParameterValue] = {}
    for key, value in pairs:
        if key in parameters:
            parser.error(f"--param {key} given more than once")
        parameters[key] = value
    return parameters


def _preview_label(parameters: dict[str, ParameterValue]) -> str:
    settings = " ".join(f"{key}={value}" for key, value in parameters.items())
    return f"before | after {settings}".rstrip()
