"""The decoupled ``background_blur_video`` model on the real Triton server (CPU), over gRPC
streaming, and ``bgblur video --server-side`` end to end."""

from __future__ import annotations

import queue
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")  # on the GPU machine PyAV comes with the bundle (part 1)
from tritonclient.utils import InferenceServerException  # noqa: E402

from bgblur_client.cli import main  # noqa: E402
from bgblur_client.samples import make_sample_video  # noqa: E402


def test_round_trip_keeps_frames_size_rate_audio_and_order(
    triton_server, ramp_clip_bytes, video
) -> None:
    out, done, error = video.stream_video(
        triton_server.grpc_url, ramp_clip_bytes, {"batch_size": 8}
    )

    assert error is None
    assert done[-1] == 24
    frames_out, frames_in = video.assert_same_video_in_order(out, ramp_clip_bytes)
    # the background is blurred: the output is smoother than the input
    assert (
        np.abs(np.diff(frames_out.astype(int), axis=2)).mean()
        < np.abs(np.diff(frames_in.astype(int), axis=2)).mean()
    )


# BLS requests of Triton 2.51 take bool/int/str values: 8.0 travels as 8, 2.5 as "2.5"
@pytest.mark.parametrize("blur_sigma", [8.0, 2.5], ids=["integral", "fractional"])
def test_sample_clip_with_blur_parameters(
    triton_server, tmp_path: Path, video, blur_sigma: float
) -> None:
    clip = make_sample_video(tmp_path / "clip.mp4", width=320, height=240, seconds=0.5, fps=30)

    out, _, error = video.stream_video(
        triton_server.grpc_url, clip.read_bytes(), {"blur_sigma": blur_sigma, "soft_mask": False}
    )

    assert error is None
    assert video.decode_rgb(out)[1] == {
        "frames": 15,
        "size": (320, 240),
        "rate": Fraction(30),
        "audio": ["aac"],
    }


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "VIDEO is empty"),
        ("garbage", "not a readable video file"),
        ("truncated", "not a readable video file"),
        ("unsupported", "unsupported video codec 'ffv1'"),
        ("bad_parameter", "parameter 'blur_sigma' must be in"),
        ("bad_batch", "parameter 'batch_size' must be in"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_server_keeps_serving(
    triton_server, ramp_clip_bytes, tmp_path: Path, video, case: str, message: str
) -> None:
    parameters = None
    if case == "empty":
        data = b""
    elif case == "garbage":
        data = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    elif case == "truncated":
        data = ramp_clip_bytes[: len(ramp_clip_bytes) // 2]
    elif case == "unsupported":
        frames = video.ramp_frames_nhwc_u8(32, 32, 2)
        data = video.write_clip(
            tmp_path / "ffv1.mkv", frames, codec="ffv1", audio=False
        ).read_bytes()
    else:
        data = ramp_clip_bytes
        parameters = {"blur_sigma": -1.0} if case == "bad_parameter" else {"batch_size": 99}

    out, _, error = video.stream_video(triton_server.grpc_url, data, parameters)

    # A gRPC stream carries the error's message, not its code (ModelStreamInferResponse has
    # only error_message), so the text is what a client sees.
    assert isinstance(error, InferenceServerException)
    assert message in error.message()
    assert out == b""
    assert triton_server.is_ready()
    healthy, _, error = video.stream_video(
        triton_server.grpc_url, ramp_clip_bytes, {"batch_size": 8}
    )
    assert error is None and healthy


def test_cli_server_side(
    triton_server, ramp_clip: Path, tmp_path: Path, video, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out.mp4"

    code = main(
        ["video", str(ramp_clip), str(out), "--server-side", "--url", triton_server.grpc_url]
    )

    assert code == 0, capsys.readouterr().err
    assert video.decode_rgb(out)[1] == video.decode_rgb(ramp_clip)[1]
    assert "blurred 24 frames in " in capsys.readouterr().out


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        ((), "frames via system shared memory (auto: the server maps a region"),
        (("--shared-memory", "none"), "frames in the requests"),
    ],
    ids=["auto", "none"],
)
def test_cli_client_side_says_how_frames_reach_the_server(
    triton_server, ramp_clip: Path, tmp_path: Path, video, capsys, option, expected
) -> None:
    """The default transport is ``auto``: with the server on this host (and no GPU here, as in
    CI) the frames go through system shared memory; the summary says so."""
    from bgblur.device import cuda_device_count

    if cuda_device_count() and not option:
        pytest.skip("with a GPU here auto may take CUDA shared memory")
    out = tmp_path / "out.mp4"

    url = triton_server.grpc_url
    code = main(["video", str(ramp_clip), str(out), "--url", url, "--no-progress", *option])

    assert code == 0, capsys.readouterr().err
    assert expected in capsys.readouterr().out
    assert video.decode_rgb(out)[1] == video.decode_rgb(ramp_clip)[1]


def test_cli_server_side_refuses_a_corrupt_file_and_leaves_no_output(
    triton_server, ramp_clip_bytes, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bad, out = tmp_path / "bad.mp4", tmp_path / "out.mp4"
    bad.write_bytes(ramp_clip_bytes[:5000])

    code = main(["video", str(bad), str(out), "--server-side", "--url", triton_server.grpc_url])

    assert code == 1
    err = capsys.readouterr().err
    assert "server rejected the request: VIDEO is not a readable video file" in err
    assert not out.exists()


def test_cli_server_side_needs_grpc(
    triton_server, ramp_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        [
            *("video", str(ramp_clip), str(tmp_path / "o.mp4"), "--server-side"),
            *("--protocol", "http", "--url", triton_server.http_url),
        ]
    )

    assert code == 2
    assert "--server-side streams over gRPC" in capsys.readouterr().err


def test_blurred_frames_come_back_in_memory_in_order(triton_server, ramp_clip: Path, video) -> None:
    from bgblur_client.transport import BlurClient
    from bgblur_client.video import blurred_frames

    with BlurClient(triton_server.grpc_url) as client:
        batches = list(blurred_frames(client, ramp_clip, batch_size=5, decoder="pyav"))

    assert [len(timestamps) for timestamps, _ in batches] == [5, 5, 5, 5, 4]
    pts = [t for timestamps, _ in batches for t in timestamps]  # in the stream's time base
    assert pts[0] == 0 and pts == sorted(set(pts))
    frames_out = np.concatenate([frames for _, frames in batches])
    frames_in = video.decode_rgb(ramp_clip)[0]
    assert video.brightness_order_ok(frames_out, frames_in), video.brightness_report(
        frames_out, frames_in
    )


def test_the_order_check_tells_a_codec_shift_from_frames_out_of_place(video) -> None:
    """What the round-trip tests rely on, on the ramp's own frames (no codec)."""
    frames = video.ramp_frames_nhwc_u8()
    darker = np.clip(frames.astype(int) - 1, 0, 255).astype(np.uint8)  # the blur + re-encode
    late_batch = frames.copy()
    late_batch[8:16] = frames[16:24]  # a batch's frames replaced by the next batch's
    swapped = frames.copy()
    swapped[[21, 22]] = frames[[22, 21]]

    assert video.brightness_order_ok(frames, frames)
    assert video.brightness_order_ok(darker, frames), video.brightness_report(darker, frames)
    assert not video.brightness_order_ok(late_batch, frames)
    assert not video.brightness_order_ok(swapped, frames)
    assert not video.brightness_order_ok(frames[:-1], frames)


@pytest.mark.gpu
@pytest.mark.parametrize("smoothing", [0.6, 0.0], ids=["stream", "stateless"])
def test_round_trip_on_the_gpu_server(
    server_pool, ramp_clip_bytes, video, smoothing: float
) -> None:
    """The video model on a KIND_GPU server: PyAV loads in its stub, both BLS paths (frame by
    frame through the stream ensemble, batches through the stateless one) answer every frame
    in order."""
    server = server_pool.get("gpu")

    out, done, error = video.stream_video(
        server.grpc_url,
        ramp_clip_bytes,
        {"batch_size": 8, "blur_sigma": 2.5, "temporal_smoothing": smoothing},
    )

    assert error is None, error
    assert done[-1] == 24
    video.assert_same_video_in_order(out, ramp_clip_bytes)


@pytest.mark.gpu
def test_the_seed_network_on_the_gpu_server(server_pool, ramp_clip_bytes, video) -> None:
    """A video session through the ensembles built with fcn_resnet101 (torch, CUDA graphs)."""
    server = server_pool.get("gpu", "fcn_resnet101")

    out, done, error = video.stream_video(
        server.grpc_url, ramp_clip_bytes, {"batch_size": 8, "blur_sigma": 2.5}
    )

    assert error is None, error
    assert done[-1] == 24
    assert video.decode_rgb(out)[1] == video.decode_rgb(ramp_clip_bytes)[1]


# ---- chunked streams (sequence ID) ----------------------------------------------------------


def test_a_chunked_stream_gives_what_the_whole_file_gives(
    triton_server, streamable_clip_bytes, video
) -> None:
    """The fragmented MP4 in 8 KiB chunks under one sequence ID: every chunk after the first is
    acknowledged, and the output equals the same file sent whole."""
    parameters = {"batch_size": 4}
    chunks = video.chunks_of(streamable_clip_bytes, 8192)

    out, done, acks, errors = video.stream_video_chunks(
        triton_server.grpc_url, chunks, parameters, sequence_id=101
    )
    whole, _, error = video.stream_video(triton_server.grpc_url, streamable_clip_bytes, parameters)

    assert errors == [] and error is None, (errors, error)
    assert acks == len(chunks) - 1
    assert done[-1] == 96
    props_in = video.decode_rgb(streamable_clip_bytes)[1]
    frames_out, props_out = video.decode_rgb(out)
    frames_whole, _ = video.decode_rgb(whole)
    assert props_out == props_in
    assert np.abs(frames_out.astype(int) - frames_whole).mean() < 1.0


@pytest.mark.gpu
def test_a_chunked_stream_on_the_gpu_server(server_pool, streamable_clip_bytes, video) -> None:
    """The GPU server: the chunks decoded as they come (PyAV: ``auto`` for a chunked stream),
    blurred on the GPU, every frame back in order."""
    server = server_pool.get("gpu")
    chunks = video.chunks_of(streamable_clip_bytes, 8192)

    out, done, acks, errors = video.stream_video_chunks(
        server.grpc_url, chunks, {"batch_size": 8}, sequence_id=505
    )

    assert errors == [] and acks == len(chunks) - 1
    assert done[-1] == 96
    assert video.decode_rgb(out)[1] == video.decode_rgb(streamable_clip_bytes)[1]


def test_a_string_sequence_id_and_an_empty_end_chunk(triton_server, streamable_clip_bytes, video):
    chunks = [*video.chunks_of(streamable_clip_bytes, 1 << 16), b""]

    out, done, acks, errors = video.stream_video_chunks(
        triton_server.grpc_url, chunks, sequence_id="camera-7"
    )

    assert errors == [] and acks == len(chunks) - 1
    assert done[-1] == 96 and video.decode_rgb(out)[1]["frames"] == 96


def test_a_chunk_of_no_open_stream_is_refused_and_the_server_serves_on(
    triton_server, streamable_clip_bytes, ramp_clip_bytes, video
) -> None:
    """A chunk without a START before it (or after its stream ended) names the sequence."""
    import tritonclient.grpc as grpcclient

    chunks = video.chunks_of(streamable_clip_bytes, 8192)

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        video_input = grpcclient.InferInput("VIDEO", [len(chunks[1])], "UINT8")
        video_input.set_data_from_numpy(np.frombuffer(chunks[1], np.uint8))
        client.async_stream_infer(
            "background_blur_video", [video_input], sequence_id=303, sequence_end=True
        )
        _, error = answers.get(timeout=60)
    finally:
        client.stop_stream()
        client.close()

    assert error is not None
    assert "no open video stream for sequence 303" in error.message()
    _, _, healthy = video.stream_video(triton_server.grpc_url, ramp_clip_bytes, {"batch_size": 8})
    assert healthy is None


def test_another_clients_chunk_is_refused_and_the_stream_stays_whole(
    triton_server, streamable_clip_bytes, video
) -> None:
    """A chunk or END sent under a stream's sequence ID without its token (another client) is
    INVALID_ARG and leaves the stream as it was: the owner's output has every frame."""
    import tritonclient.grpc as grpcclient

    chunks = video.chunks_of(streamable_clip_bytes, 8192)
    owner_token = {"stream_token": "owner-token-0123456789abcdef"}
    owner = grpcclient.InferenceServerClient(triton_server.grpc_url)
    intruder = grpcclient.InferenceServerClient(triton_server.grpc_url)
    owner_answers: queue.Queue = queue.Queue()
    intruder_answers: queue.Queue = queue.Queue()
    owner.start_stream(callback=lambda result, error: owner_answers.put((result, error)))
    intruder.start_stream(callback=lambda result, error: intruder_answers.put((result, error)))
    try:
        video.send_video_chunk(
            owner, chunks[0], 707, start=True, parameters=owner_token, request_id="0"
        )
        video.send_video_chunk(owner, chunks[1], 707, parameters=owner_token, request_id="1")
        out, frames_done, pending = bytearray(), 0, []
        while True:  # the stream is open once its second chunk is acknowledged
            result, error = owner_answers.get(timeout=60)
            assert error is None, error.message()
            pending.append(result)
            if result.get_response().id == "1":
                break
        refusals = []
        for parameters in ({"stream_token": "intruder-token-0123456789ab"}, None):
            video.send_video_chunk(intruder, b"\0" * 64, 707, end=True, parameters=parameters)
            _, error = intruder_answers.get(timeout=60)
            refusals.append(None if error is None else error.message())
        for index, chunk in enumerate(chunks[2:], start=2):
            video.send_video_chunk(
                owner,
                chunk,
                707,
                end=index == len(chunks) - 1,
                parameters=owner_token,
                request_id=str(index),
            )
        while True:
            if pending:
                result = pending.pop(0)
            else:
                result, error = owner_answers.get(timeout=120)
                assert error is None, error.message()
            response = result.get_response()
            if response.id != "0":  # the later chunks' acknowledgements
                continue
            piece = result.as_numpy("VIDEO_CHUNK")
            if piece is not None:
                out += piece.tobytes()
            done = result.as_numpy("FRAMES_DONE")
            if done is not None:
                frames_done = int(done[0])
            if response.parameters["triton_final_response"].bool_param and frames_done == 96:
                break
    finally:
        for client in (owner, intruder):
            client.stop_stream()
            client.close()
    assert all(r is not None and "not the one its stream was opened with" in r for r in refusals)
    assert frames_done == 96 and video.decode_rgb(bytes(out))[1]["frames"] == 96


def test_a_stream_start_without_a_token_is_invalid(
    triton_server, streamable_clip_bytes, video
) -> None:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        video.send_video_chunk(client, streamable_clip_bytes[:8192], 708, start=True)
        _, error = answers.get(timeout=60)
    finally:
        client.stop_stream()
        client.close()
    assert error is not None and "needs a 'stream_token' parameter" in error.message()


PIPE_COMMAND = (sys.executable, "-m", "bgblur_client", "video", "-", "--server-side")


def test_the_client_streams_a_pipe_in_chunks(triton_server, streamable_clip_bytes, tmp_path, video):
    """``bgblur video - out.mp4 --server-side``: the stream read from a real pipe (stdin of a
    child process) is sent in chunks and comes back blurred, every frame."""
    out = tmp_path / "out.mp4"
    result = subprocess.run(
        [*PIPE_COMMAND, str(out), "--url", triton_server.grpc_url, "--no-progress", "--batch", "4"],
        input=streamable_clip_bytes,
        capture_output=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stderr.decode()
    assert "blurred 96 frames in " in result.stdout.decode()
    assert video.decode_rgb(out)[1] == video.decode_rgb(streamable_clip_bytes)[1]


def test_the_stream_api_sends_any_iterable_of_pieces(
    triton_server, streamable_clip_bytes, tmp_path, video
) -> None:
    from bgblur_client.server_video import blur_stream_server_side

    out = tmp_path / "out.mp4"
    pieces = video.chunks_of(streamable_clip_bytes, 2048)
    handed_out: list[int] = []

    def produce():
        for index, piece in enumerate(pieces):
            handed_out.append(index)
            yield piece

    summary = blur_stream_server_side(
        triton_server.grpc_url, produce(), out, batch_size=4, progress=False, chunks_in_flight=2
    )

    assert handed_out == list(range(len(pieces)))
    assert summary.frames == 96 and summary.audio == "unknown"
    assert video.decode_rgb(out)[1]["frames"] == 96


def test_a_plain_mp4_piped_in_is_refused_with_what_to_do(triton_server, tmp_path, video) -> None:
    frames = video.ramp_frames_nhwc_u8(count=48)
    plain = video.write_clip(tmp_path / "plain.mp4", frames, codec_options={"qp": "0"})
    out = tmp_path / "out.mp4"

    result = subprocess.run(
        [*PIPE_COMMAND, str(out), "--url", triton_server.grpc_url, "--no-progress"],
        input=plain.read_bytes(),
        capture_output=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 1
    assert "send a plain MP4 whole, in one request" in result.stderr.decode()
    assert not out.exists()


def test_stdin_needs_the_server_side(capsys: pytest.CaptureFixture) -> None:
    assert main(["video", "-", "out.mp4"]) == 2
    assert "reading the video from stdin ('-') needs --server-side" in capsys.readouterr().err
