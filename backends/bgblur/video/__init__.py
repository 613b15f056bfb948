"""Server-side video: compressed stream in, blurred compressed stream out (no Triton here).

``transcode`` (PyAV demux/decode or NVDEC, the blur in batches, libx264 into fragmented MP4,
audio copied) is what the decoupled ``background_blur_video`` model runs per request.
"""

from bgblur.video.transcode import (
    SUPPORTED_VIDEO_CODECS,
    EncodedChunk,
    VideoOptions,
    transcode,
)

__all__ = ["SUPPORTED_VIDEO_CODECS", "EncodedChunk", "VideoOptions", "transcode"]
