"""Command line: ``bgblur image|video|sample-video ...`` (also ``python -m bgblur_client``).

Exit status: 0 on success; 2 with a one-line ``bgblur: error: ...`` message for usage
errors and for any :class:`~bgblur_client.errors.ClientError` (bad file, server down,
unknown model, parameter refused by the server); 130 when interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bgblur.video.encoders import ENCODER_CHOICES
from bgblur_client.errors import ClientError
from bgblur_client.image import blur_image_file, check_image_writable
from bgblur_client.preview import write_preview
from bgblur_client.samples import make_sample_video
from bgblur_client.server_video import (
    DEFAULT_VIDEO_MODEL,
    blur_stream_server_side,
    blur_video_server_side,
)
from bgblur_client.shm import SHARED_MEMORY_CHOICES
from bgblur_client.transport import (
    DEFAULT_MODEL,
    DEFAULT_TIMEOUT_S,
    PROTOCOLS,
    BlurClient,
    ParameterValue,
    default_url,
)
from bgblur_client.video import blur_video
from bgblur_client.video_decoders import DECODER_CHOICES

STDIN = "-"
STDIN_CHUNK_BYTES = 1 << 20  # a chunk of a piped stream, at most

PROG = "bgblur"
EXIT_OK = 0
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


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
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = argparse.ArgumentParser(add_help=False)
    group = server.add_argument_group("server")
    group.add_argument(
        "--url",
        metavar="HOST:PORT",
        help="Triton endpoint (default: localhost:8001 for grpc, localhost:8000 for http)",
    )
    group.add_argument("--protocol", choices=PROTOCOLS, default="grpc", help="default: grpc")
    group.add_argument("--model", default=DEFAULT_MODEL, help=f"default: {DEFAULT_MODEL}")
    group.add_argument(
        "--shared-memory",
        choices=SHARED_MEMORY_CHOICES,
        default="auto",
        help="how frames reach the server: cuda (GPU memory shared with a server on this "
        "host, needs CuPy), system (RAM shared with a server on this host) or none (in the "
        "request); default: auto, the first of those the server really maps (tried at connect)",
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
        "image", parents=[server, outputs], help="blur the background of an image"
    )
    image.add_argument("input", type=Path, help="input image (any format OpenCV reads)")
    image.add_argument("output", type=Path, help="output image; format from the extension")
    image.add_argument("--mask", type=Path, metavar="PNG", help="write the foreground mask")

    video = commands.add_parser(
        "video", parents=[server, outputs], help="blur the background of a video"
    )
    video.add_argument(
        "input",
        type=Path,
        help="input video (any format FFmpeg reads); '-' reads a stream from stdin and sends "
        "it to the server in chunks as it comes (--server-side; a format readable front to "
        "back, e.g. ffmpeg ... -f mpegts -)",
    )
    video.add_argument("output", type=Path, help="output video (.mp4, .mkv or .mov)")
    video.add_argument("--mask", type=Path, metavar="MP4", help="write the mask as a video")
    video.add_argument(
        "--batch",
        type=positive_int,
        default=4,
        metavar="N",
        help="frames per request (default: 4)",
    )
    video.add_argument(
        "--in-flight",
        type=positive_int,
        default=2,
        metavar="N",
        help="requests outstanding at once (default: 2)",
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
        if args.command == "image":
            return _run_image(args, parameters)
        return _run_video(args, parameters)
    except ClientError as exc:
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run_image(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> int:
    _require_input(args.input, "image")
    for path in (args.output, args.mask, args.preview):
        if path is not None:
            check_image_writable(path)
    with _connect(args) as client:
        outcome = blur_image_file(
            client, args.input, args.output, mask_path=args.mask, parameters=parameters
        )
    if args.preview is not None:
        write_preview(
            args.preview, outcome.input_rgb, outcome.blurred_rgb, label=_preview_label(parameters)
        )
    print(f"{throughput_line(1, outcome.seconds)} -> {args.output}")
    return EXIT_OK


def _run_video(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> int:
    if str(args.input) == STDIN:
        if not args.server_side:
            raise ClientError("reading the video from stdin ('-') needs --server-side")
    else:
        _require_input(args.input, "video")
    if args.server_side:
        return _run_server_side_video(args, parameters)
    with _connect(args) as client:
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
        )
        transport = f"frames via {client.shared_memory} shared memory"
        if client.shared_memory == "none":
            transport = "frames in the requests"
        if args.shared_memory == "auto":
            transport += f" (auto: {client.shared_memory_reason})"
    headline = throughput_line(summary.frames, summary.seconds)
    encoder = f"{summary.encoder}: {summary.encoder_reason}"
    print(f"{headline} -> {args.output} (audio {summary.audio}, encoder {encoder})")
    print(transport)
    return EXIT_OK


def _run_server_side_video(args: argparse.Namespace, parameters: dict[str, ParameterValue]) -> int:
    if args.protocol != "grpc":
        raise ClientError("--server-side streams over gRPC: use --protocol grpc")
    for option in ("mask", "preview"):
        if getattr(args, option) is not None:
            raise ClientError(f"--{option} needs the client-side path (drop --server-side)")
    if args.encoder != "auto":  # the model's default is auto; older servers lack the parameter
        parameters = {**parameters, "encoder": args.encoder}
    url = default_url("grpc") if args.url is None else args.url
    common: dict[str, Any] = {
        "model": DEFAULT_VIDEO_MODEL if args.model == DEFAULT_MODEL else args.model,
        "parameters": parameters,
        "batch_size": args.batch,
        "timeout_s": args.timeout,
        "progress": not args.no_progress,
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
        raise ClientError(str(exc)) from exc
    frames = round(args.seconds * args.fps)
    audio = "no audio" if args.no_audio else "AAC audio"
    size = f"{args.width}x{args.height}"
    print(f"wrote {path} ({size}, {frames} frames at {args.fps} frames/s, {audio})")
    return EXIT_OK


def _require_input(path: Path, kind: str) -> None:
    # Checked before connecting: a missing file must not be reported as "server unreachable".
    if not path.is_file():
        raise ClientError(f"cannot read {kind} '{path}': no such file")


def _connect(args: argparse.Namespace) -> BlurClient:
    return BlurClient(
        default_url(args.protocol) if args.url is None else args.url,
        protocol=args.protocol,
        model=args.model,
        timeout_s=args.timeout,
        shared_memory=args.shared_memory,
    )


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
