"""TensorRT runtime: a prebuilt plan (``bgblur.runtimes.tensorrt_build``) run on one GPU.

Same contract as ``TorchRuntime`` on the GPU: ``[B, 3, h, w]`` CuPy/torch (anything DLPack) in,
a torch float16 ``[B, 1, h, w]`` on the same GPU out, computed on the runtime's own CUDA stream
(ordered after the caller's current stream) and synchronized once before returning. Batches
larger than the plan's profile are run in chunks. TensorRT 10/11 Python API: tensors by name,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from bgblur.device import Device
from bgblur.errors import InvalidInputError, ModelUnavailableError
from bgblur.models.registry import SegmentationModelSpec
from bgblur.runtimes.tensorrt_build import INPUT_NAME, OUTPUT_NAME, import_tensorrt

LOG = logging.getLogger(__name__)

_ALIGNMENT = 256  # bytes; TensorRT's I/O buffers should be 256-byte aligned


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.float16: torch.float16, trt.float32: torch.float32}
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    try:
        return table[dtype]
    except KeyError:
        raise ModelUnavailableError(f"unsupported TensorRT I/O dtype {dtype}") from None


class TensorRTRuntime:
    """A segmentation network run from a TensorRT plan on ``device`` (a GPU).

    Args:
        spec: the network; the plan must take its ``input_hw``.
        device: the GPU (the plan must have been built for its architecture).
        plan_path: the serialized engine.

    Raises:
        ModelUnavailableError: not a GPU, TensorRT absent, the plan unreadable or built for
            another GPU/TensorRT, or its tensors not ``NETWORK_INPUT`` -> ``PROBABILITY`` with
            the spec's size.
    """

    def __init__(self, spec: SegmentationModelSpec, device: Device, plan_path: Path) -> None:
        if not device.is_gpu:
            raise ModelUnavailableError(f"TensorRT runs on a CUDA GPU, not on {device}")
        trt = import_tensorrt()
        import torch

        self.spec = spec
        self.device = device
        self.plan_path = Path(plan_path)
        torch.cuda.set_device(device.index)
        try:
            data = self.plan_path.read_bytes()
        except OSError as exc:
            raise ModelUnavailableError(f"cannot read TensorRT plan {plan_path}: {exc}") from exc
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise ModelUnavailableError(
                f"TensorRT {trt.__version__} cannot load {plan_path} (built for another GPU "
                "architecture or TensorRT version?)"
            )
        self._engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
            raise ModelUnavailableError(
                f"{plan_path} has inputs {inputs} and outputs {outputs}; expected "
                f"[{INPUT_NAME!r}] and [{OUTPUT_NAME!r}]"
            )
        in_shape = tuple(engine.get_tensor_shape(INPUT_NAME))
        h, w = spec.input_hw
        if len(in_shape) != 4 or tuple(in_shape[1:]) != (3, h, w):
            raise ModelUnavailableError(
                f"{plan_path} takes {INPUT_NAME} {list(in_shape)}; {spec.name} needs "
                f"[-1, 3, {h}, {w}]"
            )
        min_shape, _, max_shape = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.min_batch, self.max_batch = int(min_shape[0]), int(max_shape[0])
        self._in_dtype = _torch_dtype(trt, engine.get_tensor_dtype(INPUT_NAME))
        self._out_dtype = _torch_dtype(trt, engine.get_tensor_dtype(OUTPUT_NAME))
        self._context = engine.create_execution_context()
        if self._context is None:
            raise ModelUnavailableError(f"cannot create an execution context for {plan_path}")
        self._stream = torch.cuda.Stream(device.torch_device)
        self.name = f"tensorrt-{trt.__version__}-{device}"
        LOG.info(
            "TensorRT %s: %s (batch %d-%d) on %s",
            trt.__version__,
            plan_path,
            self.min_batch,
            self.max_batch,
            device,
        )

    def __call__(self, inputs_nchw: Any) -> Any:
        import torch

        x = inputs_nchw if isinstance(inputs_nchw, torch.Tensor) else torch.from_dlpack(inputs_nchw)
        h, w = self.spec.input_hw
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, h, w):
            raise InvalidInputError(
                f"NETWORK_INPUT must be [B, 3, {h}, {w}] for {self.spec.name}, got {list(x.shape)}"
            )
        dev = self.device.torch_device
        # Order after the caller's stream. Read it before entering the context: inside
        # ``torch.cuda.stream(s)`` the current stream *is* s, and waiting on it is a no-op.
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.inference_mode(), torch.cuda.stream(self._stream):
            x = x.to(dev, self._in_dtype, non_blocking=True).contiguous()
            parts = []
            for start in range(0, x.shape[0], self.max_batch):
                chunk = x[start : start + self.max_batch]
                n = chunk.shape[0]
                if n < self.min_batch:  # pad up to the profile's minimum
                    chunk = torch.cat([chunk, chunk.new_zeros((self.min_batch - n, 3, h, w))])
                elif chunk.data_ptr() % _ALIGNMENT:
                    chunk = chunk.clone()
                out = torch.empty((chunk.shape[0], 1, h, w), dtype=self._out_dtype, device=dev)
                self._enqueue(chunk, out)
                parts.append(out[:n])
            if not parts:
                result = torch.empty((0, 1, h, w), dtype=torch.float16, device=dev)
            else:
                result = parts[0] if len(parts) == 1 else torch.cat(parts)
                result = result.to(torch.float16).contiguous()
        self._stream.synchronize()  # the hand-off to Triton: the only host synchronisation
        return result

    def _enqueue(self, chunk: Any, out: Any) -> None:
        ctx = self._context
        if not ctx.set_input_shape(INPUT_NAME, tuple(chunk.shape)):
            raise RuntimeError(f"TensorRT refused input shape {tuple(chunk.shape)}")
        expected = tuple(ctx.get_tensor_shape(OUTPUT_NAME))
        if expected != tuple(out.shape):
            raise RuntimeError(f"TensorRT output shape {expected}, expected {tuple(out.shape)}")
        ctx.set_tensor_address(INPUT_NAME, chunk.data_ptr())
        ctx.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution failed for {self.spec.name}")
