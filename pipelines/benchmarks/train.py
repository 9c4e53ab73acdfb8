"""Benchmark: pracset's training loop, its speed and its host synchronisations per step.

What is measured
----------------
``--arch`` trained on ``--data`` for ``--epochs`` epochs by the library's
``Trainer`` (batch ``--batch-size``, TrainConfig's defaults otherwise, the
test split evaluated after the last epoch), fed by the loaders of
``pracset train``. Printed per epoch: the wall time of the training steps,
images per second, and the test accuracy at the end.

On CUDA the run goes under ``torch.cuda.set_sync_debug_mode('warn')`` and the
synchronising calls are counted: in all, and in the steady state, between the
end of each epoch's first step and the end of its last (the first step's
one-off work and the end-of-epoch metrics and evaluation left out). A loop
that never waits for the GPU within an epoch counts 0 there: the host queues
work ahead and the GPU never idles waiting for Python.

Target (CUDA only): 0 host syncs per step in the steady state. On a CPU the
syncs cannot be counted and the verdict is SKIP.

Run it
------
    python -m pipelines.benchmarks.train --data mnist --data-dir DIR --arch lenet300 --epochs 3
    python -m pipelines.benchmarks.train --data imagefolder --data-dir DIR/cifar10_jpeg_q75.tar.gz --arch resnet20
    python -m pipelines.benchmarks.train --smoke     # one epoch of scikit-learn's digits, no download
"""

from __future__ import annotations

import contextlib
import sys
import time

import torch

from pipelines.benchmarks import common
from pracset.data import DataConfig, load_dataset
from pracset.models import build_model, has_convolutions
from pracset.train import Callback, TrainConfig, Trainer

SMOKE = {"data": "digits", "epochs": 1}


class EpochClock(Callback):
    """A Trainer callback: the wall time of each epoch's steps, and the host syncs between its first and last
    step (read off ``counter``; the callback itself never touches the device within an epoch)."""

    def __init__(self, device, counter: common.SyncCounter | None):
        self.device, self.counter = device, counter
        self.times: list[float] = []
        self.steady_syncs = self.steady_steps = 0
        self.started = 0.0
        self.first = self.last = None
        self.steps = 0

    def _syncs(self) -> int:
        return self.counter.count if self.counter is not None else 0

    def on_epoch_start(self, state) -> None:
        common.sync(self.device)
        self.first = self.last = None
        self.steps = 0
        self.started = time.perf_counter()

    def on_batch_end(self, state, out) -> None:
        self.last = self._syncs()
        if self.first is None:
            self.first = self.last
        self.steps += 1

    def on_epoch_end(self, state, metrics) -> None:
        common.sync(self.device)
        self.times.append(time.perf_counter() - self.started)
        if self.first is not None:
            self.steady_syncs += self.last - self.first
            self.steady_steps += self.steps - 1


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__)
    parser.add_argument("--data", default="digits", help="data set name, as `pracset datasets` lists (default digits)")
    common.add_data_dir(parser, "folder (or archive) of the data set's files")
    parser.add_argument("--arch", default="mlp", help="architecture, as `pracset models` lists (default mlp)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default 3)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    common.add_device(parser, default="auto")
    parser.add_argument("--precision", default="auto", help="auto (bf16 autocast on CUDA), bf16 or fp32")
    args = common.parse(parser, argv, smoke=SMOKE, positive=("epochs", "batch_size"))
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)

    load_seconds, dataset = common.timed_result(None, lambda: load_dataset(DataConfig(name=args.data,
                                                                                         data_dir=args.data_dir)))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, precision=args.precision,
                         eval_every=args.epochs)
    model = build_model(args.arch, common.input_spec(dataset), seed=0)
    train, test = common.make_loaders(dataset, config, device, conv_net=has_convolutions(model))
    print(common.machine_line(device))
    print(f"{args.arch} on {args.data} ({len(dataset.train)} training images, loaded in {load_seconds:.2f} s), "
          f"batch {args.batch_size}, {len(train)} steps/epoch, {args.epochs} epochs", flush=True)

    cuda = device.type == "cuda"
    counter = common.SyncCounter() if cuda else None
    clock = EpochClock(device, counter)
    with counter or contextlib.nullcontext():
        state = Trainer(config).fit(model, train, test, [clock])

    for epoch, seconds in enumerate(clock.times, 1):
        print(f"epoch {epoch}: {seconds:.3f} s, {len(dataset.train) / seconds:,.0f} images/s")
    accuracy = state.history[-1].get("test_accuracy")
    print(f"test accuracy {accuracy:.4f}")
    report = {
        "data": args.data, "arch": args.arch, "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "load_seconds": round(load_seconds, 2), "steps_per_epoch": state.steps_per_epoch,
        "epoch_seconds": [round(t, 3) for t in clock.times],
        "images_per_second": [round(len(dataset.train) / t) for t in clock.times],
        "test_accuracy": accuracy,
    }
    if not cuda:
        return common.finish(args, report, skip=f"host syncs are counted on CUDA only (the run was on {device})")
    per_step = clock.steady_syncs / max(clock.steady_steps, 1)
    report.update(host_syncs_total=counter.count, host_syncs_per_step_all=round(counter.count / state.step, 4),
                  steady_state_syncs=clock.steady_syncs, steady_state_steps=clock.steady_steps,
                  steady_state_syncs_per_step=per_step)
    print(f"host syncs: {counter.count} in all ({counter.count / state.step:.4f} per step); steady state "
          f"{clock.steady_syncs} in {clock.steady_steps} steps")
    check = common.Check("steady-state host syncs per step", per_step, "<=", 0, digits=4)
    return common.finish(args, report, [check])


if __name__ == "__main__":
    sys.exit(main())
