"""Postprocess: probability -> refined full-size mask -> background -> composite."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from bgblur.device import Device
from bgblur.errors import InvalidInputError
from bgblur.ops import (
    composite,
    cover_resize_nhwc,
    foreground_share,
    gaussian_blur,
    halo_free_blur,
    joint_bilateral_filter,
    probability_to_mask,
    resize_linear_nhwc,
    rgb_to_grey,
    solid_color_nhwc,
    upscale_mask,
)
from bgblur.ops.dispatch import array_module
from bgblur.parameters import BlurParams, validate_frames_shape
from bgblur.stages.nvtx import nvtx_range
from bgblur.stages.stream import StageStream

# Name of the replacement-image tensor (the models' optional BACKGROUND input).
BACKGROUND_TENSOR = "BACKGROUND"


class PostprocessOutputs(NamedTuple):
    """The postprocess's outputs, on its device.

    Attributes:
        blurred: ``[B, H, W, 3]`` uint8 composite (BLURRED).
        mask: ``[B, H, W]`` uint8 final mask (MASK).
        foreground_share: ``[B, 1]`` float32 ``mean(mask) / 255`` (FOREGROUND_SHARE).
    """

    blurred: Any
    mask: Any
    foreground_share: Any


def check_background(params: BlurParams, background_nhwc_u8: Any, batch: int) -> None:
    """Check a replacement image against the parameters and the frames' batch.

    ``background="image"`` needs one: ``[1 or batch, h, w, 3]`` uint8 within the frame limits
    (one image is used for every frame); any other ``background`` takes none.

    Raises:
        InvalidInputError: naming the parameter or the BACKGROUND tensor.
    """
    if params.background != "image":
        if background_nhwc_u8 is not None:
            raise InvalidInputError(
                f"{BACKGROUND_TENSOR} was sent but parameter 'background' is "
                f"{params.background!r}: send background=image with it, or leave it out"
            )
        return
    if background_nhwc_u8 is None:
        raise InvalidInputError(
            f"parameter background=image needs the {BACKGROUND_TENSOR} input tensor "
            "(uint8 [1 or batch, height, width, 3])"
        )
    validate_frames_shape(
        tuple(background_nhwc_u8.shape), np.dtype(background_nhwc_u8.dtype).name, BACKGROUND_TENSOR
    )
    if background_nhwc_u8.shape[0] not in (1, batch):
        raise InvalidInputError(
            f"{BACKGROUND_TENSOR} batch {background_nhwc_u8.shape[0]} must be 1 (one image for "
            f"every frame) or the FRAMES batch {batch}"
        )


def fitted_background(
    frames_nhwc_u8: Any, params: BlurParams, background_nhwc_u8: Any = None
) -> Any:
    """The replacement background for ``background`` ``"color"`` or ``"image"``, at the size
    the composite samples it from (bilinear, ``resize_linear_nhwc`` to the frame size):
    ``[1, 1, 1, 3]`` of the colour, or the image cover-fitted to the frame,
    ``[1 or B, H, W, 3]`` (bilinear at scale 1 is the identity). Batch 1 is broadcast to
    ``B`` (a view); ``background="blur"`` gives None. Same device as the frames."""
    batch, height, width, _ = frames_nhwc_u8.shape
    if params.background == "blur":
        return None
    if params.background == "color":
        small = solid_color_nhwc(params.background_color, frames_nhwc_u8)
    else:
        check_background(params, background_nhwc_u8, batch)
        image = background_nhwc_u8
        if image.shape[0] == batch and image.strides[0] == 0:
            image = image[:1]  # a broadcast view: one image to fit
        small = cover_resize_nhwc(image, (height, width))
    return _broadcast_batch(small, batch)


def _broadcast_batch(images: Any, batch: int) -> Any:
    if images.shape[0] == batch:
        return images
    return array_module(images).broadcast_to(images, (batch, *images.shape[1:]))


def postprocess_chain(
    frames_nhwc_u8: Any,
    probability_n1hw: Any,
    params: BlurParams,
    *,
    blur_working_hw: tuple[int, int] = (224, 224),
    mask_interpolation: str = "nearest",
    background_nhwc_u8: Any = None,
    out: Any = None,
    mask_out: Any = None,
) -> tuple[Any, Any]:
    """The postprocess as a chain of ops, on the arrays' device (NumPy: OpenCV; CuPy: the GPU
    twins on the current stream, no host synchronisation).

    mask = ``probability_to_mask`` (x 255, or thresholded) -> ``upscale_mask`` to the frame
    size -> ``joint_bilateral_filter`` guided by ``rgb_to_grey(frame)`` (skipped for a diameter
    0 or 1); background (``params.background``):

    * ``"blur"``: ``resize_linear_nhwc`` to ``blur_working_hw`` -> ``halo_free_blur`` (with
      ``halo_free``) or ``gaussian_blur`` (without: CV-CUDA's sample) -> ``resize_linear_nhwc``
      back;
    * ``"color"``: a 1x1 image of ``background_color`` -> ``resize_linear_nhwc`` (the colour);
    * ``"image"``: ``background_nhwc_u8`` -> ``cover_resize_nhwc`` to the frame size;

    result = ``composite(frame, background, mask)``.

    Args:
        frames_nhwc_u8: ``[B, H, W, 3]`` uint8 RGB frames.
        probability_n1hw: ``[B, 1, h, w]`` float foreground probability, same device.
        params: blur and refinement parameters (``BlurParams`` fields).
        blur_working_hw: ``(h, w)`` at which the background is blurred.
        mask_interpolation: ``"nearest"`` or ``"linear"`` upscale of the mask.
        background_nhwc_u8: ``[1 or B, h, w, 3]`` uint8 replacement image, same device
            (``background="image"`` only; ``check_background``).
        out, mask_out: optional ``[B, H, W, 3]`` / ``[B, H, W]`` uint8 arrays to write into.

    Returns:
        ``(blurred [B, H, W, 3] uint8, mask [B, H, W] uint8)`` on the input's device.
    """
    frame_hw = tuple(frames_nhwc_u8.shape[1:3])
    refine = params.bilateral_diameter > 1
    with nvtx_range("postprocess.mask"):
        mask_low = probability_to_mask(
            probability_n1hw, soft=params.soft_mask, threshold=params.mask_threshold
        )
        mask = upscale_mask(
            mask_low, frame_hw, interpolation=mask_interpolation, out=None if refine else mask_out
        )
    if refine:
        with nvtx_range("postprocess.bilateral"):
            mask = joint_bilateral_filter(
                mask,
                rgb_to_grey(frames_nhwc_u8),
                params.bilateral_diameter,
                params.bilateral_sigma_color,
                params.bilateral_sigma_space,
                out=mask_out,
            )
    with nvtx_range("postprocess.background_blur"):
        replacement = fitted_background(frames_nhwc_u8, params, background_nhwc_u8)
        if replacement is None:
            small = resize_linear_nhwc(frames_nhwc_u8, blur_working_hw)
            if params.halo_free:
                small_blurred = halo_free_blur(
                    small, probability_n1hw, params.blur_ksize, params.blur_sigma
                )
            else:
                small_blurred = gaussian_blur(small, params.blur_ksize, params.blur_sigma)
            background = resize_linear_nhwc(small_blurred, frame_hw)
        elif tuple(replacement.shape[1:3]) == frame_hw:
            background = replacement
        else:
            background = _broadcast_batch(
                resize_linear_nhwc(replacement[:1], frame_hw), frames_nhwc_u8.shape[0]
            )
    with nvtx_range("postprocess.composite"):
        return composite(frames_nhwc_u8, background, mask, out=out), mask


class Postprocess:
    """Frames + foreground probability -> background-blurred frames and the refined mask.

    Steps (CV-CUDA's segmentation sample), as ``postprocess_chain``: mask = probability x 255
    (or thresholded); upscale to the frame size (``mask_interpolation``); joint bilateral filter
    guided by the grey frame; background = frame resized to ``blur_working_hw``, blurred
    (halo-free by default, or Gaussian-blurred as a whole), resized back (bilinear) -- or a
    colour, or a replacement image; output = composite(frame, background, mask).

    On the GPU the whole chain runs by default as
    ``bgblur.stages.postprocess_fused.FusedPostprocess`` (four or five launches, bit-identical to
    ``postprocess_chain``); ``fused=False`` runs ``postprocess_chain``.

    Args:
        device: CPU (OpenCV) or GPU (CuPy kernels on this stage's own stream).
        blur_working_hw: ``(h, w)`` at which the background is blurred (CV-CUDA: 224x224).
        mask_interpolation: ``"nearest"`` (CV-CUDA) or ``"linear"``.
        fused: on the GPU, run the fused kernels (default) or the per-op chain; ignored on the
            CPU.
    """

    def __init__(
        self,
        device: Device,
        *,
        blur_working_hw: tuple[int, int] = (224, 224),
        mask_interpolation: str = "nearest",
        fused: bool = True,
    ) -> None:
        if mask_interpolation not in ("nearest", "linear"):
            raise ValueError(
                f"mask_interpolation must be nearest or linear, got {mask_interpolation!r}"
            )
        if min(blur_working_hw) < 1:
            raise ValueError(f"blur_working_hw must be positive, got {blur_working_hw}")
        self.device = device
        self.blur_working_hw = blur_working_hw
        self.mask_interpolation = mask_interpolation
        self.stream = StageStream(device)
        self.fused = None
        if device.is_gpu and fused:
            from bgblur.stages.postprocess_fused import FusedPostprocess

            self.fused = FusedPostprocess(blur_working_hw, mask_interpolation)

    def warm_up(self) -> None:
        """Run one tiny frame through the whole chain once (at model load), so that no request
        pays for first use: on the GPU the kernels' NVRTC compilation (or CuPy's disk cache)."""
        frames = np.zeros((1, 32, 32, 3), np.uint8)
        probability = np.zeros((1, 1, 16, 16), np.float16)
        self(frames, probability, BlurParams())

    def __call__(
        self,
        frames_nhwc_u8: Any,
        probability_n1hw: Any,
        params: BlurParams,
        background_nhwc_u8: Any = None,
    ) -> tuple[Any, Any]:
        """Returns ``(blurred [B, H, W, 3] uint8, mask [B, H, W] uint8)`` on this device.

        Args:
            frames_nhwc_u8: ``[B, H, W, 3]`` uint8 RGB frames.
            probability_n1hw: ``[B, 1, h, w]`` float foreground probability.
            params: blur and refinement parameters.
            background_nhwc_u8: ``[1 or B, h, w, 3]`` uint8 replacement image
                (``background="image"``; ``check_background``).
        """
        blurred, mask, _ = self._run(
            frames_nhwc_u8, probability_n1hw, params, background_nhwc_u8, share=False
        )
        return blurred, mask

    def outputs(
        self,
        frames_nhwc_u8: Any,
        probability_n1hw: Any,
        params: BlurParams,
        background_nhwc_u8: Any = None,
    ) -> PostprocessOutputs:
        """As ``__call__``, with the foreground share of each frame (``PostprocessOutputs``)."""
        return self._run(frames_nhwc_u8, probability_n1hw, params, background_nhwc_u8, share=True)

    def _run(
        self,
        frames_nhwc_u8: Any,
        probability_n1hw: Any,
        params: BlurParams,
        background_nhwc_u8: Any,
        *,
        share: bool,
    ) -> PostprocessOutputs:
        check_background(params, background_nhwc_u8, int(frames_nhwc_u8.shape[0]))
        if frames_nhwc_u8.shape[0] != probability_n1hw.shape[0]:
            raise ValueError(
                f"frames and probability batch sizes differ: {frames_nhwc_u8.shape[0]} vs "
                f"{probability_n1hw.shape[0]}"
            )
        with self.stream.activate():
            frames = self.stream.to_device(frames_nhwc_u8)
            probability = self.stream.to_device(probability_n1hw)
            background = background_nhwc_u8
            if background is not None:
                if background.shape[0] > 1 and background.strides[0] == 0:
                    background = background[:1]  # one image broadcast: upload it once
                background = self.stream.to_device(background)
            if self.fused is not None:
                with nvtx_range("postprocess.fused"):
                    blurred, mask = self.fused(
                        frames, probability, params, background_nhwc_u8=background
                    )
            else:
                blurred, mask = postprocess_chain(
                    frames,
                    probability,
                    params,
                    blur_working_hw=self.blur_working_hw,
                    mask_interpolation=self.mask_interpolation,
                    background_nhwc_u8=background,
                )
            share_n1 = foreground_share(mask) if share else None
        self.stream.synchronize()
        return PostprocessOutputs(blurred, mask, share_n1)
