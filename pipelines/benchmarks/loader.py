"""Benchmark: one training epoch of LeNet-300-100 on MNIST, fed three ways.

What is measured
----------------
The wall-clock seconds of one epoch over the 60,000 MNIST training images
(batch 128, 469 steps) of ``build_model('lenet300', InputSpec(1, 28, 28, 10),
seed=0)`` trained with SGD (lr 0.1, momentum 0.9, weight decay 1e-4) and
cross-entropy, by default on the CPU with ``torch.set_num_threads`` set to the
machine's core count (``$OMP_NUM_THREADS`` when set). The same model and
optimizer are fed:

(a) ``bare``: a plain Python loop over pre-normalised float32 tensors already
    in memory, indexed by a fresh ``torch.randperm`` each epoch. This is the
    floor: nothing but forward, backward and optimizer step.
(b) ``pracset``: ``pracset.data.DeviceLoader`` over the uint8 training split
    (``dataset.train``, mean/std from ``dataset.normalization``, shuffle=True)
    driven by the library's real loop,
    ``pracset.train.Trainer(TrainConfig(epochs=1, ...)).fit(model, loader)``
    (what users run). Two diagnostics are timed alongside it:
    ``pracset-loader+bare-loop`` (the bare loop of (a), fed by DeviceLoader
    batches) and ``pracset-loader-only`` (iterating DeviceLoader without
    training), so that the loader's own cost and the Trainer's own cost can be
    told apart.
(c) ``dataloader``: ``torch.utils.data.DataLoader`` (batch 128, shuffle,
    ``--workers`` worker processes, 0 by default) over a map-style Dataset that
    turns each uint8 image into a ``PIL.Image`` and applies torchvision's
    ``ToTensor()`` + ``Normalize((0.1307,), (0.3081,))`` per image - the way
    most lottery-ticket code (torchvision.datasets.MNIST-style) feeds models.
    It is built from the same idx arrays, so no download is needed.

Every way gets a warm-up (a few batches, not timed), then ``--repeats`` timed
epochs, each on a freshly built model and optimizer (built outside the timed
region; the Trainer builds its optimizer and schedule inside ``fit``, which is
part of what users pay). The median seconds per epoch is reported, with the
ratios pracset/bare, dataloader/pracset and dataloader/bare.

Target: pracset/bare <= 1.2 (the verdict). Expected and reported, not
judged: dataloader/pracset >= 6 (how much the per-image DataLoader loses).

On CUDA (``--device cuda``) the data of (a) and (b) lives on the GPU, the
DataLoader batches of (c) are copied to it per step, and every timing is
bracketed by ``torch.cuda.synchronize()``.

Run it
------
    python -m pipelines.benchmarks.loader --data-dir DIR      # DIR: the four MNIST idx files
    python -m pipelines.benchmarks.loader --data-dir DIR --workers 2 --json loader.json
    python -m pipelines.benchmarks.loader --data-dir DIR --device cuda
    python -m pipelines.benchmarks.loader --smoke             # a few batches of synthetic data
"""

from __future__ import annotations

import os
import sys
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipelines.benchmarks import common
from pracset.data import DeviceLoader
from pracset.train import TrainConfig

BATCH_SIZE = 128
LR, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
TORCHVISION_MEAN, TORCHVISION_STD = (0.1307,), (0.3081,)
TARGET_PRACSET_OVER_BARE = 1.2
EXPECTED_DATALOADER_OVER_PRACSET = 6.0
SMOKE = {"repeats": 1, "warmup_batches": 1, "workers": 0}


def new_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_sgd_epochs(device: torch.device, repeats: int, *, warmup: Callable[[nn.Module, torch.optim.Optimizer], object],
                    run: Callable[[nn.Module, torch.optim.Optimizer], object]) -> list[float]:
    """One untimed ``warmup`` call, then ``repeats`` timed ``run`` calls, each on a fresh model and optimizer."""
    model = common.lenet300(device)
    common.timed(device, lambda: warmup(model, new_optimizer(model)))
    times = []
    for _ in range(repeats):
        model = common.lenet300(device)
        optimizer = new_optimizer(model)
        times.append(common.timed(device, lambda: run(model, optimizer)))
    return times


class PILDigits(torch.utils.data.Dataset):
    """torchvision.datasets.MNIST-style: uint8 (N, 28, 28) array -> PIL image -> transform, per item."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        image = Image.fromarray(self.images[index], mode="L")
        return self.transform(image), int(self.labels[index])


# --------------------------------------------------------------------------- the ways
def bench_bare(x_all: torch.Tensor, y_all: torch.Tensor, device: torch.device,
               repeats: int, warmup_batches: int) -> list[float]:
    """(a) pre-normalised float32 tensors in memory, a torch.randperm per epoch."""
    n = len(y_all)

    def epoch(model, optimizer, limit=None):
        order = torch.randperm(n, device=device)
        stop = n if limit is None else min(n, limit * BATCH_SIZE)
        for start in range(0, stop, BATCH_SIZE):
            index = order[start : start + BATCH_SIZE]
            train_step(model, optimizer, x_all[index], y_all[index])

    return time_sgd_epochs(device, repeats, warmup=lambda m, o: epoch(m, o, warmup_batches), run=epoch)


def bench_pracset(dataset, device: torch.device, repeats: int, warmup_batches: int) -> dict[str, list[float]]:
    """(b) DeviceLoader + Trainer.fit, plus the loader in a bare loop and the loader alone."""
    mean, std = dataset.normalization
    split = dataset.train.to(device)
    loader = DeviceLoader(split, BATCH_SIZE, mean, std, shuffle=True)
    warm_loader = DeviceLoader(split, BATCH_SIZE, mean, std, shuffle=True,
                               ids=torch.arange(min(len(split), warmup_batches * BATCH_SIZE)))
    config = TrainConfig(epochs=1, batch_size=BATCH_SIZE, optimizer="sgd", lr=LR, momentum=MOMENTUM,
                         weight_decay=WEIGHT_DECAY, seed=0)
    results: dict[str, list[float]] = {"pracset": [], "pracset-loader+bare-loop": [], "pracset-loader-only": []}

    # Trainer.fit: what `pracset train` runs.
    common.timed(device, common.lenet300_fit(config, warm_loader, device))
    for _ in range(repeats):
        results["pracset"].append(common.timed(device, common.lenet300_fit(config, loader, device)))

    # The same loader feeding the bare loop of (a).
    def bare_loop(model, optimizer, source):
        for batch in source:
            train_step(model, optimizer, batch.x, batch.y)

    results["pracset-loader+bare-loop"] = time_sgd_epochs(
        device, repeats, warmup=lambda m, o: bare_loop(m, o, warm_loader), run=lambda m, o: bare_loop(m, o, loader))

    # The loader alone: gather + normalise every batch, no training.
    def drain(source):
        for batch in source:
            pass

    common.timed(device, lambda: drain(warm_loader))
    for _ in range(repeats):
        results["pracset-loader-only"].append(common.timed(device, lambda: drain(loader)))
    return results


def bench_dataloader(dataset, device: torch.device, repeats: int, warmup_batches: int, workers: int) -> list[float]:
    """(c) torch DataLoader over a PIL + torchvision-transforms Dataset."""
    from torchvision import transforms

    images = dataset.train.images[:, 0].numpy()  # uint8 (N, 28, 28), the same idx arrays
    labels = dataset.train.labels.numpy()
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(TORCHVISION_MEAN, TORCHVISION_STD)])
    data = PILDigits(images, labels, transform)
    pin = device.type == "cuda"
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers,
                                         pin_memory=pin, persistent_workers=False)

    def epoch(model, optimizer, limit=None):
        for step, (x, y) in enumerate(loader):
            if limit is not None and step >= limit:
                break
            train_step(model, optimizer, x.to(device, non_blocking=pin), y.to(device, non_blocking=pin))

    return time_sgd_epochs(device, repeats, warmup=lambda m, o: epoch(m, o, warmup_batches), run=epoch)


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = common.mnist_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per way; the median is reported (default 3)")
    parser.add_argument("--warmup-batches", type=int, default=5, help="untimed warm-up batches per way (default 5)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader num_workers for way (c) (default 0)")
    common.add_threads(parser, "os.cpu_count()")
    args = common.parse(parser, argv, smoke=SMOKE, needs_data_dir=True, positive=("repeats", "warmup_batches"))
    if args.workers < 0:
        parser.error("--workers must not be negative")
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)
    threads = common.set_threads(args.threads, os.cpu_count())

    with common.data_dir(args, common.write_synthetic_mnist) as folder:
        dataset = common.load_mnist(folder)
    mean, std = dataset.normalization
    n = len(dataset.train)
    steps = -(-n // BATCH_SIZE)
    print(common.machine_line(device))
    print(f"MNIST train: {n} images, batch {BATCH_SIZE} -> {steps} steps/epoch; "
          f"LeNet-300-100, SGD lr {LR} momentum {MOMENTUM} wd {WEIGHT_DECAY}, cross-entropy; "
          f"warm-up {args.warmup_batches} batches, {args.repeats} timed epochs per way (median reported)")
    print(f"pracset normalisation from dataset.normalization: mean {mean}, std {std}")

    # (a) bare: normalise once, outside every timing.
    x_all = ((dataset.train.images.float() / 255.0 - mean[0]) / std[0]).to(device)
    y_all = dataset.train.labels.to(device)

    times: dict[str, list[float]] = {}
    print("timing (a) bare ...", flush=True)
    times["bare"] = bench_bare(x_all, y_all, device, args.repeats, args.warmup_batches)
    print("timing (b) pracset ...", flush=True)
    times.update(bench_pracset(dataset, device, args.repeats, args.warmup_batches))
    print(f"timing (c) dataloader (num_workers={args.workers}) ...", flush=True)
    times["dataloader"] = bench_dataloader(dataset, device, args.repeats, args.warmup_batches, args.workers)

    median = common.medians(times)
    common.print_times("way", times, n)
    ratios = {
        "pracset/bare": median["pracset"] / median["bare"],
        "dataloader/pracset": median["dataloader"] / median["pracset"],
        "dataloader/bare": median["dataloader"] / median["bare"],
        "pracset-loader+bare-loop/bare": median["pracset-loader+bare-loop"] / median["bare"],
        "pracset/pracset-loader+bare-loop": median["pracset"] / median["pracset-loader+bare-loop"],
    }
    print()
    for key, value in ratios.items():
        print(f"ratio {key:<34}{value:6.2f}x")
    checks = [
        common.Check("pracset/bare", ratios["pracset/bare"], "<=", TARGET_PRACSET_OVER_BARE, unit="x"),
        common.Check("dataloader/pracset", ratios["dataloader/pracset"], ">=", EXPECTED_DATALOADER_OVER_PRACSET,
                     unit="x", gate=False),
    ]
    report = {
        "device": str(device), "torch": torch.__version__, "threads": threads, "cpu_count": os.cpu_count(),
        "examples": n, "batch_size": BATCH_SIZE, "steps_per_epoch": steps, "repeats": args.repeats,
        "warmup_batches": args.warmup_batches, "workers": args.workers,
        "seconds": times, "median_seconds": median, "ratios": ratios,
    }
    return common.finish(args, report, checks)


if __name__ == "__main__":
    sys.exit(main())
