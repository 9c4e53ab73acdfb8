"""Full-data IMP of several runs in lockstep: each round of every seed, with its controls, as one packed job.

Full-data IMP rounds of different seeds share everything a packed job needs
(the recipe, the step count, the rewind step); only the initialisation and
the data order differ, and :func:`~pracset.train.packed.fit_packed` gives
each model its own loader. So round ``r`` of S seeds and the 2 sanity-check
controls of each (which train on the round's own mask, from the same rewind
step) are ``3 S`` models trained as one network (in jobs of at most
:data:`~pracset.tickets.packing.MAX_MODELS_PER_JOB`): on a GPU, about the
kernel launches of one.

:func:`train_imp_rounds_packed` only trains and completes stages, writing
every file exactly as the one-by-one loop would; :func:`~pracset.tickets.rounds.run_rounds`
then finds them done and writes each run's rows. A run any of whose stages
was started alone (a checkpoint from a killed one-by-one run) leaves the
lockstep and finishes one by one.

PrAC-IMP cannot run in lockstep: each seed's PrAC sets differ in size, so
its rounds differ in step count. Its full-split tickets and their controls
are packed instead, all rounds together, once its search is done
(:func:`~pracset.tickets.rounds.run_rounds`).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Sequence

from pracset.mask import Mask
from pracset.tickets.config import IMPConfig
from pracset.tickets.context import TicketContext
from pracset.tickets.controls import CONTROLS, control_jobs
from pracset.tickets.packing import (PackedStage, chunks, complete_packed, rewound_with_mask, train_and_complete_packed,
                                     train_packed)
from pracset.tickets.rounds import RoundPolicy, dense_mask, prune_next

log = logging.getLogger(__name__)


def _stages(ctx: TicketContext, config: IMPConfig):
    layout = ctx.layout
    for r in range(config.num_rounds + 1):
        yield layout.round(r)
        if config.controls and r > 0:
            for _, control in CONTROLS.items():
                yield layout.control(layout.round(r), control.stage_suffix)


def _initialised(ctx: TicketContext, mask: Mask):
    return ctx.model(), mask


def _started_alone(ctx: TicketContext, config: IMPConfig) -> bool:
    return any(stage.checkpoint.exists() for stage in _stages(ctx, config))


def train_imp_rounds_packed(contexts: Sequence[TicketContext], config: IMPConfig) -> None:
    """Train (and complete) every stage of full-data IMP runs ``contexts`` as packed jobs, round by round.

    ``contexts`` are claimed run directories of the same recipe, but for the
    seed. Stages already done are skipped; the controls of a round train
    with it when ``config.controls``.
    """
    live = [ctx for ctx in contexts if not _started_alone(ctx, config)]
    if not live:
        return
    log.info("full-data IMP of %d run(s) in lockstep: %d round(s)%s as packed jobs", len(live), config.num_rounds,
             " with their controls" if config.controls else "")
    dense_jobs = []
    for ctx in live:
        stage = ctx.layout.round(0)
        if ctx.run.finished_stage_metrics(stage) is None:
            base = dense_mask(ctx, config)
            stage.create()
            base.save(stage.mask)
            dense_jobs.append(PackedStage(ctx, stage, partial(_initialised, ctx, base)))
    rewind_step = RoundPolicy(live[0], config).rewind_step(None)
    for chunk in chunks(dense_jobs):
        models, run = train_packed(chunk, start_step=0, snapshot_step=rewind_step)
        for job, model, history, ledger, snapshot in zip(chunk, models, run.histories, run.ledgers, run.snapshots):
            job.ctx.save_rewind_point(snapshot)  # before the round is marked done, as the one-by-one loop does
            complete_packed(job, model, history, ledger, packed_with=len(chunk))
    rewinds = [ctx.load_rewind_point() for ctx in live]
    start_step = RoundPolicy(live[0], config).start_step()
    for r in range(1, config.num_rounds + 1):
        jobs: list[PackedStage] = []
        for ctx, rewind in zip(live, rewinds):
            stage = ctx.layout.round(r)
            if ctx.run.finished_stage_metrics(stage) is None:
                mask = prune_next(ctx, ctx.layout.round(r - 1), config)
                mask.save(stage.mask)
                jobs.append(PackedStage(ctx, stage, partial(rewound_with_mask, ctx, mask, rewind)))
            else:
                mask = Mask.load(stage.mask)
            if config.controls:
                jobs += control_jobs(ctx, stage, mask, rewind)
        if jobs:
            train_and_complete_packed(jobs, start_step=start_step)
