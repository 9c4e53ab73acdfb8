"""Stages of ticket runs trained together as one packed job (:func:`pracset.train.packed.fit_packed`).

Models that share a recipe and a step count train as one ``vmap``-ed
network: the tickets of a run's rounds that train apart from the search
(PrAC-IMP's) and the sanity-check controls of every ticket, which need only
their mask once the search is done; and the full-data IMP rounds of several
seeds (each seed reading its own data order). Jobs hold at most
:data:`MAX_MODELS_PER_JOB` models. Every stage
is then written and completed exactly as if it had trained alone, so the
round loop finds it done and a resumed run cannot tell the difference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn

from pracset.distributed import is_distributed
from pracset.errors import ConfigError
from pracset.fileio import atomic_torch_save
from pracset.runs import StageFiles
from pracset.sparse.mask import Mask
from pracset.tickets.config import IMPConfig
from pracset.tickets.context import TicketContext


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
                      metrics_logs=[job.stage.metrics_log for job in jobs], snapshot_step=snapshot_step,
                      checkpoints=[job.stage.packed_checkpoint for job in jobs])


def complete_packed(job: PackedStage, history: list[dict], ledger) -> dict:
    """Write a packed job's ``model.pt``, book its cost and mark it done, as a stage trained alone is."""
    atomic_torch_save(job.model.state_dict(), job.stage.model)
    metrics = {"stage": job.stage.name, "final": dict(history[-1]), "history": history,
               "epochs": job.ctx.train.epochs, "epochs_run": history[-1]["epoch"],
               "examples": job.ctx.num_examples, "packed": True,
               "ledger": ledger.to_dict()["stages"].get(job.stage.name, {})}
    return job.ctx.run.complete_stage(job.stage, metrics, ledger)


def chunks(jobs: Sequence[PackedStage]) -> list[list[PackedStage]]:
    """``jobs`` in packed jobs of at most :data:`MAX_MODELS_PER_JOB` models, as even in size as they can be."""
    count = -(-len(jobs) // MAX_MODELS_PER_JOB)  # the fewest jobs that hold them all
    size = max(1, -(-len(jobs) // max(count, 1)))
    return [list(jobs[i:i + size]) for i in range(0, len(jobs), size)]


def train_and_complete_packed(jobs: Sequence[PackedStage], *, start_step: int) -> None:
    """Train every job (packed, :func:`chunks` of them) and complete each; a model left alone trains alone."""
    from pracset.sparse import StaticMask

    for chunk in chunks(jobs):
        if len(chunk) == 1:  # one model trains faster with the Trainer than as a packed job of one
            job = chunk[0]
            job.ctx.train_and_complete_stage(job.stage, job.model, callbacks=[StaticMask(job.mask)],
                                             start_step=start_step)
            continue
        run = train_packed(chunk, start_step=start_step)
        for job, history, ledger in zip(chunk, run.histories, run.ledgers):
            complete_packed(job, history, ledger)
