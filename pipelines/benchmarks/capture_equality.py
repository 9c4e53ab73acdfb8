"""Check: training with the captured step (``TrainConfig.cuda_graphs``) gives the eager run's results, no host sync.

What is checked
---------------
``--arch`` (ResNet-20) on ``--examples`` (2,000) random uint8 images of
CIFAR-10's shape (crop 4 + flip) and 512 test images, batch 128 (15 full
steps and one of 80 an epoch: the partial batch runs eagerly between
replays), ``--epochs`` (3) epochs from seed 0, trained by
``pracset.train.Trainer`` with the per-example recorder and one sparse method
each: ``static`` (a fixed 80% mask), ``rigl`` (80%, Delta T ``--delta-t`` = 8,
so that mask updates, which run uncaptured between replays, fall inside every
epoch) and ``granet`` (50% to 80%, the same Delta T). Each runs with
``cuda_graphs`` off and on, in fp32 and in bf16 autocast (pracset's CUDA
default), cuDNN in its deterministic mode. Compared, capture on against off:

- every epoch's ``train_loss`` and ``test_loss`` (relative difference) and
  ``train_accuracy`` and ``test_accuracy`` (absolute difference);
- the weights after training (largest difference over the tensor's largest
  magnitude), and the final masks (the fraction of bits that differ);
- the recorder's statistics: ``presentations`` must be equal, and the
  fraction of examples whose forgetting count differs is bounded;
- the captured runs' pruned weights must be exactly zero, and each captured
  run must actually have captured its step (its log says so).

Why a tolerance and not bit for bit: the captured update is torch's fused SGD
kernel (it reads the learning rate from the device), the eager one the
foreach update; they round the momentum update differently in the last bit,
and training amplifies that (bf16 autocast more: a weight one fp32 ulp away
can cast to the next bf16 value). Tolerances, judged on the largest figure
over the three methods:

    precision  loss (rel.)  accuracy  weights (rel.)  mask bits  forgetting counts
    fp32       1e-3         0.01      1e-2            0.5%       2% of examples
    bf16       1e-2         0.03      5e-2            2%         10% of examples

An eager run repeated (off against off) is printed beside each comparison:
the GPU's own run-to-run noise, not judged. The tolerances are first
estimates; tighten them from the figures a GPU run prints.

The packed job (``pracset.train.packed.fit_packed``, the sanity-check
controls and seeds of the replication) is compared the same way: three
models with static 80% masks, on one data order and on two, packed with
``cuda_graphs`` off and on; its losses, accuracies and weights within the
same tolerances.

Host syncs: one more captured run (recorder and the static mask, bf16) runs
each epoch after the first under ``torch.cuda.set_sync_debug_mode("error")``,
from the epoch's start to its last step: any host synchronisation raises, and
the check needs none.

On a CPU nothing is captured (the flag trains eagerly): the verdict is SKIP.
``--smoke`` runs the comparisons for a few steps of a small MLP in fp32 on the
CPU (eager against eager, so every difference is 0), to check that the script
works.

Run it
------
    python -m pipelines.benchmarks.capture_equality --device cuda --json equality.json
    python -m pipelines.benchmarks.capture_equality --device cuda --epochs 5 --precisions fp32
    python -m pipelines.benchmarks.capture_equality --smoke
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from pipelines.benchmarks import common

METHODS = ("static", "rigl", "granet")
PRECISIONS = ("fp32", "bf16")
SPARSITY = 0.8
TEST_EXAMPLES = 512
SMOKE = {"arch": "mlp", "examples": 256, "batch_size": 64, "epochs": 2, "delta_t": 2, "precisions": ["fp32"]}


@dataclass(frozen=True)
class Tolerance:
    """How far a captured run may be from the eager one (see the module docstring)."""

    loss: float
    accuracy: float
    weights: float
    mask_bits: float
    forgetting: float


TOLERANCES = {"fp32": Tolerance(loss=1e-3, accuracy=0.01, weights=1e-2, mask_bits=0.005, forgetting=0.02),
              "bf16": Tolerance(loss=1e-2, accuracy=0.03, weights=5e-2, mask_bits=0.02, forgetting=0.10)}


@dataclass
class Run:
    """What one training run left: per-epoch metrics, weights, the final mask, the recorder's statistics."""

    history: list[dict]
    weights: dict
    mask: dict
    statistics: object
    capture_log: list[str]

    def pruned_nonzero(self) -> int:
        """Weights the mask prunes that are not exactly zero (one host sync per tensor; after training)."""
        return sum(int(self.weights[name][~keep].count_nonzero()) for name, keep in self.mask.items())


def make_loaders(args, device):
    """Training and test loaders over random CIFAR-10-shaped images held on ``device``."""
    import torch

    from pracset.data import DeviceLoader, ImageSplit

    generator = torch.Generator(device=device).manual_seed(0)

    def split(n: int):
        return ImageSplit(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, device=device, generator=generator),
                          torch.randint(0, 10, (n,), device=device, generator=generator))

    mean, std, cuda = (0.5,) * 3, (0.25,) * 3, device.type == "cuda"
    train = DeviceLoader(split(args.examples), args.batch_size, mean, std, shuffle=True, crop_padding=4, flip=True,
                         channels_last=cuda)
    return train, DeviceLoader(split(TEST_EXAMPLES), 512, mean, std, channels_last=cuda)


def sparse_method(method: str, model, delta_t: int):
    """A fresh callback of ``method`` for ``model``."""
    from pracset.sparse import GraNet, GraNetConfig, Mask, RigL, RigLConfig, StaticMask, prune_to_sparsity

    if method == "static":
        return StaticMask(prune_to_sparsity(model, Mask.ones(model), SPARSITY))
    if method == "rigl":
        return RigL(RigLConfig(sparsity=SPARSITY, delta_t=delta_t))
    return GraNet(GraNetConfig(sparsity=SPARSITY, init_sparsity=0.5, delta_t=delta_t))


def train(method: str, precision: str, capture: bool, loaders, args, device, captures: common.CaptureLog,
          extra_callbacks=()) -> Run:
    """One run from seed 0 with the recorder and ``method``; everything it left, on the host."""
    from pracset.models import InputSpec, build_model
    from pracset.stats import ExampleRecorder
    from pracset.train import TrainConfig, Trainer

    train_loader, test_loader = loaders
    model = build_model(args.arch, InputSpec(3, 32, 32, 10), seed=0)
    recorder, sparse = ExampleRecorder(train_loader.num_examples, device), sparse_method(method, model, args.delta_t)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=0, precision=precision,
                         cuda_graphs=capture)
    captures.take()
    state = Trainer(config).fit(model, train_loader, test_loader, [*extra_callbacks, recorder, sparse])
    return Run(history=[{k: v for k, v in h.items() if k != "seconds"} for h in state.history],
               weights={n: p.detach().float().cpu() for n, p in model.named_parameters()},
               mask={n: t.cpu() for n, t in sparse.mask.items()}, statistics=recorder.statistics(),
               capture_log=captures.take())


def train_packed(precision: str, capture: bool, loaders, args, device, captures: common.CaptureLog, *,
                 shared: bool) -> list[Run]:
    """Three models (seeds 0-2, each a static 80% mask) as one packed job: all on the loader's data order
    (``shared``: a ticket's controls), or models 0 and 2 on it and model 1 on another seed's (the seeds of IMP in
    lockstep). One Run per model (no recorder: packed jobs take no callbacks)."""
    from pracset.models import InputSpec, build_model
    from pracset.sparse import Mask, prune_to_sparsity
    from pracset.train import TrainConfig
    from pracset.train.packed import fit_packed

    train_loader, test_loader = loaders
    models = [build_model(args.arch, InputSpec(3, 32, 32, 10), seed=seed) for seed in range(3)]
    masks = [prune_to_sparsity(model, Mask.ones(model), SPARSITY) for model in models]
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=0, precision=precision,
                         cuda_graphs=capture)
    captures.take()
    readers = train_loader if shared else [train_loader, train_loader.reseeded(1), train_loader]
    run = fit_packed(models, masks, readers, test_loader, config, stages=["a", "b", "c"])
    log = captures.take()
    return [Run(history=[{k: v for k, v in h.items() if k != "seconds"} for h in history],
                weights={n: p.detach().float().cpu() for n, p in model.named_parameters()},
                mask={n: t.cpu() for n, t in mask.items()}, statistics=None, capture_log=log)
            for model, mask, history in zip(models, masks, run.histories)]


def training_differences(a: Run, b: Run) -> dict[str, float]:
    """How far run ``a``'s losses, accuracies and weights are from run ``b``'s."""
    loss = max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-12) for x, y in zip(a.history, b.history)
               for k in ("train_loss", "test_loss"))
    accuracy = max(abs(x[k] - y[k]) for x, y in zip(a.history, b.history) for k in ("train_accuracy", "test_accuracy"))
    weights = max(float((a.weights[n] - w).abs().max() / w.abs().max().clamp_min(1e-12)) for n, w in b.weights.items())
    return {"loss": loss, "accuracy": accuracy, "weights": weights}


def differences(a: Run, b: Run) -> dict[str, float]:
    """How far run ``a`` is from run ``b``, figure by figure."""
    bits = sum(int((a.mask[n] != m).sum()) for n, m in b.mask.items()) / sum(m.numel() for m in b.mask.values())
    forgetting = float(np.mean(a.statistics.forgetting_events != b.statistics.forgetting_events))
    presentations = not np.array_equal(a.statistics.presentations, b.statistics.presentations)
    return {**training_differences(a, b), "mask_bits": bits, "forgetting": forgetting,
            "presentations_differ": float(presentations), "epochs_differ": float(len(a.history) != len(b.history))}


def sync_check(loaders, args, device, captures: common.CaptureLog) -> str | None:
    """A captured run whose epochs after the first run under sync debug mode "error"; the error, or None."""
    import torch

    from pracset.train import Callback

    class SyncGuard(Callback):
        """Host syncs raise from the start of every epoch after the first to the end of its last step."""

        def on_epoch_start(self, state) -> None:
            if state.epoch >= 1:
                torch.cuda.set_sync_debug_mode("error")

        def on_batch_end(self, state, out) -> None:
            if state.step % state.steps_per_epoch == 0:
                torch.cuda.set_sync_debug_mode("default")

    try:
        train("static", "bf16", True, loaders, args, device, captures, extra_callbacks=[SyncGuard()])
    except RuntimeError as exc:
        return str(exc).strip().splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = common.make_parser(__doc__)
    parser.add_argument("--arch", default="resnet20", help="architecture (default resnet20)")
    parser.add_argument("--examples", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--delta-t", type=int, default=8, help="steps between RigL/GraNet mask updates (default 8)")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS),
                        help="precisions to compare in (default both)")
    common.add_device(parser, default="auto")
    args = common.parse(parser, argv, smoke=SMOKE, positive=("examples", "batch_size", "epochs", "delta_t"))
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)
    cuda = device.type == "cuda"
    if not cuda and not args.smoke:
        return common.finish(args, {}, skip=f"capture needs a CUDA device; on {device.type} cuda_graphs trains "
                                             "eagerly and there is nothing to compare")
    import torch

    torch.backends.cudnn.deterministic = True  # the GPU's own noise out of the comparison, as far as cuDNN goes
    captures = common.CaptureLog.install()
    loaders = make_loaders(args, device)
    print(common.machine_line(device))
    print(f"{args.arch}, {args.examples} random CIFAR-10-shaped images, batch {args.batch_size} "
          f"({len(loaders[0])} steps/epoch), {args.epochs} epochs, recorder + each sparse method")
    report: dict = {"settings": vars(args), "comparisons": {}}
    checks, never_captured, pruned_nonzero = [], [], 0
    for precision in args.precisions:
        worst: dict[str, float] = {}
        for method in METHODS:
            eager, eager_again = (train(method, precision, False, loaders, args, device, captures) for _ in range(2))
            captured = train(method, precision, True, loaders, args, device, captures)
            if cuda and not any("captured the training step" in m for m in captured.capture_log):
                never_captured.append(f"{precision}/{method}: {'; '.join(captured.capture_log) or 'nothing logged'}")
            pruned_nonzero += captured.pruned_nonzero()
            on_off, noise = differences(captured, eager), differences(eager_again, eager)
            report["comparisons"][f"{precision}/{method}"] = {"captured_vs_eager": on_off, "eager_vs_eager": noise}
            for label, figures in (("captured vs eager", on_off), ("eager vs eager   ", noise)):
                print(f"  {precision} {method:<7} {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()),
                      flush=True)
            for key, value in on_off.items():
                worst[key] = max(worst.get(key, 0.0), value)
        tolerance = TOLERANCES[precision]
        checks += [common.Check(f"{precision} largest relative loss difference", worst["loss"], "<=", tolerance.loss,
                                digits=6),
                   common.Check(f"{precision} largest accuracy difference", worst["accuracy"], "<=", tolerance.accuracy,
                                digits=4),
                   common.Check(f"{precision} largest relative weight difference", worst["weights"], "<=",
                                tolerance.weights, digits=6),
                   common.Check(f"{precision} mask bits that differ", worst["mask_bits"], "<=", tolerance.mask_bits,
                                digits=5),
                   common.Check(f"{precision} examples whose forgetting count differs", worst["forgetting"], "<=",
                                tolerance.forgetting, digits=4),
                   common.Check(f"{precision} runs whose presentations or epochs differ",
                                worst["presentations_differ"] + worst["epochs_differ"], "==", 0, digits=0)]
        for job, shared in (("packed", True), ("packed, 2 orders", False)):
            eager, eager_again, captured = (train_packed(precision, on, loaders, args, device, captures, shared=shared)
                                            for on in (False, False, True))
            if cuda and not any("captured the training step" in m for m in captured[0].capture_log):
                never_captured.append(f"{precision}/{job}: {'; '.join(captured[0].capture_log) or 'nothing logged'}")
            pruned_nonzero += sum(run.pruned_nonzero() for run in captured)
            packed = {key: max(training_differences(c, e)[key] for c, e in zip(captured, eager))
                      for key in ("loss", "accuracy", "weights")}
            noise = {key: max(training_differences(a, e)[key] for a, e in zip(eager_again, eager))
                     for key in ("loss", "accuracy", "weights")}
            report["comparisons"][f"{precision}/{job}"] = {"captured_vs_eager": packed, "eager_vs_eager": noise}
            for label, figures in (("captured vs eager", packed), ("eager vs eager   ", noise)):
                print(f"  {precision} {job} {label}: " + ", ".join(f"{k} {v:.3g}" for k, v in figures.items()),
                      flush=True)
            checks += [common.Check(f"{precision} {job}: largest relative loss difference", packed["loss"], "<=",
                                    tolerance.loss, digits=6),
                       common.Check(f"{precision} {job}: largest accuracy difference", packed["accuracy"], "<=",
                                    tolerance.accuracy, digits=4),
                       common.Check(f"{precision} {job}: largest relative weight difference", packed["weights"], "<=",
                                    tolerance.weights, digits=6)]
    checks.append(common.Check("pruned weights not zero after captured runs", pruned_nonzero, "==", 0, digits=0))
    if not cuda:
        return common.finish(args, report, checks, skip=f"capture needs a CUDA device; on {device.type} both runs "
                                                        "trained eagerly (the smoke run checks that the script works)")
    sync_error = sync_check(loaders, args, device, captures)
    print(f"  host syncs in captured epochs: {sync_error or 'none'}")
    for failure in never_captured:
        print(f"  never captured: {failure}")
    report.update(sync_error=sync_error, never_captured=never_captured)
    checks += [common.Check("captured runs that never captured their step", len(never_captured), "==", 0, digits=0),
               common.Check("host syncs raised in captured epochs", int(sync_error is not None), "==", 0, digits=0)]
    return common.finish(args, report, checks)


if __name__ == "__main__":
    sys.exit(main())
