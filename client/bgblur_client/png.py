"""PNG files without their embedded ICC colour profile, for decoding with OpenCV.

OpenCV applies no colour profile: an ``iCCP`` chunk changes nothing in the pixels it decodes.
libpng, which decodes PNGs for OpenCV, does check the profile, and prints ``libpng warning:
iCCP: known incorrect sRGB profile`` on stderr for the faulty sRGB profile that many image
editors (and scikit-image's sample photos) embed: a line on every read the user can do nothing
about. Dropping the chunk before decoding gives the same pixels without it.
"""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def without_icc_profile(data: bytes) -> bytes:
    """``data`` without its ``iCCP`` chunk when it is a PNG file; anything else as it is.

    A PNG is the 8-byte signature and chunks (4-byte big-endian length, 4-byte type, data,
    4-byte CRC of type and data; each chunk's CRC is its own, so dropping one leaves the others
    valid). ``iCCP`` must come before the first ``IDAT``: the image data after it is kept as
    one piece, unread. A truncated or malformed file is returned with its bytes in order, for
    the decoder to report.
    """
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept = [data[: len(PNG_SIGNATURE)]]
    at = len(PNG_SIGNATURE)
    dropped = False
    while at + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, at)
        kind = data[at + 4 : at + 8]
        if kind == b"IDAT":
            break
        end = at + 12 + length
        if kind == b"iCCP":
            dropped = True
        else:
            kept.append(data[at:end])
        at = end
    if not dropped:
        return data
    kept.append(data[at:])
    return b"".join(kept)
