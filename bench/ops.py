"""GPU op and chain benchmark: per op and per fused chain, us per frame, GB/s and share of HBM.

Figures, not tests. For each frame size (720p, 1080p, 4K) and batch (1, 8, 32), on the GPU:

- preprocess: ``resize_normalize_nchw`` (one kernel: bilinear resize to 224x224 + normalise +
  NHWC -> NCHW float16; a second row with the area downscale) and a naive torch version
  (``F.interpolate`` + arithmetic);
- postprocess ops, one by one (the per-op GPU kernels of ``bgblur.ops``): mask upscale, grey,
  joint bilateral (d=5), resize to the 224x224 working size, Gaussian 15x15 there, resize back,
  composite; and a full-resolution 31x31 Gaussian (the CV-CUDA reference figure's op);
- postprocess chains: the per-op GPU chain (``postprocess_chain``, what ``Postprocess(fused=False)``
  runs), the fused chain (``bgblur.stages.postprocess_fused.FusedPostprocess``, four launches) and
  a naive torch chain (``F.interpolate``, a shift-and-add joint bilateral, a separable ``conv2d``
  Gaussian, float composite; not bit-exact, the same work);
- on the CPU (OpenCV, ``cv2.setNumThreads(all cores)``, a per-frame loop, batch 1): the CPU stages
  of the library for the same work (the joint bilateral is ximgproc's, or its NumPy twin where
  OpenCV lacks ximgproc: the row's note says which);
- CV-CUDA and DALI rows when ``import cvcuda`` / ``import nvidia.dali`` work (skipped otherwise;
  CV-CUDA's figures measured elsewhere are recorded as a reference, not run here).

GPU timing: CUDA events on one stream, after warm-up, the median of N back-to-back calls. A spin
kernel first holds the GPU while the host enqueues the N calls, so the figure is GPU time, not
Python launch overhead; the wall time of a call + synchronise is reported beside it.
Bytes (for GB/s): each op's or chain's own inputs read once and outputs written once (the
chains: frames + probability in, BLURRED + MASK out; intermediates not counted, so the figure is
the effective bandwidth of the work); the bilinear downscales count the source rows they touch.

    python bench/ops.py                      # all sizes and batches (--reps 8: 15 s on the H100)
    python bench/ops.py --sizes 1080p --batches 8 --out /tmp/ops.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "backends"), str(ROOT / "client")]

from bgblur import ops  # noqa: E402
from bgblur.device import Device  # noqa: E402
from bgblur.parameters import BlurParams  # noqa: E402
from bgblur.stages.postprocess import Postprocess, postprocess_chain  # noqa: E402

SIZES = {"720p": (720, 1280), "1080p": (1080, 1920), "4k": (2160, 3840)}
HBM_GBS = 3350.0  # H100 SXM HBM3 peak, GB/s
MODEL_HW = (224, 224)  # preprocess output (CV-CUDA's sample)
PROB_HW = (256, 256)  # network output (selfie_general)
WORKING_HW = (224, 224)  # background blur working size
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
CVCUDA_REFERENCE = {
    "source": "CV-CUDA 0.19 on this project's H100, one 1080p frame, measured apart from this run",
    "status": "reference (not run here)",
    "us_per_frame": {
        "resize+convertto+reformat to 224x224": 82.0,
        "joint_bilateral_filter d=5, one channel": 83.0,
        "gaussian 31x31": 687.0,
    },
}
SPIN_SOURCE = r"""
extern "C" __global__ void spin_ns(unsigned long long ns) {
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while (t - t0 < ns);
}
"""


# ---- timing ---------------------------------------------------------------------------------


class GpuTimer:
    """Times a callable that enqueues GPU work on CuPy's current stream (and torch's, which is
    the same legacy default stream here)."""

    def __init__(self, cupy: Any, reps: int, warmup: int, row_seconds: float) -> None:
        self.cupy = cupy
        self.reps, self.warmup, self.row_seconds = reps, warmup, row_seconds
        self.spin = cupy.RawKernel(SPIN_SOURCE, "spin_ns")

    def __call__(self, fn: Callable[[], Any]) -> dict:
        cupy = self.cupy
        stream = cupy.cuda.get_current_stream()
        for _ in range(self.warmup):
            fn()
        stream.synchronize()
        walls, enqueue = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            stream.synchronize()
            walls.append(time.perf_counter() - t0)
            enqueue.append(t1 - t0)
        wall = statistics.median(walls)
        reps = max(5, min(self.reps, int(self.row_seconds / max(wall, 1e-6))))
        spin_s = min(0.5, 2.0 * reps * statistics.median(enqueue) + 0.002)
        events = [cupy.cuda.Event() for _ in range(reps + 1)]
        self.spin((1,), (1,), (np.uint64(int(spin_s * 1e9)),))
        events[0].record(stream)
        for event in events[1:]:
            fn()
            event.record(stream)
        queued = not events[0].done  # the spin outlasted the enqueueing: back-to-back calls
        events[-1].synchronize()
        per_call = [cupy.cuda.get_elapsed_time(a, b) * 1e3 for a, b in itertools.pairwise(events)]
        return {
            "gpu_us_per_call": statistics.median(per_call),
            "gpu_us_per_call_min": min(per_call),
            "wall_us_per_call": wall * 1e6,
            "reps": reps,
            "queued": queued,
        }


def time_cpu(fn: Callable[[], Any], reps: int) -> dict:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"wall_us_per_call": statistics.median(times) * 1e6, "reps": reps}


# ---- inputs ---------------------------------------------------------------------------------


def make_frames(hw: tuple[int, int], batch: int) -> np.ndarray:
    import skimage.data

    photo = cv2.resize(skimage.data.astronaut(), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
    frames = [np.roll(photo, 37 * i, axis=1) for i in range(min(batch, 4))]
    return np.ascontiguousarray(np.stack([frames[i % len(frames)] for i in range(batch)]))


def make_probability(batch: int) -> np.ndarray:
    h, w = PROB_HW
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    blob = np.exp(-(((yy - 0.55 * h) / (0.3 * h)) ** 2 + ((xx - 0.5 * w) / (0.2 * w)) ** 2))
    noise = np.random.default_rng(0).normal(0.0, 0.05, (batch, 1, h, w))
    return np.clip(blob + noise, 0.0, 1.0).astype(np.float16)


def downscale_rows(src_h: int, dst_h: int) -> int:
    """Source rows a bilinear downscale reads (two per output row, at most all of them)."""
    return min(src_h, 2 * dst_h)


# ---- naive torch ------------------------------------------------------------------------------


_TORCH_CONSTANTS: dict[tuple, Any] = {}


def torch_constant(torch: Any, values: tuple[float, ...], device: Any) -> Any:
    """A ``[1, C, 1, 1]`` float32 tensor on ``device``, uploaded once (a per-call upload would
    synchronise the host and break the queued timing)."""
    key = (values, str(device))
    if key not in _TORCH_CONSTANTS:
        _TORCH_CONSTANTS[key] = torch.tensor(values, device=device).view(1, len(values), 1, 1)
    return _TORCH_CONSTANTS[key]


def torch_preprocess(torch: Any, frames_t: Any) -> Any:
    import torch.nn.functional as F  # noqa: N812

    x = frames_t.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=MODEL_HW, mode="bilinear", align_corners=False, antialias=False)
    mean = torch_constant(torch, MEAN, x.device)
    std = torch_constant(torch, STD, x.device)
    return ((x / 255.0 - mean) / std).half()


def torch_gaussian(torch: Any, x: Any, ksize: int, sigma: float) -> Any:
    """Separable depthwise conv2d, reflect padding; ``x`` [B, C, H, W] float."""
    import torch.nn.functional as F  # noqa: N812

    r = ksize // 2
    taps = torch.exp(-((torch.arange(ksize, device=x.device) - r) ** 2) / (2.0 * sigma * sigma))
    taps = (taps / taps.sum()).float()
    c = x.shape[1]
    x = F.pad(x, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, taps.view(1, 1, 1, ksize).expand(c, 1, 1, ksize), groups=c)
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, taps.view(1, 1, ksize, 1).expand(c, 1, ksize, 1), groups=c)


def torch_joint_bilateral(
    torch: Any, mask: Any, grey: Any, diameter: int, sigma_color: float, sigma_space: float
) -> Any:
    """Shift-and-add over the circular window; ``mask``, ``grey`` [B, 1, H, W] float."""
    import torch.nn.functional as F  # noqa: N812

    r = max(diameter // 2, 1)
    h, w = mask.shape[-2:]
    mp = F.pad(mask, (r, r, r, r), mode="reflect")
    gp = F.pad(grey, (r, r, r, r), mode="reflect")
    num = torch.zeros_like(mask)
    den = torch.zeros_like(mask)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy * dy + dx * dx > r * r:
                continue
            sl = (..., slice(r + dy, r + dy + h), slice(r + dx, r + dx + w))
            spatial = math.exp(-(dy * dy + dx * dx) / (2.0 * sigma_space**2))
            weight = torch.exp((gp[sl] - grey) ** 2 * (-0.5 / sigma_color**2)) * spatial
            num += weight * mp[sl]
            den += weight
    return num / den


def torch_postprocess(torch: Any, frames_t: Any, prob_t: Any, params: BlurParams) -> Any:
    import torch.nn.functional as F  # noqa: N812

    height, width = frames_t.shape[1:3]
    m = torch.round(prob_t.float().clamp(0.0, 1.0) * 255.0)
    m = F.interpolate(m, size=(height, width), mode="nearest")
    x = frames_t.permute(0, 3, 1, 2).float()
    weights = torch_constant(torch, (0.299, 0.587, 0.114), x.device)
    grey = torch.round((x * weights).sum(1, keepdim=True))
    m = torch_joint_bilateral(
        torch,
        m,
        grey,
        params.bilateral_diameter,
        params.bilateral_sigma_color,
        params.bilateral_sigma_space,
    )
    small = F.interpolate(x, size=WORKING_HW, mode="bilinear", align_corners=False)
    small = torch_gaussian(torch, small, params.blur_ksize, params.blur_sigma)
    bg = F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)
    a = m / 255.0
    out = (x * a + bg * (1.0 - a)).round().clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous(), m.round().to(torch.uint8)[:, 0]


# ---- the benchmark ----------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        import cupy

        self.args = args
        self.cupy = cupy
        self.timer = GpuTimer(cupy, args.reps, args.warmup, args.row_seconds)
        self.rows: list[dict] = []
        self.skipped: list[str] = []
        try:
            import torch

            self.torch = torch if torch.cuda.is_available() else None
        except ImportError:
            self.torch = None
        if self.torch is None:
            self.skipped.append("torch rows: no CUDA torch")
        try:
            import cvcuda

            self.cvcuda = cvcuda
        except Exception as exc:  # ImportError, or a broken install
            self.cvcuda = None
            self.skipped.append(f"CV-CUDA rows: import cvcuda failed ({exc.__class__.__name__})")
        try:
            import nvidia.dali  # noqa: F401

            self.dali = True
        except Exception as exc:
            self.dali = False
            self.skipped.append(f"DALI rows: import nvidia.dali failed ({exc.__class__.__name__})")

    def add(
        self,
        group: str,
        impl: str,
        op: str,
        size: str,
        batch: int,
        bytes_per_call: float,
        timing: dict,
        note: str = "",
        launches: int | None = None,
    ) -> None:
        us_call = timing.get("gpu_us_per_call", timing["wall_us_per_call"])
        row = {
            "group": group,
            "impl": impl,
            "op": op,
            "size": size,
            "batch": batch,
            "us_per_frame": us_call / batch,
            "wall_us_per_frame": timing["wall_us_per_call"] / batch,
            "bytes_per_frame": bytes_per_call / batch,
            "gb_per_s": bytes_per_call / (us_call * 1e-6) / 1e9,
            "hbm_pct": 100.0 * bytes_per_call / (us_call * 1e-6) / 1e9 / HBM_GBS,
            **{k: v for k, v in timing.items() if k not in ("wall_us_per_call",)},
            "note": note,
        }
        if launches is not None:
            row["launches"] = launches
        self.rows.append(row)
        print(
            f"  {group:11s} {impl:12s} {op:44s} {size:5s} b{batch:<3d} "
            f"{row['us_per_frame']:10.2f} us/frame  {row['gb_per_s']:8.1f} GB/s "
            f"{row['hbm_pct']:5.1f}%  wall {row['wall_us_per_frame']:9.1f}",
            flush=True,
        )

    def gpu_row(self, group, impl, op, size, batch, nbytes, fn, note="", launches=None) -> None:
        try:
            self.add(group, impl, op, size, batch, nbytes, self.timer(fn), note, launches)
        except Exception as exc:
            self.cupy.cuda.get_current_stream().synchronize()
            msg = f"{group}/{impl}/{op} {size} b{batch}: {exc.__class__.__name__}: {exc}"
            self.skipped.append(msg)
            print("  FAILED", msg, flush=True)
            traceback.print_exc()

    # ---- GPU rows of one (size, batch) --------------------------------------------------------

    def run_gpu(self, size: str, batch: int) -> None:
        cupy = self.cupy
        from bgblur.ops import gaussian_gpu, resize_gpu
        from bgblur.stages.postprocess_fused import FusedPostprocess

        height, width = SIZES[size]
        params = BlurParams()
        frames = cupy.asarray(make_frames((height, width), batch))
        prob = cupy.asarray(make_probability(batch))
        frame_bytes = batch * height * width * 3
        pixel_bytes = batch * height * width
        small_bytes = batch * WORKING_HW[0] * WORKING_HW[1] * 3
        prob_bytes = prob.nbytes
        touched = batch * downscale_rows(height, MODEL_HW[0]) * width * 3

        # Buffers of the per-op rows (allocated once: the rows time the kernels).
        pre_out = cupy.empty((batch, 3, *MODEL_HW), np.float16)
        mask_low = ops.probability_to_mask(prob)
        mask_up = ops.upscale_mask(mask_low, (height, width))
        grey = ops.rgb_to_grey(frames)
        refined = cupy.empty_like(mask_up)
        small = ops.resize_linear_nhwc(frames, WORKING_HW)
        small_blurred = ops.gaussian_blur(small, params.blur_ksize, params.blur_sigma)
        background = ops.resize_linear_nhwc(small_blurred, (height, width))
        blurred = cupy.empty_like(frames)
        full_blur = cupy.empty_like(frames)

        row = self.gpu_row
        pre = "resize_normalize 224x224 fp16"
        row(
            "preprocess",
            "bgblur",
            pre,
            size,
            batch,
            touched + pre_out.nbytes,
            lambda: resize_gpu.resize_normalize_nchw(frames, MODEL_HW, MEAN, STD, out=pre_out),
            launches=1,
        )
        row(  # the area downscale reads every pixel (README "Model input")
            "preprocess",
            "bgblur",
            "resize_normalize area 224x224 fp16",
            size,
            batch,
            frame_bytes + pre_out.nbytes,
            lambda: resize_gpu.resize_normalize_nchw(
                frames, MODEL_HW, MEAN, STD, out=pre_out, interpolation="area"
            ),
            launches=1,
        )
        row(
            "op",
            "bgblur",
            "upscale_mask nearest 256->full",
            size,
            batch,
            prob_bytes // 2 + pixel_bytes,
            lambda: ops.upscale_mask(mask_low, (height, width), out=mask_up),
        )
        row(
            "op",
            "bgblur",
            "rgb_to_grey",
            size,
            batch,
            frame_bytes + pixel_bytes,
            lambda: ops.rgb_to_grey(frames, out=grey),
        )
        row(
            "op",
            "bgblur",
            "joint_bilateral d=5 (1 ch)",
            size,
            batch,
            3 * pixel_bytes,
            lambda: ops.joint_bilateral_filter(mask_up, grey, 5, 50.0, 1.0, out=refined),
            launches=2,
        )
        row(
            "op",
            "bgblur",
            "resize_linear -> 224x224",
            size,
            batch,
            batch * downscale_rows(height, WORKING_HW[0]) * width * 3 + small_bytes,
            lambda: ops.resize_linear_nhwc(frames, WORKING_HW, out=small),
        )
        row(
            "op",
            "bgblur",
            "gaussian 15x15 at 224x224",
            size,
            batch,
            2 * small_bytes,
            lambda: gaussian_gpu.gaussian_blur(small, 15, 5.0, out=small_blurred),
            launches=3,
        )
        row(
            "op",
            "bgblur",
            "resize_linear 224x224 -> full",
            size,
            batch,
            small_bytes + frame_bytes,
            lambda: ops.resize_linear_nhwc(small_blurred, (height, width), out=background),
        )
        row(
            "op",
            "bgblur",
            "composite",
            size,
            batch,
            3 * frame_bytes + pixel_bytes,
            lambda: ops.composite(frames, background, refined, out=blurred),
        )
        row(
            "op",
            "bgblur",
            "gaussian 31x31 full size",
            size,
            batch,
            2 * frame_bytes,
            lambda: gaussian_gpu.gaussian_blur(frames, 31, 5.0, out=full_blur),
            launches=3,
        )

        chain_bytes = frame_bytes + prob_bytes + frame_bytes + pixel_bytes
        chain = "postprocess chain"

        def unfused() -> Any:  # Postprocess(fused=False)'s chain, without its final sync
            return postprocess_chain(frames, prob, params, blur_working_hw=WORKING_HW)

        fused = FusedPostprocess(WORKING_HW, "nearest")
        row(
            "postprocess",
            "bgblur-unfused",
            chain,
            size,
            batch,
            chain_bytes,
            unfused,
            note="per-op GPU kernels (+ CuPy elementwise for the probability)",
        )
        row(
            "postprocess",
            "bgblur-fused",
            chain,
            size,
            batch,
            chain_bytes,
            lambda: fused(frames, prob, params),
            launches=4,
        )

        if self.torch is not None:
            torch = self.torch
            frames_t = torch.from_dlpack(frames)
            prob_t = torch.from_dlpack(prob)
            grey_t = torch.from_dlpack(grey).unsqueeze(1).float()
            mask_t = torch.from_dlpack(mask_up).unsqueeze(1).float()
            x_t = frames_t.permute(0, 3, 1, 2).float()
            row(
                "preprocess",
                "torch-naive",
                pre,
                size,
                batch,
                touched + pre_out.nbytes,
                lambda: torch_preprocess(torch, frames_t),
            )
            row(
                "op",
                "torch-naive",
                "joint_bilateral d=5 (1 ch)",
                size,
                batch,
                3 * pixel_bytes,
                lambda: torch_joint_bilateral(torch, mask_t, grey_t, 5, 50.0, 1.0),
                note="float32 in, shift-and-add",
            )
            row(
                "op",
                "torch-naive",
                "gaussian 31x31 full size",
                size,
                batch,
                2 * frame_bytes,
                lambda: torch_gaussian(torch, x_t, 31, 5.0),
                note="float32 NCHW in/out",
            )
            row(
                "postprocess",
                "torch-naive",
                chain,
                size,
                batch,
                chain_bytes,
                lambda: torch_postprocess(torch, frames_t, prob_t, params),
            )
            del frames_t, prob_t, grey_t, mask_t, x_t

        if self.cvcuda is not None:
            self.run_cvcuda(
                size,
                batch,
                frames,
                mask_up,
                grey,
                small,
                background,
                refined,
                touched + pre_out.nbytes,
                frame_bytes,
                pixel_bytes,
                small_bytes,
                chain_bytes,
            )
        if self.dali:
            self.run_dali(size, batch, frames, touched + pre_out.nbytes)
        self.cupy.get_default_memory_pool().free_all_blocks()
        if self.torch is not None:
            self.torch.cuda.empty_cache()

    # ---- CV-CUDA (only where importable) ------------------------------------------------------

    def run_cvcuda(
        self,
        size,
        batch,
        frames,
        mask_up,
        grey,
        small,
        background,
        refined,
        pre_bytes,
        frame_bytes,
        pixel_bytes,
        small_bytes,
        chain_bytes,
    ) -> None:
        cvcuda, torch = self.cvcuda, self.torch
        if torch is None:
            self.skipped.append("CV-CUDA rows: need CUDA torch for the tensors")
            return
        height, width = SIZES[size]

        def wall(fn):  # CV-CUDA runs on its own stream: time with a device-wide sync
            def timed():
                fn()
                torch.cuda.synchronize()

            return time_cpu(timed, max(5, self.args.reps // 2))

        def cv_row(group, op, nbytes, fn):
            try:
                self.add(
                    group,
                    "cvcuda",
                    op,
                    size,
                    batch,
                    nbytes,
                    wall(fn),
                    note="wall time incl. device sync",
                )
            except Exception as exc:
                self.skipped.append(f"cvcuda {op} {size} b{batch}: {exc.__class__.__name__}: {exc}")

        t = torch.from_dlpack
        f_nhwc = cvcuda.as_tensor(t(frames), "NHWC")
        m_nhwc = cvcuda.as_tensor(t(mask_up).unsqueeze(-1), "NHWC")
        g_nhwc = cvcuda.as_tensor(t(grey).unsqueeze(-1), "NHWC")
        s_nhwc = cvcuda.as_tensor(t(small), "NHWC")
        b_nhwc = cvcuda.as_tensor(t(background), "NHWC")
        r_nhwc = cvcuda.as_tensor(t(refined).unsqueeze(-1), "NHWC")
        mean = cvcuda.as_tensor(torch.tensor(MEAN, device="cuda").view(1, 1, 1, 3), "NHWC")
        std = cvcuda.as_tensor(torch.tensor(STD, device="cuda").view(1, 1, 1, 3), "NHWC")

        def pre():
            x = cvcuda.resize(f_nhwc, (batch, *MODEL_HW, 3), cvcuda.Interp.LINEAR)
            x = cvcuda.convertto(x, np.float32, scale=1 / 255)
            x = cvcuda.normalize(
                x, base=mean, scale=std, flags=cvcuda.NormalizeFlags.SCALE_IS_STDDEV
            )
            return cvcuda.reformat(x, "NCHW")

        def chain():
            x = cvcuda.resize(f_nhwc, (batch, *WORKING_HW, 3), cvcuda.Interp.LINEAR)
            x = cvcuda.gaussian(x, kernel_size=(15, 15), sigma=(5, 5))
            bg = cvcuda.resize(x, (batch, height, width, 3), cvcuda.Interp.LINEAR)
            g = cvcuda.cvtcolor(f_nhwc, cvcuda.ColorConversion.RGB2GRAY)
            m = cvcuda.joint_bilateral_filter(m_nhwc, g, diameter=5, sigma_color=50, sigma_space=1)
            return cvcuda.composite(f_nhwc, bg, m, 3)

        cv_row("preprocess", "resize+convertto+normalize+reformat", pre_bytes, pre)
        cv_row(
            "op",
            "joint_bilateral d=5 (1 ch)",
            3 * pixel_bytes,
            lambda: cvcuda.joint_bilateral_filter(
                m_nhwc, g_nhwc, diameter=5, sigma_color=50, sigma_space=1
            ),
        )
        cv_row(
            "op",
            "gaussian 15x15 at 224x224",
            2 * small_bytes,
            lambda: cvcuda.gaussian(s_nhwc, kernel_size=(15, 15), sigma=(5, 5)),
        )
        cv_row(
            "op",
            "gaussian 31x31 full size",
            2 * frame_bytes,
            lambda: cvcuda.gaussian(f_nhwc, kernel_size=(31, 31), sigma=(5, 5)),
        )
        cv_row(
            "op",
            "composite",
            3 * frame_bytes + pixel_bytes,
            lambda: cvcuda.composite(f_nhwc, b_nhwc, r_nhwc, 3),
        )
        cv_row("postprocess", "postprocess chain", chain_bytes, chain)

    def run_dali(self, size, batch, frames, pre_bytes) -> None:
        try:
            from nvidia.dali import fn, pipeline_def, types

            @pipeline_def(batch_size=batch, num_threads=4, device_id=0, prefetch_queue_depth=1)
            def pipe():
                x = fn.external_source(name="x", device="gpu", layout="HWC")
                x = fn.resize(
                    x,
                    resize_x=MODEL_HW[1],
                    resize_y=MODEL_HW[0],
                    antialias=False,
                    interp_type=types.INTERP_LINEAR,
                )
                return fn.crop_mirror_normalize(
                    x,
                    dtype=types.FLOAT16,
                    output_layout="CHW",
                    mean=[255 * m for m in MEAN],
                    std=[255 * s for s in STD],
                )

            p = pipe()
            p.build()
            torch = self.torch
            batch_list = [frames[i] for i in range(batch)]

            def run():
                p.feed_input("x", batch_list)
                p.run()
                if torch is not None:
                    torch.cuda.synchronize()

            self.add(
                "preprocess",
                "dali",
                "resize_normalize 224x224 fp16",
                size,
                batch,
                pre_bytes,
                time_cpu(run, max(5, self.args.reps // 2)),
                note="wall time incl. device sync",
            )
        except Exception as exc:
            self.skipped.append(f"dali {size} b{batch}: {exc.__class__.__name__}: {exc}")

    # ---- CPU rows ------------------------------------------------------------------------------

    def run_cpu(self, size: str) -> None:
        height, width = SIZES[size]
        frames = make_frames((height, width), 1)
        prob = make_probability(1)
        params = BlurParams()
        post = Postprocess(Device("cpu"))
        frame_bytes, pixel_bytes = height * width * 3, height * width
        bilateral = "ximgproc" if hasattr(cv2, "ximgproc") else "NumPy twin of ximgproc"
        reps = self.args.cpu_reps
        pre_bytes = downscale_rows(height, MODEL_HW[0]) * width * 3 + 3 * 224 * 224 * 2
        self.add(
            "preprocess",
            "opencv-cpu",
            "resize_normalize 224x224 fp16",
            size,
            1,
            pre_bytes,
            time_cpu(lambda: ops.resize_normalize_nchw(frames, MODEL_HW, MEAN, STD), reps),
            note=f"{cv2.getNumThreads()} threads",
        )
        self.add(
            "postprocess",
            "opencv-cpu",
            "postprocess chain",
            size,
            1,
            2 * frame_bytes + prob.nbytes + pixel_bytes,
            time_cpu(lambda: post(frames, prob, params), reps),
            note=f"{cv2.getNumThreads()} threads; bilateral: {bilateral}",
        )
        if size == "1080p":
            self.add(
                "op",
                "opencv-cpu",
                "gaussian 31x31 full size",
                size,
                1,
                2 * frame_bytes,
                time_cpu(lambda: cv2.GaussianBlur(frames[0], (31, 31), 5.0), reps),
            )


def markdown(rows: list[dict]) -> str:
    lines = [
        "| group | impl | op | size | batch | us/frame | wall us/frame | GB/s | % HBM |",
        "|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['group']} | {r['impl']} | {r['op']} | {r['size']} | {r['batch']} | "
            f"{r['us_per_frame']:.2f} | {r['wall_us_per_frame']:.1f} | {r['gb_per_s']:.1f} | "
            f"{r['hbm_pct']:.1f} |"
        )
    return "\n".join(lines)


def checks(rows: list[dict]) -> dict:
    def find(group, impl, size, batch, op=None):
        for r in rows:
            if (r["group"], r["impl"], r["size"], r["batch"]) == (group, impl, size, batch) and (
                op is None or r["op"] == op
            ):
                return r["us_per_frame"]
        return None

    out: dict[str, Any] = {}
    pre = find("preprocess", "bgblur", "1080p", 32)
    out["preprocess 1080p b32 <= 15 us/frame"] = {
        "us_per_frame": pre,
        "ok": pre is not None and pre <= 15.0,
    }
    post = find("postprocess", "bgblur-fused", "1080p", 8)
    out["postprocess fused 1080p b8 <= 120 us/frame"] = {
        "us_per_frame": post,
        "ok": post is not None and post <= 120.0,
    }
    faster = {}
    for r in rows:
        if r["impl"] != "bgblur-fused":
            continue
        key = f"{r['size']} b{r['batch']}"
        entry = {"fused": r["us_per_frame"]}
        for other in ("bgblur-unfused", "torch-naive", "cvcuda"):
            v = find("postprocess", other, r["size"], r["batch"])
            if v is not None:
                entry[other] = v
                entry[f"faster_than_{other}"] = r["us_per_frame"] < v
        faster[key] = entry
    out["fused chain vs other chains (us/frame)"] = faster
    ref = CVCUDA_REFERENCE["us_per_frame"]
    out["vs CV-CUDA reference, 1080p batch 1 (not run here)"] = {
        "resize_normalize": [
            find("preprocess", "bgblur", "1080p", 1),
            ref["resize+convertto+reformat to 224x224"],
        ],
        "joint_bilateral d=5": [
            find("op", "bgblur", "1080p", 1, "joint_bilateral d=5 (1 ch)"),
            ref["joint_bilateral_filter d=5, one channel"],
        ],
        "gaussian 31x31": [
            find("op", "bgblur", "1080p", 1, "gaussian 31x31 full size"),
            ref["gaussian 31x31"],
        ],
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1080p,720p,4k")
    parser.add_argument("--batches", default="8,32,1")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per GPU row (max)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--row-seconds",
        type=float,
        default=0.4,
        help="fewer reps for rows slower than this per call",
    )
    parser.add_argument("--cpu-reps", type=int, default=3)
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument(
        "--budget-s", type=float, default=170.0, help="skip what is left after this many seconds"
    )
    parser.add_argument("--skip", default="", help="size:batch pairs left out, e.g. 4k:32")
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/ops-<gpu>.json)"
    )
    args = parser.parse_args(argv)

    import cupy

    cv2.setNumThreads(os.cpu_count() or 1)
    start = time.perf_counter()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.runtime.getDevice())
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    out_path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"ops-{slug}.json"
    bench = Bench(args)
    skip = {tuple(s.split(":")) for s in args.skip.split(",") if s}
    sizes = [s for s in args.sizes.split(",") if s]
    batches = [int(b) for b in args.batches.split(",") if b]
    print(f"# bench/ops.py on {name}; cv2 threads {cv2.getNumThreads()}", flush=True)

    def save() -> dict:
        try:
            import torch as _torch
        except ImportError:
            _torch = None
        versions = {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "cupy": cupy.__version__,
            "opencv": cv2.__version__,
            "torch": getattr(_torch, "__version__", None),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "driver": cupy.cuda.runtime.driverGetVersion(),
        }
        result = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": name,
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "host": {"cpu_count": os.cpu_count(), "cv2_threads": cv2.getNumThreads()},
            "versions": versions,
            "hbm_peak_gb_per_s": HBM_GBS,
            "inputs": {
                "frames": "skimage astronaut resized (bilinear), rolled per frame, uint8 RGB NHWC",
                "probability": f"[B, 1, {PROB_HW[0]}, {PROB_HW[1]}] float16",
                "params": "BlurParams() defaults: d=5, sigma_color 50, sigma_space 1, Gaussian "
                "15x15 sigma 5 at 224x224, soft mask, nearest upscale",
            },
            "method": {
                "gpu": "CUDA events, median of N back-to-back calls queued behind a spin kernel, "
                "after warm-up; 'wall' = one call + stream sync (median of 3)",
                "cpu": "perf_counter, median of --cpu-reps calls, batch 1 (per-frame loop)",
                "bytes": "inputs read once + outputs written once; chains: frames + probability "
                "in, BLURRED + MASK out; bilinear downscales: the source rows they touch",
            },
            "cvcuda_reference": CVCUDA_REFERENCE,
            "skipped": bench.skipped,
            "elapsed_s": round(time.perf_counter() - start, 1),
            "rows": bench.rows,
            "checks": checks(bench.rows),
        }
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        return result

    for size in sizes:
        for batch in batches:
            if (size, str(batch)) in skip:
                bench.skipped.append(f"{size} b{batch}: --skip")
                continue
            if time.perf_counter() - start > args.budget_s:
                bench.skipped.append(f"{size} b{batch}: over --budget-s")
                continue
            print(f"## {size} batch {batch}", flush=True)
            bench.run_gpu(size, batch)
            save()
        if not args.no_cpu:
            if time.perf_counter() - start > args.budget_s:
                bench.skipped.append(f"cpu {size}: over --budget-s")
                continue
            print(f"## {size} CPU", flush=True)
            try:
                bench.run_cpu(size)
                save()
            except Exception as exc:
                bench.skipped.append(f"cpu {size}: {exc.__class__.__name__}: {exc}")

    result = save()
    print()
    print(markdown(bench.rows))
    print()
    print(json.dumps(result["checks"], indent=1))
    print("skipped:", *bench.skipped, sep="\n  ")
    print(f"wrote {out_path} ({result['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
