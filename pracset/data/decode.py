"""Decoding of encoded images into uint8 (C, H, W) pixels, shared by the in-memory and streaming paths.

One rule for both paths: a split is grayscale (C=1) only when every image is
grayscale; one colour image makes it RGB (grayscale images are replicated
into three channels, as PIL's ``convert("RGB")`` does). Images are resized
bilinearly to ``image_size`` x ``image_size`` when it is given.
"""

from __future__ import annotations

import io
import os
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from pracset.errors import DataError

#: PIL modes of single-channel images.
GRAYSCALE_MODES = ("L", "1", "I;16", "I")
#: The largest ``image_size`` (``--image-size``): every image is resized to at most this many pixels square.
MAX_IMAGE_SIZE = 4096
#: What PIL raises for an image file it cannot read. ``DecompressionBombError`` (an image whose header claims
#: more than twice ``Image.MAX_IMAGE_PIXELS``, refused before its pixels are decoded) is no OSError, and a text
#: chunk that decompresses past PIL's limit is a ValueError.
UNREADABLE = (OSError, ValueError, EOFError, SyntaxError, struct.error, Image.DecompressionBombError)


def is_colour(blob: bytes) -> bool:
    """Whether an encoded image is colour, from its header only; False for one PIL cannot open."""
    try:
        with Image.open(io.BytesIO(blob)) as image:
            return image.mode not in GRAYSCALE_MODES
    except UNREADABLE:
        return False  # reported with its cause when the image is decoded


def decode_image(blob: bytes, mode: str, image_size: int | None) -> np.ndarray:
    """One encoded image as a uint8 (H, W) or (H, W, 3) array in PIL ``mode``; raises one of :data:`UNREADABLE`
    when it cannot be read (a decompression bomb among them)."""
    with Image.open(io.BytesIO(blob)) as image:
        image = image.convert(mode)
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(image)


def to_chw(image: np.ndarray) -> np.ndarray:
    """An (H, W) or (H, W, C) image as channels-first (C, H, W)."""
    return image[None] if image.ndim == 2 else image.transpose(2, 0, 1)


def to_nchw(images: np.ndarray) -> np.ndarray:
    """A stack of (H, W) or (H, W, C) images as (N, C, H, W)."""
    return images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)


def pixels_as_uint8(array: np.ndarray) -> np.ndarray:
    """Integer pixels in 0..255 as uint8 (``datasets`` hands uint8 columns back as int64); others unchanged."""
    if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
        return array.astype(np.uint8)
    return array


def decode_images(blobs: list[bytes], image_size: int | None, what: str) -> np.ndarray:
    """Decode encoded images (in parallel threads) into one uint8 (N, C, H, W) array.

    The array is grayscale only when every image is grayscale. Without
    ``image_size`` the images must all have the same size.
    """
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        mode = "RGB" if any(pool.map(is_colour, blobs, chunksize=256)) else "L"
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            arrays = list(pool.map(lambda blob: decode_image(blob, mode, image_size), blobs, chunksize=256))
    except UNREADABLE as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{what}: cannot decode an image: {first}") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        sizes = sorted(f"{s[1]}x{s[0]}" for s in shapes)
        raise DataError(f"{what}: images differ in size ({', '.join(sizes[:4])}); pass --image-size N to resize them")
    return to_nchw(np.stack(arrays))


def match_channels(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Make a grayscale split RGB when the other split is colour (decoded per split)."""
    if train.shape[1] == 1 and test.shape[1] == 3:
        train = np.repeat(train, 3, axis=1)
    elif train.shape[1] == 3 and test.shape[1] == 1:
        test = np.repeat(test, 3, axis=1)
    return train, test


def detect_mode(reader, n: int) -> str:
    """``"RGB"`` if any of a reader's first ``n`` images is colour, else ``"L"``.

    Reads headers only, 256 images at a time, and stops at the first colour
    one (a streamed split may be too large to read whole). An ``"array"``
    reader is judged by its first row.
    """
    if reader.kind == "array":
        return "RGB" if np.asarray(reader.read_many([0])[0]).ndim == 3 else "L"
    chunk = 256
    for start in range(0, n, chunk):
        if any(is_colour(blob) for blob in reader.read_many(range(start, min(start + chunk, n)))):
            return "RGB"
    return "L"
