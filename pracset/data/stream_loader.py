"""The streaming loader: one split decoded batch by batch in ``DataLoader`` worker processes.

* :class:`StreamingDataset` is a map-style ``Dataset`` of one split: example
  ``i`` is the same example as row ``i`` of the in-memory source (same id
  order, same PIL decoding, colour mode and resizing, see
  :mod:`pracset.data.decode`), so manifests, the recorder and the probe
  index it the same way.
* :class:`ShardedBatchSampler` draws the per-(seed, epoch) permutation (the
  same ``torch.randperm`` as :class:`~pracset.data.loader.DeviceLoader` on the
  CPU), optionally over a manifest's ids, cuts it into global batches of
  ``batch_size`` and, under torch.distributed, gives each rank a contiguous
  slice of every batch (:func:`pracset.distributed.shard_bounds`): each id
  once per epoch overall.
* Workers run a :class:`BatchDecoder`: they decode a whole batch and augment
  it on uint8 pixels (random crop with zero padding, or ImageNet's
  random-resized crop; horizontal flip; the draw of an example depends only
  on ``(seed, epoch, example id)``, not on the batching, the worker or the
  rank), and return one uint8 tensor. The
  training process copies it from pinned memory with ``non_blocking=True``
  and normalises on the device, as the device loader does, so
  :class:`StreamingLoader` yields the same ``Batch(x, y, index)`` (it is a
  :class:`~pracset.data.protocol.BatchLoader`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterator, Sequence

import numpy as np
import torch

from pracset import distributed as ddp
from pracset.data.decode import UNREADABLE, decode_image, detect_mode, pixels_as_uint8, to_chw
from pracset.data.host_augment import augment
from pracset.data.loader import Batch, num_batches
from pracset.errors import ConfigError, DataError, PracsetError


def default_workers(workers: int | None) -> int:
    """Decoding processes: ``workers``, or up to 8 (one per CPU) when it is None."""
    return min(8, os.cpu_count() or 1) if workers is None else workers


# ----------------------------------------------------------------------------- one split
class StreamingDataset(torch.utils.data.Dataset):
    """One split whose images are decoded on demand; ``dataset[i]`` is ``(uint8 (C, H, W) tensor, label)``.

    ``mode`` is PIL's ``"RGB"`` or ``"L"`` (``None``: RGB as soon as one image is
    colour, the in-memory rule); without ``image_size`` every image must have the
    size of the first one.
    """

    def __init__(self, reader, labels: np.ndarray, *, mode: str | None = None, image_size: int | None = None,
                 what: str = "split"):
        if len(labels) == 0:
            raise DataError(f"{what}: the split holds no examples")
        self.reader = reader
        self.labels = np.asarray(labels, dtype=np.int64)
        self.image_size = image_size
        self.what = what
        self.mode = mode if mode is not None else detect_mode(reader, len(self.labels))
        first = self.decode([0])
        self.image_shape: tuple[int, int, int] = tuple(first.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def cache_key(self, times: bool = True) -> str | None:
        """A digest of everything this split's decoded pixels depend on (None: no cheap way to tell).

        ``times=False`` leaves the files' modification times out: a copy of the same files (a node's
        scratch copy) then has the same key, though a file rewritten in place with its size kept does too.
        """
        signature = getattr(self.reader, "signature", lambda times=True: None)(times)
        if signature is None:
            return None
        digest = hashlib.blake2b(digest_size=16)
        for part in (signature, self.mode, str(self.image_size), str(self.image_shape)):
            digest.update(str(part).encode() + b"\0")
        digest.update(np.ascontiguousarray(self.labels, dtype="<i8").tobytes())
        return digest.hexdigest()

    def _decode_one(self, item, i: int) -> np.ndarray:
        if self.reader.kind == "array":
            array = pixels_as_uint8(np.asarray(item))
            if array.dtype != np.uint8:
                raise DataError(f"{self.what}: {self.reader.describe(i)} holds {array.dtype}, expected uint8 pixels")
            array = to_chw(array)
            if self.mode == "RGB" and array.shape[0] == 1:
                array = np.repeat(array, 3, axis=0)
            return array
        try:
            return to_chw(decode_image(item, self.mode, self.image_size))
        except UNREADABLE as exc:  # a decompression bomb among them
            raise DataError(f"{self.what}: cannot decode {self.reader.describe(i)}: {exc}") from None

    def decode(self, ids: Sequence[int]) -> np.ndarray:
        """Images ``ids`` as one uint8 array (B, C, H, W), in that order."""
        ids = [int(i) for i in ids]
        items = self.reader.read_many(ids)
        arrays = [self._decode_one(item, i) for item, i in zip(items, ids)]
        shape = getattr(self, "image_shape", None)
        if not arrays:
            return np.empty((0, *shape), dtype=np.uint8)
        for array, i in zip(arrays, ids):
            if shape is not None and array.shape != shape:
                raise DataError(f"{self.what}: {self.reader.describe(i)} is {array.shape[2]}x{array.shape[1]}, "
                                f"the first image {shape[2]}x{shape[1]}; pass --image-size N to resize them")
        return np.stack(arrays)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        """Example ``i``: its uint8 (C, H, W) pixels and its label."""
        return torch.from_numpy(self.decode([i])[0]), int(self.labels[i])


class BatchDecoder(torch.utils.data.Dataset):
    """What the workers run: a key ``(epoch, ids)`` -> ``(uint8 images, labels, ids)`` tensors of one batch."""

    def __init__(self, dataset: StreamingDataset, crop_padding: int = 0, flip: bool = False, seed: int = 0,
                 random_resized_crop: bool = False):
        self.dataset, self.crop_padding, self.flip, self.seed = dataset, crop_padding, flip, seed
        self.random_resized_crop = random_resized_crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, ids = key
        images = self.dataset.decode(ids)
        images = augment(images, ids, seed=self.seed, epoch=epoch, crop_padding=self.crop_padding, flip=self.flip,
                         random_resized_crop=self.random_resized_crop)
        return (torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(self.dataset.labels[ids]),
                torch.from_numpy(ids.astype(np.int64)))


def _identity(batch):
    return batch  # each sampler key is already a whole batch: nothing to collate


def decoded_batches(dataset: StreamingDataset, ids: np.ndarray, batch_size: int,
                    workers: int | None = None) -> torch.utils.data.DataLoader:
    """One unaugmented pass over ``ids`` in order: ``(uint8 images, labels, ids)`` batches decoded in workers.

    At most one worker per batch (a pass over few examples starts no idle processes).
    """
    sampler = ShardedBatchSampler(ids, batch_size, shard=False)
    return torch.utils.data.DataLoader(BatchDecoder(dataset), sampler=sampler, batch_size=None, collate_fn=_identity,
                                       num_workers=min(default_workers(workers), max(1, len(sampler))))


# ----------------------------------------------------------------------------- the sampler
class ShardedBatchSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, ids)`` keys: this rank's slice of every global batch of one epoch.

    The permutation is :class:`DeviceLoader`'s on the CPU:
    ``ids[torch.randperm(len(ids), generator=seeded(seed * 1_000_003 + epoch))]``.
    ``rank``/``world_size`` default to the process group's (1 rank without one).
    """

    def __init__(self, ids: np.ndarray, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, shard: bool = True, rank: int | None = None, world_size: int | None = None):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        self.ids = np.asarray(ids, dtype=np.int64)
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.shard, self.rank, self.world_size = shard, rank, world_size
        self.epoch = 0

    def rank_and_world(self) -> tuple[int, int]:
        """This rank and the number of ranks the batches are sliced over (0, 1 without sharding)."""
        if not self.shard:
            return 0, 1
        if self.world_size is not None:
            return (self.rank or 0), self.world_size
        return (ddp.rank(), ddp.world_size()) if ddp.is_distributed() else (0, 1)

    def __len__(self) -> int:
        return num_batches(len(self.ids), self.batch_size, self.drop_last)

    def order(self) -> np.ndarray:
        """This epoch's ids in visiting order: :class:`DeviceLoader`'s permutation, or ``ids`` unshuffled."""
        if not self.shuffle:
            return self.ids
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return self.ids[torch.randperm(len(self.ids), generator=generator).numpy()]

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        order = self.order()
        me, world = self.rank_and_world()
        stop = len(self) * self.batch_size
        stop = min(stop, len(order))
        for start in range(0, stop, self.batch_size):
            size = min(self.batch_size, stop - start)
            lo, hi = ddp.shard_bounds(size, me, world)
            yield self.epoch, order[start + lo:start + hi]


# ----------------------------------------------------------------------------- the loader
class _Labels:
    """The ``split`` a streaming loader offers: the labels on the device (the probe reads them), no pixels."""

    def __init__(self, labels: np.ndarray, device: torch.device):
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.labels)


def _one_line_errors(batches, what: str):
    """Iterate ``batches``, turning a worker's failure into one line: torch re-raises a worker's exception with
    its whole traceback in the message, and reports a killed worker as a RuntimeError."""
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except PracsetError as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else type(exc).__name__
            raise type(exc)(last.split(": ", 1)[1] if last.startswith(("pracset.", "DataError", "ConfigError"))
                            else last) from None
        except RuntimeError as exc:
            if "DataLoader worker" not in str(exc):
                raise
            raise DataError(f"{what}: a decoding worker died ({str(exc).splitlines()[0]}); "
                            "--resume continues from the last finished epoch") from None
        yield batch


class StreamingLoader:
    """Iterates ``Batch(x, y, index)`` over a :class:`StreamingDataset`, decoding in worker processes.

    A :class:`~pracset.data.protocol.BatchLoader`, as
    :class:`~pracset.data.loader.DeviceLoader` is, so the Trainer, the
    recorder and the probe take either. ``workers=0`` decodes in the training
    process. Under CUDA the workers' batches are pinned and copied with
    ``non_blocking=True``. ``rank``/``world_size`` override the process
    group's (tests, custom launchers). ``random_resized_crop`` crops and
    resizes every training image as ImageNet recipes do
    (:func:`~pracset.data.host_augment.resized_crops`); it replaces the
    padded crop, so it takes ``crop_padding=0``.
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int, mean: Sequence[float], std: Sequence[float], *,
                 device: torch.device | str = "cpu", ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                 shuffle: bool = False, crop_padding: int = 0, flip: bool = False, drop_last: bool = False,
                 seed: int = 0, channels_last: bool = False, workers: int | None = None, prefetch: int = 4,
                 shard: bool = True, rank: int | None = None, world_size: int | None = None,
                 random_resized_crop: bool = False):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        if random_resized_crop and crop_padding:
            raise ConfigError(f"random_resized_crop replaces the padded random crop: pass crop_padding=0, "
                              f"got {crop_padding}")
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle, self.crop_padding, self.flip = shuffle, crop_padding, flip
        self.random_resized_crop = random_resized_crop
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.shard = shard
        self.workers = default_workers(workers)
        self.prefetch = prefetch
        self.mean, self.std = tuple(mean), tuple(std)
        self.epoch = 0
        channels = dataset.image_shape[0]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}")
        self._scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32, device=self.device))).view(1, -1, 1, 1)
        self._shift = (-torch.tensor(mean, dtype=torch.float32, device=self.device)
                       / torch.tensor(std, device=self.device)).view(1, -1, 1, 1)
        n = len(dataset)
        if ids is None:
            ids_np = np.arange(n, dtype=np.int64)
        else:
            ids_np = (ids.cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)).astype(np.int64)
            if ids_np.ndim != 1 or len(ids_np) == 0:
                raise ConfigError("ids must be a non-empty 1-D list of example ids")
            if ids_np.min() < 0 or ids_np.max() >= n:
                raise ConfigError(f"example ids must lie in [0, {n}), got {ids_np.min()}..{ids_np.max()}")
        self.ids = torch.from_numpy(ids_np).to(self.device)
        self.split = _Labels(dataset.labels, self.device)
        self.sampler = ShardedBatchSampler(ids_np, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,
                                           shard=shard, rank=rank, world_size=world_size)
        self._decoder = BatchDecoder(dataset, crop_padding, flip, seed, random_resized_crop)
        self._loader: torch.utils.data.DataLoader | None = None

    @property
    def num_examples(self) -> int:
        """How many examples an epoch visits (``len(ids)``)."""
        return len(self.ids)

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def sharded(self) -> bool:
        """Whether iterating yields only this rank's slice of each batch."""
        return self.sampler.rank_and_world()[1] > 1

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration draws."""
        self.epoch = epoch

    def unaugmented(self, batch_size: int | None = None, ids=None) -> "StreamingLoader":
        """A loader over the same data in id order without augmentation (evaluation, the pruning probe)."""
        return StreamingLoader(self.dataset, batch_size or self.batch_size, self.mean, self.std, device=self.device,
                               ids=ids, channels_last=self.channels_last, workers=self.workers,
                               prefetch=self.prefetch, shard=self.shard, rank=self.sampler.rank,
                               world_size=self.sampler.world_size)

    def _data_loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            workers = self.workers
            self._loader = torch.utils.data.DataLoader(
                self._decoder, sampler=self.sampler, batch_size=None, collate_fn=_identity, num_workers=workers,
                pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
                prefetch_factor=self.prefetch if workers > 0 else None)
        return self._loader

    def __iter__(self) -> Iterator[Batch]:
        self.sampler.epoch = self.epoch
        device, non_blocking = self.device, self.device.type == "cuda"
        for images, labels, index in _one_line_errors(self._data_loader(), self.dataset.what):
            images = images.to(device, non_blocking=non_blocking)
            x = torch.addcmul(self._shift, images.float(), self._scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, labels.to(device, non_blocking=non_blocking), index.to(device, non_blocking=non_blocking))
