"""Benchmark: the overhead of sparse training (a static mask, RigL, GraNet) over dense training.

What is measured
----------------
Wall-clock seconds of the same training run of LeNet-300-100 on MNIST (batch
128, ``--epochs`` epochs, the library's ``Trainer``), once dense and once with
each sparse method as its callback:

- ``static``: an IMP ticket's fixed 90%-sparse mask, enforced after every step
  (masked weights and their momentum multiplied by the mask);
- ``rigl``: RigL at 90% (ERK, Delta T = ``--delta-t`` = 100, alpha = 0.3,
  T_end = 75%);
- ``granet``: GraNet to 90% from 50% (Delta T = ``--delta-t`` = 100).

Every variant trains a fresh model (built outside the timed region) on the same
loader for the same number of steps, after one untimed warm-up epoch of each;
the variants are interleaved and their order rotates each round, ``--repeats``
rounds. The sparse methods do not skip computation (masks are applied to dense
tensors), so the ratio method/dense is pure overhead.

Target: for each method, the median of the per-round ratios method/dense
<= 1.15.

Run it
------
    python -m pipelines.benchmarks.sparse --data-dir DIR            # DIR: the four MNIST idx files
    python -m pipelines.benchmarks.sparse --data-dir DIR --device cuda --repeats 9 --json sparse.json
    python -m pipelines.benchmarks.sparse --smoke                   # a few steps on synthetic data
"""

from __future__ import annotations

import statistics
import sys

from pipelines.benchmarks import common

TARGET = 1.15
VARIANTS = ("dense", "static", "rigl", "granet")
SMOKE = {"epochs": 1, "repeats": 1, "delta_t": 1}  # Delta T = 1: the few smoke steps still update masks


def callbacks_for(variant: str, static_mask, delta_t: int) -> list:
    from pracset.sparse import GraNet, GraNetConfig, RigL, RigLConfig, StaticMask

    if variant == "dense":
        return []
    if variant == "static":
        return [StaticMask(static_mask)]
    if variant == "rigl":
        return [RigL(RigLConfig(sparsity=0.9, delta_t=delta_t))]
    return [GraNet(GraNetConfig(sparsity=0.9, init_sparsity=0.5, delta_t=delta_t))]


def run_once(variant: str, config, loader, device, static_mask, delta_t: int) -> float:
    callbacks = callbacks_for(variant, static_mask, delta_t)
    return common.timed(device, common.lenet300_fit(config, loader, device, callbacks))


def main(argv: list[str] | None = None) -> int:
    parser = common.mnist_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--delta-t", type=int, default=100, help="steps between RigL/GraNet mask updates (default 100)")
    args = common.parse(parser, argv, smoke=SMOKE, needs_data_dir=True, positive=("epochs", "repeats", "delta_t"))
    device, skip = common.open_device(args.device)
    if skip:
        return common.finish(args, {}, skip=skip)

    from pracset.sparse import Mask, prune_to_sparsity
    from pracset.train import TrainConfig

    with common.data_dir(args, common.write_synthetic_mnist) as folder:
        dataset = common.load_mnist(folder)
    config = TrainConfig(epochs=args.epochs, batch_size=128, seed=0, eval_every=10**6)
    warm_config = TrainConfig(epochs=1, batch_size=128, seed=0, eval_every=10**6)
    loader, _ = common.make_loaders(dataset, config, device)
    ticket = common.lenet300("cpu")
    static_mask = prune_to_sparsity(ticket, Mask.ones(ticket), 0.9)
    steps = len(loader) * args.epochs
    print(common.machine_line(device))
    print(f"LeNet-300-100 on MNIST ({len(dataset.train)} images), {steps} steps per run, "
          f"{args.repeats} interleaved rounds")

    for variant in VARIANTS:
        run_once(variant, warm_config, loader, device, static_mask, args.delta_t)
    times = common.interleaved(VARIANTS, args.repeats,
                               lambda v: run_once(v, config, loader, device, static_mask, args.delta_t))
    common.print_times("variant", times)
    ratios = {v: statistics.median(r) for v, r in common.per_round_ratios(times, "dense").items()}
    checks = [common.Check(f"{v}/dense", ratio, "<=", TARGET, unit="x", digits=3) for v, ratio in ratios.items()]
    report = {"device": str(device), "steps": steps, "times": times, "ratios": ratios, "target_ratio_max": TARGET}
    return common.finish(args, report, checks)


if __name__ == "__main__":
    sys.exit(main())
