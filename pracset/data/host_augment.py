"""Augmentation of uint8 image batches on the host, in the streaming loader's worker processes.

Every draw is counter-based: a SplitMix64 hash of ``(seed, epoch, example
id, ...)``, so an example's augmentation depends on nothing else (not the
batching, the worker or the rank) and a run can be repeated exactly.

* :func:`augment`: random crop with zero padding and horizontal flip (the
  in-memory loader's CIFAR augmentation), optionally after
* :func:`resized_crops`: ImageNet's random-resized crop
  (torchvision's ``RandomResizedCrop``), resized back to the image size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _hash64(*parts: np.ndarray | int) -> np.ndarray:
    """SplitMix64 of a tuple of unsigned integers (element-wise over arrays): a counter-based random draw."""
    with np.errstate(over="ignore"):
        out = np.zeros((), dtype=np.uint64)
        for part in parts:
            x = out ^ np.asarray(part).astype(np.uint64)
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            out = x ^ (x >> np.uint64(31))
    return out


#: torchvision's RandomResizedCrop defaults: the crop's share of the image's area, and its width / height.
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3 / 4, 4 / 3)
_RESIZED_CROP_ATTEMPTS = 10
_RESIZED_CROP_STREAM = 0x52524352  # a hash part of their own: these draws are independent of the crop and flip's


def _uniform(draw: np.ndarray) -> np.ndarray:
    """Floats uniform in [0, 1) from the top 53 bits of uint64 draws."""
    return (draw >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def resized_crop_boxes(height: int, width: int, ids: np.ndarray, *, seed: int, epoch: int,
                       scale: tuple[float, float] = RESIZED_CROP_SCALE,
                       ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> np.ndarray:
    """int64 ``(B, 4)`` crop boxes ``(top, left, height, width)`` in a ``height`` x ``width`` image, one per id.

    torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts draw an
    area share uniform in ``scale`` and an aspect ratio (width / height)
    log-uniform in ``ratio``; the first crop that fits is placed uniformly at
    random; when none fits, the central crop as large as ``ratio`` allows.
    Every draw of example ``ids[j]`` depends on ``(seed, epoch, ids[j])`` only.
    """
    ids = np.asarray(ids, dtype=np.int64)
    attempt = np.arange(_RESIZED_CROP_ATTEMPTS, dtype=np.uint64)[:, None]
    area_share = _uniform(_hash64(seed, epoch, ids, _RESIZED_CROP_STREAM, attempt, 0))  # (attempts, B)
    log_ratio = _uniform(_hash64(seed, epoch, ids, _RESIZED_CROP_STREAM, attempt, 1))
    area = height * width * (scale[0] + (scale[1] - scale[0]) * area_share)
    low, high = np.log(ratio[0]), np.log(ratio[1])
    aspect = np.exp(low + (high - low) * log_ratio)
    crop_w = np.rint(np.sqrt(area * aspect)).astype(np.int64)  # rint rounds half to even, as Python's round()
    crop_h = np.rint(np.sqrt(area / aspect)).astype(np.int64)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    found, first, column = fits.any(0), fits.argmax(0), np.arange(len(ids))
    shape_ratio = width / height  # the fallback: the whole image, cut to the nearest ratio allowed
    fallback_w = width if shape_ratio <= max(ratio) else int(round(height * max(ratio)))
    fallback_h = height if shape_ratio >= min(ratio) else int(round(width / min(ratio)))
    crop_h = np.where(found, crop_h[first, column], fallback_h)
    crop_w = np.where(found, crop_w[first, column], fallback_w)
    place = _hash64(seed, epoch, ids, _RESIZED_CROP_STREAM, _RESIZED_CROP_ATTEMPTS, 2)
    top = (place % (height - crop_h + 1).astype(np.uint64)).astype(np.int64)
    left = ((place >> np.uint64(32)) % (width - crop_w + 1).astype(np.uint64)).astype(np.int64)
    top = np.where(found, top, (height - crop_h) // 2)
    left = np.where(found, left, (width - crop_w) // 2)
    return np.stack([top, left, crop_h, crop_w], axis=1)


def resized_crops(images: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int,
                  scale: tuple[float, float] = RESIZED_CROP_SCALE,
                  ratio: tuple[float, float] = RESIZED_CROP_RATIO) -> np.ndarray:
    """ImageNet's random-resized crop of uint8 (B, C, H, W) images, each crop resized back to H x W.

    The boxes are :func:`resized_crop_boxes`'s; each crop is cut out, then
    resized with PIL's bilinear filter (antialiased when it shrinks), channel
    by channel: torchvision's PIL path. A box that is the whole image returns
    it unchanged.
    """
    if not len(images):
        return images
    _, channels, height, width = images.shape
    boxes = resized_crop_boxes(height, width, ids, seed=seed, epoch=epoch, scale=scale, ratio=ratio)
    out = np.empty_like(images)
    for j, (top, left, crop_h, crop_w) in enumerate(boxes.tolist()):
        for c in range(channels):
            crop = np.ascontiguousarray(images[j, c, top:top + crop_h, left:left + crop_w])
            out[j, c] = np.asarray(Image.fromarray(crop).resize((width, height), Image.BILINEAR))
    return out


def augment(images: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, crop_padding: int, flip: bool,
            random_resized_crop: bool = False) -> np.ndarray:
    """Random crop with zero padding and horizontal flip of uint8 (B, C, H, W) images, on the host.

    With ``random_resized_crop`` the images are first cropped and resized as
    :func:`resized_crops` does (the loader then uses no padded crop).
    Example ``ids[j]``'s crop and flip depend on ``(seed, epoch, ids[j])`` only.
    """
    if not len(images) or (not crop_padding and not flip and not random_resized_crop):
        return images
    if random_resized_crop:
        images = resized_crops(images, ids, seed=seed, epoch=epoch)
    draw = _hash64(seed, epoch, ids.astype(np.int64))
    out = images
    if crop_padding:
        p = crop_padding
        b, c, h, w = images.shape
        padded = np.zeros((b, c, h + 2 * p, w + 2 * p), dtype=images.dtype)
        padded[:, :, p:p + h, p:p + w] = images
        rows = (draw % np.uint64(2 * p + 1)).astype(np.int64)
        cols = ((draw >> np.uint64(16)) % np.uint64(2 * p + 1)).astype(np.int64)
        out = np.stack([padded[j, :, rows[j]:rows[j] + h, cols[j]:cols[j] + w] for j in range(b)])
    if flip:
        flips = ((draw >> np.uint64(40)) & np.uint64(1)).astype(bool)
        out = out.copy() if out is images else out
        out[flips] = out[flips][..., ::-1]
    return out


__all__ = ["RESIZED_CROP_RATIO", "RESIZED_CROP_SCALE", "augment", "resized_crop_boxes", "resized_crops"]
