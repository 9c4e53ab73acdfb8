"""Benchmark: the cost of pracset's ExampleRecorder on a training epoch, and its host syncs.

What is measured
----------------
The wall-clock seconds of one training epoch over the 60,000 MNIST training
images (batch 128, 469 steps) of ``build_model('lenet300', InputSpec(1, 28, 28,
10), seed=0)`` trained by the library's real loop,
``pracset.train.Trainer(TrainConfig(epochs=1, batch_size=128, seed=0)).fit(model,
loader, callbacks=...)`` (SGD and every other hyperparameter as TrainConfig's
defaults; bf16 autocast on CUDA as ``precision='auto'`` gives), fed by the
loader of ``pracset.train.run.make_loaders``. The variants differ only in the
callbacks handed to ``fit``:

(A) ``plain``: no callback.
(B) ``recorder``: ``ExampleRecorder(len(train), device)``.
(C) ``recorder+history`` (only with ``--history``): the same with
    ``keep_history=True`` (adds the bit-packed per-epoch history).

Each measurement trains a fresh model (same seed, built and moved to the
device outside the timed region) for one epoch over the same loader, so every
measurement does exactly the same arithmetic on the same batch order; a fresh
recorder is also built outside the timed region. The timed region is the
whole ``fit`` call (optimizer/schedule construction, the epoch, the
end-of-epoch metrics and the recorder's ``on_epoch_end``), bracketed by
``torch.cuda.synchronize()`` on CUDA.

To be robust to a noisy machine the variants are interleaved in the same
process: after one untimed warm-up epoch of each, ``--repeats`` rounds each
time every variant once, the order rotating from round to round (A B, B A, ...
or A B C, B C A, C A B, ...) so that slow drift does not favour one. Reported:
the median s/epoch of each variant, every run, the ratio of the medians, and
the median of the per-round ratios recorder/plain (the figure checked against
the target).

Diagnostics printed alongside:

- ``recorder.update`` alone: ``--update-steps`` real batches (inputs, labels,
  ids from the loader, logits and per-example losses from a forward pass of
  the model) are prepared first, then ``recorder.update`` is timed over them
  (synchronised once at each end), in microseconds per step.
- On CUDA, host synchronisations:
  (1) ``recorder.update`` (and ``end_epoch``) called over the prepared
      batches under ``torch.cuda.set_sync_debug_mode('error')``: any host sync
      inside it raises;
  (2) one whole epoch of each variant under
      ``torch.cuda.set_sync_debug_mode('warn')``, counting the synchronising
      warnings as ``pipelines.benchmarks.train`` does; the difference with
      and without the recorder, divided by the steps, is printed as
      ``recorder host syncs per step: X``.

Targets: the median of the per-round ratios recorder/plain <= 1.03 (and
recorder+history/plain with ``--history``); on CUDA also no host sync in
``recorder.update`` (1) and 0 recorder host syncs per step (2).

Run it
------
    python -m pipelines.benchmarks.recorder --data-dir DIR        # DIR: the four MNIST idx files
    python -m pipelines.benchmarks.recorder --data-dir DIR --history --repeats 9 --json rec.json
    python -m pipelines.benchmarks.recorder --data-dir DIR --device cuda --history
    python -m pipelines.benchmarks.recorder --smoke               # a few steps on synthetic data
"""

from __future__ import annotations

import os
import statistics
import sys

import torch
import torch.nn.functional as F

from pipelines.benchmarks import common
from pracset.stats import ExampleRecorder
from pracset.train import Callback, TrainConfig

BATCH_SIZE = 128
TARGET_RATIO = 1.03
SMOKE = {"repeats": 1, "update_steps": 4, "history": True, "limit": None}


def make_callbacks(variant: str, n: int, device: torch.device) -> list[Callback]:
    if variant == "plain":
        return []
    if variant == "recorder":
        return [ExampleRecorder(n, device)]
    if variant == "recorder+history":
        return [ExampleRecorder(n, device, keep_history=True)]
    raise ValueError(variant)


def one_epoch(variant: str, config: TrainConfig, loader, n: int, device: torch.device) -> float:
    """Seconds of one ``Trainer.fit`` epoch of ``variant`` (model and callbacks built untimed)."""
    return common.timed(device, common.lenet300_fit(config, loader, device, make_callbacks(variant, n, device)))


def prepare_batches(loader, config: TrainConfig, device: torch.device, steps: int) -> list[tuple]:
    """``steps`` real (index, labels, logits, losses) tuples, as the Trainer hands them to callbacks."""
    model = common.lenet300(device)
    bf16 = common.use_bf16_for(config.precision, device)
    batches = []
    with torch.no_grad():
        while len(batches) < steps:
            for batch in loader:
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                    logits = model(batch.x)
                losses = F.cross_entropy(logits.float(), batch.y, reduction="none")
                batches.append((batch.index, batch.y, logits.detach(), losses.detach()))
                if len(batches) == steps:
                    break
    common.sync(device)
    return batches


def time_updates(recorder: ExampleRecorder, batches: list[tuple], device: torch.device, repeats: int) -> list[float]:
    """Seconds per ``recorder.update`` call over the prepared batches, ``repeats`` times."""
    results = []
    for _ in range(repeats):
        recorder.reset()
        seconds = common.timed(device, lambda: [recorder.update(i, y, lg, ls, 0) for i, y, lg, ls in batches])
        results.append(seconds / len(batches))
    return results


def check_update_syncs(recorder: ExampleRecorder, batches: list[tuple]) -> tuple[bool, str]:
    """Run ``update`` (and ``end_epoch``) with sync debug mode 'error': any host sync raises."""
    recorder.reset()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for epoch in range(2):
            for index, labels, logits, losses in batches:
                recorder.update(index, labels, logits, losses, epoch)
            recorder.end_epoch()
    except RuntimeError as exc:
        return False, str(exc).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return True, ""


def count_epoch_syncs(variant: str, config: TrainConfig, loader, n: int, device: torch.device) -> int:
    """Synchronising calls in one ``fit`` epoch of ``variant``."""
    fit = common.lenet300_fit(config, loader, device, make_callbacks(variant, n, device))
    with common.SyncCounter() as counter:
        fit()
    return counter.count


def sync_checks(variants: list[str], batches: list[tuple], config: TrainConfig, loader, n: int,
                device: torch.device) -> tuple[list[common.Check], dict]:
    """The two host-sync targets (CUDA only): none inside ``update``, none added per training step."""
    checks, report = [], {}
    for variant in variants[1:]:
        ok, message = check_update_syncs(make_callbacks(variant, n, device)[0], batches)
        report[f"{variant}_update_error_mode_ok"] = ok
        print(f"{variant}.update x {len(batches)} + end_epoch under set_sync_debug_mode('error'): "
              f"{'no sync' if ok else 'raised: ' + message}")
        checks.append(common.Check(f"{variant}.update host syncs (error mode)", 0 if ok else 1, "==", 0, digits=0))
    counts = {v: count_epoch_syncs(v, config, loader, n, device) for v in variants}
    report["epoch_syncs"] = counts
    print("host syncs in one fit epoch (set_sync_debug_mode('warn')): "
          + ", ".join(f"{v} {c}" for v, c in counts.items()))
    for variant in variants[1:]:
        per_step = (counts[variant] - counts["plain"]) / len(loader)
        report[f"{variant}_syncs_per_step"] = per_step
        print(f"{variant} host syncs per step: {per_step:.4g} (({counts[variant]} - {counts['plain']}) / "
              f"{len(loader)} steps)")
        checks.append(common.Check(f"{variant} host syncs per step", per_step, "<=", 0, digits=4))
    return checks, report


def main(argv: list[str] | None = None) -> int:
    parser = common.mnist_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds, one epoch of every variant each; medians are reported (default 5)")
    parser.add_argument("--history", action="store_true", help="also time the recorder with keep_history=True")
    parser.add_argument("--update-steps", type=int, default=200,
                        help="real batches for the recorder.update-alone timing and the sync check (default 200)")
    common.add_threads(parser, "os.cpu_count()")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first LIMIT examples only (default: all 60,000)")
    args = common.parse(parser, argv, smoke=SMOKE, needs_data_dir=True, positive=("repeats", "update_steps"))
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)
    common.set_threads(args.threads, os.cpu_count())

    with common.data_dir(args, common.write_synthetic_mnist) as folder:
        dataset = common.load_mnist(folder)
    config = TrainConfig(epochs=1, batch_size=BATCH_SIZE, seed=0)
    n = len(dataset.train)  # the recorder covers the whole split, as in a real run
    ids = None if args.limit is None else torch.arange(min(args.limit, n))
    loader, _ = common.make_loaders(dataset, config, device, ids=ids)
    steps = len(loader)
    variants = ["plain", "recorder"] + (["recorder+history"] if args.history else [])
    bf16 = common.use_bf16_for(config.precision, device)
    print(common.machine_line(device))
    print(f"MNIST train: {loader.num_examples} of {n} images, batch {BATCH_SIZE} -> {steps} steps/epoch; LeNet-300-100, "
          f"Trainer with TrainConfig defaults ({config.optimizer} lr {config.lr} momentum {config.momentum} "
          f"wd {config.weight_decay}, precision {config.precision}{' -> bf16 autocast' if bf16 else ''})")
    print(f"variants {', '.join(variants)}; 1 untimed warm-up epoch each, then {args.repeats} interleaved rounds "
          f"(order rotating each round)")

    # ---- interleaved timing
    for variant in variants:
        one_epoch(variant, config, loader, n, device)
    times = common.interleaved(variants, args.repeats, lambda v: one_epoch(v, config, loader, n, device))
    median = common.medians(times)
    per_round = common.per_round_ratios(times, "plain")
    pair_median = {v: statistics.median(r) for v, r in per_round.items()}
    common.print_times("variant", times, loader.num_examples)
    print()
    for variant in variants[1:]:
        print(f"ratio {variant}/plain: medians {median[variant] / median['plain']:.3f}x; "
              f"median of per-round ratios {pair_median[variant]:.3f}x "
              f"(rounds: {', '.join(f'{x:.3f}' for x in per_round[variant])})")

    # ---- diagnostics: the update alone, host syncs
    batches = prepare_batches(loader, config, device, args.update_steps)
    update_seconds = {}
    for variant in variants[1:]:
        recorder = make_callbacks(variant, n, device)[0]
        time_updates(recorder, batches[: min(10, len(batches))], device, 1)  # warm-up
        update_seconds[variant] = statistics.median(time_updates(recorder, batches, device, max(3, args.repeats)))
    step_seconds = median["plain"] / steps
    print()
    for variant, seconds in update_seconds.items():
        print(f"{variant} update alone: {seconds * 1e6:.1f} us/step over {len(batches)} real batches "
              f"({seconds / step_seconds:.1%} of a plain training step, {step_seconds * 1e6:.0f} us)")

    checks = [common.Check(f"{v}/plain", pair_median[v], "<=", TARGET_RATIO, unit="x", digits=3)
              for v in variants[1:]]
    sync_report: dict = {}
    if device.type == "cuda":
        more, sync_report = sync_checks(variants, batches, config, loader, n, device)
        checks += more
    else:
        print("recorder host syncs: not counted on the CPU (sync debug mode is CUDA-only; use --device cuda)")

    report = {
        "device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "examples": loader.num_examples, "batch_size": BATCH_SIZE, "steps_per_epoch": steps,
        "repeats": args.repeats, "variants": variants, "seconds": times, "median_seconds": median,
        "per_round_ratios": per_round, "median_per_round_ratio": pair_median,
        "ratio_of_medians": {v: median[v] / median["plain"] for v in variants[1:]},
        "update_seconds_per_step": update_seconds, "syncs": sync_report or None, "target_ratio_max": TARGET_RATIO,
    }
    return common.finish(args, report, checks)


if __name__ == "__main__":
    sys.exit(main())
