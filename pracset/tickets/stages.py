"""A ticket run's stages as typed jobs, and the one function that trains them: :func:`train_jobs`.

A :class:`StageJob` says what one stage trains (its start model and mask,
the examples, the recipe, where its schedule starts, its callbacks, what it
adds once trained) and where its files go. :func:`train_jobs` trains a list
of them; *how* is an executor, chosen by one rule (:func:`plan`):

- jobs that may pack (:func:`packable`: the run packs, the job keeps a fixed
  mask, has no callbacks and was not started alone) and share a
  :func:`pack_key` (the recipe but for the seed, the examples, the start and
  snapshot steps) train as packed jobs, ``vmap``-ed as one network
  (:func:`pracset.train.packed.fit_packed`), at most
  :data:`MAX_MODELS_PER_JOB` models each;
- every other job, and a group of one, trains eagerly with the Trainer
  (:func:`pracset.train.run.train_stage`).

A packed job shows one progress bar for its stages, and writes each stage's
per-epoch TensorBoard scalars from its history once it is done (no per-step
loss: it runs no callbacks; ``auto`` does not pack under TensorBoard).

Either replays its step as a captured CUDA graph when the recipe asks for it
(``TrainConfig.cuda_graphs``): capture is the recipe's choice, not the
executor's. Every trained stage is written by one writer, :func:`complete`:
its ``model.pt``, its ``ids.npy`` (a subset), what its ``finish`` hook adds,
then its cost and ``metrics.json`` (which marks it done).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from pracset.distributed import is_distributed, is_main
from pracset.errors import ConfigError
from pracset.fileio import atomic_np_save, atomic_torch_save
from pracset.ledger import IterationLedger
from pracset.mask import Mask
from pracset.runs import StageFiles, StageMetrics
from pracset.sparse import StaticMask
from pracset.tickets.context import Snapshot, TicketContext
from pracset.train.config import TrainConfig
from pracset.train.packed import fit_packed
from pracset.train.run import train_stage
from pracset.train.step import Callback
from pracset.train.tensorboard import write_history

log = logging.getLogger(__name__)

#: ``auto`` packs models up to this size: small models are launch-bound on a GPU (ResNet-20: 0.27M
#: parameters), so K of them cost about one; large ones are compute-bound, gain nothing, and K copies of their
#: activations may not fit (ResNet-50 at batch 256 holds about 25 GB of them).
AUTO_PACK_MAX_PARAMETERS = 2_000_000
#: At most this many models per packed job: their activations must fit side by side (12 ResNet-20s at batch 512
#: in bf16: about 12 GB), and past this a small model's job is no longer launch-bound anyway.
MAX_MODELS_PER_JOB = 12


@dataclass
class Trained:
    """What a job's training left, handed to its ``finish`` hook."""

    model: nn.Module
    mask: Mask | None
    callbacks: Sequence[Callback]
    #: the whole state at the job's ``snapshot_step`` (host copies), when it asked for one
    snapshot: dict | None


@dataclass
class StageJob:
    """One stage to train: what it trains, from where, on which examples, and where its files go.

    ``start()`` gives the start model and its mask (``None``: no fixed mask,
    e.g. RigL's changing one); it is called only when the job trains, so that
    a run's many jobs are not all held on the device at once. A fixed mask is
    held by a :class:`~pracset.sparse.StaticMask` (when it prunes anything).
    """

    ctx: TicketContext
    stage: StageFiles
    start: Callable[[], tuple[nn.Module, Mask | None]]
    #: the example ids it trains on (``None``: the whole split); written to the stage's ``ids.npy``
    ids: np.ndarray | None = None
    #: the recipe (``None``: the run's)
    recipe: TrainConfig | None = None
    #: where its learning-rate schedule starts (a rewound stage continues from the rewind step)
    start_step: int = 0
    #: keep the whole state at this step (round 0: the rewind point), handed to ``finish``
    snapshot_step: int | None = None
    #: the callbacks it trains with, made from its start mask when it trains; a job with any trains eagerly
    callbacks: Callable[[Mask | None], Sequence[Callback]] | None = None
    #: writes what the trained stage adds; returns metrics to add and their cost
    finish: Callable[[Trained], tuple[dict, IterationLedger]] | None = None
    #: the start mask never changes while it trains (``False``: its callbacks change it)
    fixed_mask: bool = True

    @property
    def train(self) -> TrainConfig:
        return self.recipe or self.ctx.train


def packs(choice: str, device: torch.device, model: nn.Module, *, python_arch: bool = False,
          tensorboard: bool = False) -> bool:
    """Whether a ``pack_controls`` choice packs here: ``on``, or ``auto`` on one CUDA process for a small
    registered architecture (a Python model may do what ``vmap`` cannot, such as branching on its values)
    without TensorBoard (packed jobs write no scalars). Packed training has no DDP path: never under torchrun."""
    if is_distributed():
        return False
    small = sum(p.numel() for p in model.parameters()) <= AUTO_PACK_MAX_PARAMETERS
    auto = device.type == "cuda" and small and not python_arch and not tensorboard
    return choice == "on" or (choice == "auto" and auto)


def run_packs(ctx: TicketContext, choice: str) -> bool:
    """Whether run ``ctx`` packs its stages under the ``pack_controls`` ``choice`` (:func:`packs`)."""
    return packs(choice, ctx.device, ctx.model(), python_arch=ctx.arch.python, tensorboard=ctx.tensorboard is not None)


def started_alone(stage: StageFiles) -> bool:
    """Whether ``stage`` was started by the Trainer (its checkpoint is there): it continues alone."""
    return stage.checkpoint.exists()


def packable(job: StageJob, run_packs: bool) -> bool:
    """Whether ``job`` may train packed with others: its run packs, its mask is fixed, it has no callbacks
    (packed jobs run none) and it was not started alone."""
    return run_packs and job.fixed_mask and job.callbacks is None and not started_alone(job.stage)


def pack_key(job: StageJob) -> tuple:
    """What packed jobs share: the recipe but for the seed (each model reads its own seed's data order), the
    examples, where the schedule starts, and the snapshot step."""
    ids = None if job.ids is None else np.asarray(job.ids, dtype=np.int64).tobytes()
    return replace(job.train, seed=0), ids, job.start_step, job.snapshot_step


def chunks(jobs: Sequence[StageJob]) -> list[list[StageJob]]:
    """``jobs`` in packed jobs of at most :data:`MAX_MODELS_PER_JOB` models, as even in size as they can be."""
    count = -(-len(jobs) // MAX_MODELS_PER_JOB)  # the fewest jobs that hold them all
    size = max(1, -(-len(jobs) // max(count, 1)))
    return [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]


def plan(jobs: Sequence[StageJob], pack: str | bool) -> list[list[StageJob]]:
    """The executor rule: ``jobs`` as groups in training order; a group of one trains eagerly, a larger one
    packed. ``pack`` is the ``pack_controls`` choice (``on``, ``off``, ``auto``; ``True``: pack whatever the
    device), decided once per run."""
    decided: dict[int, bool] = {}

    def run_may_pack(ctx: TicketContext) -> bool:
        if id(ctx) not in decided:
            decided[id(ctx)] = pack is True or (pack not in (False, "off") and run_packs(ctx, pack))
        return decided[id(ctx)]

    groups: dict[object, list[StageJob]] = {}
    order: list[object] = []
    for index, job in enumerate(jobs):
        key = pack_key(job) if packable(job, run_may_pack(job.ctx)) else ("alone", index)
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(job)
    return [chunk for key in order for chunk in (chunks(groups[key]) if key[0] != "alone" else [groups[key]])]


def train_jobs(jobs: Sequence[StageJob], *, pack: str | bool = "off") -> list[StageMetrics]:
    """Train and complete every job (a finished stage is read back, not trained again); returns their metrics
    in the jobs' order. How each trains is :func:`plan`'s rule."""
    done: dict[int, StageMetrics] = {}
    todo = []
    for job in jobs:
        metrics = job.ctx.run.finished_stage_metrics(job.stage)
        if metrics is not None:
            done[id(job)] = metrics
        else:
            todo.append(job)
    for group in plan(todo, pack):
        trained = _train_eagerly(group[0]) if len(group) == 1 else _train_packed(group)
        done.update({id(job): metrics for job, metrics in zip(group, trained)})
    return [done[id(job)] for job in jobs]


def _static(mask: Mask | None) -> list[Callback]:
    # A mask that prunes nothing (round 0's) is not enforced: multiplying by ones would only cost time.
    return [StaticMask(mask)] if mask is not None and mask.sparsity() > 0 else []


def _train_eagerly(job: StageJob) -> list[StageMetrics]:
    """The eager executor: one model with the Trainer, its callbacks, and its own checkpoint."""
    ctx = job.ctx
    model, mask = job.start()
    snapshot = Snapshot(job.snapshot_step) if job.snapshot_step is not None else None
    hooks = list(job.callbacks(mask)) if job.callbacks is not None else []
    callbacks = [*([snapshot] if snapshot else []), *(_static(mask) if job.fixed_mask else []), *hooks]
    train_loader, test_loader = ctx.loaders(job.ids, job.train)
    result = train_stage(job.stage, model, train_loader, test_loader, job.train, callbacks=callbacks,
                         tensorboard=ctx.tensorboard, start_step=job.start_step, progress=ctx.progress)
    if snapshot is not None and snapshot.state is None:
        raise ConfigError(f"snapshot step {snapshot.step} lies beyond {job.stage.name}'s steps")
    trained = Trained(model, mask, hooks, snapshot.state if snapshot else None)
    return [complete(job, trained, result.metrics, result.ledger)]


def _training_loaders(jobs: Sequence[StageJob]) -> tuple[list, object]:
    """One training loader per run (its seed's order), over one copy of the data on the device, and a test loader."""
    first, ids = jobs[0].ctx, jobs[0].ids
    train, test = first.loaders(ids, jobs[0].train)
    by_run: dict[int, object] = {id(first): train}
    for job in jobs:
        if id(job.ctx) not in by_run:  # the same split on the device, another seed (a streamed split: its own)
            by_run[id(job.ctx)] = (train.reseeded(job.train.seed) if hasattr(train, "reseeded")
                                   else job.ctx.loaders(ids, job.train)[0])
    return [by_run[id(job.ctx)] for job in jobs], test


def _train_packed(jobs: Sequence[StageJob]) -> list[StageMetrics]:
    """The packed executor: the jobs (one :func:`pack_key`) as one ``vmap``-ed network, each model's slice
    checkpointed in its stage's folder after every epoch."""
    if len({pack_key(job) for job in jobs}) != 1:
        raise ConfigError("packed stages must share their recipe (all but the seed), examples and steps")
    starts = [job.start() for job in jobs]
    train_loaders, test_loader = _training_loaders(jobs)
    for job in jobs:
        job.stage.create()
    first = jobs[0]
    run = fit_packed([model for model, _ in starts], [mask for _, mask in starts], train_loaders, test_loader,
                     first.train, stages=[job.stage.name for job in jobs], start_step=first.start_step,
                     metrics_logs=[job.stage.metrics_log for job in jobs], snapshot_step=first.snapshot_step,
                     checkpoints=[job.stage.packed_checkpoint for job in jobs], progress=first.ctx.progress)
    out = []
    for k, (job, (model, mask)) in enumerate(zip(jobs, starts)):
        history, ledger = run.histories[k], run.ledgers[k]
        metrics = StageMetrics.of_training(job.stage.name, history, epochs=job.train.epochs,
                                           examples=train_loaders[k].num_examples,
                                           ledger=ledger, packed_with=len(jobs))
        log.info("%s: test accuracy %.4f (one of %d models packed)", job.stage.name,
                 metrics.test_accuracy if metrics.test_accuracy is not None else float("nan"), len(jobs))
        if job.ctx.tensorboard is not None and is_main():  # its per-epoch scalars, from its history
            write_history(job.ctx.tensorboard / job.stage.name, history, model, train_loaders[k].num_examples)
        snapshot = run.snapshots[k] if run.snapshots is not None else None
        out.append(complete(job, Trained(model, mask, [], snapshot), metrics, ledger))
    return out


def complete(job: StageJob, trained: Trained, metrics: StageMetrics, ledger: IterationLedger) -> StageMetrics:
    """The one writer of a trained stage: its ``model.pt`` and ``ids.npy``, what ``finish`` adds, then its cost
    and its ``metrics.json`` (which marks it done)."""
    atomic_torch_save(trained.model.state_dict(), job.stage.model)
    if job.ids is not None:
        atomic_np_save(job.stage.ids, np.asarray(job.ids))
        metrics = metrics.with_extra(set_size=int(len(job.ids)))
    if job.finish is not None:
        extra, cost = job.finish(trained)
        metrics = metrics.with_extra(**extra)
        ledger = IterationLedger({**ledger.stages, **cost.stages})
    return job.ctx.run.complete_stage(job.stage, metrics, ledger)


__all__ = ["AUTO_PACK_MAX_PARAMETERS", "MAX_MODELS_PER_JOB", "StageJob", "Trained", "packs", "plan", "train_jobs"]
