"""Temporal smoothing of a stream's foreground probability (gated exponential smoothing).

Each frame's probability is blended with the stream's smoothed probability of the previous frame:

    d     = |p_t - s_(t-1)|
    gate  = clip((d - jitter) / (motion - jitter), 0, 1)
    alpha = (1 - strength) + strength * gate
    s_t   = alpha * p_t + (1 - alpha) * s_(t-1)

Small changes (``d <= jitter``: the frame-to-frame noise of a per-frame network at a still edge)
are smoothed with the full ``strength``; large changes (``d >= motion``: something moved) pass at
once (``alpha = 1``), so a moving person leaves no ghost trail. ``strength = 0`` is the identity.
The first frame of a stream (``start``) is taken as it is.

The GPU twin (``temporal_gpu``) runs the same float32 arithmetic in one launch, one thread per
pixel looping over the frames; both give the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bgblur.ops.dispatch import check_out, is_gpu_array

# Defaults of the gate, in probability units (see the module docstring).
JITTER = 0.05
MOTION = 0.35


def check_gate(strength: float, jitter: float, motion: float) -> None:
    """Raise ValueError unless ``0 <= strength < 1`` and ``0 <= jitter < motion <= 1``."""
    if not 0.0 <= strength < 1.0:
        raise ValueError(f"strength must be in [0, 1), got {strength}")
    if not 0.0 <= jitter < motion <= 1.0:
        raise ValueError(f"need 0 <= jitter < motion <= 1, got jitter {jitter}, motion {motion}")


def smooth_probability(
    probability_n1hw: Any,
    state_1hw_f32: Any,
    *,
    start: bool,
    strength: float,
    jitter: float = JITTER,
    motion: float = MOTION,
    out: Any = None,
) -> Any:
    """Smooth the consecutive frames of one stream; ``state_1hw_f32`` is updated in place.

    Args:
        probability_n1hw: ``[T, 1, h, w]`` float16/float32 foreground probabilities of ``T``
            consecutive frames of one stream, oldest first (NumPy or CuPy).
        state_1hw_f32: ``[1, h, w]`` float32, same device: the smoothed probability of the frame
            before the first one (ignored when ``start``); holds the last frame's on return.
        start: the first frame starts the stream (no history).
        strength: ``0 <= strength < 1``; 0 turns smoothing off.
        jitter, motion: the gate's thresholds (probability units).
        out: optional ``[T, 1, h, w]`` float32 array to write into.

    Returns:
        ``[T, 1, h, w]`` float32 smoothed probabilities on the input's device.
    """
    check_gate(strength, jitter, motion)
    frames, channels, h, w = probability_n1hw.shape
    if channels != 1:
        raise ValueError(f"probability must have shape [T, 1, h, w], got {probability_n1hw.shape}")
    if tuple(state_1hw_f32.shape) != (1, h, w) or state_1hw_f32.dtype != np.float32:
        raise ValueError(
            f"state must be float32 [1, {h}, {w}], got {state_1hw_f32.dtype} "
            f"{tuple(state_1hw_f32.shape)}"
        )
    out = check_out(out, (frames, 1, h, w), np.float32, probability_n1hw)
    if is_gpu_array(probability_n1hw):
        from bgblur.ops import temporal_gpu

        return temporal_gpu.smooth_probability(
            probability_n1hw,
            state_1hw_f32,
            start=start,
            strength=strength,
            jitter=jitter,
            motion=motion,
            out=out,
        )
    f32 = np.float32
    keep, full = f32(1.0) - f32(strength), f32(strength)
    lo, inv_range = f32(jitter), f32(1.0) / (f32(motion) - f32(jitter))
    state = state_1hw_f32
    for t in range(frames):
        p = probability_n1hw[t].astype(f32)
        if t == 0 and start:
            state[...] = p
        else:
            gate = np.clip((np.abs(p - state) - lo) * inv_range, f32(0.0), f32(1.0))
            alpha = keep + full * gate
            state[...] = alpha * p + (f32(1.0) - alpha) * state
        out[t] = state
    return out
