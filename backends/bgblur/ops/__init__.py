"""Image ops, each with a CPU twin (OpenCV/NumPy) and a GPU twin (CuPy) of the same signature.

Ops dispatch on the array type: ``numpy.ndarray`` runs on the CPU, ``cupy.ndarray`` on its GPU
(on the current CuPy stream). Batched layouts: frames ``[B, H, W, 3]`` uint8 RGB, masks
``[B, H, W]`` uint8, model tensors ``[B, C, H, W]`` float.
"""

from bgblur.ops.background import cover_resize_nhwc, halo_free_blur, solid_color_nhwc
from bgblur.ops.bilateral import joint_bilateral_filter
from bgblur.ops.color import rgb_to_grey
from bgblur.ops.composite import composite
from bgblur.ops.foreground import foreground_share
from bgblur.ops.gaussian import gaussian_blur
from bgblur.ops.mask import probability_to_mask
from bgblur.ops.resize import (
    resize_linear_nhwc,
    resize_normalize_nchw,
    resize_normalize_nchw_varshape,
    upscale_mask,
)

__all__ = [
    "composite",
    "cover_resize_nhwc",
    "foreground_share",
    "gaussian_blur",
    "halo_free_blur",
    "joint_bilateral_filter",
    "probability_to_mask",
    "resize_linear_nhwc",
    "resize_normalize_nchw",
    "resize_normalize_nchw_varshape",
    "rgb_to_grey",
    "solid_color_nhwc",
    "upscale_mask",
]
