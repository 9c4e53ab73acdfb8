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
the target: PASS when <= 1.03, for (C) too when ``--history`` is given).

Diagnostics printed alongside:

- ``recorder.update`` alone: ``--update-steps`` real batches (inputs, labels,
  ids from the loader, logits and per-example losses from a forward pass of
  the model) are prepared first, then ``recorder.update`` is timed over them
  (synchronised once at each end), in microseconds per step.
- On CUDA, host synchronisations:
  (1) ``recorder.update`` (and ``end_epoch``) called over the prepared
      batches under ``torch.cuda.set_sync_debug_mode('error')``: any host sync
      inside it raises, and the check FAILs;
  (2) one whole epoch of each variant under
      ``torch.cuda.set_sync_debug_mode('warn')``, counting the synchronising
      warnings as ``pipelines/bench_train.py`` does; the difference with and
      without the recorder, divided by the steps, is printed as
      ``recorder host syncs per step: X`` (target 0).

Run it
------
    cd /work/main && . .venv/bin/activate
    python pipelines/bench_recorder.py --data-dir /work/shared/data/mnist
    python pipelines/bench_recorder.py --data-dir /work/shared/data/mnist --history --repeats 9 --json rec.json
    # on a GPU machine (torch, no `datasets` needed):
    PYTHONPATH=$PWD python3 pipelines/bench_recorder.py --data-dir DIR --device cuda --history

``--data-dir`` may be left out when ``$PRACSET_DATA_DIR`` names the directory
holding the four MNIST idx files (``.gz`` or not). Exit status 0 when every
checked target passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import warnings

import torch
import torch.nn.functional as F

from benchkit import sync, timed
from pracset.data import DataConfig, load_dataset
from pracset.data.sources import DATA_DIR_ENV
from pracset.models import InputSpec, build_model
from pracset.stats.recorder import ExampleRecorder
from pracset.train import Callback, TrainConfig, Trainer
from pracset.train.loop import use_bf16
from pracset.train.run import make_loaders

BATCH_SIZE = 128
TARGET_RATIO = 1.03
SPEC = InputSpec(1, 28, 28, 10)


# --------------------------------------------------------------------------- helpers
def new_model(device: torch.device) -> torch.nn.Module:
    return build_model("lenet300", SPEC, seed=0).to(device).train()


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
    model = new_model(device)
    callbacks = make_callbacks(variant, n, device)
    trainer = Trainer(config)
    return timed(device, lambda: trainer.fit(model, loader, callbacks=callbacks))


def prepare_batches(loader, config: TrainConfig, device: torch.device, steps: int) -> list[tuple]:
    """``steps`` real (index, labels, logits, losses) tuples, as the Trainer hands them to callbacks."""
    model = new_model(device)
    bf16 = use_bf16(config, device)
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
    sync(device)
    return batches


def time_updates(recorder: ExampleRecorder, batches: list[tuple], device: torch.device, repeats: int) -> list[float]:
    """Seconds per ``recorder.update`` call over the prepared batches, ``repeats`` times."""
    results = []
    for _ in range(repeats):
        recorder.reset()
        seconds = timed(device, lambda: [recorder.update(i, y, lg, ls, 0) for i, y, lg, ls in batches])
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
    """Synchronising calls in one ``fit`` epoch of ``variant`` (sync debug mode 'warn')."""
    model = new_model(device)
    callbacks = make_callbacks(variant, n, device)
    trainer = Trainer(config)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(model, loader, callbacks=callbacks)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one Trainer epoch of LeNet-300-100 on MNIST with and without pracset's ExampleRecorder "
                    "(interleaved), and count the recorder's host synchronisations on CUDA.",
        epilog="example: python pipelines/bench_recorder.py --data-dir /work/shared/data/mnist --history",
    )
    parser.add_argument("--data-dir", default=None,
                        help=f"directory holding the MNIST idx files (default: ${DATA_DIR_ENV})")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds, one epoch of every variant each; medians are reported (default 5)")
    parser.add_argument("--history", action="store_true",
                        help="also time the recorder with keep_history=True")
    parser.add_argument("--update-steps", type=int, default=200,
                        help="real batches for the recorder.update-alone timing and the sync check (default 200)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: the machine's core count, os.cpu_count())")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first LIMIT examples only (quick smoke runs; default: all 60,000)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.data_dir is None and not os.environ.get(DATA_DIR_ENV):
        parser.error(f"--data-dir is required unless ${DATA_DIR_ENV} is set")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.update_steps < 1:
        parser.error("--update-steps must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    cores = os.cpu_count() or 1
    threads = args.threads or cores
    torch.set_num_threads(threads)

    dataset = load_dataset(DataConfig(name="mnist", data_dir=args.data_dir))
    config = TrainConfig(epochs=1, batch_size=BATCH_SIZE, seed=0)
    n = len(dataset.train)  # the recorder covers the whole split, as in a real run
    ids = None if args.limit is None else torch.arange(min(args.limit, n))
    loader, _ = make_loaders(dataset, config, device, ids=ids)
    steps = len(loader)
    variants = ["plain", "recorder"] + (["recorder+history"] if args.history else [])
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"device {device} ({gpu or platform.processor() or platform.machine()}); torch {torch.__version__}; "
          f"torch.set_num_threads({threads}) (os.cpu_count()={cores})")
    print(f"MNIST train: {loader.num_examples} of {n} images, batch {BATCH_SIZE} -> {steps} steps/epoch; LeNet-300-100, "
          f"Trainer with TrainConfig defaults ({config.optimizer} lr {config.lr} momentum {config.momentum} "
          f"wd {config.weight_decay}, precision {config.precision}{' -> bf16 autocast' if use_bf16(config, device) else ''})")
    print(f"variants {', '.join(variants)}; 1 untimed warm-up epoch each, then {args.repeats} interleaved rounds "
          f"(order rotating each round)")

    # ---- interleaved timing
    for variant in variants:
        one_epoch(variant, config, loader, n, device)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(args.repeats):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for variant in order:
            times[variant].append(one_epoch(variant, config, loader, n, device))
        print(f"  round {r + 1}/{args.repeats}: " + ", ".join(f"{v} {times[v][-1]:.3f}s" for v in variants), flush=True)

    median = {v: statistics.median(t) for v, t in times.items()}
    per_pair = {v: [b / a for a, b in zip(times["plain"], times[v])] for v in variants[1:]}
    pair_median = {v: statistics.median(r) for v, r in per_pair.items()}
    print()
    print(f"{'variant':<20}{'median s/epoch':>16}{'images/s':>12}   all runs (s)")
    for variant in variants:
        runs = ", ".join(f"{t:.3f}" for t in times[variant])
        print(f"{variant:<20}{median[variant]:>16.3f}{loader.num_examples / median[variant]:>12,.0f}   {runs}")
    print()
    for variant in variants[1:]:
        print(f"ratio {variant}/plain: medians {median[variant] / median['plain']:.3f}x; "
              f"median of per-round ratios {pair_median[variant]:.3f}x "
              f"(rounds: {', '.join(f'{x:.3f}' for x in per_pair[variant])})")

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

    sync_report: dict = {}
    no_sync_ok = True
    if device.type == "cuda":
        for variant in variants[1:]:
            ok, message = check_update_syncs(make_callbacks(variant, n, device)[0], batches)
            sync_report[f"{variant}_update_error_mode_ok"] = ok
            no_sync_ok &= ok
            print(f"{variant}.update x {len(batches)} + end_epoch under set_sync_debug_mode('error'): "
                  f"{'no sync, PASS' if ok else 'raised: ' + message + ' -> FAIL'}")
        counts = {v: count_epoch_syncs(v, config, loader, n, device) for v in variants}
        sync_report["epoch_syncs"] = counts
        print("host syncs in one fit epoch (set_sync_debug_mode('warn')): "
              + ", ".join(f"{v} {c}" for v, c in counts.items()))
        for variant in variants[1:]:
            per_step = (counts[variant] - counts["plain"]) / steps
            sync_report[f"{variant}_syncs_per_step"] = per_step
            no_sync_ok &= per_step <= 0
            label = "recorder" if variant == "recorder" else variant
            print(f"{label} host syncs per step: {per_step:.4g} "
                  f"(({counts[variant]} - {counts['plain']}) / {steps} steps)")
    else:
        print("recorder host syncs per step: n/a on the CPU (sync debug mode is CUDA-only; use --device cuda)")

    # ---- targets
    print()
    passed = True
    for variant in variants[1:]:
        ok = pair_median[variant] <= TARGET_RATIO
        passed &= ok
        print(f"target {variant}/plain (median of per-round ratios) <= {TARGET_RATIO}: "
              f"{pair_median[variant]:.3f}x -> {'PASS' if ok else 'FAIL'}")
    if device.type == "cuda":
        passed &= no_sync_ok
        print(f"target no recorder host syncs per step: {'PASS' if no_sync_ok else 'FAIL'}")

    if args.json:
        report = {
            "device": str(device), "gpu": gpu, "torch": torch.__version__, "threads": threads, "cpu_count": cores,
            "examples": loader.num_examples, "batch_size": BATCH_SIZE, "steps_per_epoch": steps,
            "repeats": args.repeats, "variants": variants, "seconds": times, "median_seconds": median,
            "per_round_ratios": per_pair, "median_per_round_ratio": pair_median,
            "ratio_of_medians": {v: median[v] / median["plain"] for v in variants[1:]},
            "update_seconds_per_step": update_seconds, "syncs": sync_report or None,
            "target_ratio_max": TARGET_RATIO, "pass": passed,
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"wrote {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
