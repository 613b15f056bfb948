"""Temporal stage: per-stream smoothed probability, kept in device memory between requests.

A stream is a Triton sequence (its correlation ID): the sequence batcher routes all of a
sequence's requests to one model instance, in order, with START on the first and END on the last.
This stage keeps one ``[1, h, w]`` float32 state per live sequence on the stage's device
(``bgblur.ops.temporal.smooth_probability`` updates it), frees it at END, after
``idle_timeout_s`` without a request, or, beyond ``max_streams``, the least recently used one.
A request of an unknown sequence without START (its state expired) starts it afresh.

With the frames' network input (``network_input_n3hw``, the preprocess output) the smoothing is
motion-aware (``bgblur.ops.temporal``): the state then holds the box-filtered luma of the
stream's last frame too (``[1, h, w]`` float32, freed with the rest). The stage knows the
network input's normalisation (``input_mean``, ``input_std``: the segmentation model's spec) to
put the gate's thresholds in grey levels. A request without it is smoothed by the probability
gate alone and leaves no luma behind (the next request with frames gates its first frame by the
probability alone).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bgblur.device import Device
from bgblur.ops.temporal import (
    JITTER,
    MOTION,
    MOVING_GREY,
    STILL_GREY,
    check_gate,
    check_image_gate,
    luma_coefficients,
    smooth_probability,
)
from bgblur.stages.nvtx import nvtx_range
from bgblur.stages.stream import StageStream


@dataclass
class _StreamState:
    probability_1hw_f32: Any
    last_used_s: float
    luma_1hw_f32: Any = None  # box-filtered luma of the last frame (None: no frame yet)


class TemporalSmoother:
    """Probability of a stream's frames -> smoothed probability, state per sequence.

    Args:
        device: CPU (NumPy) or GPU (CuPy kernel on this stage's own stream).
        max_streams: states kept at most (least recently used dropped beyond it).
        idle_timeout_s: a state unused this long is dropped.
        jitter, motion: the probability gate of ``bgblur.ops.temporal``.
        still_grey, moving_grey: its motion-aware gate (grey levels; used with frames).
        input_mean, input_std: the network input's RGB normalisation (the segmentation model's
            ``spec.mean``, ``spec.std``: ``x = (pixel / 255 - mean) / std``).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        device: Device,
        *,
        max_streams: int = 1024,
        idle_timeout_s: float = 60.0,
        jitter: float = JITTER,
        motion: float = MOTION,
        still_grey: float = STILL_GREY,
        moving_grey: float = MOVING_GREY,
        input_mean: Sequence[float] = (0.0, 0.0, 0.0),
        input_std: Sequence[float] = (1.0, 1.0, 1.0),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_streams < 1:
            raise ValueError(f"max_streams must be >= 1, got {max_streams}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be > 0, got {idle_timeout_s}")
        check_gate(0.0, jitter, motion)
        check_image_gate(still_grey, moving_grey)
        luma_coefficients(input_mean, input_std)  # checks them
        self.device = device
        self.max_streams = max_streams
        self.idle_timeout_s = idle_timeout_s
        self.jitter, self.motion = jitter, motion
        self.still_grey, self.moving_grey = still_grey, moving_grey
        self.input_mean, self.input_std = tuple(input_mean), tuple(input_std)
        self._clock = clock
        self._states: collections.OrderedDict[Hashable, _StreamState] = collections.OrderedDict()
        self.stream = StageStream(device)

    @property
    def live_streams(self) -> int:
        """Sequences whose state is held now."""
        return len(self._states)

    def holds(self, sequence_id: Hashable) -> bool:
        return sequence_id in self._states

    def __call__(
        self,
        sequence_id: Hashable,
        probability_n1hw: Any,
        *,
        start: bool,
        end: bool,
        strength: float,
        network_input_n3hw: Any = None,
        out_dtype: Any = np.float32,
        synchronize: bool = True,
    ) -> Any:
        """Smooth ``[T, 1, h, w]`` probabilities of ``T`` consecutive frames of one stream.

        ``network_input_n3hw``: optional ``[T, 3, H', W']`` float16/float32 network input of
        the same frames (normalised with ``input_mean``/``input_std``): turns the motion-aware
        gate on. On another grid than the probability's it is sampled (nearest) onto it.

        Returns ``[T, 1, h, w]`` of ``out_dtype`` (float32 or float16) on this stage's device,
        host synchronised (the hand-off) unless ``synchronize`` is False: then the caller calls
        :meth:`synchronize` before handing the result on (one host wait for the streams of a
        whole batch of requests). A state whose shape differs from the frames' (the stream
        changed size) starts afresh.
        """
        now = self._clock()
        self._drop_idle(now)
        with self.stream.activate():
            probability = self.stream.to_device(probability_n1hw)
            frames_count, _, h, w = probability.shape
            xp = _array_module(probability)
            network_input = None
            if network_input_n3hw is not None:
                network_input = _on_grid(
                    self.stream.to_device(network_input_n3hw), frames_count, h, w, xp
                )
            state = self._states.pop(sequence_id, None)
            fresh = start or state is None
            if state is None or tuple(state.probability_1hw_f32.shape) != (1, h, w):
                state = _StreamState(xp.zeros((1, h, w), np.float32), now)
                fresh = True
            luma_start = fresh or state.luma_1hw_f32 is None
            if network_input is None:
                state.luma_1hw_f32 = None
            elif state.luma_1hw_f32 is None:
                state.luma_1hw_f32 = xp.zeros((1, h, w), np.float32)
            with nvtx_range("temporal_smoothing.smooth"):
                smoothed = smooth_probability(
                    probability,
                    state.probability_1hw_f32,
                    start=fresh,
                    strength=strength,
                    jitter=self.jitter,
                    motion=self.motion,
                    frames_n3hw=network_input,
                    luma_1hw_f32=state.luma_1hw_f32,
                    luma_start=luma_start,
                    input_mean=self.input_mean,
                    input_std=self.input_std,
                    still_grey=self.still_grey,
                    moving_grey=self.moving_grey,
                )
                if np.dtype(out_dtype) != np.float32:
                    smoothed = smoothed.astype(out_dtype)
            if not end:
                state.last_used_s = now
                self._states[sequence_id] = state  # most recently used last
                while len(self._states) > self.max_streams:
                    self._states.popitem(last=False)
        if synchronize:
            self.stream.synchronize()
        return smoothed

    def synchronize(self) -> None:
        """Wait for the smoothing launched so far (a no-op on the CPU)."""
        self.stream.synchronize()

    def end(self, sequence_id: Hashable) -> None:
        """Drop a sequence's state (no-op when none is held)."""
        self._states.pop(sequence_id, None)

    def _drop_idle(self, now: float) -> None:
        while self._states:
            oldest_id, oldest = next(iter(self._states.items()))
            if now - oldest.last_used_s < self.idle_timeout_s:
                break
            del self._states[oldest_id]


def _on_grid(network_input: Any, frames: int, h: int, w: int, xp: Any) -> Any:
    """``[T, 3, h, w]`` network input on the probability's grid (nearest sample of pixel
    centres when its own grid differs); ValueError for another frame count or channel count."""
    if network_input.ndim != 4 or network_input.shape[:2] != (frames, 3):
        raise ValueError(
            f"network input must have shape [{frames}, 3, h, w] (the probability's frames), got "
            f"{tuple(network_input.shape)}"
        )
    in_h, in_w = network_input.shape[2:]
    if (in_h, in_w) == (h, w):
        return network_input
    rows = xp.minimum((xp.arange(h) * 2 + 1) * in_h // (2 * h), in_h - 1)
    cols = xp.minimum((xp.arange(w) * 2 + 1) * in_w // (2 * w), in_w - 1)
    return network_input[:, :, rows[:, None], cols[None, :]]


def _array_module(array: Any) -> Any:
    from bgblur.ops.dispatch import array_module

    return array_module(array)
