"""The client's video path on ``background_blur_stream`` (the real server, CPU): a video is one
Triton sequence, one frame per request in order, START on the first frame and END on the last;
``temporal_smoothing=0`` (or ``--model background_blur``) takes the stateless, batched model."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from bgblur_client import cli
from bgblur_client.cli import main, smoothing_off, video_model
from bgblur_client.encoding import EncoderSettings
from bgblur_client.errors import RequestRejectedError
from bgblur_client.transport import DEFAULT_MODEL, STREAM_MODEL, BlurClient, new_sequence_id
from bgblur_client.video import _H264Writer, _probe, _request_batches, blur_video, blurred_frames

DATA = Path(__file__).resolve().parents[1] / "data"
CLIP = DATA / "video_h264_320x240.mp4"  # 24 frames of a person, 320x240, brightness ramp
CLIP_FRAMES = 24
PROTOCOLS = ["grpc", "http"]


def url_of(server, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def tritonclient_of(server, protocol: str):
    if protocol == "grpc":
        return grpcclient, grpcclient.InferenceServerClient(server.grpc_url)
    return httpclient, httpclient.InferenceServerClient(server.http_url, network_timeout=120)


def send_frame(server, protocol: str, frame_1hw3: np.ndarray, model: str, **sequence) -> np.ndarray:
    """One request of ``frame_1hw3`` [N, H, W, 3] uint8 to ``model``; its BLURRED output."""
    module, client = tritonclient_of(server, protocol)
    try:
        tensor = module.InferInput("FRAMES", list(frame_1hw3.shape), "UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(frame_1hw3))
        outputs = [module.InferRequestedOutput("BLURRED")]
        return client.infer(model, [tensor], outputs=outputs, **sequence).as_numpy("BLURRED")
    finally:
        client.close()


def sequence_is_ended(server, protocol: str, sequence_id: int, frame_1hw3: np.ndarray) -> bool:
    """Whether the server holds no sequence ``sequence_id``: a request of it without START is
    refused then. (Where it was still open, the probe ends it.)"""
    try:
        send_frame(server, protocol, frame_1hw3, STREAM_MODEL, sequence_id=sequence_id)
    except InferenceServerException as exc:
        assert "must specify the START flag" in str(exc), exc
        return True
    send_frame(
        server, protocol, frame_1hw3, STREAM_MODEL, sequence_id=sequence_id, sequence_end=True
    )
    return False


@pytest.fixture(scope="module")
def clip_frames() -> tuple[np.ndarray, list[int | None]]:
    """The clip's frames as the client decodes and sends them ([24, 240, 320, 3] uint8), and
    their timestamps."""
    pending: deque = deque()
    batches = _request_batches("pyav", _probe(CLIP), 4, pending, None, on_gpu_ok=False, device=0)
    frames = np.concatenate(list(batches))
    return frames, [pts for timestamps, _ in pending for pts in timestamps]


@pytest.fixture(scope="module")
def sequence_reference(triton_server, clip_frames) -> np.ndarray:
    """The clip blurred by hand with tritonclient: each frame one request to the stream model,
    in order, under one sequence (START on the first, END on the last)."""
    frames, _ = clip_frames
    sequence_id = new_sequence_id()
    blurred = [
        send_frame(
            triton_server,
            "grpc",
            frames[i : i + 1],
            STREAM_MODEL,
            sequence_id=sequence_id,
            sequence_start=i == 0,
            sequence_end=i == len(frames) - 1,
        )
        for i in range(len(frames))
    ]
    return np.concatenate(blurred)


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def wait_for_counts(client: BlurClient, before, models: dict[str, int]) -> dict:
    """The statistics since ``before`` once every model in ``models`` has counted at least its
    requests (Triton counts a request as it releases it, a moment after the response)."""
    deadline = time.monotonic() + 5.0
    split = client.statistics().since(before)
    while time.monotonic() < deadline and any(
        split.get(m, {}).get("requests", 0) < n for m, n in models.items()
    ):
        time.sleep(0.05)
        split = client.statistics().since(before)
    return split


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blur_video_on_the_stream_model_sends_the_video_as_one_sequence(
    triton_server, protocol: str, tmp_path: Path, clip_frames, sequence_reference
) -> None:
    frames, timestamps = clip_frames
    sequence_id = new_sequence_id()
    out = tmp_path / "stream.mp4"
    with BlurClient(url_of(triton_server, protocol), protocol=protocol, model=STREAM_MODEL) as c:
        assert c.sequence_model
        before = c.statistics()
        # Lossless H.264 (CRF 0): the decoded frames are the frames sent, whatever x264
        # decides (its multi-threaded output is not bit-identical from run to run).
        summary = blur_video(
            c,
            CLIP,
            out,
            progress=False,
            decoder="pyav",
            encoder="x264",
            crf=0,
            sequence_id=sequence_id,
        )
        split = wait_for_counts(c, before, {STREAM_MODEL: CLIP_FRAMES})

    assert summary.frames == CLIP_FRAMES
    # One frame per request, all of them in the stream model; none in the stateless one.
    assert split[STREAM_MODEL]["requests"] == CLIP_FRAMES
    assert split[STREAM_MODEL]["frames"] == CLIP_FRAMES
    assert DEFAULT_MODEL not in split
    # The frames are those of the sequence sent by hand, encoded the same way.
    reference = tmp_path / "reference.mp4"
    lossless = EncoderSettings(crf=0, encoder="x264")
    writer = _H264Writer(
        reference, _probe(CLIP), audio_source=None, encoder="x264", settings=lossless
    )
    for frame, pts in zip(sequence_reference, timestamps, strict=True):
        writer.write_frame(frame, pts)
    writer.finish()
    np.testing.assert_array_equal(decode(out), decode(reference))
    # END came with the last frame: the server holds nothing of the sequence.
    assert sequence_is_ended(triton_server, protocol, sequence_id, frames[:1])


def test_the_smoothing_changes_frames_the_stateless_model_blurs_alone(
    triton_server, clip_frames, sequence_reference
) -> None:
    frames, _ = clip_frames
    stateless = np.concatenate(
        [send_frame(triton_server, "grpc", frames[i : i + 4], DEFAULT_MODEL) for i in (0, 4, 8)]
    )
    np.testing.assert_array_equal(sequence_reference[0], stateless[0])  # no history yet
    changed = [not np.array_equal(sequence_reference[i], stateless[i]) for i in range(1, 12)]
    assert sum(changed) >= 6, changed


def test_blurred_frames_and_blur_follow_the_stream_model(
    triton_server, clip_frames, sequence_reference
) -> None:
    frames, _ = clip_frames
    with BlurClient(triton_server.grpc_url, model=STREAM_MODEL) as client:
        batches = list(blurred_frames(client, CLIP, batch_size=5, decoder="pyav"))
        # blur(): the batch is a video of its own (its first frame starts afresh).
        two = client.blur(frames[:2])
        one = client.blur(frames[0])

    assert [len(b) for _, b in batches] == [5, 5, 5, 5, 4]
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), sequence_reference)
    np.testing.assert_array_equal(two.blurred_nhwc_u8, sequence_reference[:2])
    np.testing.assert_array_equal(one.blurred_nhwc_u8, sequence_reference[0])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_one_frame_video_is_start_and_end(triton_server, protocol: str, clip_frames) -> None:
    frames, _ = clip_frames
    sequence_id = new_sequence_id()
    with BlurClient(url_of(triton_server, protocol), protocol=protocol, model=STREAM_MODEL) as c:
        (result,) = c.blur_batches([frames[0]], sequence_id=sequence_id)

    assert result.blurred_nhwc_u8.shape == frames[0].shape
    assert sequence_is_ended(triton_server, protocol, sequence_id, frames[:1])


def test_the_probe_tells_an_open_sequence_from_an_ended_one(triton_server, clip_frames) -> None:
    frames, _ = clip_frames
    sequence_id = new_sequence_id()
    start = {"sequence_id": sequence_id, "sequence_start": True}
    send_frame(triton_server, "grpc", frames[:1], STREAM_MODEL, **start)
    assert not sequence_is_ended(triton_server, "grpc", sequence_id, frames[:1])  # it ends it
    assert sequence_is_ended(triton_server, "grpc", sequence_id, frames[:1])


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_video_closed_early_ends_its_sequence(triton_server, protocol: str, clip_frames) -> None:
    frames, _ = clip_frames
    sequence_id = new_sequence_id()
    batches = (frames[i : i + 2] for i in range(0, CLIP_FRAMES, 2))
    with BlurClient(url_of(triton_server, protocol), protocol=protocol, model=STREAM_MODEL) as c:
        results = c.blur_batches(batches, sequence_id=sequence_id)
        first = next(results)
        started = time.monotonic()
        results.close()  # as a consumer that fails, or takes a Ctrl-C
        closing_s = time.monotonic() - started

    assert first.blurred_nhwc_u8.shape == (2, *frames.shape[1:])
    assert closing_s < 10
    assert sequence_is_ended(triton_server, protocol, sequence_id, frames[:1])


def test_a_bad_batch_mid_video_ends_the_sequence_and_raises(triton_server, clip_frames) -> None:
    frames, _ = clip_frames
    sequence_id = new_sequence_id()

    def batches() -> Iterator[np.ndarray]:
        yield frames[:2]
        yield frames[2:4]
        yield frames[4:6].astype(np.float32)  # not uint8: refused here, before sending

    with (
        BlurClient(triton_server.grpc_url, model=STREAM_MODEL) as client,
        pytest.raises(ValueError, match="uint8"),
    ):
        list(client.blur_batches(batches(), sequence_id=sequence_id))

    assert sequence_is_ended(triton_server, "grpc", sequence_id, frames[:1])


def test_a_refused_parameter_raises_without_hanging(triton_server, clip_frames) -> None:
    frames, _ = clip_frames
    batches = (frames[i : i + 4] for i in range(0, 12, 4))
    started = time.monotonic()
    with (
        BlurClient(triton_server.grpc_url, model=STREAM_MODEL) as client,
        pytest.raises(RequestRejectedError, match="temporal_smoothing"),
    ):
        list(client.blur_batches(batches, parameters={"temporal_smoothing": 2.0}))

    assert time.monotonic() - started < 20


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("options", "model", "requests"),
    [
        ([], STREAM_MODEL, CLIP_FRAMES),  # the default: one frame per request
        (["--param", "temporal_smoothing=0"], DEFAULT_MODEL, CLIP_FRAMES // 4),  # batches of 4
        (["--model", DEFAULT_MODEL], DEFAULT_MODEL, CLIP_FRAMES // 4),
    ],
    ids=["default", "smoothing-off", "model"],
)
def test_the_cli_video_command_picks_its_model(
    triton_server,
    protocol: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    options: list[str],
    model: str,
    requests: int,
) -> None:
    url = url_of(triton_server, protocol)
    out = tmp_path / "out.mp4"
    with BlurClient(url, protocol=protocol) as client:
        before = client.statistics()
        code = main(
            [
                *("video", str(CLIP), str(out), "--url", url, "--protocol", protocol),
                *("--batch", "4", "--no-progress", "--decoder", "pyav", "--encoder", "x264"),
                *options,
            ]
        )
        split = wait_for_counts(client, before, {model: requests})

    assert code == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"blurred {CLIP_FRAMES} frames in ")
    assert f"model {model} (" in printed
    assert split[model]["requests"] == requests
    assert split[model]["frames"] == CLIP_FRAMES
    other = DEFAULT_MODEL if model == STREAM_MODEL else STREAM_MODEL
    assert other not in split


def test_the_cli_falls_back_to_the_stateless_model_with_a_warning(
    triton_server,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A server without the stream model: the CLI's stream model is one this server lacks.
    monkeypatch.setattr(cli, "STREAM_MODEL", "background_blur_stream_absent")
    out = tmp_path / "out.mp4"

    code = main(
        [
            *("video", str(CLIP), str(out), "--url", triton_server.grpc_url),
            *("--no-progress", "--decoder", "pyav", "--encoder", "x264"),
        ]
    )

    assert code == 0
    warning = "the server does not serve background_blur_stream_absent: using background_blur"
    assert any(warning in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert f"model {DEFAULT_MODEL} (batches of 4 frames" in capsys.readouterr().out


def test_an_explicit_stream_model_the_server_lacks_is_an_error(
    triton_server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main(
        [
            *("video", str(CLIP), str(tmp_path / "out.mp4"), "--url", triton_server.grpc_url),
            *("--model", "background_blur_stream_absent", "--no-progress"),
        ]
    )

    assert code == 1
    assert "model 'background_blur_stream_absent' is not ready" in capsys.readouterr().err


def test_the_video_model_follows_model_and_temporal_smoothing() -> None:
    args = cli.build_parser().parse_args(["video", "in.mp4", "out.mp4"])
    assert video_model(args, {}) == STREAM_MODEL
    assert video_model(args, {"temporal_smoothing": 0.6}) == STREAM_MODEL
    assert video_model(args, {"temporal_smoothing": 0}) == DEFAULT_MODEL
    assert video_model(args, {"temporal_smoothing": 0.0}) == DEFAULT_MODEL
    assert not smoothing_off({"temporal_smoothing": False})  # not a number: the server says so
    explicit = cli.build_parser().parse_args(["video", "a.mp4", "b.mp4", "--model", STREAM_MODEL])
    assert video_model(explicit, {"temporal_smoothing": 0}) == STREAM_MODEL
    image = cli.build_parser().parse_args(["image", "a.png", "b.png"])
    assert image.model is None  # _run_image: background_blur


def test_sequence_ids_are_non_zero_63_bit() -> None:
    ids = {new_sequence_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(0 < i < 2**63 for i in ids)


@pytest.mark.gpu
@pytest.mark.parametrize("shared_memory", ["system", "cuda"])
def test_the_stream_model_through_shared_memory_on_a_gpu_server(
    server_pool, shared_memory: str
) -> None:
    """On a GPU server, the video as one sequence through shared-memory regions (CUDA: results
    come back as CuPy arrays) gives the frames of the same sequence sent in the requests."""
    server = server_pool.get("gpu")

    def frames_of(transport: str) -> np.ndarray:
        with BlurClient(server.grpc_url, model=STREAM_MODEL, shared_memory=transport) as client:
            assert client.shared_memory == transport
            batches = [
                b.get() if hasattr(b, "get") else np.asarray(b)
                for _, b in blurred_frames(client, CLIP, batch_size=5, decoder="pyav")
            ]
        return np.concatenate(batches)

    plain = frames_of("none")
    assert plain.shape == (CLIP_FRAMES, 240, 320, 3)
    np.testing.assert_array_equal(frames_of(shared_memory), plain)
