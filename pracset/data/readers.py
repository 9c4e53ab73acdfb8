"""Readers of encoded images shared by the in-memory sources and the streaming data sets.

Both paths list and read their files here, so that example ``i`` is the same
file (or row) whichever path loads it:

* **trees** of image files: :class:`FolderTree` (a directory, read on
  demand), :class:`ArchiveTree` (any tar, members read into memory at once)
  and :class:`TarTree` (an uncompressed tar, members read in place by
  offset). Each offers ``root``, sorted relative POSIX ``paths`` and
  ``read(rel) -> bytes``. A tar that wraps its tree in one folder has that
  folder stripped (:func:`single_top`).
* **image folders**: :func:`list_image_folder` finds the classes and the
  train and test (or val, Tiny ImageNet's annotated val too) files of a tree
  in canonical id order.
* **Hugging Face** ``datasets``: in :mod:`pracset.data.hf_readers`.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from pracset.errors import DataError
from pracset.fileio import require_regular_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
#: The most classes a label column without class names may imply (its largest label + 1).
MAX_CLASSES = 100_000
#: The largest file of an image data set (in a folder or a tar): one claiming more is refused before it is read.
MAX_FILE_BYTES = 1 << 28


# ----------------------------------------------------------------------------- trees of files
def single_top(paths: Sequence[str]) -> str:
    """``"top/"`` when every path lies in one folder that is not a split folder, else ``""``.

    An archive usually wraps its tree in one top-level folder; that folder is
    stripped so that ``train/...`` paths look the same as in a directory.
    """
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) == 1 and not any(p.startswith(t) for t in ("train/", "test/", "val/") for p in paths):
        return tops.pop() + "/"
    return ""


def _member_name(member: tarfile.TarInfo) -> str:
    return member.name[2:] if member.name.startswith("./") else member.name


def read_image_file(path: Path | str, *, follow_symlinks: bool = True) -> bytes:
    """The bytes of an image file: a regular file (a FIFO would block forever) no larger than
    :data:`MAX_FILE_BYTES`, both checked before anything is read."""
    path = require_regular_file(path, "image file", error=DataError, follow_symlinks=follow_symlinks)
    with open(path, "rb") as handle:
        _check_size(str(path), os.fstat(handle.fileno()).st_size)
        return handle.read(MAX_FILE_BYTES + 1)


def _check_size(where: str, size: int) -> None:
    """Refuse a file or tar member over :data:`MAX_FILE_BYTES` by the size it claims, before reading any of it."""
    if size > MAX_FILE_BYTES:
        raise DataError(f"{where} is {size} bytes, more than an image data set's file may be ({MAX_FILE_BYTES} "
                        "bytes)")


class FolderTree:
    """Files under a directory, as sorted relative POSIX paths, read on demand."""

    def __init__(self, root: Path):
        self.root = root
        self.paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def read(self, rel: str) -> bytes:
        """The bytes of file ``rel`` (:func:`read_image_file`)."""
        return read_image_file(self.root / rel)

    def signature(self, files: Sequence[str], times: bool = True) -> str:
        """What ``files`` hold, cheaply: each name, size and (``times``) modification time."""
        parts = []
        for rel in files:
            try:
                stat = (self.root / rel).stat()
            except OSError as exc:
                raise DataError(f"cannot read {self.root / rel}: {exc.strerror or exc}") from None
            parts.append(f"{rel}\0{stat.st_size}" + (f"\0{stat.st_mtime_ns}" if times else ""))
        return "\n".join(parts)


class ArchiveTree:
    """The files of a tar archive (compressed or not), all read into memory in one pass."""

    def __init__(self, archive: Path):
        self.root = archive
        blobs: dict[str, bytes] = {}
        require_regular_file(archive, "archive", error=DataError)  # a FIFO or a device would block or never end
        try:
            with tarfile.open(archive, "r:*") as handle:
                for member in handle:
                    if member.isfile():
                        name = _member_name(member)  # the size its header claims, checked before it is read
                        _check_size(f"{archive}: member {name}", member.size)
                        blobs[name] = handle.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot read archive {archive}: {exc}") from None
        top = single_top(sorted(blobs))
        self._blobs = {k[len(top):]: v for k, v in blobs.items()} if top else blobs
        self.paths = sorted(self._blobs)

    def read(self, rel: str) -> bytes:
        """The bytes of member ``rel``."""
        return self._blobs[rel]


class TarTree:
    """Members of an *uncompressed* tar archive, read by offset (no extraction, no decompression)."""

    def __init__(self, archive: Path):
        self.root = archive
        offsets: dict[str, tuple[int, int]] = {}
        require_regular_file(archive, "archive", error=DataError)  # a FIFO or a device would block or never end
        try:
            size = archive.stat().st_size
            with tarfile.open(archive, "r:") as handle:
                for member in handle:
                    if member.isfile():
                        name = _member_name(member)
                        _check_size(f"{archive}: member {name}", member.size)
                        if member.offset_data + member.size > size:
                            raise DataError(f"{archive} is truncated: member {name} ends past the end of the file")
                        offsets[name] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot index archive {archive}: {exc}") from None
        top = single_top(sorted(offsets))
        self._offsets = {k[len(top):]: v for k, v in offsets.items()} if top else offsets
        self.paths = sorted(self._offsets)
        self._fd: int | None = None
        self._pid = -1

    def read(self, rel: str) -> bytes:
        """The bytes of member ``rel``."""
        if self._fd is None or self._pid != os.getpid():  # one descriptor per (worker) process
            self._fd, self._pid = os.open(self.root, os.O_RDONLY), os.getpid()
        offset, size = self._offsets[rel]
        return os.pread(self._fd, size, offset)

    def signature(self, files: Sequence[str], times: bool = True) -> str:
        """What ``files`` hold, cheaply: the archive's size, (``times``) modification time and each member's place."""
        stat = self.root.stat()
        head = f"{stat.st_size}" + (f"\0{stat.st_mtime_ns}" if times else "")
        return head + "\n" + "\n".join(f"{rel}\0{self._offsets[rel]}" for rel in files)

    def __getstate__(self) -> dict:
        # a descriptor does not survive pickling into a worker process: each opens its own
        return {**self.__dict__, "_fd": None, "_pid": -1}


def is_compressed(archive: Path) -> bool:
    """Whether ``archive`` starts with a gzip, bzip2 or xz header."""
    require_regular_file(archive, "archive", error=DataError)
    with open(archive, "rb") as handle:
        magic = handle.read(6)
    return magic[:2] == b"\x1f\x8b" or magic[:3] == b"BZh" or magic[:6] == b"\xfd7zXZ\x00"


def read_tree(root: Path) -> FolderTree | ArchiveTree:
    """A directory (read on demand) or a tar archive (read into memory): the in-memory sources' trees."""
    if root.is_dir():
        return FolderTree(root)
    require_regular_file(root, "data file", error=DataError)  # is_tarfile of a FIFO or /dev/zero never returns
    if tarfile.is_tarfile(root):
        return ArchiveTree(root)
    raise DataError(f"{root} is neither a directory nor a tar archive")


def _data_filter(member: tarfile.TarInfo, dest: str, archive: Path) -> tarfile.TarInfo | None:
    """tarfile's ``"data"`` filter, refusing a member over :data:`MAX_FILE_BYTES` before it is written."""
    if member.isfile():
        _check_size(f"{archive}: member {_member_name(member)}", member.size)
    return tarfile.data_filter(member, dest)


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` (any tar, compressed or not) into ``dest`` once; returns the tree's root.

    A finished extraction leaves ``dest/.extracted`` and is not redone. The root
    skips one wrapping folder (:func:`single_top`), as :class:`ArchiveTree` does.
    """
    archive, dest = Path(archive), Path(dest)
    marker = dest / ".extracted"
    if not marker.exists():
        require_regular_file(archive, "archive", error=DataError)  # before anything is made or opened
        partial = dest.with_name(dest.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            with tarfile.open(archive, "r:*") as handle:
                handle.extractall(partial, filter=lambda member, at: _data_filter(member, at, archive))
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            raise DataError(f"cannot extract {archive}: {exc}") from None
        except DataError:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        (partial / ".extracted").write_text(str(archive) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        partial.rename(dest)
    names = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file() and p.name != ".extracted")
    top = single_top(names)
    return dest / top.rstrip("/") if top else dest


def open_tree(path: str | Path, *, extract_to: str | Path | None = None) -> FolderTree | TarTree:
    """A directory or an uncompressed tar, read lazily; a compressed tar is extracted into ``extract_to`` first.

    The streaming data sets' trees: every read must be random access.
    """
    path = Path(path)
    if path.is_dir():
        return FolderTree(path)
    if not path.exists():
        raise DataError(f"--data-dir {path} does not exist")
    require_regular_file(path, "--data-dir", error=DataError)  # is_tarfile of a FIFO or /dev/zero never returns
    if not tarfile.is_tarfile(path):
        raise DataError(f"{path} is neither a directory nor a tar archive")
    if is_compressed(path):
        if extract_to is None:
            raise DataError(f"{path} is a compressed archive: streaming needs random access to its images; extract "
                            f"it (e.g. tar -xf {path.name}) or pass extract_to=DIR, or repack it as an uncompressed .tar")
        return FolderTree(extract_archive(path, extract_to))
    return TarTree(path)


# ----------------------------------------------------------------------------- image folders
def split_pairs(tree, split: str, classes: Sequence[str] | None) -> list[tuple[str | None, str]]:
    """``(class, path)`` of every image of ``split`` in ``tree``, in the tree's path order.

    The class is the first folder below ``split/``; or, when the split holds a
    ``val_annotations.txt`` (Tiny ImageNet's val layout) and the training
    ``classes`` are known, the class that file names (None for an image it
    does not name).
    """
    prefix = split + "/"
    files = [p for p in tree.paths if p.startswith(prefix) and PurePosixPath(p).suffix.lower() in IMAGE_SUFFIXES]
    annotations = prefix + "val_annotations.txt"
    if annotations in tree.paths and classes is not None:
        table = {}
        for line in tree.read(annotations).decode().splitlines():
            cells = line.split("\t")
            if len(cells) >= 2:
                table[cells[0]] = cells[1]
        return [(table.get(PurePosixPath(p).name), p) for p in files]
    return [(p[len(prefix):].split("/", 1)[0], p) for p in files if p.count("/") >= 2]


@dataclass(frozen=True)
class FolderListing:
    """An image-folder tree's classes and its two splits' files and labels, in canonical id order.

    Classes are sorted by folder name; within a split, files are sorted by
    class, then by relative path. ``test_split`` is ``"test"`` or ``"val"``.
    """

    classes: list[str]
    train_files: list[str]
    train_labels: np.ndarray
    test_files: list[str]
    test_labels: np.ndarray
    test_split: str


def list_image_folder(tree) -> FolderListing:
    """List ``train/<class>/**`` and the first of ``test/`` or ``val/`` whose images all have training classes."""
    train_pairs = split_pairs(tree, "train", None)
    if not train_pairs:
        raise DataError(f"{tree.root} holds no train/<class>/<image> files")
    classes = sorted({c for c, _ in train_pairs})
    index = {c: i for i, c in enumerate(classes)}
    for split in ("test", "val"):
        test_pairs = split_pairs(tree, split, classes)
        if test_pairs and all(c in index for c, _ in test_pairs):
            test_split = split
            break
    else:
        raise DataError(f"{tree.root} holds no labelled test/<class>/ or val/<class>/ images of the training classes")

    def ordered(pairs):
        pairs = sorted(pairs, key=lambda cp: (index[cp[0]], cp[1]))
        return [p for _, p in pairs], np.array([index[c] for c, _ in pairs], dtype=np.int64)

    (train_files, train_labels), (test_files, test_labels) = ordered(train_pairs), ordered(test_pairs)
    return FolderListing(classes, train_files, train_labels, test_files, test_labels, test_split)


class TreeReader:
    """Reads example ``i`` of a split as the bytes of its file ``files[i]`` in a tree."""

    kind = "encoded"

    def __init__(self, tree, files: Sequence[str]):
        self.tree = tree
        self.files = list(files)

    def read_many(self, ids: Sequence[int]) -> list[bytes]:
        """The encoded images ``ids``, in that order (a file gone or unreadable since the listing: one line)."""
        try:
            return [self.tree.read(self.files[i]) for i in ids]
        except OSError as exc:
            raise DataError(f"cannot read {exc.filename or self.tree.root}: {exc.strerror or exc}; the data "
                            "changed since it was listed? (--resume continues once it is back)") from None

    def describe(self, i: int) -> str:
        """Where example ``i`` comes from, for error messages."""
        return f"{self.tree.root}/{self.files[i]}"

    def signature(self, times: bool = True) -> str:
        """A cheap summary of the split's files that changes when one is added, removed or (``times``) rewritten."""
        return f"tree:{self.tree.root}\n" + self.tree.signature(self.files, times)
