"""The whole background-blur pipeline in one process (no Triton): preprocess -> network -> post.

Used by the tests (the served result must equal this) and by the benchmarks' in-process runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bgblur.device import Device
from bgblur.models.registry import get_model_spec
from bgblur.parameters import BlurParams
from bgblur.runtimes.select import build_runtime
from bgblur.stages.nvtx import nvtx_range
from bgblur.stages.postprocess import Postprocess, PostprocessOutputs
from bgblur.stages.preprocess import Preprocess


class BackgroundBlurPipeline:
    """``__call__(frames [B, H, W, 3] uint8 RGB, params) -> (blurred, mask)`` on ``device``;
    ``outputs`` adds the foreground share.

    Args:
        model: segmentation network name (``bgblur.models.registry``).
        device: where every stage runs.
        cache_dir: weights cache.
        blur_working_hw, mask_interpolation: see ``Postprocess``.
        resize_interpolation: see ``Preprocess`` (``interpolation``).
        runtime_options: ``build_runtime`` keyword arguments (``runtime_options`` of
            ``bgblur.runtimes.select``: the runtime choice, CUDA graph sizes, torch.compile).
    """

    def __init__(
        self,
        model: str,
        device: Device | None = None,
        *,
        cache_dir: Path | None = None,
        blur_working_hw: tuple[int, int] = (224, 224),
        mask_interpolation: str = "nearest",
        resize_interpolation: str = "auto",
        runtime_options: dict[str, Any] | None = None,
    ) -> None:
        self.device = device or Device()
        self.spec = get_model_spec(model)
        self.preprocess = Preprocess(self.spec, self.device, interpolation=resize_interpolation)
        self.runtime = build_runtime(
            self.spec, self.device, cache_dir=cache_dir, **(runtime_options or {})
        )
        self.postprocess = Postprocess(
            self.device, blur_working_hw=blur_working_hw, mask_interpolation=mask_interpolation
        )

    def warm_up(self) -> None:
        """Compile and touch every stage once (the network is warmed when it is built)."""
        self.preprocess.warm_up()
        self.postprocess.warm_up()

    def __call__(
        self,
        frames_nhwc_u8: Any,
        params: BlurParams | None = None,
        background_nhwc_u8: Any = None,
        *,
        smooth_probability: Callable[[Any, Any], Any] | None = None,
    ) -> tuple[Any, Any]:
        """``[B, H, W, 3]`` uint8 frames (NumPy, or CuPy on a GPU pipeline) -> ``(blurred
        [B, H, W, 3] uint8, mask [B, H, W] uint8)`` on the pipeline's device.

        ``background_nhwc_u8``: ``[1 or B, h, w, 3]`` uint8 replacement image for
        ``params.background == "image"`` (``bgblur.stages.postprocess.check_background``).
        ``smooth_probability``: ``smooth_probability(probability, network_input)`` ->
        probability, applied to the network's ``[B, 1, h, w]`` probability before postprocess,
        with the frames' ``[B, 3, h, w]`` float16 network input (the preprocess output, same
        device; the motion-aware gate's evidence), e.g. a
        ``bgblur.stages.temporal.TemporalSmoother`` of one stream: the step
        ``background_blur_stream`` puts between segmentation and postprocess."""
        blurred, mask, _ = self.outputs(
            frames_nhwc_u8, params, background_nhwc_u8, smooth_probability=smooth_probability
        )
        return blurred, mask

    def outputs(
        self,
        frames_nhwc_u8: Any,
        params: BlurParams | None = None,
        background_nhwc_u8: Any = None,
        *,
        smooth_probability: Callable[[Any, Any], Any] | None = None,
    ) -> PostprocessOutputs:
        """As ``__call__``, with the foreground share ``[B, 1]`` float32 of each frame."""
        inputs, frames_on_device = self.preprocess.with_device_frames(frames_nhwc_u8)
        with nvtx_range("segmentation.network"):
            probability = self.runtime(inputs)
        if self.device.is_gpu:
            import cupy

            probability = cupy.from_dlpack(probability)
        if smooth_probability is not None:
            probability = smooth_probability(probability, inputs)
        return self.postprocess.outputs(
            frames_on_device, probability, params or BlurParams(), background_nhwc_u8
        )
