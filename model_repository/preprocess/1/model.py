"""Triton adapter: frames -> network input + the frames on this instance's device, handed on to
postprocess (bgblur.stages.preprocess.Preprocess)."""

import triton_python_backend_utils as pb_utils

from bgblur.device import Device
from bgblur.models.registry import get_model_spec
from bgblur.parameters import BlurParams
from bgblur.serving.metrics import StageMetrics
from bgblur.serving.profiling import write_all as write_profiles
from bgblur.serving.triton_io import (
    PerRequest,
    PreparedRequest,
    blur_params_from_request,
    execute_grouped,
    frames_input,
    model_parameters,
)
from bgblur.stages.preprocess import Preprocess


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        self.device = Device.from_triton_args(args)
        self.stage = Preprocess(
            get_model_spec(parameters["segmentation_model"]),
            self.device,
            interpolation=parameters.get("resize_interpolation", "auto"),
        )
        self.stage.warm_up()  # kernels compiled at load, not in the first request
        self.metrics = StageMetrics.for_model(pb_utils, args, stage="preprocess")

    def execute(self, requests):
        return execute_grouped(
            pb_utils,
            requests,
            self._prepare,
            self._run,
            output_names=["NETWORK_INPUT", "FRAMES_ON_DEVICE"],
            metrics=self.metrics,
            stack=False,  # frames of any sizes run together: one launch, no concatenation
            stage="preprocess",  # named in GPU out-of-memory errors
        )

    def finalize(self):
        write_profiles()  # only when $BGBLUR_PROFILE_DIR asked for profiles

    def _prepare(self, request):
        frames = frames_input(pb_utils, request, self.device)
        # Reject bad request parameters here, before any work is spent on the request.
        blur_params_from_request(request, BlurParams())
        return PreparedRequest(key=None, arrays=(frames,))

    def _run(self, columns, options):
        network_input, frames = self.stage.with_device_frames_varshape(columns[0])
        return [network_input, PerRequest(frames)]
