"""Export a registered segmentation network to ONNX, with the Triton ``segmentation`` model's I/O.

The graph has one input ``NETWORK_INPUT`` ``[batch, 3, h, w]`` (normalized RGB, see the spec's
mean/std) and one output ``PROBABILITY`` ``[batch, 1, h, w]`` (foreground probability in [0,
1]): the tensor names of ``model_repository/segmentation/config.pbtxt``, so an engine built from
it drops into the ensemble. The batch axis is dynamic (``batch``) unless asked otherwise; ``h,
w`` are the spec's ``input_hw`` (or ``input_hw``).

Precision: float32 by default. ``fp16=True`` exports the whole graph in float16 (weights,
activations, ``NETWORK_INPUT``/``PROBABILITY``: the Triton config's ``TYPE_FP16``), BatchNorm
folded into the convolutions in float32 first; that is what TensorRT 11 needs (strongly typed:
the graph's types are the engine's precision) and what TensorRT 10 builds with ``--fp16``, and
the same precision as the torch runtime on the GPU. ``fp16_io=True`` instead keeps a float32
body behind a float16 interface (a Cast after the input and before the output): a float32
engine that still fits the Triton config.

Uses PyTorch's TorchScript-based exporter (``dynamo=False``): it needs only the ``onnx`` package
(no onnxscript) and produces a plain static graph. Pins that work beside numpy 1.26:
``onnx==1.17.0``, ``onnxruntime==1.20.1`` (onnxruntime for ``--check`` and the tests).

Command line::

    python -m bgblur.models.export onnx --model NAME --out FILE [--opset 17] [--fp16|--fp16-io]
        [--static-batch N] [--input-hw HxW] [--weights PATH] [--cache-dir DIR] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bgblur.errors import ModelUnavailableError
from bgblur.models.registry import SegmentationModelSpec, get_model_spec

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "build_module",
    "compare_with_onnxruntime",
    "export_onnx",
    "fold_batchnorm",
]

INPUT_NAME = "NETWORK_INPUT"
OUTPUT_NAME = "PROBABILITY"
BATCH_AXIS = "batch"

LOG = logging.getLogger(__name__)


class _Float16Interface(nn.Module):
    """``net`` behind a float16 interface: float16 in, float32 inside, float16 out."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float()).half()


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    return fuse_conv_bn_eval(conv.eval(), bn.eval())


@torch.no_grad()
def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a Conv2d into it, in place (eval mode, in
    the parameters' dtype: call it before ``.half()``); returns ``module``.

    Pairs recognized: consecutive ``(Conv2d, BatchNorm2d)`` items of an ``nn.Sequential``, and
    attributes ``convK``/``bnK`` of one module (torchvision's ResNet stem and ``Bottleneck``,
    whose ``forward`` applies ``bnK`` right after ``convK``). The folded BN becomes
    ``nn.Identity``. Networks without such pairs are returned unchanged.
    """
    for parent in list(module.modules()):
        if isinstance(parent, nn.Sequential):
            items = list(parent)
            for i in range(len(items) - 1):
                if isinstance(items[i], nn.Conv2d) and isinstance(items[i + 1], nn.BatchNorm2d):
                    parent[i] = _fold(items[i], items[i + 1])
                    parent[i + 1] = nn.Identity()
            continue
        children = dict(parent.named_children())
        for name, child in children.items():
            if not (name.startswith("conv") and isinstance(child, nn.Conv2d)):
                continue
            bn_name = "bn" + name.removeprefix("conv")
            bn = children.get(bn_name)
            if isinstance(bn, nn.BatchNorm2d):
                setattr(parent, name, _fold(child, bn))
                setattr(parent, bn_name, nn.Identity())
    return module


def build_module(
    spec: SegmentationModelSpec,
    *,
    cache_dir: Path | None = None,
    weights: str | os.PathLike | None = None,
) -> nn.Module:
    """``spec``'s network (eval, CPU, float32); ``weights`` (fcn networks only) overrides
    ``$BGBLUR_FCN_WEIGHTS``."""
    if weights is None:
        return spec.build(cache_dir).eval()
    from bgblur.models import fcn

    if spec.name not in fcn.REGISTERED_NETWORKS:
        raise ValueError(
            f"weights apply to the fcn networks ({', '.join(fcn.REGISTERED_NETWORKS)}), "
            f"not {spec.name}"
        )
    foreground = fcn.REGISTERED_NETWORKS[spec.name]
    return fcn.build_fcn_resnet101(foreground, weights=weights, cache_dir=cache_dir).eval()


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise ModelUnavailableError(
            "ONNX export needs the onnx package: pip install onnx==1.17.0 "
            "(and onnxruntime==1.20.1 to check the result)"
        ) from exc


def export_onnx(
    spec_name: str,
    path: str | os.PathLike,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    fp16: bool = False,
    fp16_io: bool = False,
    batch: int = 1,
    input_hw: tuple[int, int] | None = None,
    cache_dir: Path | None = None,
    weights: str | os.PathLike | None = None,
    module: nn.Module | None = None,
) -> Path:
    """Export the registered network ``spec_name`` to ONNX at ``path``; returns the path.

    Args:
        spec_name: a registry name (``selfie_general``, ``fcn_resnet101``, ...).
        path: the ``.onnx`` file to write (parent folders are created; written atomically).
        opset: ONNX opset (17: LayerNorm-era operators; TensorRT 8.6+ and ONNX Runtime 1.14+).
        dynamic_batch: the batch axis is symbolic (``batch``); else fixed at ``batch``.
        fp16: the whole graph in float16 (BatchNorm folded first), float16 I/O.
        fp16_io: float16 ``NETWORK_INPUT``/``PROBABILITY`` around a float32 body (ignored
            with ``fp16``). Neither: float32 throughout.
        batch: the example batch traced (and the fixed batch when not ``dynamic_batch``).
        input_hw: ``(h, w)``; default the spec's ``input_hw``.
        cache_dir, weights: where the network's weights come from (see ``build_module``).
        module: export this module instead of building the spec's (tests).

    The graph carries metadata: ``bgblur.model``, ``bgblur.input_hw``, ``bgblur.mean``,
    ``bgblur.std``, ``bgblur.weights`` (the fcn weights file, or ``random``).

    Raises:
        ModelUnavailableError: unknown model, the onnx package or the weights are missing.
    """
    _require_onnx()
    import onnx

    spec = get_model_spec(spec_name)
    h, w = input_hw if input_hw is not None else spec.input_hw
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    net = module if module is not None else build_module(spec, cache_dir=cache_dir, weights=weights)
    net = net.eval()
    if fp16:
        # Fold in float32 (a running variance near eps loses digits in float16), then halve a
        # copy: the caller's module is left as it was.
        wrapped: nn.Module = fold_batchnorm(copy.deepcopy(net)).half()
    elif fp16_io:
        wrapped = _Float16Interface(net)
    else:
        wrapped = net
    dtype = torch.float16 if fp16 or fp16_io else torch.float32
    example = torch.zeros(batch, 3, h, w, dtype=dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    dynamic_axes = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            # The legacy exporter announces its own deprecation; TracerWarnings name shape
            # arithmetic that is constant for a fixed (h, w), which is what is exported.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                wrapped,
                (example,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=dynamic_axes if dynamic_batch else None,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        model = onnx.load(str(tmp))
        # The exporter's shape inference leaves the output's dims symbolic (and, for some
        # graphs, wrongly tied to the batch symbol): declare what the network produces.
        batch_dim: int | str = BATCH_AXIS if dynamic_batch else batch
        if not any(v.name == INPUT_NAME for v in model.graph.input):
            # A network whose output ignores the pixels (fixed_ellipse at a fixed batch) loses
            # its input in the trace; the interface keeps it.
            elem = onnx.TensorProto.FLOAT16 if dtype == torch.float16 else onnx.TensorProto.FLOAT
            model.graph.input.append(onnx.helper.make_tensor_value_info(INPUT_NAME, elem, None))
        _declare_shape(model.graph.input[0], (batch_dim, 3, h, w))
        _declare_shape(model.graph.output[0], (batch_dim, 1, h, w))
        weights_path = getattr(net, "weights_path", None)
        meta = {
            "bgblur.model": spec.name,
            "bgblur.input_hw": f"{h}x{w}",
            "bgblur.mean": ",".join(map(str, spec.mean)),
            "bgblur.std": ",".join(map(str, spec.std)),
            "bgblur.precision": "fp16" if fp16 else ("fp32, fp16 I/O" if fp16_io else "fp32"),
        }
        if hasattr(net, "weights_path"):
            meta["bgblur.weights"] = str(weights_path) if weights_path is not None else "random"
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        model.doc_string = f"bgblur segmentation network {spec.name}: {spec.weights}"
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    LOG.info("exported %s to %s", spec.name, path)
    return path


def _declare_shape(value_info, dims: tuple[int | str, ...]) -> None:
    shape = value_info.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def compare_with_onnxruntime(
    onnx_path: str | os.PathLike, module: nn.Module, inputs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(onnxruntime's output, torch's float32 output)`` for ``inputs`` ``[B, 3, h, w]``
    (cast to the ONNX input's dtype for onnxruntime)."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ModelUnavailableError(
            "checking an export needs onnxruntime: pip install onnxruntime==1.20.1"
        ) from exc
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed_dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    (got,) = session.run([OUTPUT_NAME], {INPUT_NAME: inputs.astype(feed_dtype)})
    with torch.inference_mode():
        want = module.eval()(torch.from_numpy(inputs.astype(feed_dtype)).float()).numpy()
    return got, want


def _parse_hw(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 224x224, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def main(argv: list[str] | None = None) -> int:
    from bgblur.models.registry import model_names

    parser = argparse.ArgumentParser(
        prog="python -m bgblur.models.export",
        description="Export a segmentation network with the Triton segmentation model's I/O.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("onnx", help="export to ONNX")
    p.add_argument("--model", required=True, choices=model_names())
    p.add_argument("--out", required=True, type=Path, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument(
        "--static-batch", type=int, default=None, metavar="N", help="fixed batch N (else dynamic)"
    )
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="the whole graph in float16")
    precision.add_argument(
        "--fp16-io", action="store_true", help="float16 input/output, float32 inside"
    )
    p.add_argument("--input-hw", type=_parse_hw, default=None, help="HxW (default: the spec's)")
    p.add_argument("--weights", type=Path, default=None, help="fcn_resnet101 weights file")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--check", action="store_true", help="compare onnxruntime with torch")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = get_model_spec(args.model)
        module = build_module(spec, cache_dir=args.cache_dir, weights=args.weights)
        out = export_onnx(
            args.model,
            args.out,
            opset=args.opset,
            dynamic_batch=args.static_batch is None,
            batch=args.static_batch or 1,
            fp16=args.fp16,
            fp16_io=args.fp16_io,
            input_hw=args.input_hw,
            module=module,
        )
        print(out)
        if args.check:
            h, w = args.input_hw or spec.input_hw
            batch = args.static_batch or 2
            x = np.random.default_rng(0).standard_normal((batch, 3, h, w)).astype(np.float32)
            got, want = compare_with_onnxruntime(out, module, x)
            err = float(np.max(np.abs(got.astype(np.float32) - want)))
            print(f"onnxruntime vs torch, batch {batch}: max abs difference {err:.3g}")
    except (ModelUnavailableError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
