"""Benchmark: the cost of pracset's Lightning callback (statistics, and RigL) on a Lightning training run.

What is measured
----------------
Wall-clock seconds of ``--epochs`` epochs of the same ``lightning.pytorch.Trainer`` run of
LeNet-300-100 (``build_model('lenet300', InputSpec(1, 28, 28, 10), seed=0)``) wrapped in a
``LightningModule`` whose ``training_step`` returns ``{"loss", "logits", "losses"}``, on MNIST's
training images (float, normalised once, held in memory) fed by a ``torch.utils.data.DataLoader``
over ``TensorDataset(x, y, ids)`` (batch 128, shuffled, no workers), SGD lr 0.05 momentum 0.9. The
variants differ only in the callbacks handed to the Trainer:

(A) ``plain``: none.
(B) ``callback``: ``PracsetCallback(len(train))``: the per-example statistics.
(C) ``callback+rigl``: the same with ``sparse=RigLConfig(sparsity=0.9, delta_t=100)``.

The timed region runs from ``on_train_start`` to ``on_train_end`` (a timing callback placed last,
so the callback's own end-of-training work is inside it): the epochs, without Lightning's set-up,
which is the same for every variant. Each measurement trains a fresh module (built outside the
timed region) with a fresh Trainer. After one untimed warm-up run of each variant, ``--repeats``
rounds time every variant once, the order rotating each round; reported are the medians, every
run, and the median of the per-round ratios over ``plain``.

Diagnostic printed alongside (steady on a noisy machine, where the ratios are not): the callback's own
work timed alone, ``PracsetCallback.record`` over an epoch of prepared outputs (the module's logits and
losses on the real batches) and the recorder's ``end_epoch``, in microseconds per step.

Targets: the median per-round ratio callback/plain <= 1.05 and callback+rigl/plain <= 1.15 (the
sparse benchmark's target for RigL in pracset's own Trainer).

Run it
------
    python -m pipelines.benchmarks.lightning_overhead --data-dir DIR     # DIR: the four MNIST idx files
    python -m pipelines.benchmarks.lightning_overhead --data-dir DIR --epochs 2 --repeats 7 --json l.json
    python -m pipelines.benchmarks.lightning_overhead --smoke            # a few steps on synthetic data
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import time
import warnings

from pipelines.benchmarks import common

BATCH_SIZE = 128
TARGETS = {"callback": 1.05, "callback+rigl": 1.15}
VARIANTS = ("plain", "callback", "callback+rigl")
SMOKE = {"epochs": 1, "repeats": 1, "limit": 512}


def lightning_or_none():
    """``lightning.pytorch``, or None when the optional extra is not installed."""
    try:
        import lightning.pytorch as pl
    except ImportError:
        return None
    return pl


def make_module(pl, device):
    """A LightningModule around LeNet-300-100 following PracsetCallback's contract."""
    import torch
    import torch.nn.functional as F

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = common.lenet300(device)

        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            logits = self.net(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            return {"loss": losses.mean(), "logits": logits, "losses": losses}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return Module()


def make_timer(pl):
    """A callback that times ``on_train_start`` .. ``on_train_end``."""

    class Timer(pl.Callback):
        seconds = 0.0

        def on_train_start(self, trainer, pl_module):
            common.sync(pl_module.device)
            self._started = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            common.sync(pl_module.device)
            self.seconds = time.perf_counter() - self._started

    return Timer()


def run_once(pl, variant: str, loader, n: int, epochs: int, device) -> float:
    """Seconds of the epochs of one fresh Trainer run of ``variant``."""
    from pracset.lightning import PracsetCallback
    from pracset.sparse import RigLConfig

    callbacks = {"plain": [], "callback": [PracsetCallback(n)],
                 "callback+rigl": [PracsetCallback(n, sparse=RigLConfig(sparsity=0.9, delta_t=100))]}[variant]
    timer = make_timer(pl)
    module = make_module(pl, device)
    trainer = pl.Trainer(accelerator=device.type, devices=1, max_epochs=epochs, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[*callbacks, timer])
    trainer.fit(module, loader)
    return timer.seconds


def time_callback_alone(pl, loader, n: int, device, repeats: int = 3) -> tuple[float, float]:
    """Median seconds per step of ``PracsetCallback.record`` and of the epoch's ``end_epoch`` spread over the steps."""
    import torch
    import torch.nn.functional as F

    from pracset.lightning import PracsetCallback
    from pracset.stats import ExampleRecorder

    module = make_module(pl, device)
    prepared = []
    with torch.no_grad():
        for batch in loader:
            logits = module.net(batch[0])
            prepared.append(({"logits": logits, "losses": F.cross_entropy(logits, batch[1], reduction="none")}, batch))
    record, close = [], []
    for _ in range(repeats):
        callback = PracsetCallback(n)
        callback.recorder = ExampleRecorder(n, device)  # where on_fit_start puts it
        seconds, _ = common.timed_result(device, lambda: [callback.record(o, b, 0) for o, b in prepared])
        record.append(seconds / len(prepared))
        close.append(common.timed(device, callback.recorder.end_epoch) / len(prepared))
    return statistics.median(record), statistics.median(close)


def main(argv: list[str] | None = None) -> int:
    parser = common.mnist_parser(__doc__)
    parser.add_argument("--epochs", type=int, default=1, help="epochs per timed run (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first LIMIT images (default: all)")
    common.add_threads(parser, "os.cpu_count()")
    args = common.parse(parser, argv, smoke=SMOKE, needs_data_dir=True, positive=("epochs", "repeats"))
    device, skip = common.open_device(args.device)
    pl = lightning_or_none()
    if pl is None:
        skip = skip or "lightning is not installed (pip install 'pracset[lightning]')"
    if skip:
        return common.finish(args, {}, skip=skip)
    common.set_threads(args.threads, os.cpu_count())

    import torch
    from torch.utils.data import DataLoader, TensorDataset

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with common.data_dir(args, common.write_synthetic_mnist) as folder:
        dataset = common.load_mnist(folder)
    n = len(dataset.train) if args.limit is None else min(args.limit, len(dataset.train))
    images = dataset.train.images[:n].float().div(255.0)
    mean, std = images.mean(), images.std()
    x, y = ((images - mean) / std).to(device), dataset.train.labels[:n].to(device)
    loader = DataLoader(TensorDataset(x, y, torch.arange(n, device=device)), batch_size=BATCH_SIZE, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|log_every_n_steps).*")
    print(common.machine_line(device))
    print(f"lightning {pl.__version__}; MNIST train: {n} images, batch {BATCH_SIZE} -> {len(loader)} steps/epoch, "
          f"{args.epochs} epoch(s) per run; LeNet-300-100 in a LightningModule, SGD lr 0.05 momentum 0.9")
    print(f"variants {', '.join(VARIANTS)}; 1 untimed warm-up run each, then {args.repeats} interleaved rounds")

    for variant in VARIANTS:
        run_once(pl, variant, loader, n, 1, device)
    times = common.interleaved(list(VARIANTS), args.repeats,
                               lambda v: run_once(pl, v, loader, n, args.epochs, device))
    median = common.medians(times)
    per_round = common.per_round_ratios(times, "plain")
    pair_median = {v: statistics.median(r) for v, r in per_round.items()}
    common.print_times("variant", times, n * args.epochs)
    print()
    steps = len(loader) * args.epochs
    for variant in VARIANTS[1:]:
        added = (median[variant] - median["plain"]) / steps
        print(f"ratio {variant}/plain: medians {median[variant] / median['plain']:.3f}x; median of per-round ratios "
              f"{pair_median[variant]:.3f}x (rounds: {', '.join(f'{r:.3f}' for r in per_round[variant])}); "
              f"{added * 1e6:+.0f} us/step")
    record, close = time_callback_alone(pl, loader, n, device)
    print(f"the callback's work alone: record {record * 1e6:.1f} us/step, end_epoch {close * 1e6:.1f} us/step "
          f"({(record + close) / (median['plain'] / steps):.1%} of a plain step, "
          f"{median['plain'] / steps * 1e6:.0f} us)")
    checks = [common.Check(f"{v}/plain", pair_median[v], "<=", TARGETS[v], unit="x", digits=3) for v in VARIANTS[1:]]
    report = {"device": str(device), "torch": torch.__version__, "lightning": pl.__version__,
              "threads": torch.get_num_threads(), "examples": n, "batch_size": BATCH_SIZE, "epochs": args.epochs,
              "steps": steps, "repeats": args.repeats, "seconds": times, "median_seconds": median,
              "per_round_ratios": per_round, "median_per_round_ratio": pair_median, "targets": TARGETS,
              "callback_alone_us_per_step": {"record": record * 1e6, "end_epoch": close * 1e6}}
    return common.finish(args, report, checks)


if __name__ == "__main__":
    sys.exit(main())
