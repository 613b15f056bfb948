"""Build ``astronaut_alpha.png``: an alpha matte of scikit-image's ``astronaut``, made without the
segmentation networks under test.

Steps (OpenCV only, deterministic):

1. GrabCut (``cv2.grabCut``, 10 iterations, ``GC_INIT_WITH_MASK``) seeded by hand-placed
   polygons (``SEEDS`` below: certain background on the flag, the wall and the shuttle model;
   certain foreground on the face, collar, suit and the helmet she holds; a rough outline of the
   person as probable foreground, the rest probable background).
2. The person = GrabCut's (probable) foreground with its holes filled, largest 8-connected
   component kept: ``hard`` in {0, 1}.
3. Soft edge: a guided filter (He et al. 2010; ``cv2.ximgproc.guidedFilter``, guide = the RGB
   photo, radius 6, eps 1e-4) of ``hard``, clipped to [0, 1], used only in the band
   ``dilate(hard) - erode(hard)`` (9x9 square, about 4 px either side of the edge); ``hard``
   elsewhere.
4. ``round(alpha x 255)`` as an 8-bit grey PNG, 512x512 like the photo.

The matte is a plausible one, not the photo's true matte: the benchmark composites the photo over
other backgrounds with THIS alpha (``I = alpha x F + (1 - alpha) x B``), so for those composites it
is the exact truth by construction. Run from the repository root::

    .venv/bin/python bench/data/matting/make_astronaut_alpha.py
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent / "astronaut_alpha.png"

# (GrabCut label, polygon [(x, y), ...]) in the 512x512 photo, applied in order (later wins).
SEEDS: list[tuple[int, list[tuple[int, int]]]] = [
    (
        cv2.GC_PR_FGD,  # rough outline of the person
        [
            (150, 60), (200, 15), (270, 20), (305, 70), (300, 150), (345, 230), (365, 330),
            (440, 345), (500, 400), (512, 512), (20, 512), (20, 330), (40, 250), (110, 200),
            (150, 150),
        ],
    ),
    (cv2.GC_BGD, [(0, 0), (512, 0), (512, 10), (0, 10)]),  # top rows
    (cv2.GC_BGD, [(0, 0), (140, 0), (140, 40), (95, 200), (30, 250), (0, 300)]),  # flag, wall
    (cv2.GC_BGD, [(300, 0), (512, 0), (512, 330), (375, 300), (330, 140), (310, 60)]),  # shuttle
    (cv2.GC_BGD, [(0, 300), (12, 300), (12, 512), (0, 512)]),  # left edge, flag
    (cv2.GC_FGD, [(185, 70), (260, 60), (275, 140), (230, 185), (190, 150)]),  # face
    (cv2.GC_FGD, [(135, 185), (290, 175), (300, 260), (250, 290), (160, 270)]),  # collar
    (cv2.GC_FGD, [(80, 300), (330, 300), (330, 500), (80, 500)]),  # suit
    (cv2.GC_FGD, [(310, 380), (470, 380), (470, 500), (310, 500)]),  # helmet
]  # fmt: skip


def astronaut_alpha(photo_rgb: np.ndarray) -> np.ndarray:
    """``[512, 512, 3]`` uint8 RGB astronaut -> ``[512, 512]`` float32 alpha in [0, 1]."""
    labels = np.full(photo_rgb.shape[:2], cv2.GC_PR_BGD, np.uint8)
    for label, polygon in SEEDS:
        cv2.fillPoly(labels, [np.array(polygon, np.int32)], label)
    bgd_model, fgd_model = np.zeros((1, 65)), np.zeros((1, 65))
    bgr = cv2.cvtColor(photo_rgb, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, labels, None, bgd_model, fgd_model, 10, cv2.GC_INIT_WITH_MASK)
    person = np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8) * 255

    h, w = person.shape
    outside = person.copy()
    cv2.floodFill(outside, np.zeros((h + 2, w + 2), np.uint8), (5, 5), 255)
    person |= cv2.bitwise_not(outside)  # holes filled
    count, component, stats, _ = cv2.connectedComponentsWithStats(person // 255, connectivity=8)
    largest = 1 + int(np.argmax(stats[1:count, cv2.CC_STAT_AREA]))
    person = np.where(component == largest, 255, 0).astype(np.uint8)

    hard = person.astype(np.float32) / 255.0
    soft = np.clip(cv2.ximgproc.guidedFilter(photo_rgb, hard, 6, 1e-4), 0.0, 1.0)
    square = np.ones((9, 9), np.uint8)
    band = cv2.dilate(person, square) > cv2.erode(person, square)
    return np.where(band, soft, hard).astype(np.float32)


def main() -> None:
    from skimage import data

    alpha = astronaut_alpha(data.astronaut())
    alpha_u8 = np.rint(alpha * 255.0).astype(np.uint8)
    cv2.imwrite(str(OUT), alpha_u8)
    soft = int(((alpha_u8 > 0) & (alpha_u8 < 255)).sum())
    print(f"wrote {OUT}: foreground {alpha.mean():.4f} of the frame, {soft} soft pixels")


if __name__ == "__main__":
    main()
