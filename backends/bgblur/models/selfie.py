"""MediaPipe selfie segmentation, ported to PyTorch.

The network is MediaPipe's pretrained "Selfie Segmentation" (Apache-2.0), shipped as
``mediapipe/modules/selfie_segmentation/selfie_segmentation{,_landscape}.tflite`` in the
``mediapipe`` wheels: a MobileNetV3-like encoder with squeeze-excite blocks, an LR-ASPP-like head
and a three-stage decoder with attention-gated skips, ending in MediaPipe's custom transposed
convolution ``Convolution2DTransposeBias`` and a sigmoid. Two variants share the architecture and
differ in weights and input size: ``general`` (256x256) and ``landscape`` (144x256, H x W).

Conventions, from MediaPipe 0.10.14 ``mediapipe/modules/selfie_segmentation/
selfie_segmentation_cpu.pbtxt`` (shipped compiled as ``selfie_segmentation_cpu.binarypb``):

* input: ``ImageToTensorCalculator`` with ``keep_aspect_ratio: false`` and
  ``output_tensor_float_range { min: 0.0 max: 1.0 }`` on an RGB image, i.e. the network sees
  ``pixel / 255`` (RGB, stretched to the input size). Hence ``SELFIE_MEAN = (0, 0, 0)`` and
  ``SELFIE_STD = (1, 1, 1)`` for ``x = (pixel / 255 - mean) / std``. The model's TFLite metadata
  agrees (NormalizationOptions mean 0, std 255 on 0..255 pixels).
* output: ``TensorsToSegmentationCalculator`` with ``activation: NONE``, because the graph's last
  operator is already a ``LOGISTIC``: the network output is the foreground probability. The
  module below keeps that sigmoid in ``forward``.

``SelfieSegmentation`` is plain PyTorch (explicit layers, explicit ``forward``): it traces and
exports to ONNX, runs on CPU and CUDA, in float32 or float16, NCHW or channels_last.
``convert_tflite`` maps the ``.tflite`` weights onto it and checks every operator of the graph
against the module; ``fetch_selfie_weights`` downloads the mediapipe wheel with pip (no install)
and caches the converted state dicts; ``build_selfie_segmentation`` returns a ready model.

Command line (``make setup``)::

    python -m bgblur.models.selfie fetch [--cache-dir DIR] [--variant general|landscape]
                                         [--wheel PATH/TO/mediapipe-0.10.14-...whl] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from bgblur.errors import ModelUnavailableError
from bgblur.models.tflite_flatbuffer import Operator, Subgraph, read_tflite

__all__ = [
    "MEDIAPIPE_VERSION",
    "SELFIE_MEAN",
    "SELFIE_STD",
    "SELFIE_VARIANTS",
    "SelfieSegmentation",
    "build_selfie_segmentation",
    "convert_tflite",
    "default_cache_dir",
    "fetch_selfie_weights",
]

SELFIE_VARIANTS: dict[str, tuple[int, int]] = {"general": (256, 256), "landscape": (144, 256)}
"""Network input size ``(H, W)`` per variant."""

SELFIE_MEAN: tuple[float, float, float] = (0.0, 0.0, 0.0)
SELFIE_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)
"""RGB normalization: the network input is ``(pixel / 255 - mean) / std`` = ``pixel / 255``."""

MEDIAPIPE_VERSION = "0.10.14"
"""The mediapipe release the weights are taken from."""

_WHEEL_MEMBERS: dict[str, str] = {
    "general": "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    "landscape": "mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
}
_TFLITE_SHA256: dict[str, str] = {
    "general": "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    "landscape": "a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
}
_CACHE_FORMAT = 1  # bump when the saved state dict layout changes: old cache files get rebuilt


def _check_variant(variant: str) -> tuple[int, int]:
    try:
        return SELFIE_VARIANTS[variant]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown selfie segmentation variant {variant!r}; known: "
            f"{', '.join(sorted(SELFIE_VARIANTS))}"
        ) from None


# --------------------------------------------------------------------------------------------
# Layers with TFLite semantics
# --------------------------------------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' zero padding (before, after) of one dim: the odd pixel goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFConv2d(nn.Conv2d):
    """TFLite ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` (with bias, no fused activation).

    ``padding="SAME"`` follows TensorFlow: with stride 1 and an odd kernel it is the symmetric
    ``kernel // 2`` of PyTorch; with a larger stride the padding can be asymmetric (the extra
    pixel at the bottom/right), so it is applied explicitly. ``"VALID"`` pads nothing.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        padding: str = "SAME",
    ) -> None:
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME' or 'VALID', not {padding!r}")
        explicit_pad = padding == "SAME" and (stride > 1 or kernel_size % 2 == 0)
        symmetric = kernel_size // 2 if padding == "SAME" and not explicit_pad else 0
        super().__init__(
            in_channels, out_channels, kernel_size, stride, symmetric, groups=groups, bias=True
        )
        self.tf_padding = padding
        self._explicit_pad = explicit_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._explicit_pad:
            top, bottom = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0])
            left, right = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1])
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class TransposeConvBias(nn.ConvTranspose2d):
    """MediaPipe's custom op ``Convolution2DTransposeBias`` (transposed convolution + bias).

    Semantics of ``mediapipe/util/tflite/operations/transpose_conv_bias.cc``: with SAME padding,
    ``pad = max(0, k - (in - 1) % stride - 1)`` per dim, the output size is
    ``stride * (in - 1) + k - pad`` and input pixel ``i`` scatters ``w[:, f]`` onto output pixel
    ``i * stride - pad // 2 + f`` (contributions outside the output are dropped); every output
    starts at the bias. That is PyTorch's ``ConvTranspose2d`` without padding, cropped by
    ``pad // 2`` at the top/left and by the rest at the bottom/right. Weights are stored OHWI.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: str
    ) -> None:
        if padding not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME' or 'VALID', not {padding!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, bias=True)
        self.tf_padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.tf_padding == "SAME":
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            pad_h = max(0, kh - (x.shape[-2] - 1) % sh - 1)
            pad_w = max(0, kw - (x.shape[-1] - 1) % sw - 1)
            if pad_h or pad_w:
                top, left = pad_h // 2, pad_w // 2
                y = y[..., top : y.shape[-2] - (pad_h - top), left : y.shape[-1] - (pad_w - left)]
        return y


def _global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """AVERAGE_POOL_2D over the whole map (general model) / MEAN over H, W (landscape model)."""
    return x.mean(dim=(2, 3), keepdim=True)


class SqueezeExcite(nn.Module):
    """x * sigmoid(expand(relu(reduce(mean_hw(x)))))."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = TFConv2d(channels, reduced, 1)
        self.expand = TFConv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.reduce(_global_avg_pool(x)))
        return x * torch.sigmoid(self.expand(s))


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand + act, depthwise + act, [squeeze-excite], 1x1 project,
    [+ input]."""

    def __init__(
        self,
        in_channels: int,
        expanded: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        activation: str,
        se_reduced: int | None,
    ) -> None:
        super().__init__()
        self.expand = TFConv2d(in_channels, expanded, 1)
        self.depthwise = TFConv2d(expanded, expanded, kernel_size, stride, groups=expanded)
        self.se = SqueezeExcite(expanded, se_reduced) if se_reduced else None
        self.project = TFConv2d(expanded, out_channels, 1)
        self.act: nn.Module = nn.Hardswish() if activation == "hswish" else nn.ReLU()
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.expand(x))
        y = self.act(self.depthwise(y))
        if self.se is not None:
            y = self.se(y)
        y = self.project(y)
        return x + y if self.residual else y


class SegmentationHead(nn.Module):
    """LR-ASPP-like head: relu(conv(x)) * sigmoid(gate(mean_hw(x)))."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = TFConv2d(in_channels, out_channels, 1)
        self.gate = TFConv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x)) * torch.sigmoid(self.gate(_global_avg_pool(x)))


class DecoderBlock(nn.Module):
    """Upsample x2 (bilinear, half-pixel centres) + 1x1 to the skip's channels, attention-gated
    skip fusion, then ``r + relu(depthwise(r))`` with ``r = relu(conv1x1(.))``."""

    def __init__(self, in_channels: int, skip_channels: int) -> None:
        super().__init__()
        c = skip_channels
        self.project = TFConv2d(in_channels, c, 1)
        self.attn_reduce = TFConv2d(c, c, 1)
        self.attn_expand = TFConv2d(c, c, 1)
        self.refine = TFConv2d(c, c, 1)
        self.refine_dw = TFConv2d(c, c, 3, groups=c)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # TFLite RESIZE_BILINEAR(half_pixel_centers=True, align_corners=False) to the skip's size.
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        y = self.project(up)
        a = F.relu(self.attn_reduce(_global_avg_pool(skip + y)))
        z = skip * torch.sigmoid(self.attn_expand(a)) + y
        r = F.relu(self.refine(z))
        return r + F.relu(self.refine_dw(r))


class SelfieSegmentation(nn.Module):
    """MediaPipe selfie segmentation network.

    ``forward(x)``: ``x`` ``[B, 3, H, W]`` RGB, ``pixel / 255`` (see ``SELFIE_MEAN/STD``), with
    ``(H, W) = SELFIE_VARIANTS[variant]`` -> foreground probability ``[B, 1, H, W]`` in [0, 1],
    same dtype as ``x``. (Other sizes divisible by 16 also run, with TensorFlow's padding
    semantics, but the weights were trained at the variant's size.)

    Submodules are registered in the order their weights appear in the TFLite graph;
    ``convert_tflite`` relies on it.
    """

    def __init__(self, variant: str = "general") -> None:
        super().__init__()
        self.variant = variant
        self.input_size: tuple[int, int] = _check_variant(variant)
        # Encoder. (Comments: output stride, channels.)
        self.stem = TFConv2d(3, 16, 3, stride=2)  # 1/2, 16, then hard-swish
        self.block1 = InvertedResidual(16, 16, 16, 3, 2, "relu", se_reduced=8)  # 1/4, 16
        self.block2 = InvertedResidual(16, 72, 24, 3, 2, "relu", se_reduced=None)  # 1/8, 24
        self.block3 = InvertedResidual(24, 88, 24, 3, 1, "relu", se_reduced=None)
        self.block4 = InvertedResidual(24, 96, 32, 5, 2, "hswish", se_reduced=24)  # 1/16, 32
        self.block5 = InvertedResidual(32, 128, 32, 5, 1, "hswish", se_reduced=32)
        self.block6 = InvertedResidual(32, 128, 32, 5, 1, "hswish", se_reduced=32)
        self.block7 = InvertedResidual(32, 96, 32, 5, 1, "hswish", se_reduced=24)
        self.block8 = InvertedResidual(32, 96, 32, 5, 1, "hswish", se_reduced=24)
        # Head and decoder.
        self.head = SegmentationHead(32, 128)  # 1/16, 128
        self.up1 = DecoderBlock(128, 24)  # 1/8, 24   (skip: block3)
        self.up2 = DecoderBlock(24, 16)  # 1/4, 16   (skip: block1)
        self.up3 = DecoderBlock(16, 16)  # 1/2, 16   (skip: stem)
        self.segment = TransposeConvBias(16, 1, 2, stride=2, padding="SAME")  # 1/1, 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s2 = F.hardswish(self.stem(x))
        s4 = self.block1(s2)
        s8 = self.block3(self.block2(s4))
        s16 = self.block4(s8)
        s16 = self.block8(self.block7(self.block6(self.block5(s16))))
        y = self.head(s16)
        y = self.up1(y, s8)
        y = self.up2(y, s4)
        y = self.up3(y, s2)
        return torch.sigmoid(self.segment(y))

    def weighted_layers(self) -> list[tuple[str, nn.Module]]:
        """(name, layer) of every convolution, in TFLite graph order."""
        return [
            (name, m)
            for name, m in self.named_modules()
            if isinstance(m, (TFConv2d, TransposeConvBias))
        ]


# --------------------------------------------------------------------------------------------
# Conversion from the .tflite file
# --------------------------------------------------------------------------------------------

_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "Convolution2DTransposeBias")
_TF_PADDING_C_ENUM = {0: "VALID", 1: "SAME", 2: "VALID"}  # TfLitePadding: Unknown, Same, Valid


def _transpose_conv_bias_params(custom_options: bytes | None) -> tuple[str, int, int]:
    """``custom_options`` of Convolution2DTransposeBias: a raw C ``TfLiteTransposeConvParams``
    (int32 padding, int32 stride_width, int32 stride_height, ...). Returns (padding, sw, sh)."""
    if custom_options is None or len(custom_options) < 12:
        raise ValueError("Convolution2DTransposeBias without its 12-byte custom options")
    padding, stride_w, stride_h = np.frombuffer(custom_options[:12], "<i4").tolist()
    return _TF_PADDING_C_ENUM.get(padding, "?"), stride_w, stride_h


def _layer_from_op(graph: Subgraph, op: Operator) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Weights in PyTorch layout and the op's hyper-parameters (to compare with a layer's)."""
    kernel = graph.constant(op.inputs[1])
    bias = graph.constant(op.inputs[2])
    if op.opcode == "CONV_2D":  # OHWI -> OIHW
        o = op.options
        if o["fused_activation_function"] != "NONE":
            raise ValueError(f"op {op.index}: fused activation {o['fused_activation_function']}")
        weight = kernel.transpose(0, 3, 1, 2)
        conf = {
            "kind": "conv",
            "stride": (o["stride_h"], o["stride_w"]),
            "dilation": (o["dilation_h_factor"], o["dilation_w_factor"]),
            "padding": o["padding"],
            "groups": 1,
        }
    elif op.opcode == "DEPTHWISE_CONV_2D":  # 1HW(C*M) -> (C*M)1HW
        o = op.options
        if o["fused_activation_function"] != "NONE":
            raise ValueError(f"op {op.index}: fused activation {o['fused_activation_function']}")
        in_channels = graph.tensors[op.inputs[0]].shape[-1]
        if kernel.shape[-1] != in_channels:
            raise ValueError(f"op {op.index}: depth multiplier != 1 is not supported")
        weight = kernel.transpose(3, 0, 1, 2)
        conf = {
            "kind": "conv",
            "stride": (o["stride_h"], o["stride_w"]),
            "dilation": (o["dilation_h_factor"], o["dilation_w_factor"]),
            "padding": o["padding"],
            "groups": in_channels,
        }
    else:  # Convolution2DTransposeBias: OHWI -> IOHW (ConvTranspose2d layout)
        padding, stride_w, stride_h = _transpose_conv_bias_params(op.custom_options)
        weight = kernel.transpose(3, 0, 1, 2)
        conf = {"kind": "transpose", "stride": (stride_h, stride_w), "padding": padding}
    if conf["kind"] == "conv" and kernel.shape[1:3] == (1, 1):
        conf["padding"] = "SAME"  # a 1x1 convolution pads nothing: SAME and VALID are the same
    w = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32))
    return w, b, conf


def _layer_conf(layer: nn.Module) -> dict:
    if isinstance(layer, TransposeConvBias):
        return {"kind": "transpose", "stride": tuple(layer.stride), "padding": layer.tf_padding}
    assert isinstance(layer, TFConv2d)
    padding = "SAME" if layer.kernel_size == (1, 1) else layer.tf_padding  # as _layer_from_op
    return {
        "kind": "conv",
        "stride": tuple(layer.stride),
        "dilation": tuple(layer.dilation),
        "padding": padding,
        "groups": layer.groups,
    }


def _check_unweighted_ops(graph: Subgraph) -> None:
    """The ops between the convolutions must be the ones ``SelfieSegmentation.forward`` does."""
    counts: dict[str, int] = {}
    for op in graph.operators:
        counts[op.opcode] = counts.get(op.opcode, 0) + 1
        t_in = graph.tensors[op.inputs[0]] if op.inputs else None
        if op.opcode == "RESIZE_BILINEAR":
            if op.options["align_corners"] or not op.options["half_pixel_centers"]:
                raise ValueError(f"op {op.index}: RESIZE_BILINEAR options {op.options}")
        elif op.opcode == "AVERAGE_POOL_2D":
            o = op.options
            assert t_in is not None
            window = (o["filter_height"], o["filter_width"])
            if window != t_in.shape[1:3] or o["padding"] != "VALID":
                raise ValueError(f"op {op.index}: AVERAGE_POOL_2D is not a global pool: {o}")
        elif op.opcode == "MEAN":
            axes = sorted(int(a) % 4 for a in graph.constant(op.inputs[1]).ravel())
            if axes != [1, 2] or not op.options["keep_dims"]:
                raise ValueError(f"op {op.index}: MEAN over {axes} is not a global pool")
        elif op.opcode in ("ADD", "MUL") and op.options["fused_activation_function"] != "NONE":
            raise ValueError(f"op {op.index}: {op.opcode} with a fused activation")
    pools = counts.pop("AVERAGE_POOL_2D", 0) + counts.pop("MEAN", 0)
    counts.pop("DEQUANTIZE", None)
    expected = {
        "CONV_2D": 43,
        "DEPTHWISE_CONV_2D": 11,
        "Convolution2DTransposeBias": 1,
        "HARD_SWISH": 11,
        "RELU": 22,
        "LOGISTIC": 11,
        "ADD": 14,
        "MUL": 10,
        "RESIZE_BILINEAR": 3,
    }
    if counts != expected or pools != 10:
        raise ValueError(f"operator counts {counts} (+{pools} pools) differ from {expected}")
    last = graph.producer(graph.outputs[0])
    if last is None or last.opcode != "LOGISTIC":
        raise ValueError("the graph output is not produced by a LOGISTIC (sigmoid)")


def convert_tflite(tflite_path: str | Path) -> dict[str, torch.Tensor]:
    """Convert a MediaPipe selfie segmentation ``.tflite`` to a ``SelfieSegmentation`` state dict.

    The convolutions of the graph are matched, in execution order, with the module's layers
    (``SelfieSegmentation.weighted_layers``); kind, stride, padding, groups and weight shapes must
    agree, and the other operators (activations, pools, resizes) must be what ``forward`` does.
    fp16 weights (FLOAT16 constants + DEQUANTIZE) come out as float32.

    Raises:
        ValueError: the file is not a selfie segmentation graph this port implements.
    """
    graph = read_tflite(tflite_path).main
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"expected 1 input and 1 output, got {graph.inputs} -> {graph.outputs}")
    in_shape = graph.tensors[graph.inputs[0]].shape
    out_shape = graph.tensors[graph.outputs[0]].shape
    variants = [v for v, hw in SELFIE_VARIANTS.items() if in_shape == (1, *hw, 3)]
    if not variants or out_shape != (1, *in_shape[1:3], 1):
        raise ValueError(f"input {in_shape} / output {out_shape} match no selfie variant")
    _check_unweighted_ops(graph)

    model = SelfieSegmentation(variants[0])
    layers = model.weighted_layers()
    ops = [op for op in graph.operators if op.opcode in _WEIGHTED_OPS]
    if len(ops) != len(layers):
        raise ValueError(f"{len(ops)} convolutions in the graph, {len(layers)} in the module")
    state: dict[str, torch.Tensor] = {}
    for (name, layer), op in zip(layers, ops, strict=True):
        weight, bias, conf = _layer_from_op(graph, op)
        assert isinstance(layer, nn.Conv2d | nn.ConvTranspose2d)
        if conf != _layer_conf(layer) or weight.shape != layer.weight.shape:
            raise ValueError(
                f"op {op.index} ({op.opcode}, {graph.tensors[op.inputs[1]].name}) does not match "
                f"layer {name}: {conf} {tuple(weight.shape)} vs {_layer_conf(layer)} "
                f"{tuple(layer.weight.shape)}"
            )
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = bias
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"no weights for {sorted(missing)}")
    return state


# --------------------------------------------------------------------------------------------
# Download, cache, build
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$BGBLUR_CACHE`` if set, else ``~/.cache/bgblur``."""
    env = os.environ.get("BGBLUR_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bgblur"


def _download_wheel(dest: Path) -> Path:
    """``pip download`` the mediapipe wheel (no dependencies, nothing installed) into ``dest``."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_17_x86_64",
        "--disable-pip-version-check",
        "--quiet",
        "-d",
        str(dest),
        f"mediapipe=={MEDIAPIPE_VERSION}",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        failure = None if proc.returncode == 0 else (proc.stderr or proc.stdout).strip()[-2000:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        failure = str(exc)
    wheels = sorted(dest.glob(f"mediapipe-{MEDIAPIPE_VERSION}-*.whl"))
    if failure is not None or not wheels:
        raise ModelUnavailableError(
            f"could not download the mediapipe=={MEDIAPIPE_VERSION} wheel that holds the selfie "
            f"segmentation weights (command: {' '.join(cmd)}): {failure or 'no wheel written'}\n"
            "Without network access: run `python -m bgblur.models.selfie fetch --cache-dir DIR` "
            "where there is one and copy DIR/selfie_*.pt into the cache directory (BGBLUR_CACHE), "
            "or pass --wheel with a downloaded mediapipe wheel."
        )
    return wheels[0]


def _atomic_write(target: Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` then rename onto ``target``: concurrent readers never see a partial
    file (several Triton model instances may fetch at once)."""
    fd, tmp = tempfile.mkstemp(prefix=target.name, suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the cache may be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _tflite_path(cache: Path, variant: str) -> Path:
    return cache / f"selfie_{variant}.tflite"


def _sha256_ok(path: Path, variant: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == _TFLITE_SHA256[variant]
    except OSError:
        return False


def _extract_tflite(wheel: Path, variant: str, target: Path) -> None:
    member = _WHEEL_MEMBERS[variant]
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(member)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise ModelUnavailableError(f"cannot read {member} from {wheel}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != _TFLITE_SHA256[variant]:
        raise ModelUnavailableError(
            f"{member} in {wheel} has SHA-256 {digest}, expected {_TFLITE_SHA256[variant]} "
            f"(mediapipe {MEDIAPIPE_VERSION})"
        )
    _atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))


def _cached_state(path: Path) -> dict | None:
    """The saved checkpoint at ``path`` if it is current, else None."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # missing, truncated, or not a checkpoint: rebuild it
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CACHE_FORMAT:
        return None
    return ckpt


def _save_checkpoint(state: dict[str, torch.Tensor], variant: str, target: Path) -> None:
    ckpt = {
        "format": _CACHE_FORMAT,
        "variant": variant,
        "input_size": list(SELFIE_VARIANTS[variant]),
        "source": f"mediapipe=={MEDIAPIPE_VERSION}:{_WHEEL_MEMBERS[variant]}",
        "tflite_sha256": _TFLITE_SHA256[variant],
        "state_dict": state,
    }
    _atomic_write(target, lambda tmp: torch.save(ckpt, tmp))


def _fetch_variants(
    cache: Path, variants: list[str], wheel: Path | None, force: bool
) -> dict[str, Path]:
    """Make sure ``selfie_<v>.pt`` is current for each of ``variants``; see fetch_selfie_weights."""
    targets = {v: cache / f"selfie_{v}.pt" for v in SELFIE_VARIANTS}
    todo = [
        v for v in SELFIE_VARIANTS if (force and v in variants) or _cached_state(targets[v]) is None
    ]
    if any(v in variants for v in todo):  # convert every missing variant while at it
        cache.mkdir(parents=True, exist_ok=True)
        need_wheel = [v for v in todo if not _sha256_ok(_tflite_path(cache, v), v)]
        if need_wheel:
            with tempfile.TemporaryDirectory(prefix="bgblur-mediapipe-") as tmp:
                whl = Path(wheel) if wheel is not None else _download_wheel(Path(tmp))
                for v in need_wheel:
                    _extract_tflite(whl, v, _tflite_path(cache, v))
        for v in todo:
            _save_checkpoint(convert_tflite(_tflite_path(cache, v)), v, targets[v])
    return {v: targets[v] for v in variants}


def fetch_selfie_weights(
    cache_dir: Path | None = None,
    variant: str = "general",
    *,
    wheel: Path | None = None,
    force: bool = False,
) -> Path:
    """Path of the converted weights ``<cache_dir>/selfie_<variant>.pt``, creating it if needed.

    When the file is missing (or stale, or ``force``): unless ``selfie_<variant>.tflite`` is
    already in the cache with the expected SHA-256, downloads the mediapipe ``MEDIAPIPE_VERSION``
    wheel with ``pip download`` into a temporary directory (or reads ``wheel``; nothing is
    installed, the wheel is deleted afterwards) and extracts the ``.tflite`` (SHA-256 checked)
    into the cache; then converts it (``convert_tflite``) and saves, with ``torch.save``, a dict
    with keys format, variant, input_size, source, tflite_sha256 and state_dict. The other
    variant is handled too while at it, if missing.

    Args:
        cache_dir: defaults to ``default_cache_dir()`` (``$BGBLUR_CACHE`` or ``~/.cache/bgblur``).
        variant: a key of ``SELFIE_VARIANTS``.
        wheel: a local ``mediapipe-0.10.14-*.whl`` to use instead of downloading.
        force: rebuild even if a current file exists.

    Raises:
        ValueError: unknown variant.
        ModelUnavailableError: the download (or the wheel) failed; the message says what to do.
    """
    _check_variant(variant)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _fetch_variants(cache, [variant], wheel, force)[variant]


def build_selfie_segmentation(
    variant: str = "general", cache_dir: Path | None = None
) -> SelfieSegmentation:
    """A ``SelfieSegmentation`` with the pretrained weights, on the CPU, float32, in eval mode
    (weights fetched and converted on first use, see ``fetch_selfie_weights``)."""
    _check_variant(variant)
    path = fetch_selfie_weights(cache_dir, variant)
    ckpt = _cached_state(path)
    if ckpt is None or ckpt.get("variant") != variant:
        raise ModelUnavailableError(f"{path} is not a valid selfie_{variant} checkpoint")
    model = SelfieSegmentation(variant)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bgblur.models.selfie",
        description="Fetch and convert MediaPipe's selfie segmentation weights.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download the mediapipe wheel and convert the weights")
    fetch.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $BGBLUR_CACHE or ~/.cache/bgblur"
    )
    fetch.add_argument(
        "--variant", choices=sorted(SELFIE_VARIANTS), action="append", help="default: all"
    )
    fetch.add_argument("--wheel", type=Path, default=None, help="use this mediapipe wheel")
    fetch.add_argument("--force", action="store_true", help="reconvert even if cached")
    args = parser.parse_args(argv)
    cache = args.cache_dir.expanduser() if args.cache_dir is not None else default_cache_dir()
    try:
        paths = _fetch_variants(
            cache, args.variant or list(SELFIE_VARIANTS), args.wheel, args.force
        )
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for variant, path in paths.items():
        print(f"selfie_{variant}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
