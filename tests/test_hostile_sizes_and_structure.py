"""Hostile files, part two: sizes a file states, and files that parse but hold the wrong structure.

Issue 23, items 5 and 6. Every case crafts a small file in ``tmp_path`` and checks that pracset answers it
with one line (exit code 2 from the command line, a :class:`~pracset.errors.PracsetError` subclass from
Python), never a traceback:

* **sizes read from a file are checked before anything is allocated**: a manifest claiming 2**62 examples,
  an idx header whose dimensions overflow, gzip and tar members that expand to 16 GiB, a pickle claiming a
  2**62-byte string, a decompression-bomb PNG, ``--image-size 100000``, a Hugging Face label of 10**12
  without class names, a cache entry claiming 2**40 hashes. These commands run in a child process whose
  address space is capped at what it had plus :data:`HEADROOM` (``RLIMIT_AS``): an allocation of what the
  file claims fails there (a MemoryError and its traceback), so a test passes only when the refusal comes
  first; and the real machine never sees such an allocation.
* **structure, not only format**: a TOML value nested 100,000 deep (brackets, and a dotted key), manifest
  metadata with ``class_names = 5`` or a label of 2**40, ``ledger.json`` as ``{"stages": 5}``, a truncated or
  reshaped ``metrics.json``, a truncated ``rewind.pt`` or one of another model, a ``mask.pt`` whose ``masks``
  is a number, a training checkpoint with missing keys or wrong shapes resumed with ``--resume``.

Command lines run in forked children of one process that imported pracset once (the ``cli`` fixture of
``tests/conftest.py``, as ``tests/test_bad_inputs.py`` does), so each costs a fork, not an interpreter start.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pracset.errors import ConfigError, PracsetError, RunFileError

#: Address space a command may add to what the warmed-up runner process had (see the module docstring).
HEADROOM = 3 << 30
GIB16 = 16 << 30
TINY = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "-q"]

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux (/proc, RLIMIT_AS)")


# ----------------------------------------------------------------------------- the command-line runner
# The ``cli`` fixture (conftest.py, commands.ForkRunner): forked children of one warm process, each capped at
# what that process had plus HEADROOM unless a call passes ``headroom=None``.
FORK_RUNNER = {"headroom": HEADROOM, "timeout": 120}


def refused(result, *fragments: str) -> str:
    """Exit code 2, exactly one line on stderr holding every fragment, no traceback; returns the line."""
    code, out, err = result
    assert "Traceback" not in err, err[-3000:]
    assert code == 2, (code, err[-3000:])
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err[:3000]!r}"
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


# ----------------------------------------------------------------------------- crafted inputs
def _idx_header(*dims: int) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + struct.pack(">" + "I" * len(dims), *dims)


def _idx(array: np.ndarray) -> bytes:
    return _idx_header(*array.shape) + array.astype(np.uint8).tobytes()


def _mnist(root: Path, train: int = 40, test: int = 10) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "train-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (train, 28, 28))))
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(train) % 10))
    (root / "t10k-images-idx3-ubyte").write_bytes(_idx(rng.integers(0, 256, (test, 28, 28))))
    (root / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.arange(test) % 10))
    return root


def _gzip_bomb(head: bytes, expanded: int, *, block: int = 64 << 20) -> bytes:
    """A gzip file of ``head`` followed by zeros, ``expanded`` bytes in all once decompressed: concatenated
    gzip members (one compressed block of zeros, repeated), so it takes a second and ~1/1000 of the size."""
    zeros = gzip.compress(bytes(block), compresslevel=1)
    first = gzip.compress(head + bytes(block - len(head)), compresslevel=1)
    return first + zeros * (expanded // block - 1)


def _cifar10(root: Path) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(
            {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    return folder


def _png(width: int = 8, height: int = 8, colour: int = 0) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A valid small PNG whose IHDR is rewritten to claim ``width`` x ``height`` pixels (CRC fixed)."""
    data = bytearray(_png())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _image_folder(root: Path, bad: bytes | None = None) -> Path:
    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(3):
                (root / split / cls / f"{i}.png").write_bytes(_png(colour=40 * k + i))
    if bad is not None:
        (root / "train" / "a" / "bomb.png").write_bytes(bad)
    return root


def _manifest(path: Path, n: int = 20, classes: int = 4) -> Path:
    """A small valid manifest written by pracset's own writer."""
    from pracset.fingerprints import fingerprint
    from pracset.manifest.schema import write_manifest

    hashes = np.array([f"{i:016x}" for i in range(n)])
    names = [f"c{i}" for i in range(classes)]
    selected = np.arange(n) % 2 == 0
    columns = {
        "example_id": np.arange(n), "content_hash": hashes, "label": np.arange(n) % classes,
        "forgetting_events": np.zeros(n, np.int32), "presentations": np.ones(n, np.int32),
        "times_correct": np.ones(n, np.int32), "first_learned_epoch": np.zeros(n, np.int32),
        "never_learned": np.zeros(n, bool), "last_correct": np.ones(n, bool), "last_loss": np.zeros(n, np.float32),
        "margin": np.zeros(n, np.float32), "cep_disagreements": np.zeros(n, np.int32), "score": np.zeros(n),
        "selected": selected, "reason": np.where(selected, "random", ""),
    }
    meta = {"dataset": {"name": "digits", "split": "train", "size": n, "fingerprint": fingerprint(hashes, tuple(names)),
                        "class_names": names},
            "selection": {"rule": "random"}, "provenance": {}}
    return write_manifest(path, columns, meta)


def _edit_manifest(path: Path, *, dataset: dict | None = None, provenance: dict | None = None,
                   labels: dict[int, int] | None = None) -> Path:
    """Rewrite a manifest's metadata or labels behind the writer's back (what a stranger can do)."""
    import pyarrow as pa

    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"pracset"])
    meta["dataset"].update(dataset or {})
    meta["provenance"].update(provenance or {})
    if labels:
        values = table.column("label").to_numpy().copy()
        for row, value in labels.items():
            values[row] = value
        table = table.set_column(table.column_names.index("label"), "label", pa.array(values))
    pq.write_table(table.replace_schema_metadata({b"pracset": json.dumps(meta).encode()}), path)
    return path


# ============================================================================= item 5: sizes
def test_a_manifest_claiming_2_62_examples(cli, tmp_path):
    path = _edit_manifest(_manifest(tmp_path / "m.parquet"), dataset={"size": 2**62})
    refused(cli.run(["inspect", path], tmp_path),
            f"holds 20 rows but dataset.size is {2**62} ({2**62 - 20} example ids absent, first: 20)")


def test_a_manifest_missing_rows_still_names_the_first_absent_id(tmp_path):
    from pracset.manifest import read_manifest
    from pracset.manifest.schema import ManifestError

    path = _edit_manifest(_manifest(tmp_path / "m.parquet"), dataset={"size": 25})
    with pytest.raises(ManifestError, match=r"holds 20 rows but dataset.size is 25 \(5 example ids absent, "
                                            r"first: 20\)"):
        read_manifest(path)


@pytest.mark.parametrize("dims, what", [
    # 2**64 bytes: numpy's product of the dimensions wrapped to 0
    ((65536, 65536, 65536, 65536), "65536 x 65536 x 65536 x 65536 = 18446744073709551616 bytes"),
    ((60000, 28, 2**31), "60000 x 28 x 2147483648 = 3607772528640000 bytes"),
])
def test_an_idx_header_whose_dimensions_overflow(cli, tmp_path, dims, what):
    root = _mnist(tmp_path / "mnist")
    (root / "train-images-idx3-ubyte").write_bytes(_idx_header(*dims))
    refused(cli.run(["train", "--data", "mnist", "--data-dir", root, "--arch", "mlp", "--out", "run", *TINY], tmp_path),
            f"{root}/train-images-idx3-ubyte: its header claims {what} of data, more than an idx file may hold")
    assert not (tmp_path / "run").exists()


def test_a_gzip_idx_file_that_expands_to_16_gib(cli, tmp_path):
    """The header says 40 images; the stream goes on for 16 GiB: decompression stops one byte past the 40."""
    root = _mnist(tmp_path / "mnist")
    images = root / "train-images-idx3-ubyte"
    head = images.read_bytes()
    images.unlink()
    (root / "train-images-idx3-ubyte.gz").write_bytes(_gzip_bomb(head, GIB16))
    refused(cli.run(["train", "--data", "mnist", "--data-dir", root, "--arch", "mlp", "--out", "run", *TINY], tmp_path),
            "train-images-idx3-ubyte.gz is truncated or padded: header says 31360 bytes of data, file holds more")


def _tar_member_claiming(name: str, size: int, data: bytes = b"") -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT) + data


def test_a_tar_gz_member_that_expands_to_16_gib(cli, tmp_path):
    """An image folder as a .tar.gz whose first image is 16 GiB of zeros (a real stream of that size)."""
    folder = _image_folder(tmp_path / "tree")
    plain = io.BytesIO()
    with tarfile.open(fileobj=plain, mode="w") as tar:
        tar.add(folder, arcname="tree")
    head = _tar_member_claiming("tree/train/a/huge.png", GIB16)
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(_gzip_bomb(head, GIB16 + len(head)))
    refused(cli.run(["train", "--data", "imagefolder", "--data-dir", archive, "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path),
            f"{archive}: member tree/train/a/huge.png is {GIB16} bytes, more than an image data set's file may be "
            "(268435456 bytes)")


def test_a_tar_gz_member_of_16_gib_is_not_extracted(tmp_path):
    """Streaming a compressed tree extracts it first (``extract_to``): the member is refused before it is written."""
    from pracset.data.readers import extract_archive
    from pracset.errors import DataError

    archive = tmp_path / "bomb.tar.gz"
    head = _tar_member_claiming("tree/train/a/huge.png", GIB16)
    archive.write_bytes(_gzip_bomb(head, 1 << 30, block=16 << 20))
    with pytest.raises(DataError, match=f"member tree/train/a/huge.png is {GIB16} bytes, more than"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_16_gib_image_file_in_a_folder(cli, tmp_path):
    """A sparse file: 16 GiB by its size, nothing on disk; refused by its size before it is read."""
    root = _image_folder(tmp_path / "tree")
    with open(root / "train" / "b" / "huge.png", "wb") as handle:
        handle.truncate(GIB16)
    refused(cli.run(["train", "--data", "imagefolder", "--data-dir", root, "--arch", "mlp", "--out", "run", *TINY],
                    tmp_path), f"{root}/train/b/huge.png is {GIB16} bytes, more than an image data set's file may be")


def test_an_uncompressed_tar_member_claiming_16_gib_is_refused_when_streamed(cli, tmp_path):
    folder = _image_folder(tmp_path / "tree")
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="tree")
    data = archive.read_bytes()
    end = data.rstrip(b"\0")  # the members, without the two zero blocks that end the archive
    archive.write_bytes(data[:len(end) + (-len(end)) % 512] + _tar_member_claiming("tree/train/b/huge.png", GIB16,
                                                                                    bytes(512)))
    refused(cli.run(["train", "--data", "imagefolder", "--stream", "--workers", "0", "--data-dir", archive,
                     "--arch", "mlp", "--out", "run", *TINY], tmp_path),
            f"member tree/train/b/huge.png is {GIB16} bytes, more than an image data set's file may be")


@pytest.mark.parametrize("opcode, name", [(b"\x8e", "BINBYTES8"), (b"\x8d", "BINUNICODE8"), (b"\x96", "BYTEARRAY8")])
def test_a_cifar_pickle_claiming_a_2_62_byte_string(cli, tmp_path, opcode, name):
    folder = _cifar10(tmp_path / "c")
    (folder / "data_batch_3").write_bytes(b"\x80\x04" + opcode + struct.pack("<Q", 2**62) + b"abc.")
    refused(cli.run(["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path),
            f"cannot read {folder}/data_batch_3: {name} at byte 2 claims {2**62} bytes, more than the 15 the "
            "file holds")


def test_a_cifar_pickle_claiming_a_16_gib_string(cli, tmp_path):
    """2**34 bytes: an allocation the machine might grant (overcommit); the cap shows none is attempted."""
    folder = _cifar10(tmp_path / "c")
    (folder / "data_batch_1").write_bytes(b"\x80\x02B" + struct.pack("<I", 2**31 - 1) + b"abc.")  # BINBYTES, 2 GiB
    refused(cli.run(["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path),
            f"BINBYTES at byte 2 claims {2**31 - 1} bytes, more than the 11 the file holds")
    (folder / "data_batch_1").write_bytes(b"\x80\x04\x95" + struct.pack("<Q", GIB16) + b"N.")  # FRAME
    refused(cli.run(["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path), "a pickle frame at byte 2 claims more bytes than the file holds")


class _HugeObjectArray:
    """Pickles as numpy's array reconstruction of an object array claiming 2**40 elements (a list state:
    numpy allocates the shape before it looks at the list)."""

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                (1, (2**40,), np.dtype(object), False, [1, 2]))


def test_a_cifar_pickle_of_an_object_array_claiming_2_40_elements(cli, tmp_path):
    folder = _cifar10(tmp_path / "c")
    with pytest.warns(DeprecationWarning):  # numpy.core's alias, used only to write the hostile file
        data = pickle.dumps({"data": _HugeObjectArray(), "labels": [0]}, protocol=2)
    (folder / "data_batch_2").write_bytes(data)
    refused(cli.run(["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path),
            f"cannot read {folder}/data_batch_2: it holds an array whose data is not raw bytes")


class _HugeReconstruct:
    """Pickles as numpy's array reconstruction called with a large shape (numpy itself passes (0,))."""

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return (np.core.multiarray._reconstruct, (np.ndarray, self.shape, self.dtype))


@pytest.mark.parametrize("shape, dtype", [((2**40,), b"b"), ((1,), np.dtype(("V", 2**31 - 1)))],
                         ids=["2**40 elements", "one 2 GiB element"])
def test_a_cifar_pickle_reconstructing_a_huge_array(cli, tmp_path, shape, dtype):
    folder = _cifar10(tmp_path / "c")
    with pytest.warns(DeprecationWarning):
        data = pickle.dumps({"data": _HugeReconstruct(shape, dtype), "labels": [0]}, protocol=2)
    (folder / "data_batch_4").write_bytes(data)
    refused(cli.run(["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path),
            f"cannot read {folder}/data_batch_4: it reconstructs an array of shape {shape}, larger than the file")


def test_a_cifar_batch_larger_than_1_gib_is_refused_unread(cli, tmp_path):
    folder = _cifar10(tmp_path / "c")
    with open(folder / "data_batch_5", "r+b") as handle:  # sparse: 1 GiB + 1 by its size, nothing on disk
        handle.truncate((1 << 30) + 1)
    refused(cli.run(["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run",
                     *TINY], tmp_path), f"{folder}/data_batch_5 is 1073741825 bytes, more than a CIFAR batch holds")


def test_cifar_labels_and_class_names_of_the_wrong_structure(cli, tmp_path):
    folder = _cifar10(tmp_path / "c")
    run = ["train", "--data", "cifar10", "--data-dir", tmp_path / "c", "--arch", "mlp", "--out", "run", *TINY]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": 5}, protocol=2))
    refused(cli.run(run, tmp_path), "batches.meta: 'label_names' must be a list of class names, got int")
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}, protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(
        {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10**12]}, protocol=2))
    refused(cli.run(run, tmp_path), f"cifar10 test split: label {10**12} is not one of its 10 classes (0..9)")


def test_a_decompression_bomb_png(cli, tmp_path):
    root = _image_folder(tmp_path / "tree", bad=_png_claiming(100_000, 100_000))
    err = refused(cli.run(["train", "--data", "imagefolder", "--data-dir", root, "--arch", "mlp", "--out", "run",
                           *TINY], tmp_path), f"{root}/train: cannot decode an image: ")
    assert "10000000000 pixels" in err and "decompression bomb" in err


def test_a_decompression_bomb_png_when_streamed(cli, tmp_path):
    root = _image_folder(tmp_path / "tree", bad=_png_claiming(100_000, 100_000))
    refused(cli.run(["train", "--data", "imagefolder", "--stream", "--workers", "0", "--image-size", "8",
                     "--data-dir", root, "--arch", "mlp", "--out", "run", *TINY], tmp_path),
            "train/a/bomb.png", "decompression bomb")


def test_image_size_is_bounded(cli, tmp_path):
    root = _image_folder(tmp_path / "tree")
    refused(cli.run(["train", "--data", "imagefolder", "--image-size", "100000", "--data-dir", root, "--arch",
                     "mlp", "--out", "run", *TINY], tmp_path), "image_size must be at most 4096, got 100000")
    assert not (tmp_path / "run").exists()


def test_image_size_is_bounded_in_python(tmp_path):
    from pracset.data import DataConfig

    with pytest.raises(ConfigError, match="image_size must be at most 4096, got 4097"):
        DataConfig(name="imagefolder", image_size=4097)
    DataConfig(name="imagefolder", image_size=4096)


def _hf(root: Path, train_labels, test_labels, class_label: bool = False) -> Path:
    import datasets

    def split(labels):
        features = datasets.Features({"image": datasets.Image(),
                                      "label": datasets.ClassLabel(names=["a", "b"]) if class_label
                                      else datasets.Value("int64")})
        images = [{"bytes": _png(colour=i), "path": None} for i in range(len(labels))]
        return datasets.Dataset.from_dict({"image": images, "label": list(labels)}, features=features)

    datasets.DatasetDict({"train": split(train_labels), "test": split(test_labels)}).save_to_disk(str(root))
    return root


def test_a_hugging_face_label_of_10_12_without_class_names(cli, tmp_path):
    root = _hf(tmp_path / "hf", [0, 1, 10**12, 1], [0, 1])
    for extra in ([], ["--stream", "--workers", "0"]):
        refused(cli.run(["train", "--data", "hf", "--data-dir", root, *extra, "--arch", "mlp", "--out", "run",
                         *TINY], tmp_path),
                f"labels in column 'label' go up to {10**12}; without class names (a ClassLabel feature) labels "
                "must be below 100000")


def test_a_hugging_face_test_label_past_the_training_classes(cli, tmp_path):
    root = _hf(tmp_path / "hf", [0, 1, 2, 1], [0, 7])
    for extra in ([], ["--stream", "--workers", "0"]):
        refused(cli.run(["train", "--data", "hf", "--data-dir", root, *extra, "--arch", "mlp", "--out", "run",
                         *TINY], tmp_path), "hf test split: label 7 is not one of its 3 classes (0..2)")


def test_a_cache_entry_claiming_2_40_hashes_is_ignored_unread(tmp_path, monkeypatch):
    """Its header is read, not its data: the entry is recomputed (a cache is never an error)."""
    from pracset.data.cache import cached_hashes

    monkeypatch.setenv("PRACSET_CACHE_DIR", str(tmp_path))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<U16", "fortran_order": False, "shape": (2**40,)})
    (tmp_path / "hashes-k.npy").write_bytes(b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + b"0" * 64)
    fresh = np.array(["0123456789abcdef"] * 3)
    out = cached_hashes("k", 3, lambda: fresh)
    np.testing.assert_array_equal(out, fresh)
    np.testing.assert_array_equal(np.load(tmp_path / "hashes-k.npy"), fresh)  # replaced by the good entry


def test_a_normalization_cache_entry_nested_without_end_is_ignored(tmp_path, monkeypatch):
    from pracset.data.cache import cached_normalization

    monkeypatch.setenv("PRACSET_CACHE_DIR", str(tmp_path))
    (tmp_path / "normalization-k.json").write_text("[" * 1500 + "]" * 1500)  # small, but past the recursion limit
    assert cached_normalization("k", lambda: ((0.5,), (0.25,))) == ((0.5,), (0.25,))
    (tmp_path / "normalization-j.json").write_text(json.dumps([[0.5] * 10**6, [1.0] * 10**6])[:4000])
    assert cached_normalization("j", lambda: ((0.5,), (0.25,))) == ((0.5,), (0.25,))


# ============================================================================= item 6: structure
@pytest.mark.parametrize("value", ["[" * 100_000 + "]" * 100_000, "{a = " * 100_000 + "1" + "}" * 100_000])
def test_a_toml_value_nested_100000_deep(cli, tmp_path, value):
    (tmp_path / "deep.toml").write_text(f"arch = \"mlp\"\n[train]\nmilestones = {value}\n")
    refused(cli.run(["train", "--config", "deep.toml", "--out", "run", *TINY], tmp_path),
            "deep.toml nests 100000 levels deep; settings may nest at most 64")
    refused(cli.run(["run", "deep.toml", "--out", "run"], tmp_path), "deep.toml nests 100000 levels deep")


@pytest.mark.parametrize("key", ["a" + ".a" * 100_000 + " = 1", "[" + "a." * 100_000 + "a]\nx = 1"])
def test_a_toml_key_100000_parts_deep(cli, tmp_path, key):
    """Python's TOML parser needs memory growing with the square of a dotted key's parts (tens of GB here)."""
    (tmp_path / "deep.toml").write_text(f"arch = \"mlp\"\n{key}\n")
    refused(cli.run(["ticket", "--method", "imp", "--config", "deep.toml", "--out", "run", *TINY], tmp_path),
            "deep.toml nests 100001 levels deep; settings may nest at most 64")


def test_a_set_override_nested_too_deep(cli, tmp_path):
    shutil.copy(Path(__file__).parents[1] / "pipelines" / "digits.toml", tmp_path / "p.toml")
    refused(cli.run(["run", "p.toml", "--set", "seeds=" + "[" * 5000 + "]" * 5000], tmp_path),
            "--set seeds nests 5000 levels deep; settings may nest at most 64")


def test_a_recursion_the_depth_scan_misses_is_still_one_line(monkeypatch):
    """The parser's RecursionError is caught too (the scan normally refuses such a file first)."""
    import pracset.tomlfiles as tomlfiles

    monkeypatch.setattr(tomlfiles, "MAX_TOML_DEPTH", 10**9)
    with pytest.raises(ConfigError, match="deep.toml nests too deeply; settings may nest at most"):
        tomlfiles.parse_toml("a = " + "[" * 100_000 + "]" * 100_000, "deep.toml")


def test_normal_toml_is_unaffected(tmp_path):
    from pracset.tomlfiles import load_toml, toml_depth

    text = ('name = "x"  # a [comment {\narch = "mlp"\n[data]\nname = "digits"\npath = "a.b.c.d.e.f.g [[[["\n'
            "[train]\nmilestones = [0.5, 0.75]\nlr = 1.5e-3\n[[x.y]]\nz = '''\n{{{{ a.b.c.d.e\n'''\n")
    (tmp_path / "ok.toml").write_text(text)
    assert toml_depth(text) == 2
    assert load_toml(tmp_path / "ok.toml")["train"]["milestones"] == [0.5, 0.75]
    (tmp_path / "big.toml").write_text("# padding\n" * 200_000)
    with pytest.raises(ConfigError, match="is larger than 1048576 bytes"):
        load_toml(tmp_path / "big.toml")


def test_manifest_class_names_that_are_a_number(cli, tmp_path):
    path = _edit_manifest(_manifest(tmp_path / "m.parquet"), dataset={"class_names": 5})
    refused(cli.run(["inspect", path], tmp_path),
            f"manifest {path}: metadata dataset.class_names must be a non-empty list of names, got 5")


def test_manifest_label_2_40(cli, tmp_path):
    path = _edit_manifest(_manifest(tmp_path / "m.parquet"), labels={7: 2**40})
    for argv in (["inspect", path], ["inspect", "--json", path]):
        refused(cli.run(argv, tmp_path), f"manifest {path}: label {2**40} at example_id 7 is not a class of the 4 its "
                                         "metadata (dataset.class_names) names")


def test_manifest_provenance_of_the_wrong_type(cli, tmp_path):
    path = _edit_manifest(_manifest(tmp_path / "m.parquet"), provenance={"dense_test_accuracy": "high"})
    refused(cli.run(["inspect", path], tmp_path), "metadata provenance.dense_test_accuracy must be a number, got str")


# ----------------------------------------------------------------------------- run directories
@pytest.fixture(scope="module")
def train_run(cli, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished `pracset train` run (digits, MLP, one epoch) and its command line (cwd-relative --out)."""
    work = tmp_path_factory.mktemp("train-run")
    argv = ["train", "--data", "digits", "--arch", "mlp", "--out", "run", *TINY]
    code, _, err = cli.run(argv, work, headroom=None)
    assert code == 0, err
    return work / "run", argv


@pytest.fixture(scope="module")
def ticket_run(cli, tmp_path_factory) -> tuple[Path, list[str]]:
    """A finished IMP ticket run (digits, MLP, two epochs, one round) and its command line."""
    work = tmp_path_factory.mktemp("ticket-run")
    argv = ["ticket", "--method", "imp", "--rounds", "1", "--data", "digits", "--arch", "mlp", "--out", "run",
            "--epochs", "2", "--batch-size", "32", "--device", "cpu", "-q"]  # above the degenerate-budget floor
    code, _, err = cli.run(argv, work, headroom=None)
    assert code == 0, err
    return work / "run", argv


def _copy_run(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("ledger, message", [
    ({"stages": 5}, "'stages' must be an object of stage costs, got a number"),
    ([1, 2], "must be a JSON object with 'stages', got a list"),
    ({"stages": {"dense": {"train_iterations": "many"}}}, "stage 'dense' count 'train_iterations' must be a "
                                                          "non-negative integer, got 'many'"),
    ({"stages": {"dense": {"gpu_hours": 3}}}, "stage 'dense' has unknown count 'gpu_hours'"),
])
def test_a_ledger_of_the_wrong_structure(cli, train_run, tmp_path, ledger, message):
    run, argv = train_run
    copy = _copy_run(run, tmp_path)
    (copy / "ledger.json").write_text(json.dumps(ledger))
    refused(cli.run(argv, tmp_path, headroom=None), "ledger run/ledger.json", message)


def test_a_truncated_ledger(cli, train_run, tmp_path):
    run, argv = train_run
    copy = _copy_run(run, tmp_path)
    (copy / "ledger.json").write_bytes((run / "ledger.json").read_bytes()[:20])
    refused(cli.run(argv, tmp_path, headroom=None), "run/ledger.json")


def test_a_truncated_metrics_file(cli, train_run, tmp_path):
    run, argv = train_run
    copy = _copy_run(run, tmp_path)
    (copy / "metrics.json").write_bytes((run / "metrics.json").read_bytes()[:50])
    refused(cli.run(argv, tmp_path, headroom=None), "run/metrics.json is damaged or truncated")


@pytest.mark.parametrize("change, message", [
    (lambda m: 5, "must be a JSON object, got a number"),
    (lambda m: {**m, "final": 5}, "'final' must be an object of an epoch's metrics, got a number"),
    (lambda m: {**m, "final": {**m["final"], "test_accuracy": "high"}}, "final.test_accuracy must be a number"),
    (lambda m: {**m, "history": {"0": 1}}, "'history' must be a list of epochs, got an object"),
    (lambda m: {**m, "history": [5]}, "'history[0]' must be an object of an epoch's metrics, got a number"),
    (lambda m: {**m, "epochs_run": -1}, "epochs_run must be a non-negative integer, got -1"),
    (lambda m: {**m, "ledger": {"train_iterations": 1.5}}, "count 'train_iterations' must be a non-negative integer"),
])
def test_metrics_of_the_wrong_structure(cli, train_run, tmp_path, change, message):
    run, argv = train_run
    copy = _copy_run(run, tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps(change(metrics)))
    refused(cli.run(argv, tmp_path, headroom=None), "stage metrics run/metrics.json", message)


#: Trains as ``RESUME`` asks (without --resume) and is killed (SIGKILL) as the second epoch starts.
_KILLED_IN_SECOND_EPOCH = r"""
import os, signal, sys, torch
from pracset.data import DataConfig
from pracset.train import TrainConfig
from pracset.train.loop import Callback
from pracset.train.run import train_dense

class Kill(Callback):
    def on_epoch_start(self, state):
        if state.epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

train_dense(DataConfig(), "mlp", TrainConfig(epochs=2, batch_size=64), sys.argv[1], device=torch.device("cpu"),
            callbacks=[Kill()])
"""

#: The command line that resumes the run :func:`checkpointed_run` leaves.
RESUME = ["train", "--data", "digits", "--arch", "mlp", "--out", "run", "--epochs", "2", "--batch-size", "64",
          "--device", "cpu", "-q", "--resume"]


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> Path:
    """An unfinished `pracset train` run (digits, MLP, 2 epochs) killed after its first epoch: run.json and a
    real checkpoint.pt, no metrics.json; :data:`RESUME` continues it."""
    out = tmp_path_factory.mktemp("checkpointed") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _KILLED_IN_SECOND_EPOCH, str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-3000:]
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("change, message", [
    (lambda c: {"model": c["model"], "epoch": 0}, "lacks 'optimizer', 'scheduler', 'step', 'history', 'callbacks', "
                                                  "'ledger'; remove it to train this stage again"),
    (lambda c: {**c, "model": {k: torch.zeros(1) for k in c["model"]}}, "its model: {first!r} has shape (1,), the "
                                                                          "model's has"),
    (lambda c: {**c, "model": dict(list(c["model"].items())[1:])}, "its model lacks 1 of the model's tensors"),
    (lambda c: {**c, "model": {**c["model"], "extra.weight": torch.zeros(1)}},
     "its model holds 1 tensor(s) the model does not have (first: 'extra.weight')"),
    (lambda c: {**c, "model": 5}, "its model must hold a model's state dict, got int"),
    (lambda c: {**c, "epoch": "one"}, "epoch must be a non-negative integer, got 'one'"),
    (lambda c: {**c, "callbacks": 5}, "callbacks must map callback names to their states"),
    (lambda c: {**c, "optimizer": {**c["optimizer"], "param_groups": []}},
     "its optimizer state has parameter groups of other sizes"),
    (lambda c: {**c, "optimizer": {**c["optimizer"], "state": {
        k: {**v, "momentum_buffer": torch.zeros(3)} for k, v in c["optimizer"]["state"].items()}}},
     "momentum_buffer of parameter 0 has shape (3,), the parameter has"),
    (lambda c: {**c, "ledger": {"stages": 5}}, "its ledger: 'stages' must be an object of stage costs"),
    (lambda c: {**c, "scheduler": {**c["scheduler"], "lr_lambdas": [{"x": 1}]}},
     "holds learning-rate functions pracset never saves"),
    (lambda c: {**c, "scheduler": {**c["scheduler"], "last_epoch": "x"}}, "scheduler last_epoch must be an integer"),
])
def test_a_checkpoint_of_the_wrong_structure_is_refused_on_resume(cli, checkpointed_run, tmp_path, change, message):
    copy = _copy_run(checkpointed_run, tmp_path)
    saved = torch.load(copy / "checkpoint.pt")
    torch.save(change(saved), copy / "checkpoint.pt")
    refused(cli.run(RESUME, tmp_path, headroom=None),
            "checkpoint run/checkpoint.pt", message.format(first=next(iter(saved["model"]))))


@pytest.mark.slow
def test_the_checkpoint_unchanged_resumes(cli, checkpointed_run, tmp_path):
    """The tests above change one thing of a checkpoint that resumes: their refusals are the change's."""
    copy = _copy_run(checkpointed_run, tmp_path)
    code, _, err = cli.run(RESUME, tmp_path, headroom=None)
    assert code == 0, err
    assert json.loads((copy / "metrics.json").read_text())["epochs_run"] == 2


def _unfinished_ticket(run: Path, tmp_path: Path) -> Path:
    copy = _copy_run(run, tmp_path)
    (copy / "tickets.json").unlink()
    return copy


def test_a_truncated_rewind_point(cli, ticket_run, tmp_path):
    run, argv = ticket_run
    copy = _unfinished_ticket(run, tmp_path)
    (copy / "rewind.pt").write_bytes((run / "rewind.pt").read_bytes()[:300])
    refused(cli.run([*argv, "--resume"], tmp_path, headroom=None), "rewind point run/rewind.pt is damaged or "
                                                                   "truncated")


@pytest.mark.parametrize("change, message", [
    (lambda s: {k: torch.zeros(2, 2) for k in s}, "has shape (2, 2), the model's has"),
    (lambda s: dict(list(s.items())[:-1]), "lacks 1 of the model's tensors"),
    (lambda s: [1, 2], "must hold a model's state dict, got list"),
])
def test_a_rewind_point_of_another_model(cli, ticket_run, tmp_path, change, message):
    run, argv = ticket_run
    copy = _unfinished_ticket(run, tmp_path)
    torch.save(change(torch.load(run / "rewind.pt")), copy / "rewind.pt")
    refused(cli.run([*argv, "--resume"], tmp_path, headroom=None), "rewind point run/rewind.pt", message)


@pytest.mark.parametrize("masks, message", [
    (5, "'masks' must be a non-empty dict of parameter name to boolean tensor, got int"),
    ({}, "'masks' must be a non-empty dict"),
    ({"fc.weight": torch.zeros(2)}, "entry 'fc.weight' is torch.float32, expected a torch.bool tensor"),
    ({3: torch.ones(2, dtype=torch.bool)}, "a mask entry's name is a int, not a string"),
])
def test_a_mask_of_the_wrong_structure(cli, ticket_run, tmp_path, masks, message):
    run, argv = ticket_run
    copy = _unfinished_ticket(run, tmp_path)
    torch.save({"format": "pracset-mask", "version": 1, "masks": masks}, copy / "round-01" / "mask.pt")
    refused(cli.run([*argv, "--resume"], tmp_path, headroom=None), f"mask file run/round-01/mask.pt: {message}")


def test_a_mask_of_another_model_is_refused_before_it_is_applied(cli, ticket_run, tmp_path):
    run, argv = ticket_run
    copy = _unfinished_ticket(run, tmp_path)
    for stage in ("round-01", "ticket-01"):
        shutil.rmtree(copy / stage, ignore_errors=True)
    torch.save({"format": "pracset-mask", "version": 1, "masks": {"layers.0.weight": torch.ones(3, dtype=torch.bool)}},
               copy / "round-00" / "mask.pt")
    err = refused(cli.run([*argv, "--resume"], tmp_path, headroom=None), "mask file run/round-00/mask.pt")
    assert "does not fit the model" in err


def test_a_mask_is_checked_against_the_model_it_is_applied_to():
    """TicketContext.rewound (every ticket and control starts there) refuses a mask of another model in one
    line, where applying it would fail deep inside (a KeyError)."""
    from types import SimpleNamespace

    from pracset.sparse.mask import Mask
    from pracset.tickets.context import RewindPoint, TicketContext

    ctx = SimpleNamespace(model=lambda seed=None: torch.nn.Linear(2, 2), device="cpu")
    rewind = RewindPoint(torch.nn.Linear(2, 2).state_dict(), 0)
    with pytest.raises(ConfigError, match="mask entry 'other.weight' is not a parameter of the model"):
        TicketContext.rewound(ctx, Mask({"other.weight": torch.ones(2, 2, dtype=torch.bool)}), rewind)
    model = TicketContext.rewound(ctx, Mask({"weight": torch.zeros(2, 2, dtype=torch.bool)}), rewind)
    assert not model.weight.any()


def test_mask_load_in_python(tmp_path):
    from pracset.sparse.mask import Mask

    torch.save({"format": "pracset-mask", "version": "1", "masks": {}}, tmp_path / "v.pt")
    with pytest.raises(RunFileError, match="'version' must be an integer"):
        Mask.load(tmp_path / "v.pt")
    torch.save({"format": "pracset-mask", "version": 1, "masks": 5}, tmp_path / "m.pt")
    with pytest.raises(RunFileError, match="'masks' must be a non-empty dict"):
        Mask.load(tmp_path / "m.pt")
    good = Mask({"w": torch.ones(2, 3, dtype=torch.bool)})
    good.save(tmp_path / "g.pt")
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(torch.zeros(3, 2))
    with pytest.raises(RunFileError, match=r"does not fit the model: mask entry 'w' has shape \(2, 3\)"):
        Mask.load(tmp_path / "g.pt", model=model)
    assert Mask.load(tmp_path / "g.pt") == good


def test_the_ledger_reader_in_python(tmp_path):
    from pracset.train.ledger import IterationLedger

    ledger = IterationLedger()
    ledger.add("dense", "train", examples=64, batches=2)
    ledger.save(tmp_path / "ledger.json")
    assert IterationLedger.load(tmp_path / "ledger.json").total().train_iterations == 2
    (tmp_path / "ledger.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunFileError, match="is nested too deeply"):
        IterationLedger.load(tmp_path / "ledger.json")
    (tmp_path / "ledger.json").write_text('{"stages": {"dense": {"train_iterations": true}}}')
    with pytest.raises(RunFileError, match="must be a non-negative integer, got True"):
        IterationLedger.load(tmp_path / "ledger.json")
    assert issubclass(RunFileError, PracsetError)
