"""Temporal smoothing of a stream's foreground probability (gated exponential smoothing).

Each frame's probability is blended with the stream's smoothed probability of the previous frame:

    d      = |p_t - s_(t-1)|
    gate   = clip((d - jitter) / (motion - jitter), 0, 1)
    alpha  = (1 - strength) + strength * gate
    s_t    = alpha * p_t + (1 - alpha) * s_(t-1)

Small changes (``d <= jitter``: the frame-to-frame noise of a per-frame network at a still edge)
are smoothed with the full ``strength``; large changes (``d >= motion``: something moved) pass at
once (``alpha = 1``), so a moving person leaves no ghost trail. ``strength = 0`` is the identity.
The first frame of a stream (``start``) is taken as it is.

Motion-aware gate (``frames_n3hw`` given). The probability's own change cannot tell flicker from
motion; the frames can. With the network input of each frame (``[T, 3, h, w]``, the probability's
grid, normalised as ``x = (pixel / 255 - mean) / std``: ``input_mean``, ``input_std``), the op
undoes the normalisation and takes the frame's luma in grey levels (0..255, BT.601 weights),
box-filtered over ``(2 * LUMA_BOX_RADIUS + 1)^2`` pixels (edge pixels replicated) against sensor
noise: ``Y_t``. The stream keeps ``Y`` of its last frame (``luma_1hw_f32``) next to the smoothed
probability. Then

    c         = |Y_t - Y_(t-1)|                               (grey levels)
    stillness = clip((moving_grey - c) / (moving_grey - still_grey), 0, 1)
    alpha     = alpha_p - (alpha_p - (1 - strength)^2) * stillness

with ``alpha_p`` the probability gate's ``alpha`` above. Where the image did not change
(``c <= still_grey``, default ``STILL_GREY`` = 4 grey levels), a change of the probability is
flicker: it is smoothed with ``alpha = (1 - strength)^2``, as two steps of the plain smoothing
(strength 0.6: 0.16 of the new frame), whatever its size. Where the image changed
(``c >= moving_grey``, default ``MOVING_GREY`` = 32 grey levels) the probability gate decides
alone, as without frames: a large change passes at once. In between, linear. Without
``frames_n3hw`` the op is the probability gate alone, bit for bit. ``luma_start`` (default
``start``): the luma state holds no frame yet: the first frame's gate is the probability's alone
(the first frame of a stream, ``start``, is taken as it is anyway); ``Y`` of the last frame is
kept in ``luma_1hw_f32`` in any case.

The GPU twin (``temporal_gpu``) runs the same float32 arithmetic in one launch, one thread per
pixel looping over the frames (each thread filters the luma around its pixel from the read-only
frames and touches only its own pixel of the states); both give the same bits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array

# Defaults of the probability gate, in probability units (see the module docstring).
JITTER = 0.05
MOTION = 0.35
# Defaults of the motion-aware gate, in grey levels of the box-filtered luma (module docstring).
STILL_GREY = 4.0
MOVING_GREY = 32.0
LUMA_BOX_RADIUS = 2
# BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


def check_gate(strength: float, jitter: float, motion: float) -> None:
    """Raise ValueError unless ``0 <= strength < 1`` and ``0 <= jitter < motion <= 1``."""
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    if not 0.0 <= jitter < motion <= 1.0:
        raise ValueError(f"need 0 <= jitter < motion <= 1, got jitter {jitter}, motion {motion}")


def check_image_gate(still_grey: float, moving_grey: float) -> None:
    """Raise ValueError unless ``0 <= still_grey < moving_grey <= 255``."""
    if not 0.0 <= still_grey < moving_grey <= 255.0:
        raise ValueError(
            f"need 0 <= still_grey < moving_grey <= 255, got still_grey {still_grey}, "
            f"moving_grey {moving_grey}"
        )


def luma_coefficients(
    input_mean: Sequence[float], input_std: Sequence[float]
) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """``(a_r, a_g, a_b, b)`` float32: luma in grey levels = ``a_r x_r + a_g x_g + a_b x_b + b``
    of a network input normalised as ``x = (pixel / 255 - mean) / std``."""
    if len(input_mean) != 3 or len(input_std) != 3 or any(v <= 0 for v in input_std):
        raise ValueError(
            f"input_mean and input_std need 3 values (std > 0), got {input_mean}, {input_std}"
        )
    scales = [np.float32(255.0 * w * sd) for w, sd in zip(LUMA_WEIGHTS, input_std, strict=True)]
    offset = np.float32(255.0 * sum(w * m for w, m in zip(LUMA_WEIGHTS, input_mean, strict=True)))
    return scales[0], scales[1], scales[2], offset


def box_luma(frames_n3hw: np.ndarray, coefficients: Sequence[np.float32]) -> np.ndarray:
    """``[T, h, w]`` float32 luma (grey levels) of NumPy ``[T, 3, h, w]`` network inputs,
    box-filtered over ``(2 * LUMA_BOX_RADIUS + 1)^2`` pixels, edge pixels replicated.

    The float32 operations in the kernel's order: ``((a_r x_r + a_g x_g) + a_b x_b) + b``, then
    the window's sum row by row, left to right, times ``1 / size``.
    """
    a_r, a_g, a_b, b = coefficients
    x = frames_n3hw.astype(np.float32, copy=False)
    luma = ((a_r * x[:, 0] + a_g * x[:, 1]) + a_b * x[:, 2]) + b
    r = LUMA_BOX_RADIUS
    _, h, w = luma.shape
    padded = np.pad(luma, ((0, 0), (r, r), (r, r)), mode="edge")
    total = None
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            window = padded[:, dy : dy + h, dx : dx + w]
            total = window.copy() if total is None else total + window
    return total * (np.float32(1.0) / np.float32((2 * r + 1) ** 2))


def smooth_probability(
    probability_n1hw: Any,
    state_1hw_f32: Any,
    *,
    start: bool,
    strength: float,
    jitter: float = JITTER,
    motion: float = MOTION,
    frames_n3hw: Any = None,
    luma_1hw_f32: Any = None,
    luma_start: bool | None = None,
    input_mean: Sequence[float] = (0.0, 0.0, 0.0),
    input_std: Sequence[float] = (1.0, 1.0, 1.0),
    still_grey: float = STILL_GREY,
    moving_grey: float = MOVING_GREY,
    out: Any = None,
) -> Any:
    """Smooth the consecutive frames of one stream; the states are updated in place.

    Args:
        probability_n1hw: ``[T, 1, h, w]`` float16/float32 foreground probabilities of ``T``
            consecutive frames of one stream, oldest first (NumPy or CuPy).
        state_1hw_f32: ``[1, h, w]`` float32, same device: the smoothed probability of the frame
            before the first one (ignored when ``start``); holds the last frame's on return.
        start: the first frame starts the stream (no history).
        strength: ``0 <= strength < 1``; 0 turns smoothing off.
        jitter, motion: the probability gate's thresholds (probability units).
        frames_n3hw: optional ``[T, 3, h, w]`` float16/float32 network input of the same frames,
            same device and grid: turns the motion-aware gate on (module docstring).
        luma_1hw_f32: ``[1, h, w]`` float32, same device, with ``frames_n3hw`` (required then):
            the box-filtered luma of the frame before the first one (ignored when
            ``luma_start``); holds the last frame's on return.
        luma_start: the luma state holds no frame yet (default: ``start``).
        input_mean, input_std: the network input's RGB normalisation
            (``x = (pixel / 255 - mean) / std``; the default is ``x = pixel / 255``).
        still_grey, moving_grey: the motion-aware gate's thresholds (grey levels).
        out: optional ``[T, 1, h, w]`` float32 array to write into.

    Returns:
        ``[T, 1, h, w]`` float32 smoothed probabilities on the input's device.
    """
    check_gate(strength, jitter, motion)
    frames, channels, h, w = probability_n1hw.shape
    if channels != 1:
        raise ValueError(f"probability must have shape [T, 1, h, w], got {probability_n1hw.shape}")
    _check_state("state", state_1hw_f32, h, w)
    if frames_n3hw is not None:
        check_image_gate(still_grey, moving_grey)
        if tuple(frames_n3hw.shape) != (frames, 3, h, w):
            raise ValueError(
                f"frames must have shape [{frames}, 3, {h}, {w}] (the probability's frames and "
                f"grid), got {tuple(frames_n3hw.shape)}"
            )
        if frames_n3hw.dtype not in (np.float16, np.float32):
            raise ValueError(f"frames must be float16 or float32, got {frames_n3hw.dtype}")
        if luma_1hw_f32 is None:
            raise ValueError("frames need luma_1hw_f32, the stream's luma state")
        _check_state("luma state", luma_1hw_f32, h, w)
        if is_gpu_array(frames_n3hw) != is_gpu_array(probability_n1hw):
            raise ValueError("frames must live on the probability's device")
        coefficients = luma_coefficients(input_mean, input_std)
    out = check_out(out, (frames, 1, h, w), np.float32, probability_n1hw)
    luma_start = start if luma_start is None else luma_start
    if is_gpu_array(probability_n1hw):
        from bgblur.ops import temporal_gpu

        if frames_n3hw is None:
            return temporal_gpu.smooth_probability(
                probability_n1hw,
                state_1hw_f32,
                start=start,
                strength=strength,
                jitter=jitter,
                motion=motion,
                out=out,
            )
        return temporal_gpu.smooth_probability_motion(
            probability_n1hw,
            state_1hw_f32,
            frames_n3hw,
            luma_1hw_f32,
            start=start,
            luma_start=luma_start,
            strength=strength,
            jitter=jitter,
            motion=motion,
            coefficients=coefficients,
            still_grey=still_grey,
            moving_grey=moving_grey,
            out=out,
        )
    f32 = np.float32
    keep, full = f32(1.0) - f32(strength), f32(strength)
    lo, inv_range = f32(jitter), f32(1.0) / (f32(motion) - f32(jitter))
    if frames_n3hw is not None:
        lumas = box_luma(frames_n3hw, coefficients)
        keep_still = keep * keep
        moving_level = f32(moving_grey)
        inv_image_range = f32(1.0) / (f32(moving_grey) - f32(still_grey))
    state = state_1hw_f32
    for t in range(frames):
        p = probability_n1hw[t].astype(f32)
        if t == 0 and start:
            state[...] = p
        else:
            gate = np.clip((np.abs(p - state) - lo) * inv_range, f32(0.0), f32(1.0))
            alpha = keep + full * gate
            if frames_n3hw is not None and not (t == 0 and luma_start):
                change = np.abs(lumas[t] - luma_1hw_f32[0])
                stillness = np.clip((moving_level - change) * inv_image_range, f32(0.0), f32(1.0))
                alpha = alpha - (alpha - keep_still) * stillness
            state[...] = alpha * p + (f32(1.0) - alpha) * state
        if frames_n3hw is not None:
            luma_1hw_f32[0] = lumas[t]
        out[t] = state
    return out


def _check_state(name: str, state_1hw_f32: Any, h: int, w: int) -> None:
    if tuple(state_1hw_f32.shape) != (1, h, w) or state_1hw_f32.dtype != np.float32:
        raise ValueError(
            f"{name} must be float32 [1, {h}, {w}], got {state_1hw_f32.dtype} "
            f"{tuple(state_1hw_f32.shape)}"
        )
