"""Tests of every data source in ``pracset.data.sources.SOURCES``.

The synthetic tests write small files in ``tmp_path`` in each source's on-disk
layout (idx, CIFAR python pickles, image folders and tar archives, Hugging Face
``save_to_disk`` directories) and check shapes, pixel layout, label order,
class names, example-id order and the error messages. The real-data tests read
``../shared/data`` beside the checkout (or ``$PRACSET_SHARED_DATA``) and skip
with a reason when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import re
import struct
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hostile import RunsCode
import torch
from PIL import Image

from pracset.config import from_dict
from pracset.data import DataConfig, ImageDataset, content_hashes, load_dataset, read_idx
from pracset.data.base import fingerprint
from pracset.data.sources import DATA_DIR_ENV, SOURCES
from pracset.errors import ConfigError, DataError, UnknownNameError

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
HEX16 = re.compile(r"^[0-9a-f]{16}$")

# Every source in SOURCES must be covered by this file; test_every_source_is_covered keeps the list honest.
COVERED_SOURCES = {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder", "tiny-imagenet", "hf"}


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    """Keep a developer's $PRACSET_DATA_DIR from leaking into the tests."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@contextmanager
def data_error(pattern: str, tmp_path: Path):
    """Expect a DataError whose message, with ``tmp_path`` written as TMP, matches ``pattern``.

    (Matching the raw message would let words in pytest's per-test folder name,
    such as "truncated" in test_read_idx_truncated0, satisfy the pattern.)
    """
    with pytest.raises(DataError) as info:
        yield info
    message = str(info.value).replace(str(tmp_path), "TMP")
    assert re.search(pattern, message), f"{pattern!r} not in {message!r}"


def load(name: str, data_dir=None, **kwargs) -> ImageDataset:
    return load_dataset(DataConfig(name=name, data_dir=None if data_dir is None else str(data_dir), **kwargs))


def test_every_source_is_covered():
    assert set(SOURCES.names()) == COVERED_SOURCES
    for name, source in SOURCES.items():
        assert source.name == name
        assert source.description and source.id_order, name


# =========================================================================== config / registry
def test_data_config_from_dict_builds_the_config():
    config = from_dict(DataConfig, {"name": "mnist", "data_dir": "/x", "image_size": 32, "download": True})
    assert config == DataConfig(name="mnist", data_dir="/x", image_size=32, download=True)
    assert from_dict(DataConfig, {}) == DataConfig()
    assert DataConfig().name == "digits"


def test_data_config_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError) as info:
        from_dict(DataConfig, {"name": "mnist", "data_folder": "/x"}, where="data")
    message = str(info.value)
    assert "data.data_folder" in message
    for key in ("name", "data_dir", "download", "image_size", "hf_dataset", "image_column",
                "label_column", "train_split", "test_split"):
        assert key in message


@pytest.mark.parametrize("values", [{"image_size": "32"}, {"image_size": 0}, {"image_size": -4},
                                    {"download": "yes"}, {"name": 3}])
def test_data_config_rejects_bad_values(values):
    with pytest.raises(ConfigError):
        from_dict(DataConfig, values)


def test_unknown_data_set_lists_the_valid_names():
    with pytest.raises(UnknownNameError) as info:
        load_dataset(DataConfig(name="imagenet-42"))
    message = str(info.value)
    assert "imagenet-42" in message
    for name in SOURCES.names():
        assert name in message
    assert isinstance(info.value, KeyError)
    assert not message.startswith('"')  # not KeyError's quoted repr


def test_data_dir_env_var_is_honoured(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, "/some/where")
    assert DataConfig().resolved_data_dir() == Path("/some/where")
    assert DataConfig(data_dir="/else").resolved_data_dir() == Path("/else")
    monkeypatch.delenv(DATA_DIR_ENV)
    assert DataConfig().resolved_data_dir() is None


# =========================================================================== digits and content hashes
def test_digits_shape_and_scale(digits):
    assert (len(digits.train), len(digits.test)) == (1438, 359)
    assert digits.num_classes == 10 and digits.class_names == tuple(str(i) for i in range(10))
    assert digits.train.images.shape == (1438, 1, 8, 8) and digits.test.images.shape == (359, 1, 8, 8)
    assert digits.train.images.dtype == torch.uint8 and digits.train.labels.dtype == torch.int64
    assert int(digits.train.images.max()) == 255 and int(digits.train.images.min()) == 0
    assert sorted(digits.train.labels.unique().tolist()) == list(range(10))
    assert sorted(digits.test.labels.unique().tolist()) == list(range(10))


def test_digits_split_rule_matches_load_digits(digits):
    from sklearn.datasets import load_digits

    ref = load_digits()
    pixels = np.rint(ref.images * (255.0 / 16.0)).astype(np.uint8)
    test_pos = np.arange(4, len(ref.target), 5)
    train_pos = np.setdiff1d(np.arange(len(ref.target)), test_pos)
    assert test_pos[:3].tolist() == [4, 9, 14] and len(train_pos) == 1438
    np.testing.assert_array_equal(digits.test.images[:, 0].numpy(), pixels[test_pos])
    np.testing.assert_array_equal(digits.test.labels.numpy(), ref.target[test_pos])
    np.testing.assert_array_equal(digits.train.images[:, 0].numpy(), pixels[train_pos])
    np.testing.assert_array_equal(digits.train.labels.numpy(), ref.target[train_pos])
    # id 4 of the training split is load_digits() position 5 (position 4 went to test)
    np.testing.assert_array_equal(digits.train.images[4, 0].numpy(), pixels[5])
    # the scale mapping: 16 -> 255, 8 -> 128 (rint(127.5) = 128), 0 -> 0
    raw = ref.images[train_pos]
    assert np.all(digits.train.images[:, 0].numpy()[raw == 16] == 255)
    assert np.all(digits.train.images[:, 0].numpy()[raw == 8] == 128)
    assert np.all(digits.train.images[:, 0].numpy()[raw == 0] == 0)


def test_content_hashes_are_stable_16_hex(digits):
    again = load("digits")
    hashes = digits.train_hashes
    assert hashes.shape == (1438,)
    assert all(HEX16.match(h) for h in hashes)
    np.testing.assert_array_equal(hashes, again.train_hashes)
    assert digits.fingerprint == again.fingerprint
    assert re.fullmatch(r"[0-9a-f]{32}", digits.fingerprint)
    # digits holds a few exact duplicates, but nearly all hashes are distinct
    assert len(set(hashes.tolist())) > 1400


def test_content_hash_follows_its_documented_definition(digits):
    images, labels = digits.train.images, digits.train.labels
    for i in (0, 1, 777):
        digest = hashlib.blake2b(struct.pack("<q", int(labels[i])) + struct.pack("<III", 1, 8, 8), digest_size=8)
        digest.update(images[i].numpy().tobytes())
        assert digits.train_hashes[i] == digest.hexdigest()
    # a hash depends on the example only, not on its position or neighbours
    assert content_hashes(images[777:778], labels[777:778])[0] == digits.train_hashes[777]


def test_content_hash_changes_with_label_pixels_and_shape(digits):
    images, labels = digits.train.images[:1].clone(), digits.train.labels[:1].clone()
    base = content_hashes(images, labels)[0]
    assert content_hashes(images, (labels + 1) % 10)[0] != base
    changed = images.clone()
    changed[0, 0, 3, 3] ^= 1
    assert content_hashes(changed, labels)[0] != base
    # same 64 bytes seen as 1x4x16 instead of 1x8x8
    assert content_hashes(images.reshape(1, 1, 4, 16), labels)[0] != base


def test_fingerprint_depends_on_order_and_class_names(digits):
    hashes = digits.train_hashes
    base = fingerprint(hashes, digits.class_names)
    assert fingerprint(hashes.copy(), digits.class_names) == base
    swapped = hashes.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    assert fingerprint(swapped, digits.class_names) != base
    perm = torch.randperm(len(digits.train), generator=torch.Generator().manual_seed(0))
    shuffled = content_hashes(digits.train.images[perm], digits.train.labels[perm])
    assert sorted(shuffled.tolist()) == sorted(hashes.tolist())  # same examples ...
    assert fingerprint(shuffled, digits.class_names) != base  # ... in another order
    assert fingerprint(hashes, tuple(f"c{i}" for i in range(10))) != base
    assert fingerprint(hashes[:-1], digits.class_names) != base


# =========================================================================== idx files (MNIST, Fashion-MNIST)
def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


def write_file(path: Path, data: bytes, gz: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def mnist_arrays():
    rng = np.random.default_rng(1234)
    train_x = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    test_x = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    train_y = np.concatenate([np.arange(10), rng.integers(0, 10, 10)]).astype(np.uint8)
    test_y = np.array([3, 9, 0, 0, 7], dtype=np.uint8)
    return train_x, train_y, test_x, test_y


def write_mnist(folder: Path, arrays, gz: bool = True) -> list[Path]:
    return [write_file(folder / stem, idx_bytes(a), gz) for stem, a in zip(IDX_STEMS, arrays)]


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips(tmp_path, mnist_arrays, gz):
    train_x, train_y, *_ = mnist_arrays
    images = read_idx(write_file(tmp_path / "img", idx_bytes(train_x), gz))
    labels = read_idx(write_file(tmp_path / "lab", idx_bytes(train_y), gz))
    assert images.dtype == np.uint8 and images.shape == (20, 28, 28)
    np.testing.assert_array_equal(images, train_x)
    np.testing.assert_array_equal(labels, train_y)


def test_read_idx_bad_magic(tmp_path, mnist_arrays):
    data = bytearray(idx_bytes(mnist_arrays[0]))
    data[0:2] = b"\x08\x03"
    with data_error("magic", tmp_path):
        read_idx(write_file(tmp_path / "bad", bytes(data), gz=False))
    with data_error("magic", tmp_path):
        read_idx(write_file(tmp_path / "tiny", b"\x00\x00", gz=False))


def test_read_idx_rejects_non_byte_data(tmp_path, mnist_arrays):
    data = bytearray(idx_bytes(mnist_arrays[0]))
    data[2] = 0x0D  # float
    with data_error("unsigned byte", tmp_path):
        read_idx(write_file(tmp_path / "float", bytes(data), gz=True))


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("cut", ["payload", "header"])
def test_read_idx_truncated_content(tmp_path, mnist_arrays, gz, cut):
    data = idx_bytes(mnist_arrays[0])
    data = data[:-100] if cut == "payload" else data[:9]
    path = write_file(tmp_path / "cut", data, gz)
    with data_error("truncated", tmp_path) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_padded_file(tmp_path, mnist_arrays):
    path = write_file(tmp_path / "pad", idx_bytes(mnist_arrays[0]) + b"\x00" * 3, gz=False)
    with data_error("padded", tmp_path):
        read_idx(path)


def test_read_idx_truncated_gzip_stream(tmp_path, mnist_arrays):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(mnist_arrays[0]))[:-500])
    with data_error("truncated", tmp_path):
        read_idx(path)


def test_read_idx_truncated_gzip_stream_is_a_data_error(tmp_path, mnist_arrays):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(mnist_arrays[0]))[:-500])
    with data_error("cannot read", tmp_path):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with data_error("cannot read", tmp_path):
        read_idx(tmp_path / "nope")


def check_mnist_like(dataset: ImageDataset, arrays, name: str, class_names) -> None:
    train_x, train_y, test_x, test_y = arrays
    assert dataset.name == name
    assert dataset.class_names == tuple(class_names)
    assert dataset.train.images.shape == (20, 1, 28, 28) and dataset.test.images.shape == (5, 1, 28, 28)
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.labels.dtype == torch.int64
    np.testing.assert_array_equal(dataset.train.images[:, 0].numpy(), train_x)
    np.testing.assert_array_equal(dataset.train.labels.numpy(), train_y)
    np.testing.assert_array_equal(dataset.test.images[:, 0].numpy(), test_x)
    np.testing.assert_array_equal(dataset.test.labels.numpy(), test_y)
    assert (dataset.default_crop_padding, dataset.default_flip) == (0, False)


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["", "raw", "MNIST/raw"])
def test_mnist_source_layouts(tmp_path, mnist_arrays, gz, layout):
    files = write_mnist(tmp_path / layout if layout else tmp_path, mnist_arrays, gz)
    dataset = load("mnist", tmp_path)
    check_mnist_like(dataset, mnist_arrays, "mnist", [str(i) for i in range(10)])
    assert dataset.source["files"] == [str(f) for f in files]


def test_mnist_source_mixed_gz_and_plain(tmp_path, mnist_arrays):
    for i, (stem, array) in enumerate(zip(IDX_STEMS, mnist_arrays)):
        write_file(tmp_path / stem, idx_bytes(array), gz=i % 2 == 0)
    check_mnist_like(load("mnist", tmp_path), mnist_arrays, "mnist", [str(i) for i in range(10)])


def test_mnist_source_reads_data_dir_env(tmp_path, mnist_arrays, monkeypatch):
    write_mnist(tmp_path, mnist_arrays)
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    check_mnist_like(load("mnist"), mnist_arrays, "mnist", [str(i) for i in range(10)])


def test_fashion_mnist_source(tmp_path, mnist_arrays):
    write_mnist(tmp_path / "FashionMNIST" / "raw", mnist_arrays, gz=True)
    dataset = load("fashion-mnist", tmp_path)
    check_mnist_like(dataset, mnist_arrays, "fashion-mnist", FASHION_NAMES)
    # the torchvision folder name is the data set's own: MNIST/raw is not Fashion-MNIST
    with pytest.raises(DataError):
        load("mnist", tmp_path)


def test_idx_same_arrays_same_hashes_across_mnist_and_fashion(tmp_path, mnist_arrays):
    write_mnist(tmp_path, mnist_arrays)
    a, b = load("mnist", tmp_path), load("fashion-mnist", tmp_path)
    np.testing.assert_array_equal(a.train_hashes, b.train_hashes)
    assert a.fingerprint != b.fingerprint  # class names differ


@pytest.mark.parametrize("files_of, asked_for", [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")])
def test_idx_files_of_the_other_data_set_are_refused(tmp_path, files_of, asked_for):
    """Same file names, shapes and label range: the official training files' first labels tell them apart."""
    first = {"mnist": [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], "fashion-mnist": [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]}[files_of]
    train_y = np.concatenate([first, np.arange(60_000 - 10) % 10]).astype(np.uint8)
    images = np.zeros((60_000, 2, 2), dtype=np.uint8)  # tiny images: only the labels matter here
    write_mnist(tmp_path, (images, train_y, images[:10], train_y[:10]), gz=False)
    with data_error(rf"holds {files_of} files, not {asked_for} \(its first training labels are {files_of}'s\)",
                    tmp_path):
        load(asked_for, tmp_path)
    assert len(load(files_of, tmp_path).train) == 60_000  # and they load as what they are
    train_y[0] = (first[0] + 1) % 10  # one label off: not the official file, nothing to say
    write_mnist(tmp_path, (images, train_y, images[:10], train_y[:10]), gz=False)
    assert len(load(asked_for, tmp_path).train) == 60_000


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_missing_files_name_the_expected_files(tmp_path, mnist_arrays, name):
    with data_error(r"^no [a-z-]+ files in TMP: expected .*; or pass --download$", tmp_path) as info:
        load(name, tmp_path)
    message = str(info.value)
    for stem in IDX_STEMS:
        assert f"{stem}[.gz]" in message
    # three of the four files is still missing one
    write_mnist(tmp_path, mnist_arrays)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with data_error("t10k-labels-idx1-ubyte", tmp_path):
        load(name, tmp_path)


def test_idx_without_data_dir(tmp_path):
    with data_error("no --data-dir given", tmp_path):
        load("mnist")
    with data_error("train-images-idx3-ubyte", tmp_path):
        load("mnist", tmp_path / "does-not-exist")


def test_mnist_truncated_file_through_the_source(tmp_path, mnist_arrays):
    write_mnist(tmp_path, mnist_arrays, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-28])
    with data_error("truncated", tmp_path):
        load("mnist", tmp_path)


def test_mnist_bad_magic_through_the_source(tmp_path, mnist_arrays):
    write_mnist(tmp_path, mnist_arrays, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with data_error("magic", tmp_path):
        load("mnist", tmp_path)


@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_labels_beyond_nine(tmp_path, mnist_arrays, split):
    train_x, train_y, test_x, test_y = (a.copy() for a in mnist_arrays)
    (train_y if split == "train" else test_y)[2] = 10
    write_mnist(tmp_path, (train_x, train_y, test_x, test_y))
    with data_error(f"{split} labels go up to 10", tmp_path):
        load("mnist", tmp_path)


def test_mnist_image_and_label_counts_disagree(tmp_path, mnist_arrays):
    train_x, train_y, test_x, test_y = mnist_arrays
    write_mnist(tmp_path, (train_x, train_y[:-1], test_x, test_y))
    with data_error("disagree", tmp_path):
        load("mnist", tmp_path)


def test_mnist_images_swapped_with_labels(tmp_path, mnist_arrays):
    train_x, train_y, test_x, test_y = mnist_arrays
    write_mnist(tmp_path, (train_y, train_x, test_x, test_y))  # 1-d "images", 3-d "labels"
    with data_error("disagree", tmp_path):
        load("mnist", tmp_path)


# =========================================================================== CIFAR python pickles
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)]


def pickle_to(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)


@pytest.fixture
def cifar10_dir(tmp_path):
    """torchvision's cifar-10-batches-py/ with five 4-row batches and a 6-row test batch."""
    rng = np.random.default_rng(10)
    folder = tmp_path / "cifar-10-batches-py"
    batches = []
    for i, name in enumerate(CIFAR10_FILES):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        labels = [(2 * i + j) % 10 for j in range(4)]
        pickle_to(folder / name, {"batch_label": f"training batch {i + 1} of 5", "labels": labels,
                                  "data": data, "filenames": [f"f{i}_{j}.png" for j in range(4)]})
        batches.append((data, labels))
    test_data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    test_labels = [9, 8, 7, 0, 1, 2]
    pickle_to(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": test_labels,
                                      "data": test_data, "filenames": [f"t{j}.png" for j in range(6)]})
    pickle_to(folder / "batches.meta", {"label_names": CIFAR10_NAMES, "num_cases_per_batch": 4, "num_vis": 3072})
    return tmp_path, batches, (test_data, test_labels)


def test_cifar10_source(cifar10_dir):
    root, batches, (test_data, test_labels) = cifar10_dir
    dataset = load("cifar10", root)
    assert dataset.name == "cifar10" and dataset.class_names == tuple(CIFAR10_NAMES)
    assert dataset.train.images.shape == (20, 3, 32, 32) and dataset.test.images.shape == (6, 3, 32, 32)
    assert dataset.train.images.dtype == torch.uint8
    train_data = np.concatenate([d for d, _ in batches])
    train_labels = np.concatenate([lab for _, lab in batches])
    # example ids follow data_batch_1..5, rows in file order
    np.testing.assert_array_equal(dataset.train.labels.numpy(), train_labels)
    for i in range(20):
        np.testing.assert_array_equal(dataset.train.images[i].numpy(), train_data[i].reshape(3, 32, 32))
    np.testing.assert_array_equal(dataset.train.images[13].numpy(), batches[3][0][1].reshape(3, 32, 32))
    for i in range(6):
        np.testing.assert_array_equal(dataset.test.images[i].numpy(), test_data[i].reshape(3, 32, 32))
    np.testing.assert_array_equal(dataset.test.labels.numpy(), test_labels)
    # row-major CHW: channel planes of 1024, then rows of 32
    row = train_data[7]
    image = dataset.train.images[7].numpy()
    for c, y, x in [(0, 0, 1), (1, 0, 0), (2, 31, 31), (0, 5, 17), (1, 30, 2)]:
        assert image[c, y, x] == row[c * 1024 + y * 32 + x]
    assert (dataset.default_crop_padding, dataset.default_flip) == (4, True)
    assert dataset.source["folder"] == str(root / "cifar-10-batches-py")


def test_cifar10_files_directly_in_data_dir(cifar10_dir):
    root, *_ = cifar10_dir
    a = load("cifar10", root)
    b = load("cifar10", root / "cifar-10-batches-py")
    np.testing.assert_array_equal(a.train_hashes, b.train_hashes)
    assert a.fingerprint == b.fingerprint


def test_cifar10_batch_order_defines_ids(cifar10_dir):
    root, batches, _ = cifar10_dir
    base = load("cifar10", root)
    folder = root / "cifar-10-batches-py"
    one, two = (folder / "data_batch_1").read_bytes(), (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_1").write_bytes(two)
    (folder / "data_batch_2").write_bytes(one)
    swapped = load("cifar10", root)
    np.testing.assert_array_equal(swapped.train.images[:4].numpy(), base.train.images[4:8].numpy())
    assert sorted(swapped.train_hashes.tolist()) == sorted(base.train_hashes.tolist())
    assert swapped.fingerprint != base.fingerprint


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, -1])
def test_cifar10_truncated_pickle(cifar10_dir, keep):
    root, *_ = cifar10_dir
    path = root / "cifar-10-batches-py" / "data_batch_3"
    data = path.read_bytes()
    path.write_bytes(data[:-1] if keep == -1 else data[: int(len(data) * keep)])
    with data_error(r"cannot read TMP/cifar-10-batches-py/data_batch_3: ", root):
        load("cifar10", root)


def test_a_cifar_batch_that_would_run_code_is_refused_without_running_it(cifar10_dir):
    root, *_ = cifar10_dir
    marker = root / "ran"
    path = root / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps({"data": RunsCode(marker), "labels": [0]}, protocol=2))
    with data_error(r"cannot read TMP/cifar-10-batches-py/data_batch_2: it asks for (posix|os)\.system, which a "
                    r"CIFAR batch never holds \(refused: loading it could run code\)", root):
        load("cifar10", root)
    assert not marker.exists()


def test_cifar10_missing_file(cifar10_dir):
    root, *_ = cifar10_dir
    (root / "cifar-10-batches-py" / "data_batch_5").unlink()
    with data_error(r"no cifar10 files in TMP: expected cifar-10-batches-py/ holding ", root) as info:
        load("cifar10", root)
    message = str(info.value).replace(str(root), "TMP")
    for name in [*CIFAR10_FILES, "test_batch", "batches.meta"]:
        assert name in message


def test_cifar10_bad_batch_contents(cifar10_dir):
    root, *_ = cifar10_dir
    folder = root / "cifar-10-batches-py"
    pickle_to(folder / "data_batch_2", {"data": np.zeros((4, 3072), np.uint8)})  # no labels
    with data_error(r"TMP/cifar-10-batches-py/data_batch_2 is not a cifar10 batch", root):
        load("cifar10", root)
    pickle_to(folder / "data_batch_2", {"data": np.zeros((4, 1024), np.uint8), "labels": [0] * 4})
    with data_error(r"data_batch_2: expected \(N, 3072\)", root):
        load("cifar10", root)
    pickle_to(folder / "data_batch_2", {"data": np.zeros((4, 3072), np.uint8), "labels": [0] * 4})
    pickle_to(folder / "batches.meta", {"names": CIFAR10_NAMES})
    with data_error(r"batches.meta has no 'label_names'", root):
        load("cifar10", root)


def test_cifar100_source(tmp_path):
    rng = np.random.default_rng(100)
    folder = tmp_path / "cifar-100-python"
    train_data = rng.integers(0, 256, (12, 3072), dtype=np.uint8)
    fine = [99, 0, 42, 7, 7, 13, 56, 98, 1, 2, 3, 64]
    test_data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    test_fine = [5, 99, 0, 50]
    names = [f"class_{i:02d}" for i in range(100)]
    pickle_to(folder / "train", {"filenames": [], "batch_label": "training batch 1 of 1", "fine_labels": fine,
                                 "coarse_labels": [f // 5 for f in fine], "data": train_data})
    pickle_to(folder / "test", {"filenames": [], "batch_label": "testing batch 1 of 1", "fine_labels": test_fine,
                                "coarse_labels": [f // 5 for f in test_fine], "data": test_data})
    pickle_to(folder / "meta", {"fine_label_names": names, "coarse_label_names": [f"super_{i}" for i in range(20)]})
    dataset = load("cifar100", tmp_path)
    assert dataset.name == "cifar100" and dataset.num_classes == 100 and dataset.class_names == tuple(names)
    assert dataset.train.images.shape == (12, 3, 32, 32) and dataset.test.images.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(dataset.train.labels.numpy(), fine)  # fine, not coarse, labels
    np.testing.assert_array_equal(dataset.test.labels.numpy(), test_fine)
    for i in range(12):
        np.testing.assert_array_equal(dataset.train.images[i].numpy(), train_data[i].reshape(3, 32, 32))
    for i in range(4):
        np.testing.assert_array_equal(dataset.test.images[i].numpy(), test_data[i].reshape(3, 32, 32))
    # CIFAR-10 files are not CIFAR-100 files, and vice versa
    with data_error("cifar-10-batches-py", tmp_path):
        load("cifar10", tmp_path)


def test_cifar100_truncated_pickle(tmp_path):
    folder = tmp_path / "cifar-100-python"
    batch = {"fine_labels": [1, 2], "coarse_labels": [0, 0], "data": np.zeros((2, 3072), np.uint8)}
    pickle_to(folder / "train", batch)
    pickle_to(folder / "test", batch)
    pickle_to(folder / "meta", {"fine_label_names": [str(i) for i in range(100)]})
    load("cifar100", tmp_path)  # fine before the cut
    (folder / "test").write_bytes((folder / "test").read_bytes()[:200])
    with data_error(r"cannot read TMP/cifar-100-python/test: ", tmp_path):
        load("cifar100", tmp_path)


def test_cifar_without_files(tmp_path):
    with data_error("no --data-dir given", tmp_path):
        load("cifar100")
    with data_error("fine_label_names|meta", tmp_path):
        load("cifar100", tmp_path)


# =========================================================================== image folders and archives
TRAIN_FILES = {  # created in this (unsorted) order
    "dog": ["b.png", "sub/a.png", "c.png"],
    "ant": ["x.png", "a.png"],
    "cat": ["m.png", "z/y.png", "k.png"],
}
TEST_FILES = {"cat": ["t1.png"], "ant": ["t2.png", "t0.png"], "dog": ["t3.png"]}
CLASSES = ["ant", "cat", "dog"]


def random_image(seed: int, size=(6, 5), mode="RGB") -> np.ndarray:
    """An (H, W, 3) or (H, W) uint8 array; H and W differ so a transposition shows."""
    shape = (size[0], size[1], 3) if mode == "RGB" else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def make_tree(root: Path, test_split: str = "test", sizes: dict | None = None, modes: dict | None = None):
    """Write the image tree; return {split: [(class, relpath, array)]} in canonical id order."""
    sizes, modes = sizes or {}, modes or {}
    written = {}
    seed = 0
    for split, spec in (("train", TRAIN_FILES), (test_split, TEST_FILES)):
        rows = []
        for cls, files in spec.items():
            for name in files:
                rel = f"{split}/{cls}/{name}"
                seed += 1
                array = random_image(seed, sizes.get(rel, (6, 5)), modes.get(rel, "RGB"))
                write_png(root / rel, array)
                rows.append((cls, rel, array))
        written[split] = sorted(rows, key=lambda r: (CLASSES.index(r[0]), r[1]))
    (root / "train" / "README.txt").write_text("not an image")
    (root / "train" / "cat" / "notes.txt").write_text("not an image either")
    return written


def chw(array: np.ndarray) -> np.ndarray:
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def check_tree(dataset: ImageDataset, written, test_split: str = "test") -> None:
    assert dataset.class_names == tuple(CLASSES)
    for split, rows in (("train", written["train"]), ("test", written[test_split])):
        part = getattr(dataset, split)
        assert len(part) == len(rows)
        np.testing.assert_array_equal(part.labels.numpy(), [CLASSES.index(c) for c, _, _ in rows])
        for i, (_, _, array) in enumerate(rows):
            np.testing.assert_array_equal(part.images[i].numpy(), chw(array))


def test_imagefolder_directory(tmp_path):
    written = make_tree(tmp_path)
    dataset = load("imagefolder", tmp_path)
    assert dataset.train.images.shape == (8, 3, 6, 5) and dataset.test.images.shape == (4, 3, 6, 5)
    check_tree(dataset, written)
    # ids: classes sorted, then files by relative path ("b.png" < "c.png" < "sub/a.png")
    assert [rel for _, rel, _ in written["train"]] == [
        "train/ant/a.png", "train/ant/x.png", "train/cat/k.png", "train/cat/m.png", "train/cat/z/y.png",
        "train/dog/b.png", "train/dog/c.png", "train/dog/sub/a.png"]
    assert dataset.source["test_split"] == "test"
    assert (dataset.default_crop_padding, dataset.default_flip) == (4, True)


def make_tar(tree: Path, out: Path, how: str) -> Path:
    mode = "w" if out.name.endswith(".tar") else "w:gz"
    with tarfile.open(out, mode) as archive:
        if how == "dot":  # like `tar czf out -C tree .`
            archive.add(tree, arcname=".")
        else:
            for child in sorted(tree.iterdir()):
                archive.add(child, arcname=f"{how}/{child.name}" if how else child.name)
    return out


@pytest.mark.parametrize("how,name", [("", "tree.tar.gz"), ("my-tree", "tree.tar.gz"),
                                      ("dot", "tree.tgz"), ("my-tree", "tree.tar")])
def test_imagefolder_archive_matches_directory(tmp_path, how, name):
    tree = tmp_path / "tree"
    written = make_tree(tree)
    from_dir = load("imagefolder", tree)
    archive = make_tar(tree, tmp_path / name, how)
    from_tar = load("imagefolder", archive)
    check_tree(from_tar, written)
    for split in ("train", "test"):
        assert torch.equal(getattr(from_tar, split).images, getattr(from_dir, split).images)
        assert torch.equal(getattr(from_tar, split).labels, getattr(from_dir, split).labels)
    np.testing.assert_array_equal(from_tar.train_hashes, from_dir.train_hashes)
    assert from_tar.fingerprint == from_dir.fingerprint


def test_imagefolder_bad_archive(tmp_path):
    path = tmp_path / "x.tar.gz"
    written = make_tree(tmp_path / "tree")
    assert written
    make_tar(tmp_path / "tree", path, "")
    path.write_bytes(path.read_bytes()[:-300])
    with data_error("archive", tmp_path):
        load("imagefolder", path)
    other = tmp_path / "plain.bin"
    other.write_bytes(b"hello")
    with data_error("neither a directory nor a tar archive", tmp_path):
        load("imagefolder", other)


def test_imagefolder_different_sizes_need_image_size(tmp_path):
    sizes = {"train/cat/k.png": (9, 7), "train/dog/c.png": (4, 4)}
    written = make_tree(tmp_path, sizes=sizes)
    with data_error("--image-size", tmp_path):
        load("imagefolder", tmp_path)
    dataset = load("imagefolder", tmp_path, image_size=4)
    assert dataset.train.images.shape == (8, 3, 4, 4) and dataset.test.images.shape == (4, 3, 4, 4)
    for i, (_, rel, array) in enumerate(written["train"]):
        expected = array if array.shape[:2] == (4, 4) else np.asarray(
            Image.fromarray(array).resize((4, 4), Image.BILINEAR))
        np.testing.assert_array_equal(dataset.train.images[i].numpy(), chw(expected), err_msg=rel)


def test_imagefolder_val_split(tmp_path):
    written = make_tree(tmp_path, test_split="val")
    dataset = load("imagefolder", tmp_path)
    check_tree(dataset, written, test_split="val")
    assert dataset.source["test_split"] == "val"


def test_imagefolder_grayscale(tmp_path):
    modes = {f"{split}/{c}/{f}": "L" for split, spec in (("train", TRAIN_FILES), ("test", TEST_FILES))
             for c, files in spec.items() for f in files}
    written = make_tree(tmp_path, modes=modes)
    dataset = load("imagefolder", tmp_path)
    assert dataset.train.images.shape == (8, 1, 6, 5)
    check_tree(dataset, written)


def test_imagefolder_grayscale_images_join_an_rgb_set(tmp_path):
    written = make_tree(tmp_path, modes={"train/cat/m.png": "L", "test/dog/t3.png": "L"})
    dataset = load("imagefolder", tmp_path)
    assert dataset.train.images.shape == (8, 3, 6, 5)
    gray = next(a for _, rel, a in written["train"] if rel == "train/cat/m.png")
    np.testing.assert_array_equal(dataset.train.images[3].numpy(), np.stack([gray] * 3))


@pytest.mark.parametrize("first_gray", [("test/ant/t0.png",), ("train/ant/a.png",),
                                        ("train/ant/a.png", "test/ant/t0.png")])
def test_imagefolder_rgb_set_whose_first_image_is_grayscale(tmp_path, first_gray):
    written = make_tree(tmp_path, modes=dict.fromkeys(first_gray, "L"))
    dataset = load("imagefolder", tmp_path)
    assert dataset.channels == 3
    for split in ("train", "test"):
        for i, (_, _, array) in enumerate(written[split]):
            np.testing.assert_array_equal(getattr(dataset, split).images[i].numpy(), chw(np.broadcast_to(
                array[..., None], (*array.shape, 3)) if array.ndim == 2 else array))


def test_imagefolder_errors(tmp_path):
    with data_error("--data-dir", tmp_path):
        load("imagefolder")
    with data_error("does not exist", tmp_path):
        load("imagefolder", tmp_path / "missing")
    write_png(tmp_path / "test" / "ant" / "a.png", random_image(1))
    with data_error("no train/<class>/<image>", tmp_path):
        load("imagefolder", tmp_path)
    write_png(tmp_path / "train" / "ant" / "a.png", random_image(2))
    write_png(tmp_path / "test" / "bee" / "a.png", random_image(3))  # a class never trained on
    with data_error("no labelled test", tmp_path):
        load("imagefolder", tmp_path)
    (tmp_path / "train" / "ant" / "b.png").write_bytes(b"not a png")
    (tmp_path / "test" / "bee" / "a.png").unlink()
    with data_error("cannot decode", tmp_path):
        load("imagefolder", tmp_path)


def make_tiny_imagenet(root: Path):
    """A tiny-imagenet-200 style tree: train/<wnid>/images, val/images + val_annotations.txt, unlabelled test/."""
    wnids = ["n02", "n01", "n03"]
    train, val = [], []
    seed = 100
    for wnid in wnids:
        lines = []
        for j in (1, 0):
            seed += 1
            array = random_image(seed, (8, 8))
            name = f"{wnid}_{j}.png"
            write_png(root / "train" / wnid / "images" / name, array)
            train.append((wnid, f"train/{wnid}/images/{name}", array))
            lines.append(f"{name}\t0\t0\t7\t7")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("\n".join(lines) + "\n")
    val_labels = {"val_0.png": "n03", "val_1.png": "n01", "val_2.png": "n03", "val_3.png": "n02", "val_4.png": "n01"}
    annotations = []
    for name, wnid in val_labels.items():
        seed += 1
        array = random_image(seed, (8, 8))
        write_png(root / "val" / "images" / name, array)
        val.append((wnid, f"val/images/{name}", array))
        annotations.append(f"{name}\t{wnid}\t0\t1\t6\t7")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    for j in range(2):  # Tiny ImageNet's test images carry no labels
        seed += 1
        write_png(root / "test" / "images" / f"test_{j}.png", random_image(seed, (8, 8)))
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tone\nn02\ttwo\nn03\tthree\n")
    classes = sorted(wnids)
    order = lambda r: (classes.index(r[0]), r[1])  # noqa: E731
    return classes, sorted(train, key=order), sorted(val, key=order)


@pytest.mark.parametrize("archived", [False, True])
def test_tiny_imagenet_source(tmp_path, archived):
    classes, train, val = make_tiny_imagenet(tmp_path / "tiny-imagenet-200")
    root = tmp_path / "tiny-imagenet-200"
    if archived:
        root = tmp_path / "tiny.tar.gz"
        with tarfile.open(root, "w:gz") as archive:
            archive.add(tmp_path / "tiny-imagenet-200", arcname="tiny-imagenet-200")
    dataset = load("tiny-imagenet", root)
    assert dataset.name == "tiny-imagenet" and dataset.class_names == tuple(classes)
    assert dataset.source["test_split"] == "val"
    assert dataset.train.images.shape == (6, 3, 8, 8) and dataset.test.images.shape == (5, 3, 8, 8)
    for part, rows in ((dataset.train, train), (dataset.test, val)):
        np.testing.assert_array_equal(part.labels.numpy(), [classes.index(w) for w, _, _ in rows])
        for i, (_, _, array) in enumerate(rows):
            np.testing.assert_array_equal(part.images[i].numpy(), chw(array))
    # val labels come from val_annotations.txt: n01 -> val_1, val_4; n02 -> val_3; n03 -> val_0, val_2
    assert [rel for _, rel, _ in val] == ["val/images/val_1.png", "val/images/val_4.png", "val/images/val_3.png",
                                          "val/images/val_0.png", "val/images/val_2.png"]
    assert dataset.test.labels.tolist() == [0, 0, 1, 2, 2]


def test_tiny_imagenet_unannotated_val_image(tmp_path):
    make_tiny_imagenet(tmp_path)
    write_png(tmp_path / "val" / "images" / "val_99.png", random_image(7, (8, 8)))
    with data_error("no labelled test", tmp_path):
        load("tiny-imagenet", tmp_path)


# =========================================================================== Hugging Face datasets
def hf_features(class_names, image_name="image", label_name="label"):
    import datasets

    return datasets.Features({image_name: datasets.Image(), label_name: datasets.ClassLabel(names=list(class_names))})


def hf_split(images, labels, class_names, **kwargs):
    import datasets

    return datasets.Dataset.from_dict({"image": list(images), "label": [int(v) for v in labels]},
                                      features=hf_features(class_names, **kwargs))


def test_hf_matches_idx_hashes(tmp_path, mnist_arrays):
    import datasets

    train_x, train_y, test_x, test_y = mnist_arrays
    names = [str(i) for i in range(10)]
    saved = tmp_path / "hf"
    datasets.DatasetDict({"train": hf_split(train_x, train_y, names),
                          "test": hf_split(test_x, test_y, names)}).save_to_disk(str(saved))
    write_mnist(tmp_path / "idx", mnist_arrays)
    from_hf = load("hf", saved)
    from_idx = load("mnist", tmp_path / "idx")
    assert from_hf.name == "hf" and from_hf.class_names == tuple(names)
    check_mnist_like(from_hf.replace(name="mnist"),
                     mnist_arrays, "mnist", names)
    # the same images through two sources get the same content hashes
    np.testing.assert_array_equal(from_hf.train_hashes, from_idx.train_hashes)
    np.testing.assert_array_equal(content_hashes(from_hf.test.images, from_hf.test.labels),
                                  content_hashes(from_idx.test.images, from_idx.test.labels))
    assert from_hf.fingerprint == from_idx.fingerprint
    # --hf-dataset DIR is the same as --data-dir DIR
    by_name = load_dataset(DataConfig(name="hf", hf_dataset=str(saved)))
    np.testing.assert_array_equal(by_name.train_hashes, from_hf.train_hashes)
    assert from_hf.source == {"dataset": str(saved), "train_split": "train", "test_split": "test"}


def test_hf_rgb_matches_imagefolder(tmp_path):
    import datasets

    written = make_tree(tmp_path / "tree")
    splits = {}
    for split in ("train", "test"):
        rows = written[split]
        splits[split] = hf_split([Image.fromarray(a) for _, _, a in rows], [CLASSES.index(c) for c, _, _ in rows],
                                 CLASSES)
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "hf"))
    from_hf = load("hf", tmp_path / "hf")
    from_folder = load("imagefolder", tmp_path / "tree")
    check_tree(from_hf, written)
    np.testing.assert_array_equal(from_hf.train_hashes, from_folder.train_hashes)
    assert from_hf.fingerprint == from_folder.fingerprint
    np.testing.assert_array_equal(content_hashes(from_hf.test.images, from_hf.test.labels),
                                  content_hashes(from_folder.test.images, from_folder.test.labels))


def test_hf_image_size_and_split_options(tmp_path, mnist_arrays):
    import datasets

    train_x, train_y, test_x, test_y = mnist_arrays
    names = [str(i) for i in range(10)]
    datasets.DatasetDict({"training": hf_split(train_x, train_y, names),
                          "validation": hf_split(test_x, test_y, names)}).save_to_disk(str(tmp_path / "hf"))
    dataset = load("hf", tmp_path / "hf", train_split="training", test_split="validation", image_size=14)
    assert dataset.train.images.shape == (20, 1, 14, 14) and dataset.test.images.shape == (5, 1, 14, 14)
    expected = np.asarray(Image.fromarray(test_x[2]).resize((14, 14), Image.BILINEAR))
    np.testing.assert_array_equal(dataset.test.images[2, 0].numpy(), expected)


def test_hf_missing_split_names_the_splits(tmp_path, mnist_arrays):
    import datasets

    train_x, train_y, test_x, test_y = mnist_arrays
    names = [str(i) for i in range(10)]
    datasets.DatasetDict({"train": hf_split(train_x, train_y, names),
                          "validation": hf_split(test_x, test_y, names)}).save_to_disk(str(tmp_path / "hf"))
    with data_error(r"TMP/hf has no split 'test'; it has train, validation$", tmp_path):
        load("hf", tmp_path / "hf")
    assert len(load("hf", tmp_path / "hf", test_split="validation").test) == 5


def test_hf_single_split_and_missing_target(tmp_path, mnist_arrays):
    train_x, train_y, *_ = mnist_arrays
    hf_split(train_x, train_y, [str(i) for i in range(10)]).save_to_disk(str(tmp_path / "one"))
    with data_error("single split", tmp_path):
        load("hf", tmp_path / "one")
    with data_error("--hf-dataset", tmp_path):
        load("hf")
    (tmp_path / "empty").mkdir()
    with data_error("cannot load", tmp_path):
        load("hf", tmp_path / "empty")


def test_hf_column_options(tmp_path, mnist_arrays):
    import datasets

    train_x, train_y, test_x, test_y = mnist_arrays
    features = datasets.Features({
        "coarse": datasets.ClassLabel(names=["low", "high"]),
        "pic": datasets.Image(),
        "thumb": datasets.Image(),
        "fine": datasets.ClassLabel(names=[f"d{i}" for i in range(10)]),
    })

    def split(x, y):
        return datasets.Dataset.from_dict({"coarse": [int(v >= 5) for v in y], "pic": list(x),
                                           "thumb": [a[:4, :4] for a in x], "fine": [int(v) for v in y]},
                                          features=features)

    datasets.DatasetDict({"train": split(train_x, train_y), "test": split(test_x, test_y)}).save_to_disk(
        str(tmp_path / "hf"))
    default = load("hf", tmp_path / "hf")  # first Image and first ClassLabel features
    assert default.class_names == ("low", "high") and default.train.images.shape == (20, 1, 28, 28)
    np.testing.assert_array_equal(default.train.labels.numpy(), (train_y >= 5).astype(int))
    chosen = load("hf", tmp_path / "hf", image_column="thumb", label_column="fine")
    assert chosen.class_names == tuple(f"d{i}" for i in range(10))
    np.testing.assert_array_equal(chosen.train.labels.numpy(), train_y)
    np.testing.assert_array_equal(chosen.train.images[:, 0].numpy(), train_x[:, :4, :4])
    with data_error("--image-column", tmp_path):
        load("hf", tmp_path / "hf", image_column="nope")


def save_hf_pixel_arrays(path: Path, arrays, feature) -> None:
    import datasets

    train_x, train_y, test_x, test_y = arrays
    features = datasets.Features({"pixels": feature, "label": datasets.Value("int64")})

    def split(x, y):
        return datasets.Dataset.from_dict({"pixels": list(x), "label": [int(v) for v in y]}, features=features)

    datasets.DatasetDict({"train": split(train_x, train_y), "test": split(test_x, test_y)}).save_to_disk(str(path))


def test_hf_float_pixel_column_is_rejected(tmp_path, mnist_arrays):
    import datasets

    floats = tuple(a.astype(np.float32) / 255 if a.ndim == 3 else a for a in mnist_arrays)
    save_hf_pixel_arrays(tmp_path / "hf", floats, datasets.Array2D((28, 28), "float32"))
    with data_error("expected uint8", tmp_path):
        load("hf", tmp_path / "hf", image_column="pixels")


def test_hf_uint8_array_column(tmp_path, mnist_arrays):
    import datasets

    save_hf_pixel_arrays(tmp_path / "hf", mnist_arrays, datasets.Array2D((28, 28), "uint8"))
    dataset = load("hf", tmp_path / "hf", image_column="pixels")
    check_mnist_like(dataset.replace(name="mnist"), mnist_arrays, "mnist", [str(i) for i in range(10)])


# =========================================================================== real data (../shared/data)
@pytest.mark.shared_data
def test_real_mnist(shared_file):
    folder = shared_file("mnist")
    dataset = load("mnist", folder)
    assert (len(dataset.train), len(dataset.test)) == (60000, 10000)
    assert dataset.train.images.shape[1:] == (1, 28, 28)
    assert dataset.train.labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    (mean,), (std,) = dataset.normalization
    assert mean == pytest.approx(0.1307, abs=1e-3)
    assert std == pytest.approx(0.3081, abs=1e-3)
    assert len(set(dataset.train_hashes.tolist())) == 60000


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_cifar10_jpeg_imagefolder(shared_file):
    """About 25 s on a 2-core machine (decoding 60,000 JPEGs): marked slow, it still runs by default."""
    archive = shared_file("cifar10-jpeg/cifar10_jpeg_q75.tar.gz")
    start = time.perf_counter()
    dataset = load("imagefolder", archive)
    elapsed = time.perf_counter() - start
    print(f"cifar10 jpeg imagefolder load: {elapsed:.1f} s")
    assert (len(dataset.train), len(dataset.test)) == (50000, 10000)
    assert dataset.class_names == tuple(CIFAR10_NAMES)
    assert dataset.train.images.shape[1:] == (3, 32, 32)
    assert dataset.train.labels.bincount().tolist() == [5000] * 10
    assert dataset.test.labels.bincount().tolist() == [1000] * 10
    assert dataset.source["test_split"] == "test"
    (r, g, b), _ = dataset.normalization  # CIFAR-10's channel means are about 0.491, 0.482, 0.447
    assert r == pytest.approx(0.4914, abs=0.01) and g == pytest.approx(0.4822, abs=0.01)
    assert b == pytest.approx(0.4465, abs=0.01)
