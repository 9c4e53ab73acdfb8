"""The sanity-check controls of a ticket (Ma et al. 2021), as small registered variants.

A control trains another network on the ticket's examples (the full split,
or IMP's set when it runs on a manifest) with the ticket's recipe; it differs from the ticket only in how that network starts. Each
variant overrides :meth:`Control.start`.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
import torch.nn as nn

from pracset.mask import Mask
from pracset.registry import Registry
from pracset.runs import StageFiles
from pracset.sparse import StaticMask
from pracset.sparse.distributions import random_mask
from pracset.tickets.context import TicketContext
from pracset.tickets.packing import PackedStage, started


class Control:
    """A sanity-check control: ``start`` gives the network and the mask it trains with."""

    #: the key of its accuracy in a ticket's ``controls`` and the suffix of its stage directory
    key = ""
    stage_suffix = ""
    #: added to the recipe's seed, so that each control draws its own randomness
    seed_offset = 0

    def start(self, ctx: TicketContext, mask: Mask, rewind: dict) -> tuple[nn.Module, Mask]:
        raise NotImplementedError


class RandomReinit(Control):
    """The ticket's mask on a fresh random initialisation (the same architecture, another seed)."""

    key, stage_suffix, seed_offset = "reinit", "reinit", 1_000

    def start(self, ctx, mask, rewind):
        return ctx.rewound(mask, rewind, seed=ctx.train.seed + self.seed_offset), mask


class RandomMask(Control):
    """A random mask with the ticket's per-layer kept counts, on the ticket's rewind point."""

    key, stage_suffix, seed_offset = "random_mask", "random-mask", 2_000

    def start(self, ctx, mask, rewind):
        densities = {n: float(t.float().mean()) for n, t in mask.items()}
        generator = torch.Generator().manual_seed(ctx.train.seed + self.seed_offset)
        shuffled = random_mask(ctx.model(), densities, generator)
        return ctx.rewound(shuffled, rewind), shuffled


#: The controls every ticket gets with ``controls = true``.
CONTROLS: Registry[Control] = Registry("sanity-check control", {"reinit": RandomReinit(), "random-mask": RandomMask()})


def control_jobs(ctx: TicketContext, ticket: StageFiles, mask: Mask, rewind: dict,
                 ids: np.ndarray | None = None) -> list[PackedStage]:
    """The controls of ``ticket`` that have not started, as stages for a packed job (their models start when it
    trains); they train on the ticket's examples ``ids`` (``None``: the whole split)."""
    jobs = []
    for _, control in CONTROLS.items():
        stage = ctx.layout.control(ticket, control.stage_suffix)
        if not started(ctx, stage):
            jobs.append(PackedStage(ctx, stage, partial(control.start, ctx, mask, rewind), ids=ids))
    return jobs


def train_and_complete_controls(ctx: TicketContext, ticket: StageFiles, mask: Mask, rewind: dict,
                                start_step: int, ids: np.ndarray | None = None) -> dict[str, float]:
    """Train (or read back) every control of ``ticket``, one by one, on the ticket's examples ``ids`` (``None``:
    the whole split); returns each control's test accuracy by key.

    (The round loop trains the controls as packed jobs first where it packs: they are read back here.)
    """
    out = {}
    for _, control in CONTROLS.items():
        stage = ctx.layout.control(ticket, control.stage_suffix)
        metrics = ctx.run.finished_stage_metrics(stage)
        if metrics is None:
            model, control_mask = control.start(ctx, mask, rewind)
            metrics = ctx.train_and_complete_stage(stage, model, ids=ids, callbacks=[StaticMask(control_mask)],
                                                   start_step=start_step)
        out[control.key] = metrics["final"]["test_accuracy"]
    return out


def verdict(accuracy: float, dense_accuracy: float | None, controls: dict[str, float], tolerance: float, *,
            collapsed: bool = False) -> dict:
    """Whether a ticket matches dense within ``tolerance`` and beats every control by more than it.

    A ticket never matches a dense network that collapsed (or a missing one).
    """
    matches = dense_accuracy is not None and not collapsed and accuracy >= dense_accuracy - tolerance
    beats = accuracy > max(controls.values()) + tolerance
    return {"matches_dense": bool(matches), "beats_controls": bool(beats),
            "winning_ticket": bool(matches and beats), "tolerance": tolerance}
