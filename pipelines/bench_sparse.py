"""Benchmark: the overhead of sparse training (a static mask, RigL, GraNet) over dense training.

What is measured
----------------
Wall-clock seconds of the same training run of LeNet-300-100 on MNIST (batch
128, ``--epochs`` epochs, the library's ``Trainer``), once dense and once with
each sparse method as its callback:

- ``static``: an IMP ticket's fixed 90%-sparse mask, enforced after every step
  (masked weights and their momentum multiplied by the mask);
- ``rigl``: RigL at 90% (ERK, Delta T = 100, alpha = 0.3, T_end = 75%);
- ``granet``: GraNet to 90% from 50% (Delta T = 100).

Every variant trains a fresh model (built outside the timed region) on the same
loader for the same number of steps; the variants are interleaved and their
order rotates each round, ``--repeats`` rounds; the median of the per-round
ratios method/dense is checked against the target (<= 1.15). The sparse
methods do not skip computation (masks are applied to dense tensors), so the
ratio is pure overhead.

Run it
------
    python pipelines/bench_sparse.py --data-dir /work/shared/data/mnist
    PYTHONPATH=$PWD python3 pipelines/bench_sparse.py --data-dir DIR --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from benchkit import timed
from pracset.data import DataConfig, load_dataset
from pracset.models import InputSpec, build_model
from pracset.sparse import GraNet, GraNetConfig, Mask, RigL, RigLConfig, StaticMask, prune_to_sparsity
from pracset.train import TrainConfig, Trainer
from pracset.train.run import make_loaders

TARGET = 1.15
VARIANTS = ("dense", "static", "rigl", "granet")


def callbacks_for(variant: str, model: torch.nn.Module, static_mask: Mask):
    if variant == "dense":
        return []
    if variant == "static":
        return [StaticMask(static_mask)]
    if variant == "rigl":
        return [RigL(RigLConfig(sparsity=0.9))]
    return [GraNet(GraNetConfig(sparsity=0.9, init_sparsity=0.5))]


def run_once(variant: str, config: TrainConfig, loader, device: torch.device, static_mask: Mask) -> float:
    model = build_model("lenet300", InputSpec(1, 28, 28, 10), seed=0).to(device)
    callbacks = callbacks_for(variant, model, static_mask)
    return timed(device, lambda: Trainer(config).fit(model, loader, callbacks=callbacks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("PRACSET_DATA_DIR"), help="folder of the MNIST idx files")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("--data-dir (or $PRACSET_DATA_DIR) must name the folder holding the MNIST idx files")
    device = torch.device(args.device)
    dataset = load_dataset(DataConfig(name="mnist", data_dir=args.data_dir))
    config = TrainConfig(epochs=args.epochs, batch_size=128, seed=0, eval_every=10**6)
    loader, _ = make_loaders(dataset, config, device)
    model = build_model("lenet300", InputSpec(1, 28, 28, 10), seed=0)
    static_mask = prune_to_sparsity(model, Mask.ones(model), 0.9)
    steps = len(loader) * args.epochs
    print(f"device {device}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"LeNet-300-100 on MNIST, {steps} steps per run, {args.repeats} interleaved rounds")
    for variant in VARIANTS:  # warm-up
        run_once(variant, TrainConfig(epochs=1, batch_size=128, seed=0, eval_every=10**6), loader, device, static_mask)
    times = {v: [] for v in VARIANTS}
    ratios = {v: [] for v in VARIANTS[1:]}
    for r in range(args.repeats):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        this = {v: run_once(v, config, loader, device, static_mask) for v in order}
        for v in VARIANTS:
            times[v].append(this[v])
        for v in ratios:
            ratios[v].append(this[v] / this["dense"])
    print(f"\n{'variant':<10} {'median s':>9}   all runs (s)")
    for v in VARIANTS:
        print(f"{v:<10} {statistics.median(times[v]):>9.3f}   " + ", ".join(f"{t:.3f}" for t in times[v]))
    ok = True
    print()
    results = {"device": str(device), "steps": steps, "times": times, "ratios": {}}
    for v, values in ratios.items():
        ratio = statistics.median(values)
        results["ratios"][v] = ratio
        passed = ratio <= TARGET
        ok &= passed
        print(f"ratio {v}/dense (median of per-round ratios): {ratio:.3f}x -> {'PASS' if passed else 'FAIL'} (target <= {TARGET})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
