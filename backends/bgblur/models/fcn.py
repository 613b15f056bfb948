"""torchvision's ``fcn_resnet101``: the segmentation network of CV-CUDA's background-blur sample.

The network is torchvision's FCN (Long et al.) on a dilated ResNet-101: ``backbone`` is
ResNet-101 without ``avgpool``/``fc`` and with ``replace_stride_with_dilation=[False, True,
True]`` (layer3 and layer4 keep output stride 8 with dilation 2 and 4), ``classifier`` the
``FCNHead(2048, 21)`` (3x3 conv 2048->512, BN, ReLU, dropout, 1x1 conv 512->21); torchvision's
optional ``aux_classifier`` (``FCNHead(1024, 21)`` on layer3, a training aid) is not built. The
21 classes are Pascal VOC's (``VOC_CLASSES``); torchvision's pretrained weights
(``fcn_resnet101_coco-7ecb50ca.pth``, COCO images with the VOC categories) hold the aux head too:
it is dropped at load.

``FCNResNet101`` keeps torchvision's submodule names, so ``state_dict()`` keys are torchvision's
(``backbone.conv1.weight`` ... ``classifier.4.bias``) and the pretrained file loads with a strict
``load_state_dict`` once its ``aux_classifier.*`` entries are removed. When torchvision imports,
its own ``backbone`` and ``classifier`` modules are used; otherwise the definitions below (same
layers, same keys, same arithmetic).

The output follows CV-CUDA's sample (``samples/segmentation/python/model_inference.py``): the
classifier's logits are upsampled bilinearly to the input size (as torchvision's ``FCN.forward``
does), a softmax over the 21 classes is taken and the chosen class's probability is the mask:
``[B, 3, h, w]`` ImageNet-normalized RGB -> ``[B, 1, h, w]`` in [0, 1].

Weights, first found wins (``resolve_weights``): the ``weights`` argument (CLI ``--weights``),
``$BGBLUR_FCN_WEIGHTS``, ``<cache_dir>/fcn_resnet101_coco-7ecb50ca.pth``, torch hub's cache
(``$TORCH_HOME/hub/checkpoints/``, by default ``~/.cache/torch/hub/checkpoints/``). A path that
is named but missing is an error. With none found the network gets a deterministic random
initialization scaled so that float16 inference stays finite (``fp16_safe_init_``; torchvision's
own initialization overflows float16 in the residual stream), and a warning says that its masks
are meaningless: it exists to measure the cost of CV-CUDA's sample network, not to segment.

Command line::

    python -m bgblur.models.fcn info [--weights PATH] [--cache-dir DIR] [--class person|cat|N]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from bgblur.errors import ModelUnavailableError

__all__ = [
    "FCN_MEAN",
    "FCN_STD",
    "INPUT_HW",
    "PRETRAINED_FILENAME",
    "REGISTERED_NETWORKS",
    "VOC_CLASSES",
    "WEIGHTS_ENV",
    "FCNHead",
    "FCNResNet101",
    "RandomWeightsWarning",
    "ResNet101Backbone",
    "build_fcn_resnet101",
    "class_index",
    "fp16_safe_init_",
    "load_fcn_state_dict",
    "resolve_weights",
    "torchvision_available",
]

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
"""The 21 output classes of torchvision's segmentation weights (Pascal VOC order)."""

NUM_CLASSES = len(VOC_CLASSES)
PERSON = VOC_CLASSES.index("person")  # 15
CAT = VOC_CLASSES.index("cat")  # 8

REGISTERED_NETWORKS: dict[str, str] = {"fcn_resnet101": "person", "fcn_resnet101_cat": "cat"}
"""Registry name -> foreground class of the networks ``bgblur.models.registry`` offers."""

INPUT_HW: tuple[int, int] = (224, 224)
"""The network input size of CV-CUDA's segmentation sample (any size runs)."""

FCN_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
FCN_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
"""ImageNet RGB normalization: the network input is ``(pixel / 255 - mean) / std``."""

PRETRAINED_FILENAME = "fcn_resnet101_coco-7ecb50ca.pth"
"""torchvision's pretrained file (``FCN_ResNet101_Weights.COCO_WITH_VOC_LABELS_V1``)."""

WEIGHTS_ENV = "BGBLUR_FCN_WEIGHTS"
"""Environment variable naming the weights file."""

RANDOM_INIT_SEED = 20231101

LOG = logging.getLogger(__name__)

_LAYERS = (3, 4, 23, 3)  # ResNet-101 bottleneck blocks per stage
_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.(?:pth|pt)$")


class RandomWeightsWarning(UserWarning):
    """The network runs with random weights: its masks are meaningless (benchmarks only)."""


# --------------------------------------------------------------------------------------------
# The architecture (torchvision's module names and arithmetic)
# --------------------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (ResNet v1.5: the stride is on the 3x3 conv), expansion 4."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet101Backbone(nn.Module):
    """ResNet-101 up to ``layer4`` with ``replace_stride_with_dilation=[False, True, True]``.

    Submodules as in torchvision's ``IntermediateLayerGetter(resnet101(...))`` (conv1, bn1,
    relu, maxpool, layer1..layer4). ``forward`` returns ``layer4``'s output, ``[B, 2048, h/8,
    w/8]`` (rounded up).
    """

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, _LAYERS[0])
        self.layer2 = self._make_layer(128, _LAYERS[1], stride=2)
        self.layer3 = self._make_layer(256, _LAYERS[2], stride=2, dilate=True)
        self.layer4 = self._make_layer(512, _LAYERS[3], stride=2, dilate=True)

    def _make_layer(
        self, planes: int, blocks: int, stride: int = 1, dilate: bool = False
    ) -> nn.Sequential:
        # torchvision.models.resnet.ResNet._make_layer: a dilated stage trades its stride for
        # dilation; its first block keeps the previous dilation.
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [
            Bottleneck(self.inplanes, planes, dilation=self.dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class FCNHead(nn.Sequential):
    """torchvision's ``FCNHead``: 3x3 conv to ``in/4``, BN, ReLU, Dropout(0.1), 1x1 conv."""

    def __init__(self, in_channels: int, channels: int) -> None:
        inter_channels = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter_channels),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Conv2d(inter_channels, channels, 1),
        )


def torchvision_available() -> bool:
    """True when torchvision imports beside this torch (it does not beside the CPU wheel)."""
    try:
        import torchvision.models.segmentation  # noqa: F401
    except Exception:  # ImportError, or a torchvision built for another torch failing to load
        return False
    return True


def _torchvision_parts() -> tuple[nn.Module, nn.Module]:
    from torchvision.models.segmentation import fcn_resnet101

    try:
        net = fcn_resnet101(
            weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
        )
    except TypeError:  # torchvision < 0.13
        net = fcn_resnet101(
            pretrained=False, pretrained_backbone=False, num_classes=NUM_CLASSES, aux_loss=False
        )
    return net.backbone, net.classifier


def class_index(foreground_class: int | str) -> int:
    """The VOC class index of ``foreground_class`` (an index, or a name such as ``"person"``)."""
    if isinstance(foreground_class, str):
        name = foreground_class.strip().lower()
        if name.isdigit():
            return class_index(int(name))
        if name not in VOC_CLASSES:
            raise ValueError(
                f"unknown VOC class {foreground_class!r}; known: {', '.join(VOC_CLASSES)}"
            )
        return VOC_CLASSES.index(name)
    index = int(foreground_class)
    if not 0 <= index < NUM_CLASSES or isinstance(foreground_class, bool):
        raise ValueError(f"VOC class index must be in [0, {NUM_CLASSES - 1}], got {index}")
    return index


class FCNResNet101(nn.Module):
    """torchvision's ``fcn_resnet101`` (no aux head) ending in one class's probability.

    ``forward(x)``: ``[B, 3, h, w]`` RGB normalized with ``FCN_MEAN``/``FCN_STD`` -> ``[B, 1, h,
    w]`` softmax probability of ``foreground_class``, same dtype as ``x``.

    Args:
        foreground_class: VOC class index or name (person 15, cat 8).
        implementation: ``"auto"`` (torchvision's modules when it imports, else the built-in
            ones), ``"torchvision"`` or ``"builtin"``. The state dict keys are the same.
    """

    def __init__(self, foreground_class: int | str = PERSON, implementation: str = "auto") -> None:
        super().__init__()
        if implementation not in ("auto", "torchvision", "builtin"):
            raise ValueError(
                f"implementation must be 'auto', 'torchvision' or 'builtin', not {implementation!r}"
            )
        self.foreground_class = class_index(foreground_class)
        use_tv = implementation == "torchvision" or (
            implementation == "auto" and torchvision_available()
        )
        if use_tv:
            if not torchvision_available():
                raise ModelUnavailableError("torchvision does not import here")
            self.backbone, self.classifier = _torchvision_parts()
        else:
            self.backbone, self.classifier = ResNet101Backbone(), FCNHead(2048, NUM_CLASSES)
        self.implementation = "torchvision" if use_tv else "builtin"
        self.weights_path: Path | None = None  # set by build_fcn_resnet101; None: random

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's ``FCN(x)["out"]``: class logits ``[B, 21, h, w]`` at the input size."""
        features = self.backbone(x)
        if isinstance(features, Mapping):  # torchvision's IntermediateLayerGetter
            features = features["out"]
        logits = self.classifier(features)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.foreground_class
        return torch.softmax(self.logits(x), dim=1)[:, c : c + 1]


# --------------------------------------------------------------------------------------------
# Initialization and weights
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def fp16_safe_init_(model: nn.Module, seed: int = RANDOM_INIT_SEED) -> nn.Module:
    """Deterministic random weights under which float16 inference stays finite; returns ``model``.

    torchvision initializes convolutions with Kaiming-normal ``fan_out`` and BatchNorm with
    gamma 1, running statistics (0, 1): each of the 33 residual blocks then roughly doubles the
    variance of the residual stream and float16 overflows (NaN masks). Here: convolutions get
    Kaiming-normal with ``fan_in`` (unit gain through ReLU), the last BN of each residual branch
    gamma 0.2 (each block adds ~4 % variance: O(1) activations to the end), other BN gamma 1,
    all BN beta 0 and running statistics (0, 1), the classifier's last conv small weights and
    zero bias. Values depend only on ``seed`` and the parameter names (one generator, modules
    in ``named_modules`` order), not on the global RNG.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            fan_in = (
                module.in_channels
                // module.groups
                * module.kernel_size[0]
                * (module.kernel_size[1])
            )
            std = (2.0 / fan_in) ** 0.5
            if module.bias is not None:  # the class logits: small, so the softmax is not saturated
                std = (1.0 / fan_in) ** 0.5
            w = torch.randn(module.weight.shape, generator=gen, dtype=torch.float32) * std
            module.weight.copy_(w)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.fill_(0.2 if name.endswith(".bn3") else 1.0)
            module.bias.zero_()
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
            module.num_batches_tracked.zero_()
    return model


def _hub_checkpoint_dir() -> Path:
    try:
        return Path(torch.hub.get_dir()) / "checkpoints"
    except Exception:  # an unusual torch build: torch hub's documented default
        return Path.home() / ".cache" / "torch" / "hub" / "checkpoints"


def resolve_weights(
    weights: str | os.PathLike | None = None, cache_dir: Path | None = None
) -> Path | None:
    """The weights file to load, or None for random weights.

    Order: ``weights``; ``$BGBLUR_FCN_WEIGHTS``; ``<cache_dir>/PRETRAINED_FILENAME``; torch
    hub's ``<hub dir>/checkpoints/PRETRAINED_FILENAME``. The first two are explicit: when they
    name a file that does not exist, that is an error (``ModelUnavailableError``), not a silent
    fall back to random weights. The cache locations are used only when the file is there.
    """
    for source, value in (("--weights", weights), (WEIGHTS_ENV, os.environ.get(WEIGHTS_ENV))):
        if value is None or str(value) == "":
            continue
        path = Path(value).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(
                f"fcn_resnet101 weights file {str(path)!r} (from {source}) does not exist or "
                f"is not a file; pass torchvision's {PRETRAINED_FILENAME} (or a state dict saved "
                f"from FCNResNet101), or unset {WEIGHTS_ENV} to run with random weights"
            )
        return path
    candidates = [_hub_checkpoint_dir() / PRETRAINED_FILENAME]
    if cache_dir is not None:
        candidates.insert(0, Path(cache_dir).expanduser() / PRETRAINED_FILENAME)
    for path in candidates:
        if path.is_file():
            return path
    return None


def _check_hub_hash(path: Path) -> None:
    """torch hub names files ``<name>-<sha256 prefix>.pth``: check the prefix when present."""
    match = _HUB_HASH.search(path.name)
    if match is None:
        return
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if not digest.hexdigest().startswith(match.group(1)):
        raise ModelUnavailableError(
            f"{path} has SHA-256 {digest.hexdigest()}, which does not start with the "
            f"{match.group(1)} its name promises: a truncated or different file"
        )


def load_fcn_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The network's state dict from ``path``, ready for a strict ``load_state_dict``.

    Accepts torchvision's pretrained file (a plain state dict, aux head included), a
    ``state_dict()`` saved from ``FCNResNet101``, or a checkpoint dict holding one under
    ``state_dict``/``model``; ``module.`` prefixes (DataParallel) and ``aux_classifier.*`` are
    removed. Raises ``ModelUnavailableError`` when the file cannot be read.
    """
    path = Path(path)
    _check_hub_hash(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailableError(
            f"cannot read fcn_resnet101 weights from {path}: {exc}"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelUnavailableError(f"{path} does not hold a state dict of tensors")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        key = key.removeprefix("module.")
        if key.startswith("aux_classifier."):
            continue
        state[key] = value
    return state


def _load_into(model: FCNResNet101, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    for key, value in expected.items():  # checkpoints older than BN's step counter lack it
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelUnavailableError(
            f"{path} is not an fcn_resnet101 state dict (21 classes, torchvision key names): "
            f"{str(exc)[:2000]}"
        ) from exc


def build_fcn_resnet101(
    foreground_class: int | str = PERSON,
    *,
    weights: str | os.PathLike | None = None,
    cache_dir: Path | None = None,
    implementation: str = "auto",
    seed: int = RANDOM_INIT_SEED,
) -> FCNResNet101:
    """``FCNResNet101`` in eval mode, on the CPU, float32, with weights (see ``resolve_weights``)
    or, when none are found, ``fp16_safe_init_(seed)`` and a ``RandomWeightsWarning``.

    Raises:
        ModelUnavailableError: a named weights file is missing, unreadable or not this network.
        ValueError: unknown ``foreground_class``.
    """
    model = FCNResNet101(foreground_class, implementation=implementation)
    path = resolve_weights(weights, cache_dir)
    if path is None:
        fp16_safe_init_(model, seed)
        message = (
            "fcn_resnet101 runs with RANDOM weights (no --weights, no $BGBLUR_FCN_WEIGHTS, no "
            f"{PRETRAINED_FILENAME} in the cache): its masks are MEANINGLESS; use it to "
            "benchmark the network's cost only"
        )
        LOG.warning(message)
        warnings.warn(message, RandomWeightsWarning, stacklevel=2)
    else:
        _load_into(model, load_fcn_state_dict(path), path)
        LOG.info("fcn_resnet101 weights loaded from %s", path)
    model.weights_path = path
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bgblur.models.fcn",
        description="Check the fcn_resnet101 weights that the service would load.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="build the network and say where its weights come from")
    info.add_argument("--weights", type=Path, default=None, help=f"default: ${WEIGHTS_ENV}")
    info.add_argument("--cache-dir", type=Path, default=None)
    info.add_argument("--class", dest="foreground", default="person", help="VOC class or index")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)
            model = build_fcn_resnet101(
                args.foreground, weights=args.weights, cache_dir=args.cache_dir
            )
    except (ModelUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    params = sum(p.numel() for p in model.parameters())
    path = model.weights_path
    print(f"implementation: {model.implementation}")
    print(f"class: {model.foreground_class} ({VOC_CLASSES[model.foreground_class]})")
    print(f"parameters: {params}")
    print(f"weights: {path if path is not None else 'RANDOM (masks are meaningless)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
