"""In-memory image data with stable example ids, content hashes and fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from pracset.data.protocol import describe_dataset
from pracset.fingerprints import fingerprint
from pracset.errors import DataError


@dataclass(frozen=True)
class ImageSplit:
    """One split of a data set: ``images`` and ``labels`` int64 (N,).

    ``images`` are uint8 pixels (N, C, H, W), normalised by the loader, or
    float32 inputs of any shape (N, ...) (a user's own tensors, see
    :func:`pracset.data.torch_data.from_torch`), used as given. The example id
    of an example is its row: position ``i`` in the split's canonical order
    (each source documents that order).
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        pixels = self.images.dtype == torch.uint8 and self.images.dim() == 4
        features = self.images.dtype == torch.float32 and self.images.dim() >= 2
        if not (pixels or features):
            raise DataError("images must be a uint8 (N, C, H, W) or a float32 (N, ...) tensor, "
                            f"got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise DataError(f"labels must be an int64 (N,) tensor, got {self.labels.dtype} {tuple(self.labels.shape)}")
        if len(self.images) != len(self.labels):
            raise DataError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.images) == 0:
            raise DataError("the split holds no examples")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        """Where the pixels and labels live."""
        return self.images.device

    @property
    def is_pixels(self) -> bool:
        """Whether the inputs are uint8 pixels (normalised by the loader) rather than float inputs used as given."""
        return self.images.dtype == torch.uint8

    @property
    def channels(self) -> int:
        """Channels of an input: C of (N, C, H, W) images; 1 for inputs of another shape."""
        return int(self.images.shape[1]) if self.images.dim() == 4 else 1

    def to(self, device: torch.device | str) -> "ImageSplit":
        """The split on ``device``; no copy when it is already there."""
        return ImageSplit(self.images.to(device), self.labels.to(device))


def content_hashes(images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per-example content hashes (16 hex characters each).

    blake2b with an 8-byte digest over: the label as 8-byte little-endian
    integer, C, H and W as 4-byte little-endian integers, then the uint8 pixels
    in C, H, W order. Two copies of a data set that decode to the same pixels and
    labels get the same hashes whatever their file format or order.

    Float32 inputs (a user's own tensors) hash the label, the tag ``f32``, the
    input's shape (4-byte little-endian integers) and its little-endian float32
    bytes: a float input never hashes like a pixel image.
    """
    images_np = images.detach().cpu().contiguous().numpy()
    labels_np = labels.detach().cpu().numpy()
    if images_np.dtype == np.uint8:
        c, h, w = images_np.shape[1:]
        shape = struct.pack("<III", c, h, w)
    else:
        images_np = images_np.astype("<f4", copy=False)
        shape = b"f32" + struct.pack(f"<{images_np.ndim - 1}I", *images_np.shape[1:])
    out = np.empty(len(labels_np), dtype=object)
    blake = hashlib.blake2b
    for i in range(len(labels_np)):
        digest = blake(struct.pack("<q", int(labels_np[i])) + shape, digest_size=8)
        digest.update(images_np[i].data)
        out[i] = digest.hexdigest()
    return out.astype("U16")


#: What :func:`content_hashes` hashed (a manifest's ``dataset.hash_form``): uint8 pixels, which every copy of the
#: images that decodes to the same pixels hashes alike, or float inputs (say after ToTensor + Normalize), which
#: only the same float tensors do: never an image file or a Hugging Face copy of the images.
HASH_FORM_PIXELS = "uint8-pixels"
HASH_FORM_FLOAT = "float-tensor"


def hash_form(split) -> str:
    """:data:`HASH_FORM_PIXELS` or :data:`HASH_FORM_FLOAT`: what the content hashes of ``split`` are taken of
    (a streamed split always decodes to uint8 pixels)."""
    return HASH_FORM_PIXELS if getattr(split, "is_pixels", True) else HASH_FORM_FLOAT


@dataclass
class ImageDataset:
    """A labelled image data set held in memory (a :class:`~pracset.data.protocol.SplitDataset`).

    ``train`` is the split whose examples PrAC scores and selects; ``test`` is
    the held-out split used for evaluation only.
    """

    name: str
    train: ImageSplit
    test: ImageSplit
    class_names: tuple[str, ...]
    id_order: str
    default_crop_padding: int = 0
    default_flip: bool = False
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train.images.dtype != self.test.images.dtype:
            raise DataError(f"{self.name}: train inputs are {self.train.images.dtype} but test inputs are "
                            f"{self.test.images.dtype}")
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"{self.name}: train images are {tuple(self.train.images.shape[1:])} "
                f"but test images are {tuple(self.test.images.shape[1:])}"
            )
        k = len(self.class_names)
        for split_name, split in (("train", self.train), ("test", self.test)):
            low, high = int(split.labels.min()), int(split.labels.max())
            if low < 0 or high >= k:
                raise DataError(f"{self.name}: {split_name} labels span {low}..{high} but there are {k} classes")

    @property
    def num_classes(self) -> int:
        """The number of classes."""
        return len(self.class_names)

    @property
    def channels(self) -> int:
        """Channels of every image (1 or 3; 1 for inputs that are not (C, H, W) images)."""
        return self.train.channels

    @property
    def image_size(self) -> tuple[int, int]:
        """Height and width of every image; (1, D) for inputs of another shape (D values each)."""
        shape = self.train.images.shape
        if len(shape) == 4:
            return int(shape[2]), int(shape[3])
        return 1, int(np.prod(shape[1:]))

    @cached_property
    def train_hashes(self) -> np.ndarray:
        """Content hash of every training example, indexed by example id."""
        return content_hashes(self.train.images, self.train.labels)

    @cached_property
    def fingerprint(self) -> str:
        """Fingerprint of the training split (content and canonical order)."""
        return fingerprint(self.train_hashes, self.class_names)

    @cached_property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation of the training pixels in [0, 1].

        Float inputs are used as given: their normalisation is the identity (mean 0, std 1).
        """
        if not self.train.is_pixels:
            return (0.0,) * self.channels, (1.0,) * self.channels
        pixels = self.train.images.transpose(0, 1).reshape(self.channels, -1)
        mean = torch.zeros(self.channels, dtype=torch.float64)
        sq = torch.zeros(self.channels, dtype=torch.float64)
        for start in range(0, pixels.shape[1], 1 << 24):  # bounded memory on big sets
            chunk = pixels[:, start : start + (1 << 24)].to(torch.float64) / 255.0
            mean += chunk.sum(1)
            sq += (chunk * chunk).sum(1)
        n = pixels.shape[1]
        mean /= n
        std = (sq / n - mean * mean).clamp_min(1e-12).sqrt()
        return tuple(round(float(m), 6) for m in mean), tuple(round(float(s), 6) for s in std)

    def describe(self) -> dict:
        """A JSON-friendly summary (no pixels)."""
        return describe_dataset(self)

    def replace(self, **changes) -> "ImageDataset":
        """A copy with ``changes`` applied to its fields."""
        return dataclasses.replace(self, **changes)
