"""Stages of ticket runs trained together as one packed job (:func:`pracset.train.packed.fit_packed`).

Models that share a recipe and a step count train as one ``vmap``-ed
network: a ticket with its sanity-check controls, and the full-data IMP
rounds of several seeds (each seed reading its own data order). Every stage
is then written and completed exactly as if it had trained alone, so the
round loop finds it done and a resumed run cannot tell the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch.nn as nn

from pracset.errors import ConfigError
from pracset.fileio import atomic_torch_save
from pracset.runs import StageFiles
from pracset.sparse.mask import Mask
from pracset.tickets.context import TicketContext


@dataclass
class PackedStage:
    """One stage of a packed job: whose run it belongs to, where it is written, its start model and its mask."""

    ctx: TicketContext
    stage: StageFiles
    model: nn.Module
    mask: Mask

    @property
    def started(self) -> bool:
        """Whether the stage is done or was started alone (a checkpoint): then it is not packed."""
        return self.ctx.run.finished_stage_metrics(self.stage) is not None or self.stage.checkpoint.exists()


def train_packed(jobs: Sequence[PackedStage], *, start_step: int, snapshot_step: int | None = None):
    """Train every job's model (in place) as one packed job; returns the :class:`~pracset.train.packed.PackedRun`.

    The jobs' recipes may differ only in their seed (their data order): each
    run directory gets one training loader, shared by its jobs. Nothing is
    marked done here: :func:`complete_packed` does that per job.
    """
    from pracset.train.packed import fit_packed  # here: torch.func is needed only when packing

    recipes = {replace(job.ctx.train, seed=0) for job in jobs}
    if len(recipes) != 1:
        raise ConfigError("packed stages must share their recipe (all but the seed)")
    loaders: dict[int, tuple] = {}
    for job in jobs:
        if id(job.ctx) not in loaders:
            loaders[id(job.ctx)] = job.ctx.loaders(None, job.ctx.train)
    first = jobs[0].ctx
    for job in jobs:
        job.stage.directory.mkdir(parents=True, exist_ok=True)
    return fit_packed([job.model for job in jobs], [job.mask for job in jobs],
                      [loaders[id(job.ctx)][0] for job in jobs], loaders[id(first)][1], first.train,
                      stages=[job.stage.name for job in jobs], start_step=start_step,
                      metrics_logs=[job.stage.metrics_log for job in jobs], snapshot_step=snapshot_step)


def complete_packed(job: PackedStage, history: list[dict], ledger) -> dict:
    """Write a packed job's ``model.pt``, book its cost and mark it done, as a stage trained alone is."""
    atomic_torch_save(job.model.state_dict(), job.stage.model)
    metrics = {"stage": job.stage.name, "final": dict(history[-1]), "history": history,
               "epochs": job.ctx.train.epochs, "epochs_run": history[-1]["epoch"],
               "examples": job.ctx.num_examples, "packed": True,
               "ledger": ledger.to_dict()["stages"].get(job.stage.name, {})}
    return job.ctx.run.complete_stage(job.stage, metrics, ledger)


def train_and_complete_packed(jobs: Sequence[PackedStage], *, start_step: int) -> None:
    """:func:`train_packed`, then :func:`complete_packed` for every job."""
    run = train_packed(jobs, start_step=start_step)
    for job, history, ledger in zip(jobs, run.histories, run.ledgers):
        complete_packed(job, history, ledger)
