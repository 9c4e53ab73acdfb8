"""A loader that keeps a split's uint8 pixels on the training device.

Batches are gathered by index from the device copy, augmented there with
batched tensor ops (random crop with zero padding, horizontal flip) and
normalised on the fly. Nothing is decoded, copied or synchronised per step,
and a subset of example ids is just an index tensor over the shared copy.
"""

from __future__ import annotations

import copy
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pracset.data.base import ImageSplit
from pracset.data.protocol import Batch
from pracset.distributed import is_distributed, rank, shard_bounds, world_size
from pracset.errors import ConfigError


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each image by ``padding`` and crop back to its size at a random offset."""
    if padding <= 0:
        return images
    b = images.shape[0]
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=images.device)
    return crop_at(images, padding, offsets)


def crop_at(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``padding`` and crop each image at ``offsets`` (2, B): row and column offsets."""
    b, c, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Flip each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def num_batches(num_examples: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch: the training steps an epoch of ``num_examples`` takes."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


class DeviceLoader:
    """Iterates ``Batch(x, y, index)`` over a split that lives on ``split.device``.

    Args:
        split: the data, already on the training device (``ImageSplit.to``);
            loaders built on the same split share its memory.
        batch_size: examples per batch.
        mean, std: per-channel normalisation of pixels scaled to [0, 1].
        ids: restrict the loader to these example ids (no copy of the data).
        shuffle: a fresh permutation each epoch, drawn from ``(seed, epoch)``
            so that a resumed run sees the same order as an uninterrupted one.
        crop_padding, flip: augmentation (training only).
        drop_last: drop the last incomplete batch.
        channels_last: return ``x`` in channels-last memory format (faster
            convolutions on GPUs).
        shard: under torch.distributed, yield only this rank's contiguous
            slice of every (global) batch; see :mod:`pracset.distributed`.
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        shuffle: bool = False,
        crop_padding: int = 0,
        flip: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        shard: bool = True,
    ):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        self.split = split
        self.device = split.device
        self.batch_size = batch_size
        self.shuffle, self.crop_padding, self.flip = shuffle, crop_padding, flip
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.epoch = 0
        self.shard = shard
        channels = split.channels
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        if (crop_padding or flip or channels_last) and split.images.dim() != 4:
            raise ConfigError("crop, flip and channels-last need (N, C, H, W) images, the inputs are "
                              f"{tuple(split.images.shape[1:])}")
        # x = (pixels / 255 - mean) / std as one fused multiply-add; float inputs skip the / 255
        shape = (1, channels) + (1,) * (split.images.dim() - 2)
        std_t = torch.tensor(std, dtype=torch.float32, device=self.device)
        self._scale = (1.0 / ((255.0 if split.is_pixels else 1.0) * std_t)).view(shape)
        self._shift = (-torch.tensor(mean, dtype=torch.float32, device=self.device) / std_t).view(shape)
        if ids is None:
            self.ids = torch.arange(len(split), device=self.device)
        else:
            ids_t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids, dtype=torch.int64)
            if ids_t.dim() != 1 or len(ids_t) == 0:
                raise ConfigError("ids must be a non-empty 1-D list of example ids")
            low, high = int(ids_t.min()), int(ids_t.max())
            if low < 0 or high >= len(split):
                raise ConfigError(f"example ids must lie in [0, {len(split)}), got {low}..{high}")
            self.ids = ids_t.to(self.device)

    @property
    def num_examples(self) -> int:
        return len(self.ids)

    def __len__(self) -> int:
        return num_batches(self.num_examples, self.batch_size, self.drop_last)

    @property
    def sharded(self) -> bool:
        """Whether iterating yields only this rank's slice of each batch (torch.distributed and ``shard``)."""
        return self.shard and is_distributed()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration draws."""
        self.epoch = epoch

    def reseeded(self, seed: int) -> "DeviceLoader":
        """This loader over the same split (no copy of the data) drawing its order and augmentation from ``seed``."""
        other = copy.copy(self)
        other.seed, other.epoch = seed, 0
        return other

    def _generator(self) -> torch.Generator:
        generator = torch.Generator(device=self.device)
        generator.manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return generator

    def __iter__(self) -> Iterator[Batch]:
        generator = self._generator()
        order = self.ids
        if self.shuffle:
            order = self.ids[torch.randperm(len(self.ids), generator=generator, device=self.device)]
        stop = len(self) * self.batch_size if self.drop_last else len(order)
        if self.sharded:  # torch.distributed: this rank yields only its slice of each batch
            yield from self._iter_shard(order, stop, generator)
            return
        for start in range(0, stop, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.split.images[index]
            if self.crop_padding:
                images = random_crop(images, self.crop_padding, generator)
            if self.flip:
                images = random_flip(images, generator)
            x = torch.addcmul(self._shift, images.float(), self._scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, self.split.labels[index], index)

    # --- torch.distributed: this rank's slice of every global batch
    def _iter_shard(self, order: torch.Tensor, stop: int, generator: torch.Generator) -> Iterator[Batch]:
        """Like the one-process loop, but yield rows ``shard_bounds`` of each batch.

        The augmentation is drawn for the whole global batch (the same generator
        calls as one process) and sliced, so the union over ranks of step k's
        inputs is bitwise the one-process batch k.
        """
        me, world = rank(), world_size()
        device, padding = self.device, self.crop_padding
        for start in range(0, stop, self.batch_size):
            size = min(self.batch_size, stop - start)
            lo, hi = shard_bounds(size, me, world)
            index = order[start + lo : start + hi]
            images = self.split.images[index]
            if padding:
                offsets = torch.randint(0, 2 * padding + 1, (2, size), generator=generator, device=device)
                images = crop_at(images, padding, offsets[:, lo:hi])
            if self.flip:
                flip = (torch.rand(size, generator=generator, device=device) < 0.5)[lo:hi]
                images = torch.where(flip[:, None, None, None], images.flip(3), images)
            x = torch.addcmul(self._shift, images.float(), self._scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, self.split.labels[index], index)
