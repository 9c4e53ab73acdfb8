"""Benchmark: pracset's training epoch against the floor, one CUDA graph replay per step on data held on the device.

What is measured
----------------
For each setup of ``--setups`` (default both):

- ``resnet20-cifar10``: ResNet-20 on 50,000 random uint8 3x32x32 images
  (CIFAR-10's shape, 10 classes), random crop 4 + flip as pracset trains
  CIFAR-10;
- ``lenet300-mnist``: LeNet-300-100 on 60,000 random uint8 1x28x28 images
  (MNIST's shape), no augmentation;

held on the device as an ``ImageSplit`` and fed by ``DeviceLoader`` at batch
``--batch-size`` (128), with SGD as ``TrainConfig``'s defaults, bf16 autocast
and (conv nets) channels-last on CUDA as pracset trains (``precision auto``):

1. ``floor``: a bare training step (forward, per-example cross-entropy,
   backward, SGD update) on one batch kept in static buffers, captured in a
   CUDA graph (``pracset.train.graphs.CapturedStep``: three warm-up steps on a
   side stream, then ``torch.cuda.graph``) and replayed for one epoch's steps.
   Nothing but the replays is timed: no loader, no Python per step. On a CPU
   the same step runs eagerly, uncaptured.
2. pracset: ``--epochs`` epochs of ``pracset.train.Trainer`` over the loader
   (the first epoch, which holds the capture and cuDNN's kernel search, is not
   counted: the median of the others), for each variant of ``--variants``:
   ``dense`` (no callback), ``recorder`` (``ExampleRecorder``), ``static`` (a
   fixed 80%-sparse mask, ``StaticMask``), ``rigl`` (RigL at 80%, Delta T
   ``--delta-t``) and ``granet`` (GraNet from 50% to 80%), each with
   ``TrainConfig.cuda_graphs`` off and on (``--capture``).

Printed: every epoch time, the floor's, and each over the floor.

Targets (issue 14; H100/H200, bf16, channels-last, the ``recorder`` variant,
with capture on when it was measured): ``resnet20-cifar10`` epoch <= 1.3x the
floor and <= 1.0 s; ``lenet300-mnist`` epoch <= 0.15 s. They are judged on
CUDA only, at the default sizes; on a CPU the verdict is SKIP.

Run it
------
    python -m pipelines.benchmarks.gpu_floor --device cuda --json floor.json
    python -m pipelines.benchmarks.gpu_floor --device cuda --setups resnet20-cifar10 --variants dense recorder
    python -m pipelines.benchmarks.gpu_floor --smoke      # LeNet-300-100 on 512 images, uncaptured, on the CPU
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

from pipelines.benchmarks import common

SPARSITY = 0.8
VARIANTS = ("dense", "recorder", "static", "rigl", "granet")
CAPTURE_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}
SMOKE = {"setups": ["lenet300-mnist"], "examples": 512, "epochs": 2, "capture": "off", "delta_t": 2}


@dataclass(frozen=True)
class Setup:
    """A model and the shape of its data, with issue 14's targets for it."""

    arch: str
    channels: int
    size: int
    examples: int
    crop_padding: int
    flip: bool
    max_epoch_seconds: float
    max_over_floor: float | None = None


SETUPS = {
    "resnet20-cifar10": Setup("resnet20", 3, 32, 50_000, crop_padding=4, flip=True, max_epoch_seconds=1.0,
                              max_over_floor=1.3),
    "lenet300-mnist": Setup("lenet300", 1, 28, 60_000, crop_padding=0, flip=False, max_epoch_seconds=0.15),
}
CLASSES = 10
FLOOR_REPEATS = 3
TARGET_BATCH_SIZE = 128


def input_spec(setup: Setup):
    """The model input (``pracset.models.InputSpec``) of ``setup``'s images."""
    from pracset.models import InputSpec

    return InputSpec(setup.channels, setup.size, setup.size, CLASSES)


def make_loader(setup: Setup, examples: int, batch_size: int, device, conv_net: bool):
    """A shuffled, augmented DeviceLoader over ``examples`` random images of ``setup``'s shape, on ``device``."""
    import torch

    from pracset.data import DeviceLoader, ImageSplit

    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (examples, setup.channels, setup.size, setup.size), dtype=torch.uint8,
                           device=device, generator=generator)
    labels = torch.randint(0, CLASSES, (examples,), device=device, generator=generator)
    return DeviceLoader(ImageSplit(images, labels), batch_size, (0.5,) * setup.channels, (0.25,) * setup.channels,
                        shuffle=True, crop_padding=setup.crop_padding, flip=setup.flip,
                        channels_last=conv_net and device.type == "cuda")


def new_model(setup: Setup, device):
    """A fresh model of ``setup`` (seed 0) on ``device``, channels-last for a conv net on CUDA (as the Trainer)."""
    import torch

    from pracset.models import build_model, has_convolutions

    model = build_model(setup.arch, input_spec(setup), seed=0).to(device)
    if device.type == "cuda" and has_convolutions(model):
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # as the Trainer does for fixed shapes
    return model.train()


def floor_seconds(setup: Setup, loader, device, config) -> float:
    """Seconds of one epoch's steps of the bare step on one static batch (the median of three epochs): graph
    replays on CUDA, eager steps elsewhere."""
    from pracset.train import TrainState
    from pracset.train.graphs import CapturedStep
    from pracset.train.loop import forward_losses
    from pracset.train.optim import make_optimizer

    model = new_model(setup, device)
    optimizer = make_optimizer(model, config)
    batch = next(iter(loader))  # a full, normalised, augmented batch: the static input
    bf16 = common.use_bf16_for(config.precision, device)
    steps = len(loader)

    def eager_step() -> None:
        _, losses = forward_losses(model, batch.x, batch.y, bf16=bf16, label_smoothing=0.0)
        optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        optimizer.step()

    eager_step()  # SGD's momentum buffers exist from here on: the graph records the steady-state update
    step = eager_step
    if device.type == "cuda":
        captured = CapturedStep(model, optimizer, batch_size=len(batch.y), bf16=bf16)
        if not captured.capture(batch, TrainState(model, optimizer, None, config, steps, steps)):
            raise SystemExit("capturing the floor's training step failed (see the warning above)")
        step = captured.graph.replay
    for _ in range(3):
        step()

    def epoch() -> None:
        for _ in range(steps):
            step()

    return statistics.median(common.timed(device, epoch) for _ in range(FLOOR_REPEATS))


def callbacks_for(variant: str, model, examples: int, device, delta_t: int) -> list:
    """Fresh callbacks of ``variant`` for ``model`` (built outside any timed region)."""
    from pracset.sparse import GraNet, GraNetConfig, Mask, RigL, RigLConfig, StaticMask, prune_to_sparsity
    from pracset.stats import ExampleRecorder

    if variant == "recorder":
        return [ExampleRecorder(examples, device)]
    if variant == "static":
        return [StaticMask(prune_to_sparsity(model, Mask.ones(model), SPARSITY))]
    if variant == "rigl":
        return [RigL(RigLConfig(sparsity=SPARSITY, delta_t=delta_t))]
    if variant == "granet":
        return [GraNet(GraNetConfig(sparsity=SPARSITY, init_sparsity=0.5, delta_t=delta_t))]
    return []


def epoch_seconds(setup: Setup, variant: str, capture: bool, loader, device, args,
                  captures: common.CaptureLog) -> dict:
    """``--epochs`` epochs of the Trainer: each epoch's seconds, the median of all but the first, and what capture
    did (the message ``pracset.train.graphs`` logged)."""
    from dataclasses import replace

    from pipelines.benchmarks.train import EpochClock
    from pracset.train import Trainer

    model = new_model(setup, device)
    config = replace(base_config(args), cuda_graphs=capture)
    clock = EpochClock(device, None)
    captures.take()
    Trainer(config).fit(model, loader, None, [*callbacks_for(variant, model, loader.num_examples, device,
                                                             args.delta_t), clock])
    logged = captures.take()
    counted = clock.times[1:] or clock.times
    return {"epochs": clock.times, "epoch": statistics.median(counted),
            "capture": next((m for m in logged if "cuda_graphs" in m), "") if capture else ""}


def base_config(args):
    from pracset.train import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=0, eval_every=10**6)


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS),
                        help="the models and data shapes to time (default: all)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="the Trainer variants to time (default: all)")
    parser.add_argument("--capture", default="both", choices=list(CAPTURE_CHOICES),
                        help="TrainConfig.cuda_graphs off, on, or both (default both)")
    parser.add_argument("--batch-size", type=int, default=TARGET_BATCH_SIZE, help="batch size (default 128)")
    parser.add_argument("--examples", type=int, default=None,
                        help="training images per setup (default: the data set's, 50,000 or 60,000)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per Trainer run; the first is not counted (default 3)")
    parser.add_argument("--delta-t", type=int, default=100, help="steps between RigL/GraNet mask updates (default 100)")
    common.add_device(parser, default="auto")
    common.add_threads(parser, "torch's default")
    args = common.parse(parser, argv, smoke=SMOKE, positive=("batch_size", "epochs", "delta_t"))
    if args.examples is not None and args.examples < args.batch_size:
        parser.error("--examples must be at least --batch-size")
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)
    common.set_threads(args.threads, None)

    from pracset.models import build_model, has_convolutions

    captures = common.CaptureLog.install()
    modes = CAPTURE_CHOICES[args.capture]
    print(common.machine_line(device))
    report: dict = {"settings": vars(args), "setups": {}}
    checks = []
    for name in args.setups:
        setup = SETUPS[name]
        examples = args.examples or setup.examples
        conv_net = has_convolutions(build_model(setup.arch, input_spec(setup), seed=0))
        loader = make_loader(setup, examples, args.batch_size, device, conv_net)
        floor = floor_seconds(setup, loader, device, base_config(args))
        print(f"\n{name}: {setup.arch}, {examples} images {setup.channels}x{setup.size}x{setup.size}, batch "
              f"{args.batch_size}, {len(loader)} steps/epoch")
        print(f"  floor ({'one CUDA graph replay' if device.type == 'cuda' else 'the eager step'} per step): "
              f"{floor:.3f} s/epoch")
        results = {}
        for capture in modes:
            for variant in args.variants:
                result = epoch_seconds(setup, variant, capture, loader, device, args, captures)
                result["over_floor"] = result["epoch"] / floor
                results[f"{variant}/{'captured' if capture else 'eager'}"] = result
                epochs = ", ".join(f"{t:.3f}" for t in result["epochs"])
                print(f"  {variant:<9} cuda_graphs {'on ' if capture else 'off'}: {result['epoch']:.3f} s/epoch = "
                      f"{result['epoch'] / floor:.2f}x floor   (epochs: {epochs})   {result['capture']}", flush=True)
        report["setups"][name] = {"floor_seconds": floor, "steps_per_epoch": len(loader), "examples": examples,
                                  "variants": results}
        judged = results.get("recorder/captured") or results.get("recorder/eager")
        if judged is not None:
            at_target_sizes = args.batch_size == TARGET_BATCH_SIZE and examples == setup.examples
            if setup.max_over_floor is not None:
                checks.append(common.Check(f"{name} recorder epoch/floor", judged["over_floor"], "<=",
                                           setup.max_over_floor, unit="x", gate=at_target_sizes))
            checks.append(common.Check(f"{name} recorder epoch", judged["epoch"], "<=", setup.max_epoch_seconds,
                                       unit=" s", digits=3, gate=at_target_sizes))
    if device.type != "cuda":
        return common.finish(args, report, checks, skip=f"the targets are for a CUDA GPU (H100/H200); this run was on "
                                                        f"{device.type}, where nothing is captured")
    return common.finish(args, report, checks)


if __name__ == "__main__":
    sys.exit(main())
