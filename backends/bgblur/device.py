"""Where a stage runs: the CPU (NumPy/OpenCV) or one CUDA GPU (CuPy/torch)."""

from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """A compute device. ``kind`` is ``"cpu"`` or ``"gpu"``; ``index`` is the CUDA ordinal."""

    kind: str = "cpu"
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "gpu"):
            raise ValueError(f"device kind must be 'cpu' or 'gpu', got {self.kind!r}")

    @property
    def is_gpu(self) -> bool:
        return self.kind == "gpu"

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index}" if self.is_gpu else "cpu"

    def __str__(self) -> str:
        return f"gpu:{self.index}" if self.is_gpu else "cpu"

    @classmethod
    def from_triton_args(cls, args: dict) -> Device:
        """The device of a Triton Python-backend model instance (``initialize(args)``)."""
        if args.get("model_instance_kind") == "GPU":
            return cls("gpu", int(args["model_instance_device_id"]))
        return cls("cpu")


@functools.cache
def cuda_device_count() -> int:
    """Number of CUDA GPUs the GPU stages can use (CuPy present, a driver answering), else 0."""
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no cupy, no driver, no device: the CPU path serves
        return 0
