"""TemporalSmoother: state per sequence (probability, and the luma of the motion-aware gate),
START/END, expiry, least-recently-used bound."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur.device import Device
from bgblur.ops.temporal import smooth_probability
from bgblur.stages.temporal import TemporalSmoother


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _frames(seed: int, count: int = 3, hw: tuple[int, int] = (4, 5)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (count, 1, *hw)).astype(np.float32)


def _reference(frames: np.ndarray, strength: float) -> np.ndarray:
    state = np.zeros((1, *frames.shape[2:]), np.float32)
    return smooth_probability(frames, state, start=True, strength=strength)


def test_a_stream_split_over_requests_matches_one_pass():
    smoother = TemporalSmoother(Device("cpu"))
    frames = _frames(0, 7)
    parts = [
        smoother("s", frames[:2], start=True, end=False, strength=0.6),
        smoother("s", frames[2:5], start=False, end=False, strength=0.6),
        smoother("s", frames[5:], start=False, end=True, strength=0.6),
    ]
    np.testing.assert_array_equal(np.concatenate(parts), _reference(frames, 0.6))
    assert not smoother.holds("s")


def test_streams_do_not_share_state():
    smoother = TemporalSmoother(Device("cpu"))
    a, b = _frames(1), _frames(2)
    out_a1 = smoother("a", a[:1], start=True, end=False, strength=0.8)
    out_b = smoother("b", b, start=True, end=False, strength=0.8)
    out_a2 = smoother("a", a[1:], start=False, end=False, strength=0.8)
    np.testing.assert_array_equal(np.concatenate([out_a1, out_a2]), _reference(a, 0.8))
    np.testing.assert_array_equal(out_b, _reference(b, 0.8))
    assert smoother.live_streams == 2


def test_start_resets_a_held_stream():
    smoother = TemporalSmoother(Device("cpu"))
    smoother("s", _frames(3), start=True, end=False, strength=0.8)
    fresh = _frames(4)
    np.testing.assert_array_equal(
        smoother("s", fresh, start=True, end=False, strength=0.8), _reference(fresh, 0.8)
    )


def test_unknown_sequence_without_start_starts_afresh():
    smoother = TemporalSmoother(Device("cpu"))
    frames = _frames(5)
    out = smoother("lost", frames, start=False, end=False, strength=0.8)
    np.testing.assert_array_equal(out, _reference(frames, 0.8))


def test_idle_states_expire():
    clock = _Clock()
    smoother = TemporalSmoother(Device("cpu"), idle_timeout_s=10.0, clock=clock)
    smoother("old", _frames(6), start=True, end=False, strength=0.5)
    clock.now = 5.0
    smoother("recent", _frames(7), start=True, end=False, strength=0.5)
    clock.now = 12.0
    smoother("other", _frames(8), start=True, end=False, strength=0.5)
    assert not smoother.holds("old")
    assert smoother.holds("recent") and smoother.holds("other")


def test_least_recently_used_state_goes_beyond_max_streams():
    smoother = TemporalSmoother(Device("cpu"), max_streams=2)
    for name in ("a", "b"):
        smoother(name, _frames(9), start=True, end=False, strength=0.5)
    smoother("a", _frames(10), start=False, end=False, strength=0.5)  # b is now the oldest
    smoother("c", _frames(11), start=True, end=False, strength=0.5)
    assert smoother.holds("a") and smoother.holds("c") and not smoother.holds("b")


def test_a_stream_that_changes_size_starts_afresh():
    smoother = TemporalSmoother(Device("cpu"))
    smoother("s", _frames(12, hw=(4, 5)), start=True, end=False, strength=0.5)
    bigger = _frames(13, hw=(6, 5))
    out = smoother("s", bigger, start=False, end=False, strength=0.5)
    np.testing.assert_array_equal(out, _reference(bigger, 0.5))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"max_streams": 0}, "max_streams"), ({"idle_timeout_s": 0}, "idle_timeout_s")],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemporalSmoother(Device("cpu"), **kwargs)


@pytest.mark.gpu
def test_gpu_smoother_matches_cpu(cupy):
    frames = _frames(14, 6, (64, 48))
    cpu = TemporalSmoother(Device("cpu"))
    gpu = TemporalSmoother(Device("gpu", 0))
    expected = [
        cpu("s", frames[i : i + 2], start=i == 0, end=False, strength=0.7) for i in (0, 2, 4)
    ]
    actual = [
        gpu("s", cupy.asarray(frames[i : i + 2]), start=i == 0, end=False, strength=0.7)
        for i in (0, 2, 4)
    ]
    for e, a in zip(expected, actual, strict=True):
        assert isinstance(a, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(a), e)


def test_float16_output_is_the_rounded_float32():
    smoother = TemporalSmoother(Device("cpu"))
    frames = _frames(15)
    out = smoother("s", frames, start=True, end=False, strength=0.6, out_dtype=np.float16)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, _reference(frames, 0.6).astype(np.float16))


@pytest.mark.gpu
def test_many_streams_launched_then_one_wait_match_waiting_each(cupy):
    """As the temporal_smoothing model runs a batch of requests: every stream's kernels
    launched unsynchronised on the stage's stream, one ``synchronize`` at the end."""
    streams = {f"s{k}": _frames(20 + k, 4, (256, 256)) for k in range(16)}
    waited = TemporalSmoother(Device("gpu", 0))
    launched = TemporalSmoother(Device("gpu", 0))
    for step in range(4):
        expected, pending = {}, {}
        for key, frames in streams.items():
            frame = cupy.asarray(frames[step : step + 1])
            expected[key] = cupy.asnumpy(
                waited(key, frame, start=step == 0, end=False, strength=0.7)
            )
            pending[key] = launched(
                key, frame, start=step == 0, end=False, strength=0.7, synchronize=False
            )
        launched.synchronize()
        for key, out in pending.items():
            np.testing.assert_array_equal(cupy.asnumpy(out), expected[key])


# Motion-aware: the frames' network input (x = pixel / 255 unless the smoother is told otherwise).


def _network_input(seed: int, count: int = 3, hw: tuple[int, int] = (4, 5)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (count, 3, *hw)).astype(np.float16)


def _motion_reference(frames, network_input, strength, **kwargs):
    h, w = frames.shape[2:]
    return smooth_probability(
        frames,
        np.zeros((1, h, w), np.float32),
        start=True,
        strength=strength,
        frames_n3hw=network_input,
        luma_1hw_f32=np.zeros((1, h, w), np.float32),
        **kwargs,
    )


def test_motion_stream_split_over_requests_matches_one_pass():
    smoother = TemporalSmoother(Device("cpu"))
    frames, network_input = _frames(30, 7), _network_input(31, 7)
    parts = [
        smoother(
            "s",
            frames[a:b],
            start=a == 0,
            end=b == 7,
            strength=0.6,
            network_input_n3hw=network_input[a:b],
        )
        for a, b in ((0, 2), (2, 5), (5, 7))
    ]
    expected = _motion_reference(frames, network_input, 0.6)
    np.testing.assert_array_equal(np.concatenate(parts), expected)
    assert not np.array_equal(expected, _reference(frames, 0.6))  # the frames make a difference
    assert not smoother.holds("s")  # END freed the probability and the luma


def test_the_normalisation_given_to_the_smoother_reaches_the_gate():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    smoother = TemporalSmoother(Device("cpu"), input_mean=mean, input_std=std)
    frames, network_input = _frames(32, 4), _network_input(33, 4)
    out = smoother(
        "s", frames, start=True, end=False, strength=0.6, network_input_n3hw=network_input
    )
    np.testing.assert_array_equal(
        out, _motion_reference(frames, network_input, 0.6, input_mean=mean, input_std=std)
    )


def test_a_request_without_network_input_leaves_no_luma_behind():
    # frames 0-1 with network input, 2 without (probability gate alone), 3-4 with: the first of
    # those is gated by the probability alone (no luma of frame 2), then by the frames again.
    frames, network_input = _frames(34, 5), _network_input(35, 5)
    smoother = TemporalSmoother(Device("cpu"))
    smoother(
        "s", frames[:2], start=True, end=False, strength=0.6, network_input_n3hw=network_input[:2]
    )
    smoother("s", frames[2:3], start=False, end=False, strength=0.6)
    actual = smoother(
        "s", frames[3:], start=False, end=False, strength=0.6, network_input_n3hw=network_input[3:]
    )
    state = np.zeros((1, 4, 5), np.float32)
    luma = np.zeros((1, 4, 5), np.float32)
    smooth_probability(
        frames[:2],
        state,
        start=True,
        strength=0.6,
        frames_n3hw=network_input[:2],
        luma_1hw_f32=luma,
    )
    smooth_probability(frames[2:3], state, start=False, strength=0.6)
    expected = smooth_probability(
        frames[3:],
        state,
        start=False,
        strength=0.6,
        frames_n3hw=network_input[3:],
        luma_1hw_f32=luma,
        luma_start=True,
    )
    np.testing.assert_array_equal(actual, expected)


def test_network_input_on_another_grid_is_sampled_onto_the_probability_grid():
    frames = _frames(36, 3, (4, 5))
    coarse = _network_input(37, 3, (4, 5))
    fine = np.repeat(np.repeat(coarse, 2, axis=2), 3, axis=3)  # each pixel 2 x 3 times
    smoother = TemporalSmoother(Device("cpu"))
    out = smoother("s", frames, start=True, end=False, strength=0.6, network_input_n3hw=fine)
    np.testing.assert_array_equal(out, _motion_reference(frames, coarse, 0.6))


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 1, 4, 5), (3, 3, 4)])
def test_network_input_of_other_frames_or_channels_is_refused(shape):
    smoother = TemporalSmoother(Device("cpu"))
    with pytest.raises(ValueError, match="network input must have shape"):
        smoother(
            "s",
            _frames(38),
            start=True,
            end=False,
            strength=0.6,
            network_input_n3hw=np.zeros(shape, np.float16),
        )


def test_bad_motion_settings_are_refused():
    with pytest.raises(ValueError, match="still_grey"):
        TemporalSmoother(Device("cpu"), still_grey=40.0, moving_grey=30.0)
    with pytest.raises(ValueError, match="input_std"):
        TemporalSmoother(Device("cpu"), input_std=(0.0, 1.0, 1.0))


@pytest.mark.gpu
def test_gpu_motion_smoother_matches_cpu(cupy):
    frames, network_input = _frames(39, 6, (64, 48)), _network_input(40, 6, (64, 48))
    cpu = TemporalSmoother(Device("cpu"))
    gpu = TemporalSmoother(Device("gpu", 0))
    for i in (0, 2, 4):
        expected = cpu(
            "s",
            frames[i : i + 2],
            start=i == 0,
            end=False,
            strength=0.7,
            network_input_n3hw=network_input[i : i + 2],
        )
        actual = gpu(
            "s",
            cupy.asarray(frames[i : i + 2]),
            start=i == 0,
            end=False,
            strength=0.7,
            network_input_n3hw=cupy.asarray(network_input[i : i + 2]),
        )
        assert isinstance(actual, cupy.ndarray)
        np.testing.assert_array_equal(cupy.asnumpy(actual), expected)
