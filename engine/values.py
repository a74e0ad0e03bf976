"""Image files and frames: PNG/JPEG/WebP bytes to arrays and back, under one pixel limit.

The codecs (`engine.codecs`), the codec nodes and the CLI decode and encode images here,
so the same limits (pixel count, decompression bombs, formats) hold everywhere.
"""

import io

import numpy as np

from capgraph.engine.errors import InputError

MAX_PIXELS = 4096 * 4096
"""Largest image accepted by default (16.7 MP): bigger headers are refused before decoding."""


def decode_image(
    data: bytes, field: str = "image", max_pixels: int = MAX_PIXELS, *, labels: bool = False
) -> np.ndarray:
    """PNG/JPEG/WebP bytes -> uint8 RGB array, refusing oversized headers before decoding.

    With `labels=True` a single-channel or palette file keeps its values (8- or 16-bit class
    ids, int32) and a colour one gives its first channel."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InputError(field, "empty image data")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(
                    field, f"image is {width}x{height} pixels, over the limit of {max_pixels:,} pixels", 413
                )
            if img.format not in ("PNG", "JPEG", "WEBP", "BMP"):
                raise InputError(field, f"unsupported image format {img.format}; send PNG, JPEG or WebP", 415)
            if labels:
                ids = np.asarray(img) if img.mode in ("L", "P", "I", "I;16") else np.asarray(img.convert("RGB"))[..., 0]
                return ids.astype(np.int32)
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except InputError:
        raise
    except Image.DecompressionBombError:  # Pillow will not even open a header over twice its MAX_IMAGE_PIXELS
        raise InputError(
            field,
            f"the image header claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
            f"bomb?), over the limit of {max_pixels:,} pixels",
            413,
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(field, f"not a decodable image ({type(exc).__name__}: {str(exc)[:80]})", 400) from None


def to_uint8(values: np.ndarray) -> np.ndarray:
    """A float map in [0, 1] -> uint8 0..255, rounded."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def gray_to_rgb(values: np.ndarray) -> np.ndarray:
    """A float map in [0, 1] as a grey uint8 RGB image (what ControlNet control images are)."""
    return np.repeat(to_uint8(values)[..., None], 3, axis=2)


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """An IMAGE (uint8 RGB) or a single-channel float map in [0, 1] -> PNG, JPEG or WebP bytes."""
    from PIL import Image

    if array.dtype != np.uint8:
        array = to_uint8(array)
    buf = io.BytesIO()
    img = Image.fromarray(array)
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        img.convert("RGB").save(buf, format="WEBP", quality=quality, method=0)  # method 0: the fastest encoder
    else:
        img.save(buf, format="PNG", compress_level=1)  # speed over a few % of size: frames are short-lived
    return buf.getvalue()
