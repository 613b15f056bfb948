"""Triton adapter (decoupled): video file bytes -> streamed blurred MP4 (bgblur.video.serving)."""

import triton_python_backend_utils as pb_utils

from bgblur.device import Device
from bgblur.serving.triton_io import model_parameters
from bgblur.video.serving import VideoModel, VideoModelSettings


class TritonPythonModel:
    def initialize(self, args):
        settings = VideoModelSettings.from_parameters(model_parameters(args))
        self.model = VideoModel(pb_utils, Device.from_triton_args(args), settings)

    def execute(self, requests):
        return self.model.execute(requests)

    def finalize(self):
        self.model.finalize()
