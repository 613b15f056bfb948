"""PyTorch runtime: eager on the CPU; fp16, channels_last and CUDA graphs on the GPU."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgblur.device import Device
from bgblur.models.registry import SegmentationModelSpec

LOG = logging.getLogger(__name__)


class TorchRuntime:
    """A segmentation network run by PyTorch.

    On the GPU the network runs in fp16 and channels_last on its own stream, one CUDA graph per
    batch size (captured on first use of that size; static input/output buffers, so steady state
    allocates only the returned copy). On the CPU it runs eagerly in float32.

    Args:
        spec: the network and its input conventions.
        device: where to run.
        cache_dir: where the network's converted weights are cached.
        cuda_graphs: capture CUDA graphs on the GPU (default True).
    """

    def __init__(
        self,
        spec: SegmentationModelSpec,
        device: Device,
        *,
        cache_dir: Path | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        self.spec = spec
        self.device = device
        module = spec.build(cache_dir).eval()
        if device.is_gpu:
            torch.cuda.set_device(device.index)
            module = module.to(device.torch_device, dtype=torch.float16)
            module = module.to(memory_format=torch.channels_last)
            self._stream = torch.cuda.Stream(device.torch_device)
        self.module = module
        self.cuda_graphs = cuda_graphs and device.is_gpu
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self.name = f"torch-{'cuda-graphs' if self.cuda_graphs else 'eager'}-{device}"

    @torch.inference_mode()
    def __call__(self, inputs_nchw: Any) -> Any:
        if not self.device.is_gpu:
            x = torch.from_numpy(np.ascontiguousarray(inputs_nchw)).float()
            return self.module(x).to(torch.float16).numpy()
        x = (
            torch.from_dlpack(inputs_nchw)
            if not isinstance(inputs_nchw, torch.Tensor)
            else inputs_nchw
        )
        # Order the side stream after the producer's work on the caller's current stream
        # (this must happen before entering the side stream, where it would be a no-op).
        self._stream.wait_stream(torch.cuda.current_stream(self.device.torch_device))
        with torch.cuda.stream(self._stream):
            x = x.to(self.device.torch_device, torch.float16, non_blocking=True)
            if self.cuda_graphs:
                out = self._run_graph(x)
            else:
                out = self.module(x.contiguous(memory_format=torch.channels_last))
            result = out.to(torch.float16).contiguous()
        self._stream.synchronize()  # the hand-off to Triton: the only host synchronisation
        return result

    def _run_graph(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        entry = self._graphs.get(batch)
        if entry is None or entry[1].shape != x.shape:
            entry = self._capture(x)
            self._graphs[batch] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: torch.Tensor) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        static_in = torch.empty_like(x, memory_format=torch.channels_last)
        static_in.copy_(x)
        for _ in range(2):  # warm-up on the side stream (cuDNN picks its algorithms here)
            self.module(static_in)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self._stream):
            static_out = self.module(static_in)
        LOG.info("captured a CUDA graph for %s at input %s", self.spec.name, tuple(x.shape))
        return graph, static_in, static_out
