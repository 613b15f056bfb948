"""bgblur.ops.temporal.smooth_probability on the CPU: the gate's behaviour, frame by frame."""

from __future__ import annotations

import numpy as np
import pytest

from bgblur.ops.temporal import (
    JITTER,
    LUMA_BOX_RADIUS,
    MOTION,
    MOVING_GREY,
    STILL_GREY,
    box_luma,
    luma_coefficients,
    smooth_probability,
)


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


# Motion-aware gate: the frames' network input (here normalised as x = pixel / 255, the default).


def _still_frames(count: int, hw: tuple[int, int], *, noise_grey: float, seed: int) -> np.ndarray:
    """``[count, 3, h, w]`` float32 network inputs of one still textured scene plus sensor noise
    of ``noise_grey`` grey levels (sigma)."""
    rng = np.random.default_rng(seed)
    scene = rng.uniform(40, 200, (1, 3, *hw))
    noisy = scene + rng.normal(0, noise_grey, (count, 3, *hw))
    return (np.clip(noisy, 0, 255) / 255).astype(np.float32)


def _motion(probabilities, frames, strength, *, start=True, state=None, luma=None, **kwargs):
    probabilities = np.asarray(probabilities, np.float32)
    _, _, h, w = probabilities.shape
    state = np.zeros((1, h, w), np.float32) if state is None else state
    luma = np.zeros((1, h, w), np.float32) if luma is None else luma
    out = smooth_probability(
        probabilities,
        state,
        start=start,
        strength=strength,
        frames_n3hw=frames,
        luma_1hw_f32=luma,
        **kwargs,
    )
    return out, state, luma


def test_still_scene_flicker_is_smoothed_strongly_whatever_its_size():
    # A still scene (noise 2 grey) under a probability that jumps 0.2 <-> 0.8: far beyond the
    # probability gate's motion threshold (it alone passes every jump), all flicker here.
    frames = _still_frames(12, (8, 8), noise_grey=2.0, seed=4)
    p = np.where(np.arange(12) % 2 == 0, 0.2, 0.8).astype(np.float32)
    probabilities = np.broadcast_to(p[:, None, None, None], (12, 1, 8, 8)).copy()
    alone = smooth_probability(
        probabilities, np.zeros((1, 8, 8), np.float32), start=True, strength=0.6
    )
    out, _, _ = _motion(probabilities, frames, 0.6)
    np.testing.assert_array_equal(alone, probabilities)  # the old gate lets all of it through
    keep_still = np.float32(0.4) * np.float32(0.4)
    assert out[1, 0, 4, 4] == pytest.approx(0.2 + keep_still * 0.6, abs=1e-6)
    raw = np.abs(np.diff(probabilities, axis=0)).mean()
    assert np.abs(np.diff(out, axis=0)).mean() < 0.25 * raw


def test_an_image_change_lets_a_probability_change_pass_at_once():
    # The scene turns from dark to bright (a change far above MOVING_GREY) as the probability
    # jumps: motion, not flicker; it passes at once as without frames.
    dark = np.full((1, 3, 6, 6), 30 / 255, np.float32)
    bright = np.full((1, 3, 6, 6), 220 / 255, np.float32)
    frames = np.concatenate([dark, bright, bright])
    probabilities = np.float32([0.0, 1.0, 1.0])[:, None, None, None] * np.ones(
        (3, 1, 6, 6), np.float32
    )
    out, state, _ = _motion(probabilities, frames, 0.9)
    np.testing.assert_array_equal(out[1], probabilities[1])
    np.testing.assert_array_equal(state, probabilities[2])


def test_where_the_image_changed_the_probability_gate_decides_as_without_frames():
    # Luma change of 100 grey levels everywhere, at every frame (>= MOVING_GREY): stillness 0,
    # alpha is the probability gate's alone, bit for bit.
    rng = np.random.default_rng(7)
    levels = np.where(np.arange(6) % 2 == 0, 40.0, 140.0)
    frames = np.broadcast_to((levels / 255)[:, None, None, None], (6, 3, 5, 5)).astype(np.float32)
    probabilities = rng.uniform(0, 1, (6, 1, 5, 5)).astype(np.float32)
    alone = smooth_probability(
        probabilities, np.zeros((1, 5, 5), np.float32), start=True, strength=0.7
    )
    out, _, _ = _motion(probabilities, frames, 0.7)
    np.testing.assert_array_equal(out, alone)


def test_the_stillness_ramp_is_linear_in_grey_levels():
    # Uniform frames: the box-filtered luma equals the grey level; a change halfway between
    # STILL_GREY and MOVING_GREY gives stillness 0.5.
    change = (STILL_GREY + MOVING_GREY) / 2
    frames = np.stack([np.full((3, 1, 1), 100 / 255), np.full((3, 1, 1), (100 + change) / 255)])
    frames = frames.astype(np.float32)
    out, _, luma = _motion(np.float32([0.5, 0.52]).reshape(2, 1, 1, 1), frames, 0.5)
    keep = 0.5
    stillness = (MOVING_GREY - change) / (MOVING_GREY - STILL_GREY)
    alpha = keep - (keep - keep * keep) * stillness  # probability gate closed: alpha_p = keep
    assert out[1, 0, 0, 0] == pytest.approx(0.5 + alpha * 0.02, abs=1e-6)
    assert luma[0, 0, 0] == pytest.approx(100 + change, abs=1e-3)


def test_first_frame_starts_both_states():
    frames = _still_frames(1, (4, 4), noise_grey=0.0, seed=8)
    probabilities = np.full((1, 1, 4, 4), 0.3, np.float32)
    out, state, luma = _motion(
        probabilities,
        frames,
        0.8,
        state=np.full((1, 4, 4), 0.9, np.float32),
        luma=np.full((1, 4, 4), 255.0, np.float32),
    )
    np.testing.assert_array_equal(out[0], probabilities[0])
    np.testing.assert_array_equal(state, probabilities[0])
    np.testing.assert_array_equal(
        luma[0], box_luma(frames, luma_coefficients((0, 0, 0), (1, 1, 1)))[0]
    )


def test_luma_start_gates_the_first_frame_by_the_probability_alone():
    # A held probability state but no luma yet (the stream's earlier requests had no frames).
    frames = _still_frames(1, (4, 4), noise_grey=0.0, seed=9)
    probabilities = np.full((1, 1, 4, 4), 0.9, np.float32)
    previous = np.full((1, 4, 4), 0.1, np.float32)
    out, _, _ = _motion(
        probabilities, frames, 0.8, start=False, state=previous.copy(), luma_start=True
    )
    alone = smooth_probability(probabilities, previous.copy(), start=False, strength=0.8)
    np.testing.assert_array_equal(out, alone)


def test_motion_state_carries_over_between_calls():
    rng = np.random.default_rng(10)
    frames = _still_frames(8, (6, 7), noise_grey=6.0, seed=11)
    frames[4:] = np.clip(frames[4:] + 0.3, 0, 1)  # a change mid-stream
    probabilities = rng.uniform(0, 1, (8, 1, 6, 7)).astype(np.float32)
    whole, _, _ = _motion(probabilities, frames, 0.6)
    state, luma = np.zeros((1, 6, 7), np.float32), np.zeros((1, 6, 7), np.float32)
    first, _, _ = _motion(probabilities[:3], frames[:3], 0.6, state=state, luma=luma)
    rest, _, _ = _motion(probabilities[3:], frames[3:], 0.6, start=False, state=state, luma=luma)
    np.testing.assert_array_equal(np.concatenate([first, rest]), whole)
    coefficients = luma_coefficients((0, 0, 0), (1, 1, 1))
    np.testing.assert_array_equal(luma[0], box_luma(frames[-1:], coefficients)[0])


def test_the_thresholds_are_in_grey_levels_of_the_model_normalisation():
    # The same pixels normalised two ways (x = pixel / 255, and ImageNet's mean/std) give the
    # same luma and the same smoothing.
    pixels = np.random.default_rng(12).uniform(0, 255, (5, 3, 6, 6))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    scaled = (pixels / 255).astype(np.float32)
    imagenet = (pixels / 255 - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1))
    probabilities = np.random.default_rng(13).uniform(0, 1, (5, 1, 6, 6)).astype(np.float32)
    a, _, luma_a = _motion(probabilities, scaled, 0.6)
    b, _, luma_b = _motion(
        probabilities, imagenet.astype(np.float32), 0.6, input_mean=mean, input_std=std
    )
    np.testing.assert_allclose(luma_a, luma_b, atol=2e-3)
    np.testing.assert_allclose(a, b, atol=1e-4)
    # The last frame's luma in grey levels, box-filtered with its edge pixels replicated.
    grey = 0.299 * pixels[-1, 0] + 0.587 * pixels[-1, 1] + 0.114 * pixels[-1, 2]
    size = 2 * LUMA_BOX_RADIUS + 1
    padded = np.pad(grey, LUMA_BOX_RADIUS, mode="edge")
    expected = np.lib.stride_tricks.sliding_window_view(padded, (size, size)).mean(axis=(2, 3))
    np.testing.assert_allclose(luma_a[0], expected, atol=1e-3)


def test_float16_frames_give_the_float32_of_their_values():
    frames = _still_frames(4, (5, 5), noise_grey=3.0, seed=14).astype(np.float16)
    probabilities = np.random.default_rng(15).uniform(0, 1, (4, 1, 5, 5)).astype(np.float32)
    a, _, _ = _motion(probabilities, frames, 0.6)
    b, _, _ = _motion(probabilities, frames.astype(np.float32), 0.6)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frames_n3hw": np.zeros((2, 3, 4, 4), np.float32)}, r"frames must have shape \[1, 3"),
        ({"frames_n3hw": np.zeros((1, 3, 4, 5), np.float32)}, r"frames must have shape"),
        ({"frames_n3hw": np.zeros((1, 1, 4, 4), np.float32)}, r"frames must have shape"),
        ({"frames_n3hw": np.zeros((1, 3, 4, 4), np.uint8)}, "float16 or float32"),
        ({"luma_1hw_f32": None}, "luma_1hw_f32"),
        ({"luma_1hw_f32": np.zeros((1, 4, 5), np.float32)}, "luma state must be float32"),
        ({"luma_1hw_f32": np.zeros((1, 4, 4), np.float64)}, "luma state must be float32"),
        ({"still_grey": 10.0, "moving_grey": 5.0}, "still_grey"),
        ({"input_std": (1.0, 0.0, 1.0)}, "input_std"),
    ],
)
def test_bad_motion_arguments_are_refused(kwargs, message):
    arguments = {
        "frames_n3hw": np.zeros((1, 3, 4, 4), np.float32),
        "luma_1hw_f32": np.zeros((1, 4, 4), np.float32),
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        smooth_probability(
            np.zeros((1, 1, 4, 4), np.float32),
            np.zeros((1, 4, 4), np.float32),
            start=True,
            strength=0.5,
            **arguments,
        )
