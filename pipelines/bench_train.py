"""Time pracset's training loop and count its host synchronisations.

Trains ``--arch`` on ``--data`` for ``--epochs`` epochs with the library's
Trainer and prints, per epoch, the wall time, images per second and test
accuracy. On CUDA it also turns on ``torch.cuda.set_sync_debug_mode('warn')``
and counts the synchronising calls per epoch: a loop with no host sync per
step shows a small constant (the end-of-epoch metrics and evaluation), not a
number that grows with the steps.

    python pipelines/bench_train.py --data mnist --data-dir DIR --arch lenet300 --epochs 3
    python pipelines/bench_train.py --data imagefolder --data-dir cifar10_jpeg_q75.tar.gz --arch resnet20 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from pracset.data import DataConfig, load_dataset
from pracset.device import resolve_device
from pracset.models import build_model, has_convolutions
from pracset.train import Callback, TrainConfig, Trainer
from pracset.train.run import input_spec, make_loaders


class EpochClock(Callback):
    """Wall time of each epoch's training steps (synchronised once at the end of the epoch)."""

    def __init__(self, device: torch.device):
        self.device, self.times, self.started = device, [], 0.0

    def on_epoch_start(self, state):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.started = time.perf_counter()

    def on_epoch_end(self, state, metrics):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--data-dir")
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json")
    args = parser.parse_args()

    device = resolve_device(args.device)
    started = time.perf_counter()
    dataset = load_dataset(DataConfig(name=args.data, data_dir=args.data_dir))
    load_seconds = time.perf_counter() - started
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, precision=args.precision, eval_every=args.epochs)
    model = build_model(args.arch, input_spec(dataset), seed=0)
    train, test = make_loaders(dataset, config, device, conv_net=has_convolutions(model))
    clock = EpochClock(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        state = Trainer(config).fit(model, train, test, [clock])
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    result = {
        "data": args.data, "arch": args.arch, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_seconds": round(load_seconds, 2), "steps_per_epoch": state.steps_per_epoch,
        "epoch_seconds": [round(t, 3) for t in clock.times],
        "images_per_second": [round(len(dataset.train) / t) for t in clock.times],
        "test_accuracy": state.history[-1].get("test_accuracy"),
        "host_syncs_total": syncs if device.type == "cuda" else None,
        "host_syncs_per_step": round(syncs / state.step, 4) if device.type == "cuda" else None,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
