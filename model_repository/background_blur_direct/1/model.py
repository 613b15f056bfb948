"""Triton adapter: frames (+ optional background image) -> blurred frames, mask and foreground
share in one process (bgblur.pipeline)."""

import json

import triton_python_backend_utils as pb_utils

from bgblur.device import Device
from bgblur.parameters import BlurParams
from bgblur.pipeline import BackgroundBlurPipeline
from bgblur.runtimes.select import describe_runtime, runtime_options
from bgblur.serving.metrics import StageMetrics
from bgblur.serving.profiling import write_all as write_profiles
from bgblur.serving.triton_io import (
    PreparedRequest,
    background_input,
    blur_params_from_request,
    execute_grouped,
    frames_input,
    model_parameters,
    parse_hw,
)


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        self.device = Device.from_triton_args(args)
        self.defaults = BlurParams()
        max_batch_size = json.loads(args["model_config"]).get("max_batch_size")
        self.pipeline = BackgroundBlurPipeline(
            parameters["segmentation_model"],
            self.device,
            blur_working_hw=parse_hw(parameters["blur_working_size"]),
            mask_interpolation=parameters["mask_interpolation"],
            resize_interpolation=parameters["resize_interpolation"],
            runtime_options=runtime_options(parameters, max_batch_size),
        )
        self.pipeline.warm_up()  # kernels compiled at load, not in the first request
        self.metrics = StageMetrics.for_model(pb_utils, args, stage="direct")
        pb_utils.Logger.log_info(
            f"background_blur_direct: {self.pipeline.spec.name} on "
            f"{describe_runtime(self.pipeline.runtime)}"
        )

    def execute(self, requests):
        return execute_grouped(
            pb_utils,
            requests,
            self._prepare,
            self._run,
            output_names=["BLURRED", "MASK", "FOREGROUND_SHARE"],
            metrics=self.metrics,
            stage="background_blur_direct",  # named in GPU out-of-memory errors
        )

    def finalize(self):
        write_profiles()  # only when $BGBLUR_PROFILE_DIR asked for profiles

    def _prepare(self, request):
        frames = frames_input(pb_utils, request, self.device)
        params = blur_params_from_request(request, self.defaults)
        background = background_input(pb_utils, request, self.device, params, frames.shape[0])
        arrays = (frames,) if background is None else (frames, background)
        background_key = None if background is None else tuple(background.shape[1:])
        return PreparedRequest(
            key=(tuple(frames.shape[1:]), params, background_key), arrays=arrays, options=params
        )

    def _run(self, arrays, params):
        background = arrays[1] if len(arrays) > 1 else None
        return self.pipeline.outputs(arrays[0], params, background)
