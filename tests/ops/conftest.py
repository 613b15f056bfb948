"""Fixtures of the op tests: CuPy (skipped without a CUDA GPU), test images, comparisons.

The GPU twins are held to their CPU twins (OpenCV): uint8 results within 1 LSB everywhere and
differing at all on at most 1% of the elements (the GPU kernels reproduce OpenCV's fixed-point
arithmetic, so they match it exactly on the machines where this was checked; a stray LSB may come
from OpenCV's CPU dispatch, a systematic one is a bug). Failure messages give the case, the max
difference, the counts and the first mismatching positions with both values.

``BGBLUR_GPU_EXACT=1`` in the environment tightens the uint8 comparisons to bit-exactness.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pytest


def _photo(kind: str) -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(getattr(data, kind)()[..., :3])


def _make_frames(
    kind: str,
    batch: int,
    size: tuple[int, int] | None = None,
    *,
    channels: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """``[batch, H, W, channels]`` uint8 frames, each frame different.

    ``kind``: ``"random"`` (uniform noise) or a ``skimage.data`` photo (``"astronaut"``,
    ``"chelsea"``), shifted/mirrored per frame and resized (INTER_AREA) to ``size``; ``size``
    None keeps the photo's own size (random: 300x451). Photos take ``channels`` 1 (grey), 3 or
    4 (constant alpha).
    """
    if kind == "random":
        h, w = size if size is not None else (300, 451)
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (batch, h, w, channels), dtype=np.uint8)
    photo = _photo(kind)
    frames = []
    for i in range(batch):
        frame = np.roll(photo, 37 * i, axis=1)
        if i % 2:
            frame = frame[:, ::-1]
        if size is not None and tuple(size) != frame.shape[:2]:
            frame = cv2.resize(frame, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        frame = frame.reshape(frame.shape[0], frame.shape[1], 3)
        if channels == 1:
            frame = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)[..., None]
        elif channels == 4:
            frame = np.concatenate([frame, np.full((*frame.shape[:2], 1), 200, np.uint8)], -1)
        elif channels != 3:
            raise ValueError(f"photos come with 1, 3 or 4 channels, not {channels}")
        frames.append(frame)
    return np.ascontiguousarray(np.stack(frames))


def _make_masks(
    kind: str, batch: int, size: tuple[int, int] | None = None, *, seed: int = 0
) -> np.ndarray:
    """``[batch, H, W]`` uint8 masks: uniform noise (``"random"``) or, for a photo, a soft
    foreground mask (thresholded grey, blurred) like a segmentation network's."""
    if kind == "random":
        return _make_frames("random", batch, size, channels=1, seed=seed + 1)[..., 0]
    grey = _make_frames(kind, batch, size, channels=1)[..., 0]
    masks = np.where(grey > 110, 255, 0).astype(np.uint8)
    return np.ascontiguousarray(
        np.stack([cv2.GaussianBlur(m, (7, 7), 2.0).reshape(m.shape) for m in masks])
    )


def _where(diff_mask: np.ndarray, actual: np.ndarray, expected: np.ndarray, n: int = 8) -> str:
    idx = np.argwhere(diff_mask)[:n]
    items = [
        f"{tuple(int(v) for v in i)}: gpu {actual[tuple(i)]!r} cpu {expected[tuple(i)]!r}"
        for i in idx
    ]
    return "; ".join(items)


def _assert_u8_close(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    case: str = "",
    max_diff: int = 1,
    max_fraction: float = 0.01,
) -> None:
    """``actual`` (GPU, as NumPy) within ``max_diff`` LSB of ``expected`` (CPU) everywhere, and
    different at all on at most ``max_fraction`` of the elements (at least 2 allowed)."""
    if os.environ.get("BGBLUR_GPU_EXACT") == "1":
        max_diff, max_fraction = 0, 0.0
    assert isinstance(actual, np.ndarray), f"{case}: compare NumPy arrays, got {type(actual)}"
    assert actual.dtype == np.uint8, f"{case}: GPU result is {actual.dtype}, expected uint8"
    assert actual.shape == expected.shape, f"{case}: shape {actual.shape} != {expected.shape}"
    diff = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    worst = int(diff.max()) if diff.size else 0
    n_diff = int(np.count_nonzero(diff))
    n_bad = int(np.count_nonzero(diff > max_diff))
    allowed = max(2, int(max_fraction * diff.size)) if max_diff else 0
    summary = (
        f"{case}: shape {actual.shape}: max |gpu - cpu| = {worst} LSB, {n_diff} of {diff.size} "
        f"elements differ ({100.0 * n_diff / max(diff.size, 1):.4f}%), {n_bad} by more than "
        f"{max_diff}"
    )
    assert n_bad == 0, f"{summary}; first: {_where(diff > max_diff, actual, expected)}"
    assert n_diff <= allowed, (
        f"{summary} (at most {allowed} may differ): systematic rounding difference? "
        f"first: {_where(diff > 0, actual, expected)}"
    )


def _assert_float_close(
    actual: np.ndarray,
    expected: np.ndarray,
    *,
    case: str = "",
    rtol: float,
    atol: float,
) -> None:
    """``|gpu - cpu| <= atol + rtol * |cpu|`` everywhere, same dtype and shape."""
    assert actual.dtype == expected.dtype, f"{case}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{case}: shape {actual.shape} != {expected.shape}"
    a = actual.astype(np.float64)
    e = expected.astype(np.float64)
    assert np.isfinite(a).all(), f"{case}: non-finite values in the GPU result"
    err = np.abs(a - e)
    bad = err > atol + rtol * np.abs(e)
    n_bad = int(np.count_nonzero(bad))
    n_diff = int(np.count_nonzero(err))
    rel = err / np.maximum(np.abs(e), 1e-30)
    assert n_bad == 0, (
        f"{case}: shape {actual.shape} {actual.dtype}: {n_bad} of {err.size} elements beyond "
        f"rtol={rtol} atol={atol} ({n_diff} differ at all); max abs err {err.max():.3g}, max rel "
        f"err {rel.max():.3g}; first: {_where(bad, actual, expected)}"
    )


@pytest.fixture(scope="session")
def make_frames() -> Callable[..., np.ndarray]:
    """``make_frames(kind, batch, size=None, *, channels=3, seed=0)``: see ``_make_frames``."""
    return _make_frames


@pytest.fixture(scope="session")
def make_masks() -> Callable[..., np.ndarray]:
    """``make_masks(kind, batch, size=None, *, seed=0)``: see ``_make_masks``."""
    return _make_masks


@pytest.fixture(scope="session")
def assert_u8_close() -> Callable[..., None]:
    """``assert_u8_close(gpu_as_numpy, cpu, *, case, max_diff=1, max_fraction=0.01)``."""
    return _assert_u8_close


@pytest.fixture(scope="session")
def assert_float_close() -> Callable[..., None]:
    """``assert_float_close(gpu_as_numpy, cpu, *, case, rtol, atol)``."""
    return _assert_float_close


_SENTINEL = 77


@pytest.fixture
def padded_out(cupy: Any) -> Callable[..., tuple[Any, Callable[[str], None]]]:
    """``padded_out(shape, dtype=uint8)`` -> ``(out, check_border)``.

    ``out`` is a non-contiguous view into a larger canvas filled with a sentinel (rows and
    columns added around dims 1 and 2), to check that ``out=`` is honoured in place;
    ``check_border(case)`` asserts that nothing around the view was written.
    """

    def make(shape: tuple[int, ...], dtype: Any = np.uint8) -> tuple[Any, Callable[[str], None]]:
        pad = [(0, 0)] * len(shape)
        pad[1], pad[2] = (2, 1), (3, 2)
        canvas_shape = tuple(n + a + b for n, (a, b) in zip(shape, pad, strict=True))
        canvas = cupy.full(canvas_shape, _SENTINEL, dtype=dtype)
        index = tuple(slice(a, a + n) for n, (a, _) in zip(shape, pad, strict=True))

        def check_border(case: str = "") -> None:
            border = cupy.asnumpy(canvas).copy()
            border[index] = _SENTINEL
            n_written = int(np.count_nonzero(border != _SENTINEL))
            assert n_written == 0, f"{case}: the op wrote {n_written} elements outside out="

        return canvas[index], check_border

    return make
