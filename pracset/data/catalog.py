"""The data sources: each turns files (or a download) into an :class:`ImageDataset`.

A source is a small subclass of :class:`DataSource` that implements
:meth:`DataSource.load_splits`. They live in the plain ``SOURCES`` registry;
``pracset datasets`` lists them with the canonical order that defines each
source's ``example_id``. The streamed path (:mod:`pracset.data.streaming`)
builds on this module for the sources' settings; :func:`pracset.data.load_dataset`
(in :mod:`pracset.data.sources`, which re-exports these names) picks one or the
other.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from pracset.config import ConfigBase, option, require, require_seed
from pracset.data.base import ImageDataset, ImageSplit
from pracset.data.decode import MAX_IMAGE_SIZE, decode_images, match_channels, pixels_as_uint8, to_nchw
from pracset.data.formats import read_cifar_pickle, read_idx  # noqa: F401  (read_idx: pracset.data's)
from pracset.data.hf_readers import load_hf_splits, open_hf_split
from pracset.data.readers import list_image_folder, read_tree
from pracset.errors import DataError
from pracset.registry import Registry

log = logging.getLogger(__name__)

_Found = TypeVar("_Found")

DATA_DIR_ENV = "PRACSET_DATA_DIR"


@dataclass(frozen=True)
class DataConfig(ConfigBase):
    """Which data set to load and where from."""

    name: str = option("digits", "data set (see `pracset datasets`)", metavar="NAME", flag="--data")
    data_dir: str | None = option(None, f"directory holding the data set's files (default: ${DATA_DIR_ENV})", metavar="DIR")
    download: bool = option(False, "download through torchvision / datasets when the files are absent (needs internet)")
    image_size: int | None = option(None, "resize every image to this square size (imagefolder, tiny-imagenet, hf)")
    hf_dataset: str | None = option(None, "hf: a Hugging Face dataset name, or a directory written by save_to_disk", metavar="NAME_OR_DIR")
    image_column: str | None = option(None, "hf: the image column (default: the first Image feature)", metavar="COLUMN")
    label_column: str | None = option(None, "hf: the label column (default: the first ClassLabel feature, else 'label')", metavar="COLUMN")
    train_split: str = option("train", "hf: the split to train on and select from", metavar="SPLIT")
    test_split: str = option("test", "hf: the held-out split used for evaluation", metavar="SPLIT")
    stream: bool = option(False, "decode the images batch by batch in worker processes instead of holding the "
                                 "training split in memory (imagefolder, tiny-imagenet, hf: data larger than memory)")
    workers: int | None = option(None, "--stream: decoding processes (default: one per CPU, up to 8; 0 decodes in "
                                       "the training process)", metavar="N")
    limit: int | None = option(None, "a quick trial: use only N training examples (the first N, or N drawn with "
                                     "--limit-seed), renumbered 0..N-1; part of the run's identity, and a manifest "
                                     "built so describes those N only", metavar="N", added_later=True)
    limit_seed: int | None = option(None, "with --limit: draw the N examples uniformly at random with this seed "
                                          "(kept in their canonical order) instead of taking the first N",
                                    metavar="SEED", added_later=True)

    def __post_init__(self) -> None:
        require(self.image_size is None or self.image_size > 0, f"image_size must be a positive integer, got {self.image_size}")
        require(self.image_size is None or self.image_size <= MAX_IMAGE_SIZE,
                f"image_size must be at most {MAX_IMAGE_SIZE}, got {self.image_size}")
        require(self.workers is None or self.workers >= 0, f"workers must not be negative, got {self.workers}")
        require(self.limit is None or self.limit >= 1, f"limit must be a positive integer, got {self.limit}")
        require(self.limit_seed is None or self.limit is not None, "limit_seed needs limit (how many examples)")
        if self.limit_seed is not None:
            require_seed(self.limit_seed, "limit_seed")
        require(self.limit is None or not self.stream, "limit works on data held in memory, not with stream")

    def identity(self) -> dict:
        """The settings that make two runs' data the same: all but ``workers`` (decoding processes change
        nothing), and ``stream`` only when on (so runs from before it existed keep their identity)."""
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "workers"}
        if not self.stream:
            del settings["stream"]
        for name in ("limit", "limit_seed"):  # only a trial's: runs from before they existed keep their identity
            if settings[name] is None:
                del settings[name]
        return settings

    def resolved_data_dir(self) -> Path | None:
        """``data_dir``, else ``$PRACSET_DATA_DIR``, else None."""
        value = self.data_dir or os.environ.get(DATA_DIR_ENV)
        return Path(value).expanduser() if value else None

    def hf_target(self) -> str:
        """What the hf data set loads: ``hf_dataset``, else the data directory (a ``save_to_disk`` directory)."""
        data_dir = self.resolved_data_dir()
        target = self.hf_dataset or (str(data_dir) if data_dir else None)
        if target is None:
            raise DataError("hf needs --hf-dataset NAME or --data-dir pointing at a save_to_disk directory")
        return target


class DataSource:
    """Base class of the data sources; subclasses override :meth:`load_splits`."""

    name: str = ""
    description: str = ""
    id_order: str = ""
    crop_padding: int = 0
    flip: bool = False
    torchvision_name: str = ""  # the torchvision.datasets class that downloads it, if any

    def load(self, config: DataConfig) -> ImageDataset:
        """Load the training and test splits described by ``config``."""
        (train_x, train_y), (test_x, test_y), class_names, source = self.load_splits(config)
        check_labels(self.name, class_names, train_y, test_y)
        dataset = ImageDataset(
            name=self.name,
            train=ImageSplit(_as_tensor(train_x), torch.as_tensor(train_y, dtype=torch.int64)),
            test=ImageSplit(_as_tensor(test_x), torch.as_tensor(test_y, dtype=torch.int64)),
            class_names=tuple(class_names),
            id_order=self.id_order,
            default_crop_padding=self.crop_padding,
            default_flip=self.flip,
            source=source,
        )
        log.info("loaded %s: %d train / %d test examples, %d classes, %s images",
                 self.name, len(dataset.train), len(dataset.test), dataset.num_classes,
                 "x".join(map(str, dataset.train.images.shape[1:])))
        return dataset

    def load_splits(self, config: DataConfig):
        """Return ``((train_images, train_labels), (test_images, test_labels), class_names, source_info)``.

        Images are uint8 arrays (N, C, H, W); labels integer arrays (N,).
        """
        raise NotImplementedError

    def _data_dir(self, config: DataConfig) -> Path:
        path = config.resolved_data_dir()
        if path is None:
            raise DataError(f"{self.name} needs --data-dir (or ${DATA_DIR_ENV}) naming the directory that holds it")
        if not path.exists():
            raise DataError(f"--data-dir {path} does not exist")
        return path

    def _find_or_download(self, config: DataConfig, find: Callable[[Path], _Found | None],
                          expected: str) -> tuple[Path, _Found]:
        """``find`` in the data directory; with ``download``, torchvision's ``torchvision_name`` fetches it first."""
        root = config.resolved_data_dir()
        found = find(root) if root is not None and root.exists() else None
        if found is None and config.download:
            import torchvision  # slow to import, and only a download needs it

            root = root or Path("data")
            getattr(torchvision.datasets, self.torchvision_name)(str(root), train=True, download=True)
            found = find(root)
        if found is None:
            where = f"in {root}" if root is not None else "(no --data-dir given)"
            raise DataError(f"no {self.name} files {where}: expected {expected}"
                            + ("" if config.download else "; or pass --download"))
        return root, found


def check_labels(name: str, class_names, *splits) -> None:
    """Refuse class names that are not a non-empty list of strings, and a label of any split outside
    ``0 .. len(class_names) - 1``: the classes a model is built for come from the names, and a label past
    them (a file's 10**12) would fail deep inside training."""
    if (isinstance(class_names, (str, bytes)) or not isinstance(class_names, (list, tuple)) or not class_names
            or not all(isinstance(c, str) for c in class_names)):
        raise DataError(f"{name}: the class names must be a non-empty list of strings, got "
                        f"{type(class_names).__name__}")
    for split, labels in zip(("train", "test"), splits):
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
            bad = int(labels.min()) if labels.min() < 0 else int(labels.max())
            raise DataError(f"{name} {split} split: label {bad} is not one of its {len(class_names)} classes "
                            f"(0..{len(class_names) - 1})")


def _as_tensor(images: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(images)
    if array.dtype != np.uint8:
        raise DataError(f"images must be 8-bit, got {array.dtype}")
    if not array.flags.writeable:  # e.g. np.frombuffer over a bytes object
        array = array.copy()
    return torch.from_numpy(array)


# --------------------------------------------------------------------------- digits
class DigitsSource(DataSource):
    """scikit-learn's 8x8 digits (embedded, nothing to download); every 5th example is the test split."""
    name = "digits"
    description = "scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside scikit-learn: no download)"
    id_order = (
        "sklearn.datasets.load_digits() order; every fifth example (positions 4, 9, 14, ...) is the test "
        "split, the other 1,438 are the training split, example_id = position among them"
    )

    def load_splits(self, config: DataConfig):
        from sklearn.datasets import load_digits  # here: scikit-learn loads only for the digits source

        digits = load_digits()
        # Pixel values are 0..16; map them onto 0..255 so all sources share one scale.
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
        labels = digits.target.astype(np.int64)
        is_test = np.arange(len(labels)) % 5 == 4
        classes = [str(c) for c in range(10)]
        return (images[~is_test], labels[~is_test]), (images[is_test], labels[is_test]), classes, {"origin": "sklearn.datasets.load_digits"}


# --------------------------------------------------------------------------- idx (MNIST family)
class IdxSource(DataSource):
    """MNIST-style data sets stored as four idx files."""

    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(self, name: str, title: str, torchvision_name: str, class_names: tuple[str, ...],
                 first_train_labels: tuple[int, ...] = ()):
        self.name = name
        self.description = f"{title}: four idx files (.gz or not) in --data-dir, or --download through torchvision"
        self.id_order = "row order of train-images-idx3-ubyte"
        self.torchvision_name = torchvision_name
        self.class_names = class_names
        # The first labels of the official training file: MNIST and Fashion-MNIST share file names, shapes
        # and label range, so this is what tells a directory of the one from a directory of the other.
        self.first_train_labels = first_train_labels

    def _check_not_another(self, labels: np.ndarray, root: Path | None) -> None:
        for _, other in SOURCES.items():
            if (isinstance(other, IdxSource) and other is not self and other.first_train_labels
                    and len(labels) == 60_000
                    and labels[:len(other.first_train_labels)].tolist() == list(other.first_train_labels)):
                raise DataError(f"{root} holds {other.name} files, not {self.name} (its first training labels are "
                                f"{other.name}'s); point --data-dir at the {self.name} files")

    def _find(self, root: Path) -> list[Path] | None:
        for folder in (root, root / "raw", root / self.torchvision_name / "raw"):
            found = []
            for stem in self.stems:
                candidates = [folder / stem, folder / f"{stem}.gz"]
                hit = next((c for c in candidates if c.is_file()), None)
                if hit is None:
                    break
                found.append(hit)
            else:
                return found
        return None

    def load_splits(self, config: DataConfig):
        """The four idx files: ``train-*`` is the training split, ``t10k-*`` the test split."""
        root, files = self._find_or_download(config, self._find, ", ".join(s + "[.gz]" for s in self.stems))
        train_x, train_y, test_x, test_y = (read_idx(f) for f in files)
        self._check_not_another(train_y, root)
        for images, labels, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
            if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
                raise DataError(f"{self.name} {split} files disagree: images {images.shape}, labels {labels.shape}")
            if labels.max() >= len(self.class_names):
                raise DataError(f"{self.name} {split} labels go up to {labels.max()}, expected < {len(self.class_names)}")
        return (
            (train_x[:, None], train_y.astype(np.int64)),
            (test_x[:, None], test_y.astype(np.int64)),
            self.class_names,
            {"files": [str(f) for f in files]},
        )


# --------------------------------------------------------------------------- CIFAR (python pickles)
class CifarSource(DataSource):
    """CIFAR-10 / CIFAR-100 from torchvision's python-pickle folders (``--download`` where online)."""
    crop_padding = 4
    flip = True

    def __init__(self, name: str, folder: str, train_files: tuple[str, ...], test_file: str,
                 meta_file: str, names_key: str, labels_key: str, torchvision_name: str):
        self.name = name
        self.description = f"{name.upper()} in torchvision's python-pickle layout ({folder}/) under --data-dir, or --download"
        self.id_order = f"rows of {', '.join(train_files)} in that order"
        self.folder, self.train_files, self.test_file = folder, train_files, test_file
        self.meta_file, self.names_key, self.labels_key = meta_file, names_key, labels_key
        self.torchvision_name = torchvision_name

    def _locate(self, root: Path) -> Path | None:
        for folder in (root / self.folder, root):
            if all((folder / f).is_file() for f in (*self.train_files, self.test_file, self.meta_file)):
                return folder
        return None

    @staticmethod
    def _unpickle(path: Path) -> dict:
        return read_cifar_pickle(path)

    def _batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        entry = self._unpickle(path)
        if not isinstance(entry, dict):
            raise DataError(f"{path} is not a {self.name} batch (it holds a {type(entry).__name__}, not a dict)")
        try:
            data = np.asarray(entry["data"], dtype=np.uint8)
            labels = np.asarray(entry[self.labels_key], dtype=np.int64)
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path} is not a {self.name} batch (missing {exc})") from None
        except (ValueError, OverflowError) as exc:  # labels that are not integers, or past int64
            raise DataError(f"{path}: its data or labels are not integers ({exc})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise DataError(f"{path}: expected (N, 3072) pixels and N labels, got {data.shape} and {labels.shape}")
        return data.reshape(-1, 3, 32, 32), labels

    def load_splits(self, config: DataConfig):
        """The training batches in order, the test batch, and the class names of the meta file."""
        expected = f"{self.folder}/ holding " + ", ".join((*self.train_files, self.test_file, self.meta_file))
        _, folder = self._find_or_download(config, self._locate, expected)
        parts = [self._batch(folder / f) for f in self.train_files]
        train_x = np.concatenate([p[0] for p in parts])
        train_y = np.concatenate([p[1] for p in parts])
        test_x, test_y = self._batch(folder / self.test_file)
        meta = self._unpickle(folder / self.meta_file)
        if not isinstance(meta, dict) or self.names_key not in meta:
            raise DataError(f"{folder / self.meta_file} has no {self.names_key!r}")
        names = meta[self.names_key]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DataError(f"{folder / self.meta_file}: {self.names_key!r} must be a list of class names, got "
                            f"{type(names).__name__}")
        return (train_x, train_y), (test_x, test_y), names, {"folder": str(folder)}


# --------------------------------------------------------------------------- image folders
class ImageFolderSource(DataSource):
    """``train/<class>/**/image`` and ``test/<class>/**`` (or ``val/``) trees."""

    crop_padding = 4
    flip = True

    def __init__(self, name: str = "imagefolder", description: str | None = None):
        self.name = name
        self.description = description or (
            "any train/<class>/* + test/<class>/* (or val/) tree in --data-dir, a directory or a .tar(.gz) of one"
        )
        self.id_order = "classes sorted by folder name, then files sorted by relative path within each class"

    def load_splits(self, config: DataConfig):
        """Every image of ``train/`` and of ``test/`` (else ``val/``), decoded; see :func:`list_image_folder`."""
        tree = read_tree(self._data_dir(config))
        listing = list_image_folder(tree)

        def decode(files, what):
            return decode_images([tree.read(p) for p in files], config.image_size, f"{tree.root}/{what}")

        tx, vx = decode(listing.train_files, "train"), decode(listing.test_files, listing.test_split)
        tx, vx = match_channels(tx, vx)
        return ((tx, listing.train_labels), (vx, listing.test_labels), listing.classes,
                {"root": str(tree.root), "test_split": listing.test_split})


# --------------------------------------------------------------------------- Hugging Face datasets
def hf_split_arrays(split, image_column: str | None, label_column: str | None, image_size: int | None, what: str):
    """Images (N, C, H, W) uint8, labels and class names of a ``datasets.Dataset`` (see :func:`open_hf_split`)."""
    reader, labels, classes = open_hf_split(split, image_column, label_column, what)
    if reader.kind == "encoded":
        return decode_images(reader.read_all(), image_size, what), labels, classes
    images = pixels_as_uint8(np.asarray(reader.read_all()))
    if images.dtype != np.uint8:
        raise DataError(f"{what}: column {reader.column!r} holds {images.dtype}, expected uint8 pixels or images")
    return to_nchw(images), labels, classes


class HuggingFaceSource(DataSource):
    """Any Hugging Face ``datasets`` dataset: a hub name (``--hf-dataset``) or a ``save_to_disk`` folder."""
    name = "hf"
    description = "any Hugging Face datasets dataset: --hf-dataset NAME (online) or a save_to_disk directory"
    id_order = "row order of the training split as datasets returns it"

    def load_splits(self, config: DataConfig):
        """The ``train_split`` and ``test_split`` of a DatasetDict, every row decoded."""
        target = config.hf_target()
        loaded = load_hf_splits(target, config.train_split, config.test_split)
        tx, ty, classes = hf_split_arrays(loaded[config.train_split], config.image_column, config.label_column, config.image_size, target)
        vx, vy, _ = hf_split_arrays(loaded[config.test_split], config.image_column, config.label_column, config.image_size, target)
        tx, vx = match_channels(tx, vx)
        return (tx, ty), (vx, vy), classes, {"dataset": target, "train_split": config.train_split, "test_split": config.test_split}


SOURCES: Registry[DataSource] = Registry("data set", {
    "digits": DigitsSource(),
    "mnist": IdxSource("mnist", "MNIST handwritten digits", "MNIST", tuple(str(i) for i in range(10)),
                       first_train_labels=(5, 0, 4, 1, 9, 2, 1, 3, 1, 4)),
    "fashion-mnist": IdxSource("fashion-mnist", "Fashion-MNIST (Zalando)", "FashionMNIST", (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        first_train_labels=(9, 0, 0, 3, 0, 2, 7, 2, 5, 5)),
    "cifar10": CifarSource("cifar10", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                           "test_batch", "batches.meta", "label_names", "labels", "CIFAR10"),
    "cifar100": CifarSource("cifar100", "cifar-100-python", ("train",), "test", "meta",
                            "fine_label_names", "fine_labels", "CIFAR100"),
    "imagefolder": ImageFolderSource(),
    "tiny-imagenet": ImageFolderSource("tiny-imagenet", "Tiny ImageNet's tiny-imagenet-200 folder (train/<wnid>/images, val/ with val_annotations.txt)"),
    "hf": HuggingFaceSource(),
})


__all__ = ["DATA_DIR_ENV", "SOURCES", "CifarSource", "DataConfig", "DataSource", "DigitsSource", "HuggingFaceSource",
           "IdxSource", "ImageFolderSource", "check_labels", "hf_split_arrays", "read_idx"]
