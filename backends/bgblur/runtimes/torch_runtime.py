"""PyTorch runtime: fp16, channels_last, CUDA graphs captured at load on the GPU; eager on the CPU.

On the GPU the network runs in float16 and channels_last (BatchNorm folded into the
convolutions first, in float32), on the runtime's own CUDA stream, with ``cudnn.benchmark`` on.
At construction one CUDA graph is captured per *bucket* (``batch_sizes``, default 1, 2, 4, 8:
the ``segmentation`` model's ``max_batch_size`` is 8), each after a warm-up that lets cuDNN
choose its algorithms; every graph reads a static input buffer and writes a static output
buffer, and the graphs share one memory pool (captured largest first). A call copies its batch
into the smallest bucket that holds it (the rows past the batch are zeroed), replays that graph
and copies the rows that were asked for into the returned tensor; a batch larger than the
largest bucket runs in chunks of the largest bucket (the last chunk padded like any other
batch). Nothing is captured after construction.

Optionally the network is compiled with ``torch.compile`` (``compile=True`` or a mode name)
before the graphs are captured around it. It is off by default: it makes the network faster
but multiplies the load time, and the served pipeline is bound far below the network's speed by
Triton's I/O (``bench/results/models-h100.json``).

On the CPU the network runs eagerly in float32, channels_last (faster than NCHW for every
registered network: ``cpu_ab`` in ``bench/results/models-cpu.json``); ``bucketed=True`` runs
the same static-buffer, pad-and-chunk path as the GPU (without graphs), for tests of that logic.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.models.registry import SegmentationModelSpec

LOG = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES: tuple[int, ...] = (1, 2, 4, 8)
"""CUDA-graph buckets: cover the ``segmentation`` model's ``max_batch_size`` (8). A larger
segmentation batch (``--segmentation-batch 64``) renders its own list into the config's
``cuda_graph_batch_sizes`` (``bgblur.server.launcher.doubling_batch_sizes``: 1, 2, ... 64)."""

COMPILE_MODES: tuple[str, ...] = (
    "default",
    "max-autotune-no-cudagraphs",
    "reduce-overhead",
    "max-autotune",
)
"""``torch.compile`` modes accepted by ``compile=``. ``reduce-overhead`` and ``max-autotune``
use Inductor's own CUDA graphs, so the runtime captures none of its own around them."""

DEFAULT_COMPILE_MODE = "default"
"""The mode ``compile=True`` means: Inductor's kernels inside the runtime's own CUDA graphs, no
autotuning (``max-autotune-no-cudagraphs`` adds Triton autotuning, which lengthens the load
further)."""

WARMUP_ITERATIONS = 3


def normalize_batch_sizes(batch_sizes: Iterable[int]) -> tuple[int, ...]:
    """``batch_sizes`` sorted, without repeats; ValueError when empty or not all positive."""
    try:
        sizes = tuple(sorted({int(b) for b in batch_sizes}))
    except (TypeError, ValueError):
        raise ValueError(f"batch sizes must be integers, got {batch_sizes!r}") from None
    if not sizes or sizes[0] < 1:
        raise ValueError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    return sizes


def plan_batches(batch: int, batch_sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """How a batch of ``batch`` rows runs on buckets ``batch_sizes`` (sorted ascending):
    ``[(start, count, bucket), ...]``. Chunks of the largest bucket while they fill it, then the
    rest padded up to the smallest bucket that holds it."""
    largest = batch_sizes[-1]
    plan = []
    start = 0
    while batch - start >= largest:
        plan.append((start, largest, largest))
        start += largest
    rest = batch - start
    if rest:
        bucket = next(b for b in batch_sizes if b >= rest)
        plan.append((start, rest, bucket))
    return plan


def resolve_compile_mode(compile: bool | str | None) -> str | None:
    """``compile=`` as a ``torch.compile`` mode, or None (off): False/None/"off"/"no"/""
    -> None, True/"on"/"yes" -> ``DEFAULT_COMPILE_MODE``, a mode name -> itself."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return DEFAULT_COMPILE_MODE
    text = str(compile).strip().lower()
    if text in ("", "off", "no", "false", "0", "none"):
        return None
    if text in ("on", "yes", "true", "1"):
        return DEFAULT_COMPILE_MODE
    if text not in COMPILE_MODES:
        raise ValueError(
            f"torch.compile mode must be one of {', '.join(COMPILE_MODES)} (or on/off), "
            f"not {compile!r}"
        )
    return text


@dataclass
class _Bucket:
    """Static buffers of one batch size and, on the GPU, the graph that reads/writes them."""

    size: int
    static_in: torch.Tensor
    static_out: torch.Tensor | None = None
    graph: Any = None  # torch.cuda.CUDAGraph


class TorchRuntime:
    """A segmentation network run by PyTorch.

    Args:
        spec: the network and its input conventions.
        device: where to run.
        cache_dir: where the network's converted weights are cached.
        batch_sizes: the buckets (CUDA graphs on the GPU); a batch pads up to the next one and
            batches above the largest run in chunks. Default 1, 2, 4, 8.
        cuda_graphs: capture CUDA graphs at construction on the GPU (default True; ignored on
            the CPU).
        compile: ``torch.compile`` the network (GPU only): False (default), True
            (``max-autotune-no-cudagraphs``) or one of ``COMPILE_MODES``.
        bucketed: run through the static per-bucket buffers (pad and chunk); always with CUDA
            graphs. On the CPU (tests of that logic) it runs eagerly on the buffers.
        warmup: forward passes per bucket before capture (cuDNN's algorithm search, compile).
        channels_last: the memory format of weights and inputs (default True; False: NCHW).

    ``name`` is ``torch-<mode>-<device>`` (``torch-cuda-graphs-gpu:0``, ``torch-eager-cpu``,
    ...); ``describe()`` says all of the above in one line, with the load time.
    """

    def __init__(
        self,
        spec: SegmentationModelSpec,
        device: Device,
        *,
        cache_dir: Path | None = None,
        batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
        cuda_graphs: bool = True,
        compile: bool | str | None = False,
        bucketed: bool | None = None,
        warmup: int = WARMUP_ITERATIONS,
        channels_last: bool = True,
    ) -> None:
        started = time.perf_counter()
        self.spec = spec
        self.device = device
        self.batch_sizes = normalize_batch_sizes(batch_sizes)
        self.compile_mode = resolve_compile_mode(compile) if device.is_gpu else None
        if compile and not device.is_gpu:
            LOG.info("torch.compile is a GPU option of the runtime: ignored on the CPU")
        inductor_graphs = self.compile_mode in ("reduce-overhead", "max-autotune")
        self.cuda_graphs = bool(cuda_graphs) and device.is_gpu and not inductor_graphs
        # CUDA graphs need their static buffers: bucketed is implied with them.
        self.bucketed = self.cuda_graphs or (
            bool(bucketed) if bucketed is not None else inductor_graphs
        )
        self.warmup = max(int(warmup), 1 if self.cuda_graphs else 0)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.captures = 0  # graphs captured (all of them at construction)
        module = spec.build(cache_dir).eval()
        if device.is_gpu:
            from bgblur.models.export import fold_batchnorm

            torch.cuda.set_device(device.index)
            # cuDNN autotuning picks the fastest kernels per process; fp16 results can then
            # differ in the last bits between two processes. BGBLUR_CUDNN_DETERMINISTIC=1 uses
            # cuDNN's deterministic heuristics instead (the tests compare processes with it).
            deterministic = os.environ.get("BGBLUR_CUDNN_DETERMINISTIC") == "1"
            torch.backends.cudnn.benchmark = not deterministic
            torch.backends.cudnn.deterministic = deterministic
            module = fold_batchnorm(module)  # in float32, before the cast
            module = module.to(device.torch_device, dtype=torch.float16)
            self.dtype = torch.float16
            self._stream = torch.cuda.Stream(device.torch_device)
        else:
            self.dtype = torch.float32
        self.module = module.to(memory_format=self.memory_format)
        self._forward = self.module
        if self.compile_mode is not None:
            self._forward = torch.compile(self.module, mode=self.compile_mode, dynamic=False)
        self._buckets: dict[int, _Bucket] = {}
        if device.is_gpu:
            self._prepare_gpu()
        elif self.bucketed:
            for size in self.batch_sizes:
                self._buckets[size] = _Bucket(size, self._static_input(size))
        self.load_seconds = time.perf_counter() - started
        if self.compile_mode is not None:
            mode = "compile-cuda-graphs" if self.cuda_graphs else "compile"
        else:
            mode = "cuda-graphs" if self.cuda_graphs else "eager"
        self.name = f"torch-{mode}-{device}"
        LOG.info("%s: %s", self.name, self.describe())

    # ----------------------------------------------------------------------------------------
    # Load
    # ----------------------------------------------------------------------------------------

    def _static_input(self, size: int) -> torch.Tensor:
        h, w = self.spec.input_hw
        return torch.zeros(
            (size, 3, h, w), dtype=self.dtype, device=self.device.torch_device
        ).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def _prepare_gpu(self) -> None:
        """Warm up every bucket and, with CUDA graphs, capture one graph per bucket (largest
        first, one shared memory pool)."""
        dev = self.device.torch_device
        pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        # Everything on the side stream, after the weights' copies on the current one.
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(self._stream):
            for size in sorted(self.batch_sizes, reverse=True):
                static_in = self._static_input(size)
                for _ in range(self.warmup):
                    out = self._forward(static_in)
                bucket = _Bucket(size, static_in)
                if self.cuda_graphs:
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(
                        graph, pool=pool, stream=self._stream, capture_error_mode="thread_local"
                    ):
                        out = self._forward(static_in)
                    bucket.graph = graph
                    bucket.static_out = out
                    self.captures += 1
                if self.bucketed:
                    self._buckets[size] = bucket
        self._stream.synchronize()
        if self.cuda_graphs:
            # A first replay of each graph, so that no first-use cost is left for a request.
            with torch.cuda.stream(self._stream):
                for bucket in self._buckets.values():
                    bucket.graph.replay()
            self._stream.synchronize()
            LOG.info(
                "captured CUDA graphs for %s at batch sizes %s (input %dx%d)",
                self.spec.name,
                ",".join(map(str, self.batch_sizes)),
                *self.spec.input_hw,
            )

    def describe(self) -> str:
        """One line: framework, precision, layout, device, graphs/buckets, compile, load time."""
        h, w = self.spec.input_hw
        parts = [
            f"torch {torch.__version__}",
            "fp16" if self.device.is_gpu else "fp32",
            "channels_last" if self.memory_format == torch.channels_last else "NCHW",
        ]
        if self.device.is_gpu:
            parts.append("BatchNorm folded, cudnn.benchmark")
        parts.append(f"on {self.device}")
        if not self.device.is_gpu:
            parts.append(f"{torch.get_num_threads()} threads")
        sizes = ",".join(map(str, self.batch_sizes))
        if self.cuda_graphs:
            parts.append(f"CUDA graphs captured at load for batch {sizes}")
        elif self.bucketed:
            parts.append(f"static buffers for batch {sizes}")
        else:
            parts.append("eager")
        if self.bucketed:
            parts.append(f"pad to the next size, chunks of {self.batch_sizes[-1]} above")
        parts.append(f"torch.compile {self.compile_mode}" if self.compile_mode else "no compile")
        parts.append(f"input {h}x{w}")
        parts.append(f"loaded in {self.load_seconds:.2f} s")
        return ", ".join(parts)

    # ----------------------------------------------------------------------------------------
    # Run
    # ----------------------------------------------------------------------------------------

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        h, w = self.spec.input_hw
        if len(shape) != 4 or shape[1] != 3 or (self.bucketed and tuple(shape[2:]) != (h, w)):
            want = f"[B, 3, {h}, {w}]" if self.bucketed else "[B, 3, h, w]"
            raise InvalidInputError(
                f"NETWORK_INPUT must be {want} for {self.spec.name}, got {list(shape)}"
            )

    @torch.inference_mode()
    def __call__(self, inputs_nchw: Any) -> Any:
        if not self.device.is_gpu:
            x = torch.from_numpy(np.ascontiguousarray(inputs_nchw))
            self._check_shape(tuple(x.shape))
            if self.bucketed:
                return self._run_buckets(x).numpy()
            x = x.to(torch.float32).contiguous(memory_format=self.memory_format)
            return self._forward(x).to(torch.float16).contiguous().numpy()
        x = inputs_nchw if isinstance(inputs_nchw, torch.Tensor) else torch.from_dlpack(inputs_nchw)
        self._check_shape(tuple(x.shape))
        dev = self.device.torch_device
        # Order the side stream after the producer's work on the caller's current stream
        # (this must happen before entering the side stream, where it would be a no-op).
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(self._stream):
            if self.bucketed:
                result = self._run_buckets(x)
            else:
                x = x.to(dev, torch.float16, non_blocking=True)
                out = self._forward(x.contiguous(memory_format=self.memory_format))
                result = out.to(torch.float16).contiguous()
        self._stream.synchronize()  # the hand-off to Triton: the only host synchronisation
        return result

    def _run_buckets(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` through the static buffers, bucket by bucket, into a new float16 tensor (on
        the runtime's stream on the GPU)."""
        h, w = self.spec.input_hw
        result = torch.empty(
            (x.shape[0], 1, h, w), dtype=torch.float16, device=self.device.torch_device
        )
        for start, count, size in plan_batches(x.shape[0], self.batch_sizes):
            bucket = self._buckets[size]
            bucket.static_in[:count].copy_(x[start : start + count], non_blocking=True)
            if count < size:
                bucket.static_in[count:].zero_()
            if bucket.graph is not None:
                bucket.graph.replay()
                out = bucket.static_out
            else:
                out = self._forward(bucket.static_in)
            result[start : start + count].copy_(out[:count], non_blocking=True)
        return result
