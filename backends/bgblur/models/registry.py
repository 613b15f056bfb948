"""The segmentation networks the service can run, by name, with their input conventions.

Every network maps ``[B, 3, h, w]`` float (RGB, normalized as ``(pixel / 255 - mean) / std``) to
the foreground probability ``[B, 1, h, w]`` in [0, 1]. The preprocess and segmentation models of
the ensemble look the spec up by the same name (config parameter ``segmentation_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from bgblur.errors import ModelUnavailableError


@dataclass(frozen=True)
class SegmentationModelSpec:
    """A segmentation network and its input conventions.

    Attributes:
        name: registry key (config parameter ``segmentation_model``).
        input_hw: ``(h, w)`` of the network input.
        mean, std: RGB normalization of the [0, 1]-scaled input.
        weights: one line on what the weights are (shown in logs and README).
        build: ``build(cache_dir) -> nn.Module`` in eval mode, on the CPU, float32.
    """

    name: str
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    build: Callable[[Path | None], nn.Module]


def _build_fixed_ellipse(cache_dir: Path | None) -> nn.Module:
    from bgblur.models.fixed import FixedEllipse

    return FixedEllipse().eval()


def _selfie_spec(variant: str) -> SegmentationModelSpec:
    from bgblur.models import selfie

    def build(cache_dir: Path | None) -> nn.Module:
        return selfie.build_selfie_segmentation(variant, cache_dir=cache_dir)

    return SegmentationModelSpec(
        name=f"selfie_{variant}",
        input_hw=selfie.SELFIE_VARIANTS[variant],
        mean=selfie.SELFIE_MEAN,
        std=selfie.SELFIE_STD,
        weights=f"MediaPipe selfie segmentation ({variant}), pretrained, Apache-2.0, "
        "converted from the mediapipe 0.10.14 wheel",
        build=build,
    )


def _fixed_ellipse_spec() -> SegmentationModelSpec:
    return SegmentationModelSpec(
        name="fixed_ellipse",
        input_hw=(64, 64),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights="none: a centred ellipse whatever the frame (tests of the plumbing only)",
        build=_build_fixed_ellipse,
    )


def _fcn_spec(name: str) -> SegmentationModelSpec:
    from bgblur.models import fcn

    foreground_class = fcn.REGISTERED_NETWORKS[name]

    def build(cache_dir: Path | None) -> nn.Module:
        return fcn.build_fcn_resnet101(foreground_class, cache_dir=cache_dir)

    return SegmentationModelSpec(
        name=name,
        input_hw=fcn.INPUT_HW,
        mean=fcn.FCN_MEAN,
        std=fcn.FCN_STD,
        weights=f"torchvision fcn_resnet101 pretrained (COCO with VOC labels), class "
        f"{foreground_class}, from ${fcn.WEIGHTS_ENV} or {fcn.PRETRAINED_FILENAME} in the cache; "
        "random (benchmark only, meaningless masks) when absent",
        build=build,
    )


_SPECS: dict[str, Callable[[], SegmentationModelSpec]] = {
    "selfie_general": lambda: _selfie_spec("general"),
    "selfie_landscape": lambda: _selfie_spec("landscape"),
    "fixed_ellipse": _fixed_ellipse_spec,
    "fcn_resnet101": lambda: _fcn_spec("fcn_resnet101"),
    "fcn_resnet101_cat": lambda: _fcn_spec("fcn_resnet101_cat"),
}

DEFAULT_MODEL = "selfie_general"


def model_names() -> list[str]:
    """Names of the registered segmentation networks."""
    return sorted(_SPECS)


def get_model_spec(name: str) -> SegmentationModelSpec:
    """The spec registered under ``name``.

    Raises:
        ModelUnavailableError: unknown name (the message lists the known ones).
    """
    try:
        factory = _SPECS[name]
    except KeyError:
        raise ModelUnavailableError(
            f"unknown segmentation model {name!r}; known: {', '.join(model_names())}"
        ) from None
    return factory()
