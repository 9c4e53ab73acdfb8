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

from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.registry import Registry
from pracset.runs import StageFiles
from pracset.sparse.distributions import random_mask
from pracset.tickets.context import RewindPoint, TicketContext
from pracset.tickets.stages import StageJob


class Control:
    """A sanity-check control: ``start`` gives the network and the mask it trains with."""

    #: the key of its accuracy in a ticket's ``controls`` and the suffix of its stage directory
    key = ""
    stage_suffix = ""
    #: added to the recipe's seed, so that each control draws its own randomness
    seed_offset = 0

    def start(self, ctx: TicketContext, mask: Mask, rewind: RewindPoint) -> tuple[nn.Module, Mask]:
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


def control_jobs(ctx: TicketContext, ticket: StageFiles, mask: Mask, rewind: RewindPoint, *, start_step: int,
                 ids: np.ndarray | None = None) -> list[StageJob]:
    """Every control of ``ticket`` as a job (each model starts when it trains): on the ticket's examples ``ids``
    (``None``: the whole split), with its schedule from ``start_step`` as the ticket's."""
    return [StageJob(ctx, ctx.layout.control(ticket, control.stage_suffix), partial(control.start, ctx, mask, rewind),
                     ids=ids, start_step=start_step) for _, control in CONTROLS.items()]


def control_accuracies(ctx: TicketContext, ticket: StageFiles) -> dict[str, float]:
    """Every finished control of ``ticket``: its test accuracy by key."""
    out = {}
    for _, control in CONTROLS.items():
        metrics = ctx.run.finished_stage_metrics(ctx.layout.control(ticket, control.stage_suffix))
        if metrics is None:
            raise ConfigError(f"the {control.key} control of {ticket.name} has not trained")
        out[control.key] = metrics.test_accuracy
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
