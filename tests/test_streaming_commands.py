"""Streaming in the commands: a streamed build equals the in-memory one, hashes are cached, failures are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pracset.build import build_manifest
from pracset.cli import main
from pracset.data import DataConfig
from pracset.manifest import read_manifest
from pracset.train import TrainConfig

#: No augmentation: the in-memory and the streaming loaders draw their augmentations differently, but
#: their permutations are the same (torch.randperm on the CPU), so without it the runs are the same run.
RECIPE = TrainConfig(epochs=3, batch_size=8, crop_padding=0, flip=False, warmup_epochs=0, lr=0.05)


def write_digits_tree(root: Path, per_class: int = 12) -> Path:
    """An image-folder tree of scikit-learn's 8x8 digits (classes 0-3) as PNGs: small, and learnable."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for split, offset in (("train", 0), ("test", per_class)):
        for label in range(4):
            rows = np.flatnonzero(digits.target == label)[offset:offset + per_class]
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for row in rows:
                pixels = (digits.images[row] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{row:04d}.png")
    return root


@pytest.fixture()
def tree(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("PRACSET_CACHE_DIR", str(tmp_path / "cache"))
    return write_digits_tree(tmp_path / "digits-tree")


@pytest.mark.slow
def test_a_streamed_build_writes_the_manifest_the_in_memory_build_writes(tree, tmp_path):
    memory = build_manifest(DataConfig("imagefolder", data_dir=str(tree)), "mlp", tmp_path / "memory.parquet",
                            train=RECIPE)
    streamed = build_manifest(DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0), "mlp",
                              tmp_path / "streamed.parquet", train=RECIPE)
    a, b = read_manifest(memory.manifest_path), read_manifest(streamed.manifest_path)
    assert a.metadata["dataset"]["fingerprint"] == b.metadata["dataset"]["fingerprint"]
    for column in ("example_id", "content_hash", "label", "forgetting_events", "presentations", "times_correct",
                   "first_learned_epoch", "never_learned", "cep_disagreements", "selected", "reason"):
        assert np.array_equal(a.column(column), b.column(column)), column
    np.testing.assert_allclose(a.column("last_loss"), b.column("last_loss"), rtol=1e-5)
    assert a.provenance["dense_test_accuracy"] == b.provenance["dense_test_accuracy"]
    assert a.provenance["probe"]["disagreed_at"] == b.provenance["probe"]["disagreed_at"]


def test_hashes_are_cached_and_a_changed_file_is_hashed_again(tree, tmp_path, monkeypatch):
    from pracset.data import streaming

    passes = []
    real = streaming.decoded_batches

    def counting(dataset, ids, *args, **kwargs):
        passes.append(len(ids))
        return real(dataset, ids, *args, **kwargs)

    monkeypatch.setattr(streaming, "decoded_batches", counting)
    config = DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0)
    first = streaming.open_streaming(config).train_hashes
    assert passes == [48]  # one pass over the 48 training images
    again = streaming.open_streaming(config).train_hashes
    assert passes == [48] and np.array_equal(first, again)  # read back from the cache
    assert len(list((tmp_path / "cache").glob("hashes-*.npy"))) == 1
    # rewrite one image (other pixels, so another size or time): another key, hashed again
    from PIL import Image

    image = sorted((tree / "train" / "digit1").iterdir())[0]
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(image)
    changed = streaming.open_streaming(config).train_hashes
    assert passes == [48, 48]
    assert (changed != first).sum() == 1


def test_a_corrupt_cache_entry_is_ignored(tree, tmp_path):
    from pracset.data import streaming

    config = DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0)
    expected = streaming.open_streaming(config).train_hashes
    for entry in (tmp_path / "cache").glob("hashes-*.npy"):
        entry.write_bytes(b"not numpy")
    assert np.array_equal(streaming.open_streaming(config).train_hashes, expected)


def test_the_commands_stream(tree, tmp_path, capsys):
    data = ["--data", "imagefolder", "--data-dir", str(tree), "--stream", "--workers", "0", "-q",
            "--epochs", "1", "--batch-size", "16"]
    assert main(["train", *data, "--arch", "mlp", "--out", str(tmp_path / "train")]) == 0
    assert main(["ticket", "--method", "imp", "--rounds", "1", *data, "--arch", "mlp",
                 "--out", str(tmp_path / "ticket")]) == 0
    assert (tmp_path / "ticket" / "tickets.json").exists()
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--stream", "--arch", "mlp", "--out", str(tmp_path / "x"), "-q"]) == 2
    assert capsys.readouterr().err == ("pracset train: error: data set 'digits' is small and loads in memory; "
                                       "streaming serves imagefolder, tiny-imagenet, hf\n")


def test_a_file_gone_mid_run_is_one_line_and_resume_continues(tree, tmp_path, capsys):
    from pracset.data.streaming import open_streaming
    from pracset.data.stream_loader import StreamingLoader

    splits = open_streaming(DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0))
    splits.normalization  # noqa: B018  (computed while every file is there)
    victim = sorted((tree / "train" / "digit2").iterdir())[3]
    saved = victim.read_bytes()
    victim.unlink()
    for workers in (0, 1):
        loader = StreamingLoader(splits.train, 16, *splits.normalization, workers=workers)
        with pytest.raises(Exception) as caught:
            list(loader)
        message = str(caught.value)
        assert type(caught.value).__name__ == "DataError" and "\n" not in message
        assert message.startswith(f"cannot read {victim}: No such file or directory")
    victim.write_bytes(saved)
    assert sum(len(b.index) for b in StreamingLoader(splits.train, 16, *splits.normalization, workers=0)) == 48


@pytest.mark.slow
def test_a_resumed_run_refuses_files_added_since_it_started(tree, tmp_path):
    from PIL import Image

    from pracset.data.streaming import open_streaming
    from pracset.errors import DataError
    from pracset.runs import RunDirectory

    config = DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0)
    identity = {"what": "a run"}
    with RunDirectory(tmp_path / "run", identity, resume=False, finished="done.json") as run:
        run.claim(data=open_streaming(config))
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tree / "train" / "digit0" / "9999.png")
    with RunDirectory(tmp_path / "run", identity, resume=True, finished="done.json") as run:
        assert run.status == "resume"
        with pytest.raises(DataError, match=r"the data changed since .*run started \(listing: .*; "
                                            r"train_examples: 48 -> 49\); restore it"):
            run.claim(data=open_streaming(config))
    (tree / "train" / "digit0" / "9999.png").unlink()
    with RunDirectory(tmp_path / "run", identity, resume=True, finished="done.json") as run:
        run.claim(data=open_streaming(config))  # the same files again: it continues


def write_tiny_imagenet_tar(path: Path, classes: int = 3, per_class: int = 6, size: int = 32) -> Path:
    """An uncompressed tar in Tiny ImageNet's layout (train/WNID/images/*.JPEG, val/images + val_annotations.txt)."""
    import io
    import tarfile

    from PIL import Image

    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(f"tiny-imagenet-200/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        annotations = []
        for c in range(classes):
            wnid = f"n{c:08d}"
            for i in range(per_class + 2):
                # a class is a colour plus noise: learnable in a few steps
                pixels = np.clip(rng.normal(60 + 70 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
                if i < per_class:
                    add(f"train/{wnid}/images/{wnid}_{i}.JPEG", buffer.getvalue())
                else:
                    add(f"val/images/val_{c}_{i}.JPEG", buffer.getvalue())
                    annotations.append(f"val_{c}_{i}.JPEG\t{wnid}\t0\t0\t{size}\t{size}")
        add("val/val_annotations.txt", ("\n".join(annotations) + "\n").encode())
    return path


@pytest.mark.slow
def test_the_tiny_imagenet_pipeline_runs_end_to_end_streamed_from_a_tar(tmp_path, monkeypatch, capsys):
    """pipelines/tinyimagenet-resnet18.toml as shipped (ResNet-18, PrAC-IMP against IMP, the transfer), on a
    miniature Tiny ImageNet tar, streamed; only its length is cut."""
    monkeypatch.setenv("PRACSET_CACHE_DIR", str(tmp_path / "cache"))
    archive = write_tiny_imagenet_tar(tmp_path / "tiny-imagenet-200.tar")
    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "tinyimagenet-resnet18.toml"
    code = main(["run", str(pipeline), "--data-dir", str(archive), "--out", str(tmp_path / "run"), "-q",
                 "--device", "cpu", "--set", "data.stream=true", "--set", "data.workers=1",
                 "--set", "train.epochs=2", "--set", "train.batch_size=6", "--set", "imp.rounds=1",
                 "--set", "imp.rewind=\"1ep\"", "--set", "imp.early_bird=false", "--set", "build.early_bird=false"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert (tmp_path / "run" / "report.md").exists()
    manifest = read_manifest(tmp_path / "run" / "manifest.parquet")
    assert manifest.size == 18 and manifest.metadata["dataset"]["name"] == "tiny-imagenet"
    tickets = json.loads((tmp_path / "run" / "vgg16" / "imp-s0" / "tickets.json").read_text())
    assert tickets["tickets"][-1]["sparsity"] > 0  # the transfer to VGG-16 found a pruned ticket too


class _KillingReader:
    """A tree reader whose worker processes die (SIGKILL) on their first read: a worker killed by the OOM killer."""

    def __init__(self, reader, parent: int):
        self.reader, self.parent, self.kind = reader, parent, reader.kind

    def read_many(self, ids):
        import os
        import signal

        if os.getpid() != self.parent:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.reader.read_many(ids)

    def describe(self, i):
        return self.reader.describe(i)


def test_a_worker_that_dies_is_one_line(tree):
    import os

    from pracset.data.stream_loader import StreamingLoader
    from pracset.data.streaming import open_streaming
    from pracset.errors import DataError

    splits = open_streaming(DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0))
    mean, std = splits.normalization
    splits.train.reader = _KillingReader(splits.train.reader, os.getpid())
    with pytest.raises(DataError) as caught:
        list(StreamingLoader(splits.train, 16, mean, std, workers=1))
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{splits.train.what}: a decoding worker died (DataLoader worker")
    assert message.endswith("--resume continues from the last finished epoch")


def test_the_cache_key_covers_the_labels_and_the_resize(tree):
    """The hashes cover label and pixels: a key that missed either would read back another split's hashes."""
    from pracset.data.stream_loader import StreamingDataset
    from pracset.data.streaming import open_streaming

    split = open_streaming(DataConfig("imagefolder", data_dir=str(tree), stream=True, workers=0)).train
    relabelled = StreamingDataset(split.reader, (split.labels + 1) % 4, mode=split.mode)
    resized = StreamingDataset(split.reader, split.labels, mode=split.mode, image_size=6)
    same = StreamingDataset(split.reader, split.labels.copy(), mode=split.mode)
    assert split.cache_key() == same.cache_key()
    assert split.cache_key() != relabelled.cache_key() and split.cache_key() != resized.cache_key()
