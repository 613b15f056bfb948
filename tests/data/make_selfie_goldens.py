"""Make the MediaPipe reference masks that tests/models/test_selfie.py compares the port with.

Runs in a separate virtual environment that has mediapipe (it pins protobuf<5 and brings its own
OpenCV, so it does not belong in the project's environment)::

    python3 -m venv /tmp/mpvenv
    /tmp/mpvenv/bin/pip install mediapipe==0.10.14 scikit-image
    /tmp/mpvenv/bin/python tests/data/make_selfie_goldens.py

What it compares: each input is an RGB uint8 image already at the network's input size, fed to
the legacy ``mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0|1)``. At that
size MediaPipe's CPU graph adds nothing to the network: ``ImageToTensorCalculator`` warps with an
identity transform and scales to [0, 1] (``pixel / 255``), the ``.tflite`` runs under TFLite with
XNNPACK (which implements the custom ``Convolution2DTransposeBias``), and
``TensorsToSegmentationCalculator`` (``activation: NONE``) resizes the mask to the same size. So
the mask is the network output itself.

Writes, next to this file: ``selfie_<variant>_<name>.png`` (mask x 255, rounded, 8-bit grey) and
``selfie_goldens.json`` (mediapipe version, SHA-256 of each input, the mask files). The inputs are
not stored: ``golden_inputs()`` rebuilds them exactly from scikit-image's sample images with
integer arithmetic only, and the test checks their SHA-256. The test module imports this file for
``golden_inputs``, so keep mediapipe imports inside ``main``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _box2(img: np.ndarray) -> np.ndarray:
    """Exact 2x2 box downsample of a uint8 HxWxC image (mean rounded half up)."""
    h, w, c = img.shape
    s = img.reshape(h // 2, 2, w // 2, 2, c).astype(np.uint32).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


def _wall(h: int, w: int) -> np.ndarray:
    """A colour-gradient wall with diagonal stripes, int64 HxWx3 (integers only)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    img = np.empty((h, w, 3), np.int64)
    img[..., 0] = 60 + (120 * xx) // w
    img[..., 1] = 90 + (80 * yy) // h
    img[..., 2] = 150 - (60 * xx) // w
    stripes = ((xx + 2 * yy) // 12) % 2 == 0
    img[stripes] = (img[stripes] * 3) // 4
    return img


def synthetic_cartoon(h: int, w: int) -> np.ndarray:
    """A flat cartoon of a head and shoulders in front of the wall (MediaPipe sees no person)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.int64)
    img = _wall(h, w)
    cx = w // 2
    ry, rx = (h * 45) // 100, (w * 40) // 100  # torso: half-ellipse at the bottom
    torso = ((xx - cx) ** 2) * ry * ry + ((yy - h) ** 2) * rx * rx <= (rx * ry) ** 2
    img[torso] = (40, 50, 110)
    hy, hx, hcy = (h * 22) // 100, (h * 17) // 100, (h * 38) // 100  # head, neck, hair
    img[(abs(xx - cx) <= hx // 2) & (yy >= hcy) & ~torso] = (205, 160, 130)
    head = ((xx - cx) ** 2) * hy * hy + ((yy - hcy) ** 2) * hx * hx <= (hx * hy) ** 2
    img[head] = (225, 180, 150)
    img[head & (yy < hcy - hy // 3)] = (70, 45, 30)
    return img.astype(np.uint8)


def synthetic_composite(photo: np.ndarray) -> np.ndarray:
    """A 256x256 synthetic scene: the wall, with a 128x128 mirrored copy of ``photo`` (512x512)
    pasted at the bottom, off-centre."""
    img = _wall(256, 256)
    img[128:, 100:228] = _box2(_box2(photo))[:, ::-1]
    return img.astype(np.uint8)


def golden_inputs() -> dict[str, tuple[str, np.ndarray]]:
    """name -> (variant, RGB uint8 image at the variant's input size)."""
    from skimage import data

    astronaut = data.astronaut()  # 512x512 RGB, a person
    camera = np.repeat(data.camera()[..., None], 3, axis=2)  # 512x512 grey, a person
    return {
        "general_astronaut": ("general", _box2(astronaut)),  # 256x256
        "general_camera": ("general", _box2(camera)),
        "general_synthetic": ("general", synthetic_composite(astronaut)),
        "landscape_astronaut": ("landscape", _box2(astronaut[:288])),  # 144x256: head, shoulders
    }


def sha256(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()


def main() -> None:
    import mediapipe as mp
    from skimage import io

    segmenters = {
        variant: mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=selection)
        for variant, selection in (("general", 0), ("landscape", 1))
    }
    sizes = {"general": (256, 256), "landscape": (144, 256)}
    entries = {}
    for name, (variant, img) in golden_inputs().items():
        assert img.shape == (*sizes[variant], 3), (name, img.shape)
        mask = segmenters[variant].process(img).segmentation_mask
        assert mask.shape == img.shape[:2] and mask.dtype == np.float32, mask.shape
        mask_u8 = np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)
        path = HERE / f"selfie_{name}.png"
        io.imsave(path, mask_u8, check_contrast=False)
        entries[name] = {
            "variant": variant,
            "input_shape": list(img.shape),
            "input_sha256": sha256(img),
            "mask": path.name,
            "mask_mean": round(float(mask.mean()), 4),
        }
        print(f"{name}: {path.name} mean {mask.mean():.4f}")
    for seg in segmenters.values():
        seg.close()
    meta = {
        "generator": "tests/data/make_selfie_goldens.py",
        "mediapipe": mp.__version__,
        "encoding": "PNG 8-bit grey, round(probability * 255)",
        "goldens": entries,
    }
    (HERE / "selfie_goldens.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
