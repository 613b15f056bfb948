"""Triton adapter: network input -> foreground probability (bgblur.runtimes)."""

import json

import triton_python_backend_utils as pb_utils

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.models.registry import get_model_spec
from bgblur.runtimes.select import build_runtime, describe_runtime, runtime_options
from bgblur.serving.metrics import StageMetrics
from bgblur.serving.profiling import write_all as write_profiles
from bgblur.serving.triton_io import PreparedRequest, execute_grouped, input_array, model_parameters
from bgblur.stages.nvtx import nvtx_range


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        self.device = Device.from_triton_args(args)
        self.spec = get_model_spec(parameters["segmentation_model"])
        max_batch_size = json.loads(args["model_config"]).get("max_batch_size")
        options = runtime_options(parameters, max_batch_size)
        self.runtime = build_runtime(self.spec, self.device, **options)
        self.runtime_name = self.runtime.name
        self.metrics = StageMetrics.for_model(pb_utils, args, stage="segmentation")
        pb_utils.Logger.log_info(
            f"segmentation: {self.spec.name} on {describe_runtime(self.runtime)} "
            f"(runtime choice {options['choice']!r}); weights: {self.spec.weights}"
        )

    def execute(self, requests):
        return execute_grouped(
            pb_utils,
            requests,
            self._prepare,
            self._run,
            output_names=["PROBABILITY"],
            metrics=self.metrics,
            stage="segmentation",  # named in GPU out-of-memory errors
        )

    def finalize(self):
        write_profiles()  # only when $BGBLUR_PROFILE_DIR asked for profiles

    def _prepare(self, request):
        inputs = input_array(pb_utils, request, "NETWORK_INPUT", self.device)
        if tuple(inputs.shape[1:]) != (3, *self.spec.input_hw):
            raise InvalidInputError(
                f"NETWORK_INPUT must be [batch, 3, {self.spec.input_hw[0]}, "
                f"{self.spec.input_hw[1]}] for {self.spec.name}, got {list(inputs.shape)}"
            )
        return PreparedRequest(key=tuple(inputs.shape[1:]), arrays=(inputs,))

    def _run(self, arrays, options):
        with nvtx_range("segmentation.network"):
            return [self.runtime(arrays[0])]
