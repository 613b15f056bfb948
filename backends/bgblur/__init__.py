"""bgblur: GPU video background blur served by NVIDIA Triton Inference Server.

The library behind the Triton models in ``model_repository/``: image ops with a CPU (OpenCV/NumPy)
and a GPU (CuPy) implementation of the same signature (``bgblur.ops``), the pipeline stages built
from them (``bgblur.stages``), segmentation networks and runtimes (``bgblur.models``,
``bgblur.runtimes``), the glue the Triton adapters share (``bgblur.serving``) and a launcher for
the embedded Triton server (``bgblur.server.launcher``). Everything imports and runs without Triton.
"""

__version__ = "0.1.0"
