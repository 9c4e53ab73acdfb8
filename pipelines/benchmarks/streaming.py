"""Benchmark: the in-memory DeviceLoader against the StreamingLoader on a JPEG image folder.

What is measured
----------------
An image-folder tree of JPEG files (``train/<class>/*.jpg`` and
``test/<class>/*.jpg``), by default the JPEG copy of CIFAR-10
(``cifar10_jpeg_q75.tar.gz``: 50,000 training and 10,000 test 32x32 images).
``--data-dir`` names the tree, an uncompressed ``.tar`` of it (both loaders
read its members in place, as an ImageNet tar would be read), or a compressed
archive, extracted once into ``--extract-to`` (streaming needs random access
to the files; both loaders then read the extracted tree, so that only the
loaders differ). ``--smoke`` writes random JPEGs with PIL and packs them into
an uncompressed tar. Then:

1. ``in-memory load``: ``load_dataset(DataConfig("imagefolder", ...))``
   decodes every image of both splits into uint8 tensors (threads): seconds,
   and images decoded per second.
2. ``streaming open``: ``image_folder_splits(...)`` lists the files, checks
   the colour mode and decodes one image, seconds; the sampled normalisation
   (10,000 images, in workers) is timed apart.
3. ``loader only``: images per second of iterating each loader over the same
   ``--batches`` batches of ``--batch-size`` (a fixed random subset of the
   training ids, shuffled per epoch, random crop 4 + flip, or with
   ``--random-resized-crop`` ImageNet's random-resized crop + flip;
   normalised on the device): ``DeviceLoader`` over the split on
   ``--device``, and ``StreamingLoader`` with 1, 2 and all CPUs' decoding
   processes (and ``--workers``; pinned memory and non-blocking copies on
   CUDA). The median of ``--repeats`` epochs after a warm-up epoch (which
   starts the workers).
4. With ``--train`` (default on CUDA): ``--arch`` (resnet18, the CIFAR
   variant) trained by ``pracset.train.Trainer`` for one epoch over the same
   batches (bf16 autocast and channels-last on CUDA), fed (a) by the
   DeviceLoader, (b) by the StreamingLoader, and (c) ``compute only``: a
   bare loop of the same training step on one batch kept on the device (the
   GPU's ceiling, without the Trainer's per-step host work). Images per
   second each, and for (a) and (b) the share of the epoch the training
   thread spent in ``next(loader)``. The GPU waits for data when (b) is
   clearly slower than (a), the same Trainer loop fed from memory; (b)/(c) is
   reported too.

Targets (CUDA, with the training timed): training fed by the streaming
loader at >= 0.9x the images per second of the same loop fed from memory,
and its training thread waiting in ``next(loader)`` for at most 10% of the
epoch. On a CPU training is compute-bound, so neither is judged there (SKIP).

Every number is also written as JSON with ``--json FILE``.

Run it
------
    # DIR/cifar10_jpeg_q75.tar.gz, or the tree extracted from it; small settings for a CPU:
    python -m pipelines.benchmarks.streaming --data-dir DIR/cifar10_jpeg_q75.tar.gz --batches 40 --workers 2 --repeats 2
    # on a GPU machine: ResNet-18 fed by the streaming loader
    python -m pipelines.benchmarks.streaming --data-dir DIR/cifar10_jpeg_q75.tar.gz --device cuda --workers 14
    # an uncompressed tar read in place, with ImageNet's augmentation
    python -m pipelines.benchmarks.streaming --data-dir IMAGES.tar --random-resized-crop --batches 40
    python -m pipelines.benchmarks.streaming --smoke      # a few batches of synthetic JPEGs in a tar
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from unittest import mock
from pathlib import Path

import numpy as np
import torch

from pipelines.benchmarks import common
from pracset.data import DataConfig, DeviceLoader, load_dataset
from pracset.data.cache import CACHE_ENV
from pracset.data.readers import is_compressed
from pracset.data.streaming import StreamingLoader, estimate_normalization, extract_archive, image_folder_splits
from pracset.models import build_model, has_convolutions
from pracset.train import TrainConfig, Trainer

TARGET_STREAMING_OVER_MEMORY = 0.9
TARGET_WAITING_FRACTION = 0.10
SMOKE = {"batch_size": 32, "batches": 2, "workers": 1, "repeats": 1, "train": True, "arch": "lenet5"}


class TimedLoader:
    """A loader proxy that adds up the time the consumer spends waiting in ``next()``."""

    def __init__(self, loader):
        self.loader = loader
        self.waited = 0.0

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        iterator = iter(self.loader)
        while True:
            started = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            finally:
                self.waited += time.perf_counter() - started
            yield batch


def drain(loader, device: torch.device, epoch: int) -> tuple[float, int]:
    loader.set_epoch(epoch)
    count = 0

    def run():
        nonlocal count
        for batch in loader:
            count += len(batch.index)

    return common.timed(device, run), count


def loader_rate(loader, device: torch.device, repeats: int) -> dict:
    warm_seconds, _ = drain(loader, device, 0)  # starts the workers, warms the caches
    runs = [drain(loader, device, epoch) for epoch in range(1, repeats + 1)]
    rates = [n / s for s, n in runs]
    return {"images_per_s": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates],
            "warmup_epoch_s": round(warm_seconds, 3)}


def train_rates(dataset, streamed, ids, args, device: torch.device, mean, std) -> dict:
    spec = common.input_spec(dataset)
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, seed=0, precision="auto",
                         crop_padding=0 if args.random_resized_crop else 4, flip=True,
                         random_resized_crop=args.random_resized_crop)
    conv = has_convolutions(build_model(args.arch, spec, seed=0))
    channels_last = conv and device.type == "cuda"
    split = dataset.train.to(device)
    device_loader = DeviceLoader(split, args.batch_size, mean, std, ids=ids, shuffle=True, crop_padding=4, flip=True,
                                 channels_last=channels_last)
    stream_loader = StreamingLoader(streamed.train, args.batch_size, mean, std, device=device, ids=ids, shuffle=True,
                                    **augmentation(args), channels_last=channels_last, workers=args.workers)
    out = {}
    for name, loader in (("device-loader", device_loader), ("streaming-loader", stream_loader)):
        Trainer(config, stage="warmup").fit(build_model(args.arch, spec, seed=0), loader)  # cuDNN autotune, workers
        rates, waits = [], []
        for _ in range(args.repeats):
            model = build_model(args.arch, spec, seed=0)
            waiting = TimedLoader(loader)
            seconds = common.timed(device, lambda: Trainer(config, stage=name).fit(model, waiting))
            rates.append(len(ids) / seconds)
            waits.append(waiting.waited / seconds)
        out[name] = {"images_per_s": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates],
                     "waiting_in_next_fraction": round(statistics.median(waits), 4)}

    # (c) the same step on one batch that stays on the device: the compute ceiling
    model = build_model(args.arch, spec, seed=0).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    batch = next(iter(device_loader))
    bf16 = common.use_bf16_for("auto", device)
    steps = len(device_loader)

    def loop(n: int) -> None:
        for _ in range(n):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(batch.x)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch.y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    loop(min(steps, 10))
    rates = [steps * args.batch_size / common.timed(device, lambda: loop(steps)) for _ in range(args.repeats)]
    out["compute-only"] = {"images_per_s": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates]}
    streaming = out["streaming-loader"]["images_per_s"]
    out["streaming_vs_compute"] = round(streaming / out["compute-only"]["images_per_s"], 3)
    out["streaming_vs_device_loader"] = round(streaming / out["device-loader"]["images_per_s"], 3)
    out["gpu_waits_for_data"] = out["streaming_vs_device_loader"] < TARGET_STREAMING_OVER_MEMORY
    return out


def augmentation(args) -> dict:
    """The streaming loader's augmentation: random crop 4 + flip, or ImageNet's random-resized crop + flip."""
    if args.random_resized_crop:
        return {"crop_padding": 0, "flip": True, "random_resized_crop": True}
    return {"crop_padding": 4, "flip": True}


def write_smoke_tar(folder: Path) -> Path:
    """Two classes of random 32x32 JPEGs in the layout of the CIFAR-10 archive, packed into an uncompressed tar."""
    tree = common.write_synthetic_image_folder(folder / "tree", classes=2, train=48, test=8)
    archive = folder / "images.tar"
    with tarfile.open(archive, "w") as handle:
        for split in ("train", "test"):
            handle.add(tree / split, arcname=split)
    return archive


def worker_counts(args) -> list[int]:
    """The streaming worker counts timed: 1, 2, every CPU, and ``--workers`` (0: decoding in this process)."""
    return sorted({1, 2, os.cpu_count() or 1, args.workers})


def main(argv=None) -> int:
    parser = common.make_parser(__doc__)
    common.add_data_dir(parser, "an image-folder tree of JPEGs, an uncompressed .tar of one (read in place), or a "
                                "compressed archive such as cifar10_jpeg_q75.tar.gz (extracted once)")
    parser.add_argument("--extract-to", default=None, help="where the archive is extracted (default: a folder in $TMPDIR)")
    common.add_device(parser)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--batches", type=int, default=0, help="batches per timed epoch (0: the whole split)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="streaming decode processes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train", action=argparse.BooleanOptionalAction, default=None,
                        help="also time training --arch fed by each loader (default: on CUDA only)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--random-resized-crop", action="store_true",
                        help="augment as ImageNet recipes do (random-resized crop + flip) instead of crop 4 + flip")
    common.add_threads(parser, "torch's own choice")
    args = common.parse(parser, argv, smoke=SMOKE, needs_data_dir=True, positive=("batch_size", "repeats"))
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)
    common.set_threads(args.threads, None)
    train = device.type == "cuda" if args.train is None else args.train
    results: dict = {"settings": {**vars(args), "train": train}, "machine": {
        "python": sys.version.split()[0], "torch": torch.__version__, "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}}

    with common.data_dir(args, write_smoke_tar) as folder:
        source = Path(folder or os.environ[common.DATA_DIR_ENV])
        started = time.perf_counter()
        if source.is_dir() or not is_compressed(source):  # a tree, or an uncompressed tar read in place
            root = source
        else:
            extract_to = Path(args.extract_to) if args.extract_to else Path(tempfile.gettempdir()) / "pracset-bench-cifar10-jpeg"
            root = extract_archive(source, extract_to)
        results["extract_s"] = round(time.perf_counter() - started, 2)
        measure(args, device, train, root, results)

    print(json.dumps(results, indent=2))
    loaders = results["loader_only"]
    count = results["timed_images_per_epoch"]
    print(f"\ncontent hashes of {results['hashed_examples']} training images (what a build records): first "
          f"{results['hashes_first_s']} s (a decoding pass), second {results['hashes_cached_s']} s (the cache)")
    print(f"decoding the whole data set into memory: {results['in_memory_decode_images_per_s']:.0f} img/s "
          f"({results['in_memory_load_s']} s)")
    print(f"loader only, {count} images/epoch, batch {args.batch_size}, {device}: "
          f"in-memory {loaders['device-loader']['images_per_s']:.0f} img/s, streaming "
          + ", ".join(f"{n} worker{'s' * (n > 1)} {r['images_per_s']:.0f}"
                      for n, r in results["streaming_by_workers"].items()) + " img/s")
    if not train:
        return common.finish(args, results, skip="the target needs the training timed: --train (on by default on CUDA)")
    t = results["training"]
    print(f"{args.arch} training: device loader {t['device-loader']['images_per_s']:.0f} img/s, streaming "
          f"{t['streaming-loader']['images_per_s']:.0f} img/s (waiting in next() "
          f"{100 * t['streaming-loader']['waiting_in_next_fraction']:.1f}% of the epoch), compute only "
          f"{t['compute-only']['images_per_s']:.0f} img/s; streaming/in-memory {t['streaming_vs_device_loader']}"
          + (f": the GPU waits for data: {t['gpu_waits_for_data']}" if device.type == "cuda" else ""))
    checks = [common.Check("streaming/in-memory training", t["streaming_vs_device_loader"], ">=",
                           TARGET_STREAMING_OVER_MEMORY, unit="x", digits=3),
              common.Check("streaming-fed training waiting in next()",
                           t["streaming-loader"]["waiting_in_next_fraction"], "<=", TARGET_WAITING_FRACTION, digits=3)]
    if device.type != "cuda":
        return common.finish(args, results, checks, skip=f"the targets are about a GPU waiting for data; training on "
                                                         f"{device} is bound by its own compute")
    return common.finish(args, results, checks)


def measure(args, device: torch.device, train: bool, root: Path, results: dict) -> None:
    """Load, open and time both loaders (and training) over the image-folder tree (or tar) at ``root``."""
    started = time.perf_counter()
    dataset = load_dataset(DataConfig("imagefolder", data_dir=str(root)))
    seconds = time.perf_counter() - started
    results["in_memory_load_s"] = round(seconds, 2)
    results["in_memory_decode_images_per_s"] = round((len(dataset.train) + len(dataset.test)) / seconds, 1)
    started = time.perf_counter()
    streamed = image_folder_splits(root)
    results["streaming_open_s"] = round(time.perf_counter() - started, 2)
    # The content hashes a build records: one decoding pass the first time, read back from the cache (keyed
    # by the files' listing) the second time. A fresh cache folder, so the first pass is a cold one.
    with tempfile.TemporaryDirectory(prefix="pracset-bench-cache.") as cache, \
            mock.patch.dict(os.environ, {CACHE_ENV: cache}):
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            splits = image_folder_splits(root)
            splits.workers = args.workers
            hashes = splits.train_hashes
            timings.append(round(time.perf_counter() - started, 3))
        results["hashes_first_s"], results["hashes_cached_s"] = timings
        results["hashed_examples"] = len(hashes)
    started = time.perf_counter()
    sampled = estimate_normalization(streamed.train, 10_000, workers=args.workers)
    results["streaming_normalization_s"] = round(time.perf_counter() - started, 2)
    mean, std = dataset.normalization
    results["normalization"] = {"exact": [mean, std], "sampled_10k": list(sampled)}
    n = len(dataset.train)
    for i in (0, n // 3, n - 1):  # the same example ids, the same pixels
        assert torch.equal(streamed.train[i][0], dataset.train.images[i]), i
    assert np.array_equal(streamed.train.labels, dataset.train.labels.numpy())

    count = n if args.batches <= 0 else min(n, args.batches * args.batch_size)
    ids = np.sort(np.random.default_rng(0).permutation(n)[:count])
    results["timed_images_per_epoch"] = count
    device_loader = DeviceLoader(dataset.train.to(device), args.batch_size, mean, std, ids=ids, shuffle=True,
                                 crop_padding=4, flip=True)  # the in-memory path has no random-resized crop
    by_workers = {}
    for workers in worker_counts(args):
        stream_loader = StreamingLoader(streamed.train, args.batch_size, mean, std, device=device, ids=ids,
                                        shuffle=True, **augmentation(args), workers=workers)
        by_workers[workers] = loader_rate(stream_loader, device, args.repeats)
    results["streaming_by_workers"] = by_workers
    results["loader_only"] = {"device-loader": loader_rate(device_loader, device, args.repeats),
                              "streaming-loader": by_workers[args.workers]}
    if train:
        results["training"] = {"arch": args.arch, **train_rates(dataset, streamed, ids, args, device, mean, std)}


if __name__ == "__main__":
    sys.exit(main())
