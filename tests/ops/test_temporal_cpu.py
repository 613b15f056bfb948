"""bgblur.ops.temporal.smooth_probability on the CPU: the gate's behaviour, frame by frame."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur.ops.temporal import JITTER, MOTION, smooth_probability


def _run(probabilities, strength, *, start=True, state=None):
    p = np.asarray(probabilities, np.float32).reshape(len(probabilities), 1, 1, -1)
    if state is None:
        state = np.zeros((1, 1, p.shape[3]), np.float32)
    out = smooth_probability(p, state, start=start, strength=strength)
    return out[:, 0, 0], state


def test_first_frame_of_a_stream_is_taken_as_it_is():
    out, state = _run([[0.3, 0.9]], 0.8, state=np.full((1, 1, 2), 0.5, np.float32))
    np.testing.assert_array_equal(out[0], np.float32([0.3, 0.9]))
    np.testing.assert_array_equal(state[0, 0], np.float32([0.3, 0.9]))


def test_strength_zero_is_the_identity():
    frames = np.random.default_rng(0).uniform(0, 1, (6, 1, 5, 7)).astype(np.float32)
    state = np.zeros((1, 5, 7), np.float32)
    out = smooth_probability(frames, state, start=True, strength=0.0)
    np.testing.assert_array_equal(out, frames)


def test_small_changes_are_smoothed_with_the_full_strength():
    # A change below the jitter threshold: alpha = 1 - strength.
    out, _ = _run([[0.50], [0.53]], 0.75)
    assert out[1, 0] == pytest.approx(0.50 + 0.25 * 0.03, abs=1e-6)


def test_large_changes_pass_at_once_no_ghost_trail():
    out, _ = _run([[0.0], [1.0], [1.0]], 0.9)
    assert out[1, 0] == 1.0  # |d| = 1 >= motion: alpha = 1
    assert out[2, 0] == 1.0


def test_gate_is_linear_between_jitter_and_motion():
    d = (JITTER + MOTION) / 2  # gate 0.5
    strength = 0.8
    out, _ = _run([[0.2], [0.2 + d]], strength)
    alpha = (1 - strength) + strength * 0.5
    assert out[1, 0] == pytest.approx(0.2 + alpha * d, abs=1e-6)


def test_flicker_is_reduced_on_a_jittering_still_edge():
    rng = np.random.default_rng(1)
    truth = np.linspace(0, 1, 64, dtype=np.float32)
    noisy = np.clip(truth + rng.normal(0, 0.03, (40, 64)), 0, 1).astype(np.float32)
    out, _ = _run(noisy, 0.7)
    raw_flicker = np.abs(np.diff(noisy, axis=0)).mean()
    smooth_flicker = np.abs(np.diff(out, axis=0)).mean()
    assert smooth_flicker < 0.5 * raw_flicker


def test_state_carries_over_between_calls():
    frames = np.random.default_rng(2).uniform(0, 1, (8, 1, 3, 4)).astype(np.float32)
    state = np.zeros((1, 3, 4), np.float32)
    whole = smooth_probability(frames, state.copy(), start=True, strength=0.6)
    first = smooth_probability(frames[:3], state, start=True, strength=0.6)
    rest = smooth_probability(frames[3:], state, start=False, strength=0.6)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)


def test_float16_input_gives_the_float32_of_its_values():
    frames = np.random.default_rng(3).uniform(0, 1, (4, 1, 3, 3)).astype(np.float16)
    a = smooth_probability(frames, np.zeros((1, 3, 3), np.float32), start=True, strength=0.5)
    b = smooth_probability(
        frames.astype(np.float32), np.zeros((1, 3, 3), np.float32), start=True, strength=0.5
    )
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"strength": 1.0}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"strength": 0.5, "jitter": 0.4, "motion": 0.3}, "jitter"),
    ],
)
def test_bad_gate_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        smooth_probability(
            np.zeros((1, 1, 2, 2), np.float32),
            np.zeros((1, 2, 2), np.float32),
            start=True,
            **kwargs,
        )


def test_state_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match="state must be float32"):
        smooth_probability(
            np.zeros((1, 1, 2, 2), np.float32),
            np.zeros((1, 2, 3), np.float32),
            start=True,
            strength=0.5,
        )
