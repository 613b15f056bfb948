"""``make demo``: start the embedded Triton server, blur a generated clip, print frames/s.

Writes ``OUT_DIR/sample.mp4`` (the generated input), ``OUT_DIR/demo.mp4`` (blurred, with the
sample's audio) and ``OUT_DIR/demo_preview.png`` (before | after of the middle frame), then
stops the server. It lives in the server library because it starts the embedded server; the
client it drives is ``bgblur_client``. Run: ``python -m bgblur.demo [--out-dir out]
[--device auto]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bgblur.server.launcher import ServerStartError, TritonServer
from bgblur_client.cli import positive_float, positive_int, throughput_line
from bgblur_client.errors import ClientError, UsageError
from bgblur_client.samples import make_sample_video
from bgblur_client.transport import PROTOCOLS, BlurClient
from bgblur_client.video import blur_video

PROG = "bgblur-demo"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0, 1 when the server does not start or the blur fails, 2 on a
    usage error."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path("out"))
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="grpc")
    parser.add_argument("--batch", type=positive_int, default=4, help="frames per request")
    parser.add_argument("--in-flight", type=positive_int, default=2, help="requests outstanding")
    parser.add_argument("--seconds", type=positive_float, default=3.0, help="sample clip length")
    args = parser.parse_args(argv)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    output = args.out_dir / "demo.mp4"
    try:
        sample = make_sample_video(args.out_dir / "sample.mp4", seconds=args.seconds)
        print(f"{PROG}: starting Triton ({args.device}) ...", file=sys.stderr, flush=True)
        with TritonServer(device=args.device) as server:
            url = server.grpc_url if args.protocol == "grpc" else server.http_url
            with BlurClient(url, protocol=args.protocol) as client:
                summary = blur_video(
                    client,
                    sample,
                    output,
                    batch_size=args.batch,
                    in_flight=args.in_flight,
                    preview_path=args.out_dir / "demo_preview.png",
                    preview_label=f"before | after ({server.device})",
                )
    except ServerStartError as exc:
        print(f"{PROG}: the server did not start: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    print(f"{throughput_line(summary.frames, summary.seconds)} on {server.device} -> {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
