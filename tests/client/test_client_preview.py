"""Side-by-side previews, written to and read back from real PNG files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from bgblur_client.preview import side_by_side, write_preview


@pytest.fixture
def frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    after = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    return before, after


def test_preview_png_is_twice_as_wide_before_left_after_right(
    tmp_path: Path, frames: tuple[np.ndarray, np.ndarray]
) -> None:
    before, after = frames
    path = tmp_path / "preview.png"

    write_preview(path, before, after)

    written = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert written.shape == (90, 240, 3)
    np.testing.assert_array_equal(written[:, :120], before)
    np.testing.assert_array_equal(written[:, 120:], after)


def test_label_is_drawn_without_changing_the_size(frames: tuple[np.ndarray, np.ndarray]) -> None:
    before, after = frames

    labelled = side_by_side(before, after, label="before | after")

    assert labelled.shape == (90, 240, 3)
    assert not np.array_equal(labelled[:20, :60], before[:20, :60])  # caption top-left
    np.testing.assert_array_equal(labelled[:, 120:][-20:], after[-20:])  # rest untouched


def test_frames_of_different_sizes_are_rejected(frames: tuple[np.ndarray, np.ndarray]) -> None:
    before, after = frames

    with pytest.raises(ValueError, match="same size"):
        side_by_side(before, after[:, :100])
