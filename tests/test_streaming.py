"""The streaming loader against the in-memory path on small synthetic image trees."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pracset.data import DataConfig, DeviceLoader, load_dataset
from pracset.data.streaming import (ShardedBatchSampler, StreamingLoader, augment, hf_splits, image_folder_splits,
                                    open_streaming)
from pracset.errors import ConfigError, DataError

CLASSES = {"cat": 7, "ant": 6, "bee": 8}  # sorted: ant, bee, cat
SIZE = (12, 10)  # width, height


def write_tree(root: Path) -> Path:
    """Train and test image trees of three classes (one grayscale image among RGB ones) under ``root``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, scale in (("train", 1), ("test", 0)):
        for name, count in CLASSES.items():
            for i in range(count if scale else 3):
                folder = root / split / name / ("nested" if i % 3 == 0 else "")
                folder.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
                image = Image.fromarray(pixels)
                if split == "train" and name == "bee" and i == 2:
                    image = image.convert("L")  # one grayscale image: the split is RGB all the same
                image.save(folder / f"{i:03d}.png")
    (root / "train" / "README.txt").write_text("not an image")
    return root


_write_tree = write_tree  # the name tests/test_distributed.py imports


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("tree") / "images")


@pytest.fixture(scope="module")
def in_memory(tree):
    return load_dataset(DataConfig("imagefolder", data_dir=str(tree)))


@pytest.fixture(scope="module")
def streamed(tree):
    return image_folder_splits(tree)


def _pair(in_memory, streamed, *, workers=0, ids=None, batch_size=4, seed=5, **kwargs):
    mean, std = in_memory.normalization
    device_loader = DeviceLoader(in_memory.train, batch_size, mean, std, ids=ids, shuffle=True, seed=seed, **kwargs)
    stream_loader = StreamingLoader(streamed.train, batch_size, mean, std, ids=ids, shuffle=True, seed=seed,
                                    workers=workers, **kwargs)
    return device_loader, stream_loader


def _assert_same_batches(a, b, epochs=(0, 1)):
    assert len(a) == len(b)
    for epoch in epochs:
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        batches = list(zip(a, b, strict=True))
        assert len(batches) == len(a)
        for x, y in batches:
            assert torch.equal(x.index, y.index)
            assert torch.equal(x.y, y.y)
            assert torch.equal(x.x, y.x)


# ----------------------------------------------------------------------------- equal to the in-memory path
def test_ids_labels_and_classes_match_the_in_memory_source(in_memory, streamed):
    assert streamed.class_names == in_memory.class_names == ("ant", "bee", "cat")
    assert np.array_equal(streamed.train.labels, in_memory.train.labels.numpy())
    assert np.array_equal(streamed.test.labels, in_memory.test.labels.numpy())
    assert streamed.train.image_shape == tuple(in_memory.train.images.shape[1:]) == (3, 10, 12)
    for i in (0, 5, len(streamed.train) - 1):
        image, label = streamed.train[i]
        assert torch.equal(image, in_memory.train.images[i]) and label == int(in_memory.train.labels[i])
    assert (streamed.default_crop_padding, streamed.default_flip) == (4, True)


def test_normalization_and_fingerprint_match(in_memory, streamed):
    assert streamed.normalization == in_memory.normalization  # every example sampled: exact
    assert streamed.fingerprint == in_memory.fingerprint


@pytest.mark.parametrize("workers", [0, 2])
def test_same_batches_as_the_device_loader(in_memory, streamed, workers):
    _assert_same_batches(*_pair(in_memory, streamed, workers=workers))


def test_subset_restriction(in_memory, streamed):
    ids = np.array([20, 3, 4, 11, 0, 17, 8])
    device_loader, stream_loader = _pair(in_memory, streamed, ids=ids, batch_size=3)
    _assert_same_batches(device_loader, stream_loader)
    assert stream_loader.num_examples == 7 and len(stream_loader) == 3
    seen = torch.cat([b.index for b in stream_loader])
    assert sorted(seen.tolist()) == sorted(ids.tolist())
    with pytest.raises(ConfigError):
        StreamingLoader(streamed.train, 3, *in_memory.normalization, ids=[0, 99])


def test_drop_last(in_memory, streamed):
    device_loader, stream_loader = _pair(in_memory, streamed, batch_size=4, drop_last=True)
    assert len(stream_loader) == 21 // 4
    _assert_same_batches(device_loader, stream_loader)


# ----------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_cover_each_id_once_per_epoch(in_memory, streamed, world):
    ids = np.arange(0, 21, 2)  # 11 ids, batches of 5: the last one holds a single example
    mean, std = in_memory.normalization
    single = StreamingLoader(streamed.train, 5, mean, std, ids=ids, shuffle=True, seed=1, workers=0)
    ranks = [StreamingLoader(streamed.train, 5, mean, std, ids=ids, shuffle=True, seed=1, workers=0,
                             rank=r, world_size=world) for r in range(world)]
    assert all(r.sharded for r in ranks) and not single.sharded
    for epoch in (0, 1):
        for loader in (single, *ranks):
            loader.set_epoch(epoch)
        per_rank = [list(r) for r in ranks]
        assert {len(p) for p in per_rank} == {len(single)} == {3}
        everything = []
        for step, batch in enumerate(single):
            joined = torch.cat([p[step].index for p in per_rank])
            assert torch.equal(joined, batch.index)  # step k: the slices of the one-process batch k
            assert torch.equal(torch.cat([p[step].x for p in per_rank]), batch.x)
            everything += joined.tolist()
        assert sorted(everything) == ids.tolist()  # each id exactly once per epoch


def test_sampler_slices_are_contiguous_and_balanced():
    # batches of 4, 4 and 2 split 2/1/1, 2/1/1 and 1/1/0 over three ranks
    slices = [[ids.tolist() for _, ids in ShardedBatchSampler(np.arange(10), 4, rank=r, world_size=3)]
              for r in range(3)]
    assert slices == [[[0, 1], [4, 5], [8]], [[2], [6], [9]], [[3], [7], []]]


# ----------------------------------------------------------------------------- augmentation
def test_augmentation_depends_on_seed_epoch_and_id_only(streamed, in_memory):
    mean, std = in_memory.normalization
    kwargs = dict(shuffle=True, seed=2, crop_padding=2, flip=True, workers=0)

    def pixels(batch_size, epoch, **extra):
        loader = StreamingLoader(streamed.train, batch_size, mean, std, **kwargs, **extra)
        loader.set_epoch(epoch)
        out = {}
        for batch in loader:
            out.update({int(i): x for i, x in zip(batch.index, batch.x)})
        return out

    a, b = pixels(4, 0), pixels(7, 0)
    halves = {**pixels(4, 0, rank=0, world_size=2), **pixels(4, 0, rank=1, world_size=2)}
    assert a.keys() == b.keys() == halves.keys()
    assert all(torch.equal(a[i], b[i]) and torch.equal(a[i], halves[i]) for i in a)
    later = pixels(4, 1)
    assert any(not torch.equal(a[i], later[i]) for i in a)


def test_augment_crops_with_zero_padding_and_flips():
    images = np.arange(2 * 1 * 4 * 4, dtype=np.uint8).reshape(2, 1, 4, 4) + 1
    flips, shifted = 0, 0
    for epoch in range(60):
        out = augment(images, np.array([epoch * 2, epoch * 2 + 1]), seed=0, epoch=epoch, crop_padding=1, flip=True)
        assert out.shape == images.shape and out.dtype == np.uint8
        for j in range(2):
            flat = augment(images[j:j + 1], np.array([epoch * 2 + j]), seed=0, epoch=epoch, crop_padding=1, flip=False)
            shifted += int((flat == 0).any())
            flips += int(not np.array_equal(out[j], flat[0]))
    assert 30 < flips < 90 and shifted > 60  # about half flipped; most crops show some zero padding


# ----------------------------------------------------------------------------- the training stack on top
def test_trainer_recorder_and_probe_run_unchanged_on_streaming(in_memory, streamed):
    from pracset.models import build_model
    from pracset.stats import ExampleRecorder, pruning_probe
    from pracset.train.config import TrainConfig
    from pracset.train.loop import Trainer
    from pracset.train.run import input_spec

    config = TrainConfig(epochs=2, batch_size=4, lr=0.05, seed=5, crop_padding=0, flip=False)
    mean, std = in_memory.normalization
    results = []
    for kind in ("device", "stream"):
        model = build_model("mlp", input_spec(in_memory), seed=0)
        if kind == "device":
            train = DeviceLoader(in_memory.train, 4, mean, std, shuffle=True, seed=5)
            test = DeviceLoader(in_memory.test, 8, mean, std)
            probe_loader = DeviceLoader(in_memory.train, 8, mean, std)
        else:
            train = StreamingLoader(streamed.train, 4, mean, std, shuffle=True, seed=5, workers=0)
            test = StreamingLoader(streamed.test, 8, mean, std, workers=0)
            probe_loader = train.unaugmented(8)
        recorder = ExampleRecorder(len(in_memory.train))
        state = Trainer(config).fit(model, train, test, [recorder])
        probe = pruning_probe(model, probe_loader, [0.5], num_examples=len(in_memory.train))
        results.append((state.history, recorder.statistics(), probe, model.state_dict()))
    (h0, s0, p0, w0), (h1, s1, p1, w1) = results
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in h0] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in h1]
    for name, column in s0.columns().items():
        assert np.array_equal(column, s1.columns()[name], equal_nan=column.dtype.kind == "f"), name
    assert np.array_equal(p0.disagreements, p1.disagreements)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


# ----------------------------------------------------------------------------- archives and Hugging Face
def test_uncompressed_tar_is_read_in_place(tmp_path, tree, in_memory):
    archive = tmp_path / "images.tar"
    with tarfile.open(archive, "w") as handle:
        handle.add(tree, arcname="wrapper")  # one wrapping folder, stripped as by the in-memory source
    streamed = image_folder_splits(archive)
    assert np.array_equal(streamed.train.labels, in_memory.train.labels.numpy())
    mean, std = in_memory.normalization
    a = DeviceLoader(in_memory.train, 5, mean, std, shuffle=True, seed=1)
    b = StreamingLoader(streamed.train, 5, mean, std, shuffle=True, seed=1, workers=2)
    _assert_same_batches(a, b, epochs=(3,))


def test_compressed_tar_needs_extraction(tmp_path, tree, in_memory):
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        handle.add(tree, arcname="wrapper")
    with pytest.raises(DataError, match="extract"):
        image_folder_splits(archive)
    streamed = open_streaming(DataConfig("imagefolder", data_dir=str(archive)), extract_to=tmp_path / "x")
    assert streamed.fingerprint == in_memory.fingerprint
    again = image_folder_splits(archive, extract_to=tmp_path / "x")  # extracted once, reused
    assert again.source["root"] == streamed.source["root"]


def test_small_sources_are_refused():
    with pytest.raises(ConfigError, match="in memory"):
        open_streaming(DataConfig("digits"))


def save_as_hf(tree, saved):
    """The image tree as a Hugging Face ``save_to_disk`` folder (train and test splits, image + label)."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rows = {"train": [], "test": []}
    for split in rows:
        for label, name in enumerate(sorted(CLASSES)):
            for path in sorted((tree / split / name).rglob("*.png")):
                rows[split].append({"image": Image.open(path).convert("RGB"), "label": label})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=sorted(CLASSES))})
    datasets.DatasetDict({split: datasets.Dataset.from_list(r, features=features) for split, r in rows.items()}
                         ).save_to_disk(saved)
    return saved


def test_hugging_face_rows(tmp_path, tree):
    saved = save_as_hf(tree, tmp_path / "hf")
    in_memory = load_dataset(DataConfig("hf", data_dir=str(saved)))
    streamed = hf_splits(str(saved))
    assert streamed.class_names == in_memory.class_names
    mean, std = in_memory.normalization
    a = DeviceLoader(in_memory.train, 6, mean, std, shuffle=True, seed=9)
    b = StreamingLoader(streamed.train, 6, mean, std, shuffle=True, seed=9, workers=2)
    _assert_same_batches(a, b, epochs=(0,))


def test_make_streaming_loaders_like_make_loaders(tree, in_memory):
    from pracset.data.streaming import make_streaming_loaders
    from pracset.models import build_model
    from pracset.train.config import TrainConfig
    from pracset.train.loop import Trainer
    from pracset.train.run import input_spec, make_loaders

    data = open_streaming(DataConfig("imagefolder", data_dir=str(tree)))
    data.workers = 0
    assert data.input_spec() == input_spec(in_memory)
    config = TrainConfig(epochs=1, batch_size=5, seed=4)
    train, test = make_streaming_loaders(data, config, torch.device("cpu"), ids=[1, 2, 3, 5, 8, 13], workers=0)
    device_train, device_test = make_loaders(in_memory, config, torch.device("cpu"), ids=[1, 2, 3, 5, 8, 13])
    assert (train.crop_padding, train.flip, train.batch_size, len(train)) == \
           (device_train.crop_padding, device_train.flip, device_train.batch_size, len(device_train))
    _assert_same_batches(test, device_test, epochs=(0,))
    state = Trainer(config).fit(build_model("mlp", data.input_spec(), seed=0), train, test)
    assert state.step == 2 and "test_accuracy" in state.history[-1]


# ----------------------------------------------------------------------------- random-resized crop (ImageNet)
def _crops_by_id(streamed, mean, std, *, batch_size, epoch, workers=0, **extra):
    loader = StreamingLoader(streamed.train, batch_size, mean, std, shuffle=True, seed=3,
                             random_resized_crop=True, workers=workers, **extra)  # no flip: only the crop varies
    loader.set_epoch(epoch)
    return {int(i): x for batch in loader for i, x in zip(batch.index, batch.x)}


def test_random_resized_crop_depends_on_seed_epoch_and_id_only(streamed, in_memory):
    mean, std = in_memory.normalization
    alone = _crops_by_id(streamed, mean, std, batch_size=4, epoch=0)
    regrouped = _crops_by_id(streamed, mean, std, batch_size=7, epoch=0, workers=2)
    ranks = {**_crops_by_id(streamed, mean, std, batch_size=4, epoch=0, rank=0, world_size=2),
             **_crops_by_id(streamed, mean, std, batch_size=4, epoch=0, rank=1, world_size=2)}
    assert alone.keys() == regrouped.keys() == ranks.keys() == set(range(len(streamed.train)))
    assert all(torch.equal(alone[i], regrouped[i]) and torch.equal(alone[i], ranks[i]) for i in alone)
    assert all(x.shape == (3, SIZE[1], SIZE[0]) for x in alone.values())  # back to the image size
    later = _crops_by_id(streamed, mean, std, batch_size=4, epoch=1)
    assert sum(not torch.equal(alone[i], later[i]) for i in alone) >= len(alone) - 1  # a new crop each epoch
    plain = StreamingLoader(streamed.train, 4, mean, std, shuffle=True, seed=3, workers=0)
    assert sum(not torch.equal(alone[int(i)], x) for b in plain for i, x in zip(b.index, b.x)) >= len(alone) - 1


def test_random_resized_crop_by_hand():
    from PIL import Image

    from pracset.data.host_augment import resized_crop_boxes, resized_crops

    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (3, 2, 9, 9), dtype=np.uint8)
    whole = dict(seed=0, epoch=4, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert np.array_equal(resized_crops(square, np.array([5, 6, 7]), **whole), square)  # the crop is the image
    # a 12-wide, 10-high image cannot hold a square of its whole area: the central 10x10 crop, stretched to 12 wide
    wide = rng.integers(0, 256, (1, 1, 10, 12), dtype=np.uint8)
    assert resized_crop_boxes(10, 12, np.array([0]), **whole).tolist() == [[0, 1, 10, 10]]
    expected = np.asarray(Image.fromarray(wide[0, 0][:, 1:11]).resize((12, 10), Image.BILINEAR))
    assert np.array_equal(resized_crops(wide, np.array([0]), **whole)[0, 0], expected)

    boxes = resized_crop_boxes(64, 48, np.arange(4000), seed=1, epoch=0)  # torchvision's defaults
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + height <= 64).all() and (left + width <= 48).all()
    share, aspect = height * width / (64 * 48), width / height
    assert share.min() > 0.07 and share.max() <= 1 and 0.4 < share.mean() < 0.55
    assert aspect.min() > 0.7 and aspect.max() < 1.4  # 3/4..4/3, up to rounding to whole pixels


def test_random_resized_crop_replaces_the_padded_crop(streamed, in_memory):
    from pracset.train.config import TrainConfig

    with pytest.raises(ConfigError, match="random_resized_crop replaces the padded random crop: pass crop_padding=0"):
        StreamingLoader(streamed.train, 4, *in_memory.normalization, crop_padding=4, random_resized_crop=True)
    with pytest.raises(ConfigError, match="leave crop_padding unset or 0, got 4"):
        TrainConfig(random_resized_crop=True, crop_padding=4)
    assert TrainConfig(random_resized_crop=True).crop_padding is None  # the data set's default yields to it
