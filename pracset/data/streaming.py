"""Streaming data: image sets that do not fit in memory, decoded by DataLoader workers.

The in-memory path (:mod:`pracset.data.sources` + :class:`DeviceLoader`)
decodes a whole split once and keeps its uint8 pixels on the training device.
For ImageNet-size sets that does not fit; here the images stay encoded
(image files in a directory, members of an uncompressed tar, rows of a
Hugging Face ``datasets`` split) and a :class:`StreamingLoader` decodes them
batch by batch in ``torch.utils.data.DataLoader`` worker processes:

* :class:`StreamingDataset` is a map-style ``Dataset`` of one split: example
  ``i`` is the same example as row ``i`` of the in-memory source (same id
  order, same PIL decoding, colour mode and resizing), so manifests, the
  recorder and the probe index it the same way.
* :class:`ShardedBatchSampler` draws the per-(seed, epoch) permutation (the
  same ``torch.randperm`` as :class:`DeviceLoader` on the CPU), optionally over
  a manifest's ids, cuts it into global batches of ``batch_size`` and, under
  torch.distributed, gives each rank a contiguous slice of every batch
  (:func:`pracset.distributed.shard_bounds`): each id once per epoch overall.
* Workers decode a whole batch and augment it on uint8 pixels (random crop
  with zero padding, horizontal flip; the draw of an example depends only on
  ``(seed, epoch, example id)``, not on the batching, the worker or the rank),
  and return one uint8 tensor. The training process copies it from pinned
  memory with ``non_blocking=True`` and normalises on the device, as the device
  loader does, so it yields the same ``Batch(x, y, index)``.

:class:`StreamingLoader` has the attributes that :class:`~pracset.train.loop.Trainer`,
:func:`~pracset.train.loop.evaluate`, :class:`~pracset.stats.ExampleRecorder`
and :func:`~pracset.stats.pruning_probe` use (``ids``, ``split.labels``,
``device``, ``batch_size``, ``num_examples``, ``set_epoch``, ``shuffle``,
``crop_padding``, ``flip``, ``sharded``, ``len``), so it plugs into them
unchanged.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tarfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from pracset import distributed as ddp
from pracset.data.loader import Batch
from pracset.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Sources whose splits can be streamed; the others are small and load in memory.
STREAMING_SOURCES = ("imagefolder", "tiny-imagenet", "hf")


# ----------------------------------------------------------------------------- readers of encoded images
class _FolderTree:
    """Image files under a directory, as relative POSIX paths (read on demand)."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def read(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


class _TarTree:
    """Members of an *uncompressed* tar archive, read by offset (no extraction, no decompression)."""

    def __init__(self, archive: Path):
        self.root = archive
        self._offsets: dict[str, tuple[int, int]] = {}
        try:
            with tarfile.open(archive, "r:") as handle:
                for member in handle:
                    if member.isfile():
                        name = member.name[2:] if member.name.startswith("./") else member.name
                        self._offsets[name] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot index archive {archive}: {exc}") from None
        self.paths = sorted(self._offsets)
        self._fd: int | None = None
        self._pid = -1
        top = _single_top(self.paths)
        if top:  # an archive usually wraps the tree in one folder: strip it (as the in-memory source)
            self._offsets = {k[len(top):]: v for k, v in self._offsets.items()}
            self.paths = sorted(self._offsets)

    def read(self, rel: str) -> bytes:
        if self._fd is None or self._pid != os.getpid():  # one descriptor per (worker) process
            self._fd, self._pid = os.open(self.root, os.O_RDONLY), os.getpid()
        offset, size = self._offsets[rel]
        return os.pread(self._fd, size, offset)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": -1}


def _single_top(paths: Sequence[str]) -> str:
    """``"top/"`` when every path lies in one folder that is not a split folder (the in-memory rule)."""
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1 and not any(p.startswith(t) for t in ("train/", "test/", "val/") for p in paths):
        return tops.pop() + "/"
    return ""


def _is_compressed(archive: Path) -> bool:
    with open(archive, "rb") as handle:
        magic = handle.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00"


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` (any tar, compressed or not) into ``dest`` once; returns the tree's root.

    A finished extraction leaves ``dest/.extracted`` and is not redone. The root
    skips one wrapping folder, as the in-memory image-folder source does.
    """
    archive, dest = Path(archive), Path(dest)
    marker = dest / ".extracted"
    if not marker.exists():
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with tarfile.open(archive, "r:*") as handle:
                handle.extractall(partial, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"cannot extract {archive}: {exc}") from None
        (partial / ".extracted").write_text(str(archive) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p.name != ".extracted")
    top = _single_top(names)
    return dest / top.rstrip("/") if top else dest


def open_tree(path: str | Path, *, extract_to: str | Path | None = None):
    """A directory or an uncompressed tar, read lazily; a compressed tar is extracted into ``extract_to`` first."""
    path = Path(path)
    if path.is_dir():
        return _FolderTree(path)
    if not path.exists():
        raise DataError(f"--data-dir {path} does not exist")
    if not tarfile.is_tarfile(path):
        raise DataError(f"{path} is neither a directory nor a tar archive")
    if _is_compressed(path):
        if extract_to is None:
            raise DataError(f"{path} is a compressed archive: streaming needs random access to its images; extract "
                            f"it (e.g. tar -xf {path.name}) or pass extract_to=DIR, or repack it as an uncompressed .tar")
        return _FolderTree(extract_archive(path, extract_to))
    return _TarTree(path)


class _TreeReader:
    """Reads example ``i`` of a split as the bytes of its file in a tree."""

    kind = "encoded"

    def __init__(self, tree, files: Sequence[str]):
        self.tree = tree
        self.files = list(files)

    def read_many(self, ids: Sequence[int]) -> list[bytes]:
        return [self.tree.read(self.files[i]) for i in ids]

    def describe(self, i: int) -> str:
        return f"{self.tree.root}/{self.files[i]}"


class _HFReader:
    """Reads rows of a Hugging Face ``datasets`` split: encoded image bytes (Image feature) or uint8 arrays."""

    def __init__(self, split, column: str, kind: str):
        self.split = split
        self.column = column
        self.kind = kind  # "encoded" or "array"

    def read_many(self, ids: Sequence[int]) -> list:
        if len(ids) == 0:
            return []
        rows = self.split[[int(i) for i in ids]][self.column]
        if self.kind == "array":
            return [np.asarray(r) for r in rows]
        return [r["bytes"] if r.get("bytes") is not None else Path(r["path"]).read_bytes() for r in rows]

    def describe(self, i: int) -> str:
        return f"row {i} of column {self.column!r}"


def detect_mode(reader, n: int) -> str:
    """``"RGB"`` if any of the ``n`` images is colour, else ``"L"`` (headers only; stops at the first colour one)."""
    from PIL import Image

    if reader.kind == "array":
        return "RGB" if np.asarray(reader.read_many([0])[0]).ndim == 3 else "L"
    chunk = 256
    for start in range(0, n, chunk):
        for blob in reader.read_many(range(start, min(start + chunk, n))):
            try:
                with Image.open(io.BytesIO(blob)) as image:  # reads the header only
                    if image.mode not in ("L", "1", "I;16", "I"):
                        return "RGB"
            except OSError:
                continue  # reported with its cause when decoded
    return "L"


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

    def _decode_one(self, item, i: int) -> np.ndarray:
        if self.reader.kind == "array":
            array = np.asarray(item)
            if array.dtype.kind in "iu" and array.size and array.min() >= 0 and array.max() <= 255:
                array = array.astype(np.uint8)
            if array.dtype != np.uint8:
                raise DataError(f"{self.what}: {self.reader.describe(i)} holds {array.dtype}, expected uint8 pixels")
            array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
            if self.mode == "RGB" and array.shape[0] == 1:
                array = np.repeat(array, 3, axis=0)
            return array
        from PIL import Image

        try:
            with Image.open(io.BytesIO(item)) as image:
                image = image.convert(self.mode)
                size = self.image_size
                if size is not None and image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                array = np.asarray(image)
        except OSError as exc:
            raise DataError(f"{self.what}: cannot decode {self.reader.describe(i)}: {exc}") from None
        return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)

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
        return torch.from_numpy(self.decode([i])[0]), int(self.labels[i])


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


def augment(images: np.ndarray, ids: np.ndarray, *, seed: int, epoch: int, crop_padding: int, flip: bool) -> np.ndarray:
    """Random crop with zero padding and horizontal flip of uint8 (B, C, H, W) images, on the host.

    Example ``ids[j]``'s offsets and flip depend on ``(seed, epoch, ids[j])`` only.
    """
    if not len(images) or (not crop_padding and not flip):
        return images
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


class _BatchDecoder(torch.utils.data.Dataset):
    """What the workers run: a key ``(epoch, ids)`` -> ``(uint8 images, labels, ids)`` tensors of one batch."""

    def __init__(self, dataset: StreamingDataset, crop_padding: int, flip: bool, seed: int):
        self.dataset, self.crop_padding, self.flip, self.seed = dataset, crop_padding, flip, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, ids = key
        images = self.dataset.decode(ids)
        images = augment(images, ids, seed=self.seed, epoch=epoch, crop_padding=self.crop_padding, flip=self.flip)
        return (torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(self.dataset.labels[ids]),
                torch.from_numpy(ids.astype(np.int64)))


def _identity(batch):
    return batch


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
        self.shard, self._rank, self._world = shard, rank, world_size
        self.epoch = 0

    def rank_and_world(self) -> tuple[int, int]:
        if not self.shard:
            return 0, 1
        if self._world is not None:
            return (self._rank or 0), self._world
        return (ddp.rank(), ddp.world_size()) if ddp.is_distributed() else (0, 1)

    def __len__(self) -> int:
        n = len(self.ids)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> np.ndarray:
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


class StreamingLoader:
    """Iterates ``Batch(x, y, index)`` over a :class:`StreamingDataset`, decoding in worker processes.

    The interface of :class:`~pracset.data.loader.DeviceLoader` (``ids``,
    ``set_epoch``, ``num_examples``, ``device``, ``batch_size``, ``split.labels``,
    ``sharded``, ``len``), so the Trainer, the recorder and the probe take
    either. ``workers=0`` decodes in the training process. Under CUDA the
    workers' batches are pinned and copied with ``non_blocking=True``.
    ``rank``/``world_size`` override the process group's (tests, custom launchers).
    """

    def __init__(self, dataset: StreamingDataset, batch_size: int, mean: Sequence[float], std: Sequence[float], *,
                 device: torch.device | str = "cpu", ids: Sequence[int] | np.ndarray | torch.Tensor | None = None,
                 shuffle: bool = False, crop_padding: int = 0, flip: bool = False, drop_last: bool = False,
                 seed: int = 0, channels_last: bool = False, workers: int | None = None, prefetch: int = 4,
                 shard: bool = True, rank: int | None = None, world_size: int | None = None):
        if batch_size <= 0:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        self.dataset = dataset
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.shuffle, self.crop_padding, self.flip = shuffle, crop_padding, flip
        self.drop_last, self.seed, self.channels_last = drop_last, seed, channels_last
        self.shard = shard
        self.workers = _workers(workers)
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
        self._decoder = _BatchDecoder(dataset, crop_padding, flip, seed)
        self._loader: torch.utils.data.DataLoader | None = None

    @property
    def num_examples(self) -> int:
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
                               prefetch=self.prefetch, shard=self.shard, rank=self.sampler._rank,
                               world_size=self.sampler._world)

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
        for images, labels, index in self._data_loader():
            images = images.to(device, non_blocking=non_blocking)
            x = torch.addcmul(self._shift, images.float(), self._scale)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield Batch(x, labels.to(device, non_blocking=non_blocking), index.to(device, non_blocking=non_blocking))


# ----------------------------------------------------------------------------- data sets
@dataclass
class StreamingSplits:
    """A data set's two splits, streamed: what :func:`make_streaming_loaders` needs."""

    name: str
    train: StreamingDataset
    test: StreamingDataset
    class_names: tuple[str, ...]
    default_crop_padding: int = 0
    default_flip: bool = False
    source: dict | None = None
    normalization_sample: int | None = 10_000
    workers: int | None = None  # decoding processes of the passes below (None: up to 8)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the training pixels in [0, 1], from an evenly spaced sample.

        Over every example (equal to the in-memory value) when the split holds
        at most ``normalization_sample`` examples or that is None.
        """
        return estimate_normalization(self.train, self.normalization_sample, self.workers)

    def input_spec(self):
        from pracset.models import InputSpec

        c, h, w = self.train.image_shape
        return InputSpec(c, h, w, self.num_classes)

    def content_hashes(self, batch_size: int = 1024) -> np.ndarray:
        """The training examples' content hashes (a decoding pass in workers), as the in-memory dataset's."""
        from pracset.data.base import content_hashes

        sampler = ShardedBatchSampler(np.arange(len(self.train)), batch_size, shard=False)
        loader = torch.utils.data.DataLoader(_BatchDecoder(self.train, 0, False, 0), sampler=sampler, batch_size=None,
                                             collate_fn=_identity, num_workers=_workers(self.workers))
        return np.concatenate([content_hashes(x, y) for x, y, _ in loader])

    def fingerprint(self) -> str:
        """The training split's fingerprint, equal to the in-memory dataset's (manifests check it)."""
        from pracset.data.base import fingerprint

        return fingerprint(self.content_hashes(), self.class_names)


def _workers(workers: int | None) -> int:
    return min(8, os.cpu_count() or 1) if workers is None else workers


def estimate_normalization(dataset: StreamingDataset, max_examples: int | None = 10_000,
                           workers: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (pixels in [0, 1]) over up to ``max_examples`` evenly spaced examples."""
    n = len(dataset)
    ids = np.arange(n) if max_examples is None or n <= max_examples else np.linspace(0, n - 1, max_examples).astype(np.int64)
    sampler = ShardedBatchSampler(ids, 512, shard=False)
    loader = torch.utils.data.DataLoader(_BatchDecoder(dataset, 0, False, 0), sampler=sampler, batch_size=None,
                                         collate_fn=_identity, num_workers=min(_workers(workers), max(1, len(sampler))))
    channels = dataset.image_shape[0]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for images, _, _ in loader:
        pixels = images.transpose(0, 1).reshape(channels, -1).to(torch.float64) / 255.0
        total += pixels.sum(1)
        squares += (pixels * pixels).sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)


def image_folder_splits(root: str | Path, *, image_size: int | None = None, extract_to: str | Path | None = None,
                        name: str = "imagefolder") -> StreamingSplits:
    """The train and test (or val) splits of an image-folder tree, streamed, with the in-memory source's ids."""
    from pracset.data.sources import SOURCES, ImageFolderSource

    tree = open_tree(root, extract_to=extract_to)
    source = SOURCES.get(name) if name in SOURCES.names() else ImageFolderSource(name)
    train_pairs = source._split(tree, "train", None)
    if not train_pairs:
        raise DataError(f"{tree.root} holds no train/<class>/<image> files")
    classes = sorted({c for c, _ in train_pairs})
    index = {c: i for i, c in enumerate(classes)}
    for split in ("test", "val"):
        test_pairs = source._split(tree, split, classes)
        if test_pairs and all(c in index for c, _ in test_pairs):
            test_name = split
            break
    else:
        raise DataError(f"{tree.root} holds no labelled test/<class>/ or val/<class>/ images of the training classes")

    def reader(pairs):
        pairs = sorted(pairs, key=lambda cp: (index[cp[0]], cp[1]))
        return _TreeReader(tree, [p for _, p in pairs]), np.array([index[c] for c, _ in pairs], dtype=np.int64)

    (train_reader, train_labels), (test_reader, test_labels) = reader(train_pairs), reader(test_pairs)
    # the in-memory colour rule, over both splits (match_channels): RGB if any image is colour
    colour = detect_mode(train_reader, len(train_labels)) == "RGB" or detect_mode(test_reader, len(test_labels)) == "RGB"
    mode = "RGB" if colour else "L"
    train = StreamingDataset(train_reader, train_labels, mode=mode, image_size=image_size, what=f"{tree.root}/train")
    test = StreamingDataset(test_reader, test_labels, mode=mode, image_size=image_size, what=f"{tree.root}/{test_name}")
    if train.image_shape != test.image_shape:
        raise DataError(f"{name}: train images are {train.image_shape} but test images are {test.image_shape}")
    return StreamingSplits(name, train, test, tuple(classes), source.crop_padding, source.flip,
                           {"root": str(tree.root), "test_split": test_name})


def hf_splits(target: str, *, train_split: str = "train", test_split: str = "test", image_column: str | None = None,
              label_column: str | None = None, image_size: int | None = None) -> StreamingSplits:
    """A Hugging Face ``datasets`` DatasetDict (a ``save_to_disk`` directory or a hub name), streamed row by row.

    The Arrow tables stay memory-mapped; workers decode the rows of each batch.
    """
    import datasets

    try:
        loaded = datasets.load_from_disk(target) if Path(target).exists() else datasets.load_dataset(target)
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
        raise DataError(f"cannot load Hugging Face dataset {target!r}: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{target} is a single split; save a DatasetDict with {train_split!r} and {test_split!r} splits")
    for split in (train_split, test_split):
        if split not in loaded:
            raise DataError(f"{target} has no split {split!r}; it has {', '.join(loaded)}")

    def open_split(split, what):
        features = split.features
        image_col = image_column or next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
        image_col = image_col or next((k for k in ("image", "img", "pixel_values") if k in features), None)
        label_col = label_column or next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_col = label_col or ("label" if "label" in features else None)
        if image_col is None or label_col is None or image_col not in features or label_col not in features:
            raise DataError(f"{what}: cannot find the image/label columns among {sorted(features)}; "
                            "pass --image-column and --label-column")
        labels = np.asarray(split[label_col], dtype=np.int64)
        if isinstance(features[image_col], datasets.Image):
            reader = _HFReader(split.cast_column(image_col, datasets.Image(decode=False)), image_col, "encoded")
        else:
            reader = _HFReader(split.with_format("numpy"), image_col, "array")
        label_feature = features[label_col]
        classes = (list(label_feature.names) if isinstance(label_feature, datasets.ClassLabel)
                   else [str(c) for c in range(int(labels.max()) + 1)])
        return reader, labels, classes

    train_reader, train_labels, classes = open_split(loaded[train_split], target)
    test_reader, test_labels, _ = open_split(loaded[test_split], target)
    colour = detect_mode(train_reader, len(train_labels)) == "RGB" or detect_mode(test_reader, len(test_labels)) == "RGB"
    mode = "RGB" if colour else "L"
    train = StreamingDataset(train_reader, train_labels, mode=mode, image_size=image_size, what=f"{target}/{train_split}")
    test = StreamingDataset(test_reader, test_labels, mode=mode, image_size=image_size, what=f"{target}/{test_split}")
    return StreamingSplits("hf", train, test, tuple(classes), 0, False,
                           {"dataset": target, "train_split": train_split, "test_split": test_split})


def open_streaming(config, *, extract_to: str | Path | None = None) -> StreamingSplits:
    """The streamed splits of the data set a :class:`~pracset.data.DataConfig` names (imagefolder, tiny-imagenet, hf)."""
    if config.name not in STREAMING_SOURCES:
        raise ConfigError(f"data set {config.name!r} is small and loads in memory; streaming serves "
                          f"{', '.join(STREAMING_SOURCES)}")
    if config.name == "hf":
        target = config.hf_dataset or (str(config.resolved_data_dir()) if config.resolved_data_dir() else None)
        if target is None:
            raise DataError("hf needs --hf-dataset NAME or --data-dir pointing at a save_to_disk directory")
        return hf_splits(target, train_split=config.train_split, test_split=config.test_split,
                         image_column=config.image_column, label_column=config.label_column,
                         image_size=config.image_size)
    root = config.resolved_data_dir()
    if root is None:
        raise DataError(f"{config.name} needs --data-dir naming the directory (or tar archive) that holds it")
    return image_folder_splits(root, image_size=config.image_size, extract_to=extract_to, name=config.name)


def make_streaming_loaders(data: StreamingSplits, config, device: torch.device, *, ids=None, conv_net: bool = False,
                           workers: int | None = None) -> tuple[StreamingLoader, StreamingLoader]:
    """The streaming counterpart of :func:`pracset.train.run.make_loaders`: training and test loaders."""
    mean, std = data.normalization
    channels_last = conv_net and device.type == "cuda"
    crop = data.default_crop_padding if config.crop_padding is None else config.crop_padding
    flip = data.default_flip if config.flip is None else config.flip
    train = StreamingLoader(data.train, config.batch_size, mean, std, device=device, ids=ids, shuffle=True,
                            crop_padding=crop, flip=flip, drop_last=config.drop_last, seed=config.seed,
                            channels_last=channels_last, workers=workers)
    test = StreamingLoader(data.test, max(config.batch_size, 512), mean, std, device=device,
                           channels_last=channels_last, workers=workers)
    return train, test


__all__ = ["STREAMING_SOURCES", "ShardedBatchSampler", "StreamingDataset", "StreamingLoader", "StreamingSplits",
           "augment", "estimate_normalization", "extract_archive", "hf_splits", "image_folder_splits",
           "make_streaming_loaders", "open_streaming", "open_tree"]
