"""Stages of ticket runs trained together as one packed job (:func:`pracset.train.packed.fit_packed`).

Models that share a recipe and a step count train as one ``vmap``-ed
network: the tickets of a run's rounds that train apart from the search
(PrAC-IMP's) and the sanity-check controls of every ticket, which need only
their mask once the search is done; and the full-data IMP rounds of several
seeds (each seed reading its own data order). Jobs hold at most
:data:`MAX_MODELS_PER_JOB` models. Every stage
is then written and completed as a stage trained alone is (its metrics say
``packed`` and with how many models), so the round loop finds it done.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from pracset.distributed import is_distributed
from pracset.errors import ConfigError
from pracset.fileio import atomic_np_save, atomic_torch_save
from pracset.mask import Mask
from pracset.runs import StageFiles
from pracset.sparse import StaticMask
from pracset.tickets.config import IMPConfig
from pracset.tickets.context import TicketContext
from pracset.train.packed import fit_packed


#: ``auto`` packs models up to this size: small models are launch-bound on a GPU (ResNet-20: 0.27M
#: parameters), so K of them cost about one; large ones are compute-bound, gain nothing, and K copies of their
#: activations may not fit (ResNet-50 at batch 256 holds about 25 GB of them).
AUTO_PACK_MAX_PARAMETERS = 2_000_000
#: At most this many models per packed job: their activations must fit side by side (12 ResNet-20s at batch 512
#: in bf16: about 12 GB), and past this a small model's job is no longer launch-bound anyway.
MAX_MODELS_PER_JOB = 12


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


def should_pack(config: IMPConfig, ctx: TicketContext) -> bool:
    """Whether models that share a recipe and a step count (tickets and their controls, full-data IMP's seeds)
    train as packed jobs in this run (:func:`packs`)."""
    return packs(config.pack_controls, ctx.device, ctx.model(), python_arch=ctx.arch.python,
                 tensorboard=ctx.tensorboard is not None)


@dataclass
class PackedStage:
    """One stage of a packed job: whose run it belongs to, where it is written, and how its model starts.

    ``start()`` gives the stage's start model and its mask; it is called only
    when the stage's job trains, so that a run's many jobs are not all held
    on the device at once.
    """

    ctx: TicketContext
    stage: StageFiles
    start: Callable[[], tuple[nn.Module, Mask]]
    #: the example ids the stage trains on (``None``: the whole split); a job's stages share them
    ids: np.ndarray | None = None


def rewound_with_mask(ctx: TicketContext, mask: Mask, rewind: dict) -> tuple[nn.Module, Mask]:
    """A ticket's start: the rewind point with ``mask`` applied, and the mask (a :attr:`PackedStage.start`)."""
    return ctx.rewound(mask, rewind), mask


def started(ctx: TicketContext, stage: StageFiles) -> bool:
    """Whether ``stage`` is done or was started alone (a Trainer checkpoint): then it is not packed."""
    return ctx.run.finished_stage_metrics(stage) is not None or stage.checkpoint.exists()


def _training_loaders(jobs: Sequence[PackedStage]) -> tuple[list, object]:
    """One training loader per run (its seed's order), over one copy of the data on the device, and a test loader."""
    first, ids = jobs[0].ctx, jobs[0].ids
    if any(not _same_ids(job.ids, ids) for job in jobs):
        raise ConfigError("packed stages must train on the same examples")
    train, test = first.loaders(ids, first.train)
    by_run: dict[int, object] = {id(first): train}
    for job in jobs:
        if id(job.ctx) not in by_run:  # the same split on the device, another seed (a streamed split: its own)
            by_run[id(job.ctx)] = (train.reseeded(job.ctx.train.seed) if hasattr(train, "reseeded")
                                   else job.ctx.loaders(ids, job.ctx.train)[0])
    return [by_run[id(job.ctx)] for job in jobs], test


def _same_ids(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def train_packed(jobs: Sequence[PackedStage], *, start_step: int, snapshot_step: int | None = None):
    """Train the jobs as one packed job; returns their trained models and the
    :class:`~pracset.train.packed.PackedRun`.

    The jobs' recipes may differ only in their seed (their data order). Each
    model's slice of the job's state is checkpointed in its stage's folder
    after every epoch. Nothing is marked done here: :func:`complete_packed`
    does that per job.
    """
    recipes = {replace(job.ctx.train, seed=0) for job in jobs}
    if len(recipes) != 1:
        raise ConfigError("packed stages must share their recipe (all but the seed)")
    starts = [job.start() for job in jobs]
    models, masks = [model for model, _ in starts], [mask for _, mask in starts]
    train_loaders, test_loader = _training_loaders(jobs)
    for job in jobs:
        job.stage.create()
    run = fit_packed(models, masks, train_loaders, test_loader, jobs[0].ctx.train,
                     stages=[job.stage.name for job in jobs], start_step=start_step,
                     metrics_logs=[job.stage.metrics_log for job in jobs], snapshot_step=snapshot_step,
                     checkpoints=[job.stage.packed_checkpoint for job in jobs])
    return models, run


def complete_packed(job: PackedStage, model: nn.Module, history: list[dict], ledger, *, packed_with: int) -> dict:
    """Write a packed job's ``model.pt``, book its cost and mark it done, as for a stage trained alone.

    Its metrics add ``packed_with``, the job's model count: each epoch's
    ``seconds`` is the whole job's.
    """
    atomic_torch_save(model.state_dict(), job.stage.model)
    if job.ids is not None:
        atomic_np_save(job.stage.ids, job.ids)
    metrics = {"stage": job.stage.name, "final": dict(history[-1]), "history": history,
               "epochs": job.ctx.train.epochs, "epochs_run": history[-1]["epoch"],
               "examples": job.ctx.num_examples if job.ids is None else len(job.ids), "packed": True, "packed_with": packed_with,
               "ledger": ledger.to_dict()["stages"].get(job.stage.name, {})}
    return job.ctx.run.complete_stage(job.stage, metrics, ledger)


def chunks(jobs: Sequence[PackedStage]) -> list[list[PackedStage]]:
    """``jobs`` in packed jobs of at most :data:`MAX_MODELS_PER_JOB` models, as even in size as they can be."""
    count = -(-len(jobs) // MAX_MODELS_PER_JOB)  # the fewest jobs that hold them all
    size = max(1, -(-len(jobs) // max(count, 1)))
    return [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]


def train_and_complete_packed(jobs: Sequence[PackedStage], *, start_step: int) -> None:
    """Train every job (packed, :func:`chunks` of them) and complete each; a model left alone trains alone."""
    for chunk in chunks(jobs):
        if len(chunk) == 1:  # one model trains faster with the Trainer than as a packed job of one
            job = chunk[0]
            model, mask = job.start()
            job.ctx.train_and_complete_stage(job.stage, model, ids=job.ids, callbacks=[StaticMask(mask)],
                                             start_step=start_step)
            continue
        models, run = train_packed(chunk, start_step=start_step)
        for job, model, history, ledger in zip(chunk, models, run.histories, run.ledgers):
            complete_packed(job, model, history, ledger, packed_with=len(chunk))
