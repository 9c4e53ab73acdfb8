"""Bring your own data: torch tensors, Datasets and DataLoaders as pracset data.

Two ways in, for two needs:

- :func:`from_torch` turns a training and a test set (tensors ``(x, y)``, a
  map-style or iterable ``Dataset``, or a ``DataLoader``) into an
  :class:`~pracset.data.base.ImageDataset`, decoded once and then held on the
  training device like the built-in sets, so ``build_manifest`` and
  ``find_tickets`` take it as they take MNIST. The Dataset's transforms run
  once, when it is read: random augmentation belongs to pracset's loader
  (``TrainConfig.crop_padding`` / ``flip``) or to your own loop.
- :func:`as_batch_loader` lets :class:`~pracset.train.loop.Trainer` and the
  probe iterate a user's ``DataLoader`` as it is (its sampler, workers and
  augmentation), yielding ``Batch(x, y, index)`` on the model's device.

Every example needs an id (its row in the training set) so that statistics,
selections and manifests can name it. A DataLoader whose items are
``(x, y, index)`` gives it; one of ``(x, y)`` over a map-style Dataset is
rebuilt over the same Dataset and batch sampler with the index added (so it
may shuffle); an iterable Dataset of ``(x, y)`` pairs must be read in order.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, SequentialSampler

from pracset.data.base import ImageDataset, ImageSplit
from pracset.data.loader import Batch
from pracset.distributed import is_distributed
from pracset.errors import DataError

#: How many items at a time :func:`from_torch` reads from a Dataset.
READ_BATCH = 256


class _WithIndex(Dataset):
    """A map-style Dataset whose items come with their index: ``(item, index)``."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index], index


class _CollateWithIndex:
    """The loader's own collate function over the items; their indices collated apart as one tensor."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, batch):
        x, y = _pair(self.collate([item for item, _ in batch]), "a collated batch")
        return x, y, torch.tensor([index for _, index in batch], dtype=torch.int64)


def _pair(item: Any, what: str) -> tuple[Any, Any]:
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise DataError(f"{what} must be (x, y) or (x, y, index) tuples, got {type(item).__name__}")
    return item[0], item[1]


def _is_map_style(dataset: Any) -> bool:
    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


def _item_arity(dataset: Dataset) -> int:
    """2 for ``(x, y)`` items, 3 for ``(x, y, index)`` (read from the first item)."""
    if len(dataset) == 0:
        raise DataError("the Dataset holds no examples")
    item = dataset[0]
    _pair(item, "the Dataset's items")
    return 3 if len(item) >= 3 else 2


def indexed_loader(loader: DataLoader) -> DataLoader:
    """``loader`` itself when its batches carry example ids, else the same loader over ``(x, y, index)`` items.

    The rebuilt loader keeps the batch sampler (so the order and the batch
    sizes), the workers, the collate function and the generator.
    """
    dataset = loader.dataset
    if not _is_map_style(dataset) or _item_arity(dataset) == 3:
        return loader
    if loader.batch_sampler is None:
        raise DataError("a DataLoader with batch_size=None yields single items; give it a batch size")
    workers = loader.num_workers
    return DataLoader(_WithIndex(dataset), batch_sampler=loader.batch_sampler, num_workers=workers,
                      collate_fn=_CollateWithIndex(loader.collate_fn), pin_memory=loader.pin_memory,
                      timeout=loader.timeout, worker_init_fn=loader.worker_init_fn, generator=loader.generator,
                      persistent_workers=loader.persistent_workers,
                      prefetch_factor=loader.prefetch_factor if workers > 0 else None,
                      multiprocessing_context=loader.multiprocessing_context)


def _batch_parts(batch: Any, ordered_start: int | None) -> tuple[Any, Any, torch.Tensor]:
    """(x, y, index) of one collated batch; ``ordered_start`` gives ids to ``(x, y)`` batches read in order."""
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise DataError(f"a DataLoader batch must be (x, y) or (x, y, index), got {type(batch).__name__}")
    x, y = batch[0], batch[1]
    if len(batch) >= 3:
        return x, y, torch.as_tensor(batch[2], dtype=torch.int64).reshape(-1)
    if ordered_start is None:
        raise DataError("the DataLoader yields (x, y) batches of an iterable Dataset: pracset cannot tell which "
                        "example each row is; yield (x, y, index) instead")
    return x, y, torch.arange(ordered_start, ordered_start + len(y), dtype=torch.int64)


class TorchBatches:
    """A user's ``DataLoader`` seen as a pracset loader: ``Batch(x, y, index)`` on ``device``.

    ``set_epoch`` is passed on to a sampler that has one (``DistributedSampler``).
    Copies to the device are asynchronous where the loader pins its memory.
    """

    shuffle = False
    crop_padding = 0
    flip = False
    sharded = False

    def __init__(self, loader: DataLoader, device: torch.device | str):
        if is_distributed():
            raise DataError("a torch DataLoader of your own cannot be trained under torchrun (each rank would train "
                            "a separate model on its own examples); use from_torch's data or pracset's loaders")
        try:
            len(loader)
        except TypeError:
            raise DataError("the DataLoader has no length (an iterable Dataset without __len__): pracset needs the "
                            "steps per epoch for its schedules; give the Dataset a __len__") from None
        self.loader = indexed_loader(loader)
        self.device = torch.device(device)
        self.batch_size = loader.batch_size
        self.drop_last = loader.drop_last
        self._ordered = isinstance(loader.dataset, IterableDataset)
        self.epoch = 0

    @property
    def num_examples(self) -> int:
        """Examples an epoch visits: the sampler's length, less a dropped last batch."""
        if self.drop_last and self.batch_size:
            return len(self) * self.batch_size
        sampler = self.loader.sampler
        return len(sampler) if hasattr(sampler, "__len__") else len(self.loader.dataset)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        """Tell the sampler (when it takes it) which epoch comes next."""
        self.epoch = epoch
        for sampler in (self.loader.sampler, getattr(self.loader.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
                break

    def __iter__(self) -> Iterator[Batch]:
        seen = 0
        non_blocking = self.loader.pin_memory
        for batch in self.loader:
            x, y, index = _batch_parts(batch, seen if self._ordered else None)
            seen += len(index)
            x = torch.as_tensor(x).to(self.device, non_blocking=non_blocking)
            y = torch.as_tensor(y).to(self.device, dtype=torch.int64, non_blocking=non_blocking)
            yield Batch(x.float() if not x.is_floating_point() else x, y, index.to(self.device, non_blocking=True))


def as_batch_loader(loader: Any, device: torch.device | str) -> Any:
    """``loader`` when it already yields pracset batches (``DeviceLoader``, ``StreamingLoader``), else a
    :class:`TorchBatches` over a torch ``DataLoader``."""
    if isinstance(loader, DataLoader):
        return TorchBatches(loader, device)
    if hasattr(loader, "set_epoch") and hasattr(loader, "num_examples") and hasattr(loader, "device"):
        return loader
    raise DataError(f"expected a pracset loader or a torch DataLoader, got {type(loader).__name__}")


def _as_inputs(x: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) pixels stay pixels; anything else becomes float32 inputs used as given.

    uint8 (N, H, W, C) images (torchvision's ``CIFAR10.data`` layout: a last
    dimension of 1, 3 or 4 channels where the second is not) are transposed.
    """
    channels = (1, 3, 4)
    if x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] not in channels and x.shape[3] in channels:
        x = x.permute(0, 3, 1, 2)
    if x.dtype == torch.uint8 and x.dim() == 4:
        return x.contiguous()
    if x.dtype == torch.uint8 and x.dim() == 3:  # (N, H, W) grey pixels
        return x[:, None].contiguous()
    return x.to(torch.float32).contiguous()


def _as_labels(y: Any, what: str) -> torch.Tensor:
    labels = torch.as_tensor(y)
    if labels.is_floating_point() or labels.is_complex() or labels.dim() != 1:
        raise DataError(f"{what}: labels must be class indices (N,), got {labels.dtype} {tuple(labels.shape)}")
    return labels.to(torch.int64)


def read_examples(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All examples of ``data`` in id order as ``(inputs, labels)`` CPU tensors.

    ``data`` is a pair of tensors/arrays ``(x, y)``, a Dataset (map-style:
    id = position; iterable: id = the order read, or the index it yields) or a
    DataLoader (its items' ``index`` when given, else the order of a
    non-shuffling loader).
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (Dataset, DataLoader)):
        x, y = torch.as_tensor(np.asarray(data[0]) if not isinstance(data[0], torch.Tensor) else data[0]), data[1]
        return _as_inputs(x), _as_labels(y, what)
    if isinstance(data, DataLoader):
        if data.drop_last:
            raise DataError(f"{what}: the DataLoader drops its last incomplete batch, so some examples would be "
                            "missing; give it drop_last=False (or its Dataset)")
        loader = data
        arity = _item_arity(data.dataset) if _is_map_style(data.dataset) else None
        if arity == 2 and not isinstance(data.sampler, SequentialSampler):
            raise DataError(f"{what}: the DataLoader shuffles (x, y) items, so pracset cannot tell which example "
                            "each row is; give its Dataset, or yield (x, y, index)")
    elif isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=READ_BATCH, shuffle=False)
    else:
        raise DataError(f"{what}: expected tensors (x, y), a torch Dataset or a DataLoader, got {type(data).__name__}")
    xs, ys, ids, seen = [], [], [], 0
    for batch in loader:
        x, y, index = _batch_parts(batch, seen)
        seen += len(index)
        xs.append(torch.as_tensor(x))
        ys.append(_as_labels(y, what))
        ids.append(index)
    if not xs:
        raise DataError(f"{what} holds no examples")
    inputs, labels, order = torch.cat(xs), torch.cat(ys), torch.cat(ids)
    if not torch.equal(torch.sort(order).values, torch.arange(len(order))):
        raise DataError(f"{what}: the example ids must be 0..{len(order) - 1}, each once")
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order))
    return _as_inputs(inputs[inverse]), labels[inverse]


def from_torch(train: Any, test: Any, *, name: str = "custom", class_names: Sequence[str] | None = None,
               crop_padding: int = 0, flip: bool = False) -> ImageDataset:
    """A training and a test set of your own as a pracset data set, held in memory.

    Args:
        train, test: tensors ``(x, y)``, torch Datasets or DataLoaders (see
            :func:`read_examples`); the training set's row ``i`` is example id ``i``.
        name: the data set's name in manifests and reports.
        class_names: one name per class (default: ``"0"``, ``"1"``, ... up to the largest label).
        crop_padding, flip: the augmentation pracset's loader applies by
            default when training on it (images only).

    uint8 ``(N, C, H, W)`` (or ``(N, H, W)``) inputs are pixels, normalised
    with the training set's per-channel statistics like the built-in sets;
    any other inputs become float32 and are used exactly as given.
    """
    train_x, train_y = read_examples(train, "the training set")
    test_x, test_y = read_examples(test, "the test set")
    if class_names is None:
        classes = int(max(int(train_y.max()), int(test_y.max()))) + 1
        class_names = [str(k) for k in range(classes)]
    if int(min(train_y.min(), test_y.min())) < 0:
        raise DataError("labels must be class indices 0, 1, ...; got a negative label")
    return ImageDataset(name=name, train=ImageSplit(train_x, train_y), test=ImageSplit(test_x, test_y),
                        class_names=tuple(class_names), id_order="the order of the training set given to from_torch",
                        default_crop_padding=crop_padding, default_flip=flip,
                        source={"kind": "python", "train_examples": len(train_y), "test_examples": len(test_y)})


def as_dataset(data: Any) -> ImageDataset | None:
    """``data`` as a pracset data set when it is one already or a ``(train, test)`` pair of torch data; else None."""
    if isinstance(data, ImageDataset) or (hasattr(data, "train_hashes") and hasattr(data, "fingerprint")):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], torch.Tensor):
        return from_torch(data[0], data[1])
    return None


__all__ = ["TorchBatches", "as_batch_loader", "as_dataset", "from_torch", "indexed_loader", "read_examples"]
