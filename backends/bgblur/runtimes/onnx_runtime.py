"""ONNX Runtime on the CPU: the network exported once to ONNX, run by ``CPUExecutionProvider``.

Same contract as ``TorchRuntime`` on the CPU: ``[B, 3, h, w]`` NumPy float16/float32 in,
``[B, 1, h, w]`` NumPy float16 out. The graph is float32: the CPU provider has few float16
kernels, so an all-float16 export runs slower (docs/benchmarks.md); the input is cast in NumPy,
the output cast back to float16.

The export (``bgblur.models.export.export_onnx``, dynamic batch, opset 17) is cached in
``<onnx_dir>`` (default ``<cache>/onnx``, ``<cache>`` being ``cache_dir`` or ``$BGBLUR_CACHE``
or ``~/.cache/bgblur``) under a name made of the model's name, its input size and a digest of its
weights: a later load with the same weights reuses the file, other weights get their own. The
file is written atomically, so instances that load at the same time do not see half a file.
Only registered networks (``bgblur.models.registry``) can be exported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bgblur.device import Device
from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.models.registry import SegmentationModelSpec

LOG = logging.getLogger(__name__)

OPSET = 17
EXPORT_FORMAT = 1  # bump when the exported graph changes for the same weights
"""Part of the cached file's name: a new export format never reuses an old file."""


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` elsewhere)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 (hex) of ``module``'s class and state dict (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    digest.update(f"{type(module).__module__}.{type(module).__qualname__}".encode())
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            digest.update(f"{name}={value!r};".encode())
            continue
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def onnx_cache_path(spec: SegmentationModelSpec, onnx_dir: Path, digest: str) -> Path:
    """Where the export of ``spec`` with weights ``digest`` is cached in ``onnx_dir``."""
    h, w = spec.input_hw
    return Path(onnx_dir) / (
        f"{spec.name}_{h}x{w}_fp32_opset{OPSET}_v{EXPORT_FORMAT}_{digest[:16]}.onnx"
    )


def _default_onnx_dir(cache_dir: Path | None) -> Path:
    from bgblur.models.selfie import default_cache_dir

    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "onnx"


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ModelUnavailableError(
            "the onnxruntime runtime needs the onnxruntime and onnx packages "
            "(pip install onnxruntime==1.20.1 onnx==1.17.0)"
        ) from exc
    return onnxruntime


class OnnxRuntimeCPU:
    """A registered segmentation network run by ONNX Runtime's CPU execution provider.

    Args:
        spec: the network (a registered name: the export goes through the registry).
        device: the CPU (a GPU device is refused: this runtime returns NumPy arrays).
        cache_dir: where the network's weights are cached (as for ``TorchRuntime``).
        onnx_dir: where the export is cached (default ``<cache>/onnx``).
        threads: intra-op threads (default: the cores this process may use).
        spinning: let idle intra-op threads spin (ONNX Runtime's default; faster, busier).

    Raises:
        ModelUnavailableError: a GPU device, onnxruntime/onnx missing, the network not
            exportable, or ONNX Runtime unable to load the export.
    """

    def __init__(
        self,
        spec: SegmentationModelSpec,
        device: Device,
        *,
        cache_dir: Path | None = None,
        onnx_dir: Path | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        if device.is_gpu:
            raise ModelUnavailableError(
                f"the onnxruntime runtime runs on the CPU, not on {device} (use torch or tensorrt)"
            )
        started = time.perf_counter()
        ort = _import_onnxruntime()
        self.spec = spec
        self.device = device
        self.threads = int(threads) if threads else cpu_cores()
        self.spinning = spinning
        module = spec.build(cache_dir).eval()
        folder = Path(onnx_dir) if onnx_dir is not None else _default_onnx_dir(cache_dir)
        self.onnx_path = onnx_cache_path(spec, folder, weights_digest(module))
        self.exported = False
        if not self.onnx_path.is_file():
            self._export(module)
        try:
            self._session = self._open_session(ort)
        except Exception as exc:  # a damaged cache file: export again, once
            LOG.warning("cannot load %s (%s): exporting %s again", self.onnx_path, exc, spec.name)
            self._export(module)
            try:
                self._session = self._open_session(ort)
            except Exception as again:
                raise ModelUnavailableError(
                    f"ONNX Runtime cannot load the export of {spec.name} ({self.onnx_path}): "
                    f"{again}"
                ) from again
        del module
        from bgblur.models.export import INPUT_NAME, OUTPUT_NAME

        self._input_name, self._output_name = INPUT_NAME, OUTPUT_NAME
        (feed,) = self._session.get_inputs()
        self._feed_dtype = np.float16 if feed.type == "tensor(float16)" else np.float32
        self.ort_version = str(ort.__version__)
        self.load_seconds = time.perf_counter() - started
        self.name = f"onnxruntime-{device}"
        LOG.info("%s: %s", self.name, self.describe())

    def _export(self, module: nn.Module) -> None:
        from bgblur.models.export import export_onnx

        _import_onnxruntime()
        try:
            export_onnx(
                self.spec.name,
                self.onnx_path,
                opset=OPSET,
                dynamic_batch=True,
                input_hw=self.spec.input_hw,
                module=module,
            )
        except ModelUnavailableError:
            raise
        except Exception as exc:
            raise ModelUnavailableError(f"cannot export {self.spec.name} to ONNX: {exc}") from exc
        self.exported = True

    def _open_session(self, ort: Any) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        options.log_severity_level = 3
        return ort.InferenceSession(
            str(self.onnx_path), options, providers=["CPUExecutionProvider"]
        )

    def describe(self) -> str:
        """One line: runtime, version, precision, threads, the ONNX file, load time."""
        h, w = self.spec.input_hw
        origin = "exported now" if self.exported else "cached"
        return (
            f"onnxruntime {self.ort_version} CPUExecutionProvider, fp32 graph (fp16 in/out), "
            f"{self.threads} intra-op threads{'' if self.spinning else ', no spinning'}, "
            f"input {h}x{w}, {self.onnx_path.name} ({origin}), "
            f"loaded in {self.load_seconds:.2f} s"
        )

    def __call__(self, inputs_nchw: Any) -> np.ndarray:
        x = np.asarray(inputs_nchw)
        h, w = self.spec.input_hw
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, h, w):
            raise InvalidInputError(
                f"NETWORK_INPUT must be [B, 3, {h}, {w}] for {self.spec.name}, got {list(x.shape)}"
            )
        if x.shape[0] == 0:
            return np.zeros((0, 1, h, w), dtype=np.float16)
        feed = np.ascontiguousarray(x, dtype=self._feed_dtype)
        (out,) = self._session.run([self._output_name], {self._input_name: feed})
        return np.ascontiguousarray(out, dtype=np.float16)
