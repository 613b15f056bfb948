"""Triton adapter: a stream's probability (+ the frame's network input, for the motion-aware
gate) -> smoothed over time (bgblur.stages.temporal)."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.models.registry import get_model_spec
from bgblur.parameters import temporal_smoothing_from
from bgblur.serving.metrics import StageMetrics
from bgblur.serving.triton_io import (
    error_response,
    input_array,
    model_parameters,
    optional_input_array,
    output_tensor,
    request_parameters,
)
from bgblur.stages.temporal import TemporalSmoother


class TritonPythonModel:
    def initialize(self, args):
        parameters = model_parameters(args)
        self.device = Device.from_triton_args(args)
        # The network input's normalisation: the gate's thresholds are in grey levels.
        spec = get_model_spec(parameters["segmentation_model"])
        self.stage = TemporalSmoother(
            self.device,
            max_streams=int(parameters["max_streams"]),
            idle_timeout_s=float(parameters["idle_timeout_s"]),
            input_mean=spec.mean,
            input_std=spec.std,
        )
        self.metrics = StageMetrics.for_model(pb_utils, args, stage="temporal_smoothing")

    def execute(self, requests):
        # Every stream's kernels go on the stage's stream, then one host wait for them all.
        results = [self._one(request) for request in requests]
        self.stage.synchronize()
        return [
            r
            if isinstance(r, pb_utils.InferenceResponse)
            else pb_utils.InferenceResponse([output_tensor(pb_utils, "SMOOTHED_PROBABILITY", r)])
            for r in results
        ]

    def _one(self, request):
        """The request's smoothed probability (not yet synchronised), or an error response."""
        try:
            strength = temporal_smoothing_from(request_parameters(request))
            probability = input_array(pb_utils, request, "PROBABILITY", self.device)
            network_input = optional_input_array(pb_utils, request, "NETWORK_INPUT", self.device)
            flags = request.flags()
            start = bool(flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START)
            end = bool(flags & pb_utils.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END)
            began = time.perf_counter()
            smoothed = self.stage(
                request.correlation_id(),
                probability,
                start=start,
                end=end,
                strength=strength,
                network_input_n3hw=network_input,
                out_dtype=np.float16,
                synchronize=False,
            )
        except InvalidInputError as exc:
            if self.metrics is not None:
                self.metrics.rejected(exc, 0)
            return error_response(pb_utils, str(exc), invalid_arg=True)
        except Exception as exc:  # a failed request must not take the stream's others down
            if self.metrics is not None:
                self.metrics.failed(1)
            return error_response(pb_utils, f"temporal smoothing failed: {exc}")
        if self.metrics is not None:
            self.metrics.batch(int(smoothed.shape[0]), time.perf_counter() - began)
        return smoothed
