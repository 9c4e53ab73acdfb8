"""The Data-Diet protocol (Paul et al. 2022, "Lottery Tickets on a Data Diet") as an IMP policy.

With ``imp.manifest_use = "pretrain"`` and a manifest, only the training up to
the rewind point runs on the manifest's set (for example the easiest examples
by EL2N): a ``pretrain`` stage trains the recipe's first ``N`` epochs (the
rewind point ``Nep``) on the set, from the initialisation, and its final
state is the rewind point. Round 0 then continues the full schedule from
there on the full split (from step ``N`` epochs of the full split), and every
pruned round rewinds to the pretrained state and trains on the full split, as
IMP does. The pretraining's steps are booked in the ledger (stage
``pretrain``) and counted in the search's cost. Tickets are judged against a
dense network trained on the full split from the initialisation (the
``dense-reference`` stage, with controls).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from pracset.ledger import IterationLedger
from pracset.tickets.config import IMPConfig, parse_rewind
from pracset.tickets.context import TicketContext
from pracset.tickets.masks import dense_mask
from pracset.tickets.rounds import RoundPolicy, dense_job_start, finish_round
from pracset.tickets.stages import StageJob, Trained, train_jobs
from pracset.stats.scores import StopAfterEpoch

def pretrain_epochs(config: IMPConfig) -> int | None:
    """The epochs the pretraining runs (the rewind point's, when it is given in epochs), else ``None``."""
    amount, unit = parse_rewind(config.rewind)
    return amount if unit == "ep" else None


class DataDietPolicy(RoundPolicy):
    """IMP on the full split whose rewind point is a pretraining on a subset (see the module)."""

    def __init__(self, ctx: TicketContext, config: IMPConfig, pretrain_ids: np.ndarray):
        super().__init__(ctx, config, None)
        self.pretrain_ids = np.asarray(pretrain_ids)

    def round0_jobs(self) -> list[StageJob]:
        ctx = self.ctx
        pretrain = ctx.layout.pretrain
        epochs = pretrain_epochs(self.config)
        train_jobs([StageJob(ctx, pretrain, partial(dense_job_start, ctx, self.config), ids=self.pretrain_ids,
                             callbacks=lambda mask: [StopAfterEpoch(epochs)], finish=partial(_keep_rewind, ctx))])
        stage = ctx.layout.round(0)
        if ctx.run.finished_stage_metrics(stage) is not None:
            return []
        stage.create()
        dense_mask(ctx, self.config).save(stage.mask)
        rewind = ctx.load_rewind_point(self.rewind_at)
        start = partial(dense_job_start, ctx, self.config, rewind)
        return [StageJob(ctx, stage, start, start_step=self.round0_start_step(),
                         finish=partial(finish_round, self, 0, stage))]

    def round0_start_step(self) -> int:
        return self.rewind_at  # round 0 continues the schedule where the pretraining stopped

    def _round0_is_full_dense(self, dense) -> bool:
        return False  # round 0 continued from a subset's pretraining: tickets are judged against dense-reference


def _keep_rewind(ctx: TicketContext, trained: Trained) -> tuple[dict, IterationLedger]:
    """The pretraining's final state is the rewind point (saved before the stage is marked done)."""
    ctx.save_rewind_point({k: v.detach().cpu().clone() for k, v in trained.model.state_dict().items()})
    return {}, IterationLedger()


__all__ = ["DataDietPolicy", "pretrain_epochs"]
