"""Triton adapter: frames + probability (+ optional background image) -> blurred frames, mask and
foreground share (bgblur.stages.postprocess)."""

import triton_python_backend_utils as pb_utils

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.parameters import BlurParams
from bgblur.serving.metrics import StageMetrics
from bgblur.serving.profiling import write_all as write_profiles
from bgblur.serving.triton_io import (
    PreparedRequest,
    background_input,
    blur_params_from_request,
    execute_grouped,
    frames_input,
    input_array,
    model_parameters,
    parse_hw,
)
from bgblur.stages.postprocess import Postprocess


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        self.device = Device.from_triton_args(args)
        self.defaults = BlurParams()
        self.stage = Postprocess(
            self.device,
            blur_working_hw=parse_hw(parameters["blur_working_size"]),
            mask_interpolation=parameters["mask_interpolation"],
        )
        self.stage.warm_up()  # kernels compiled at load, not in the first request
        self.metrics = StageMetrics.for_model(pb_utils, args, stage="postprocess")

    def execute(self, requests):
        return execute_grouped(
            pb_utils,
            requests,
            self._prepare,
            self._run,
            output_names=["BLURRED", "MASK", "FOREGROUND_SHARE"],
            metrics=self.metrics,
            stage="postprocess",  # named in GPU out-of-memory errors
        )

    def finalize(self):
        write_profiles()  # only when $BGBLUR_PROFILE_DIR asked for profiles

    def _prepare(self, request):
        frames = frames_input(pb_utils, request, self.device)
        probability = input_array(pb_utils, request, "PROBABILITY", self.device)
        if probability.shape[0] != frames.shape[0]:
            raise InvalidInputError(
                f"PROBABILITY batch {probability.shape[0]} != FRAMES batch {frames.shape[0]}"
            )
        params = blur_params_from_request(request, self.defaults)
        background = background_input(pb_utils, request, self.device, params, frames.shape[0])
        arrays = (frames, probability) if background is None else (frames, probability, background)
        background_key = None if background is None else tuple(background.shape[1:])
        key = (tuple(frames.shape[1:]), tuple(probability.shape[1:]), params, background_key)
        return PreparedRequest(key=key, arrays=arrays, options=params)

    def _run(self, arrays, params):
        background = arrays[2] if len(arrays) > 2 else None
        return self.stage.outputs(arrays[0], arrays[1], params, background)
