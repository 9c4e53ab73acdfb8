"""The sanity-check controls of a ticket (Ma et al. 2021), as small registered variants.

A control trains another network on the full split with the ticket's
recipe; it differs from the ticket only in how that network starts. Each
variant overrides :meth:`Control.start`.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pracset.fileio import atomic_torch_save
from pracset.registry import Registry
from pracset.runs import StageFiles
from pracset.sparse import StaticMask
from pracset.sparse.distributions import random_mask
from pracset.sparse.mask import Mask
from pracset.tickets.context import TicketContext


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


def train_and_complete_controls(ctx: TicketContext, ticket: StageFiles, mask: Mask, rewind: dict,
                                start_step: int, *, pack: bool = False) -> dict[str, float]:
    """Train (or read back) every control of ``ticket``; returns each control's test accuracy by key.

    With ``pack``, controls none of which has started train together as one
    packed job (:func:`pracset.train.packed.fit_packed`); the others (and a
    resumed run's) one by one.
    """
    stages = {name: ctx.layout.control(ticket, control.stage_suffix) for name, control in CONTROLS.items()}
    fresh = all(ctx.run.finished_stage_metrics(s) is None and not s.checkpoint.exists() for s in stages.values())
    if pack and fresh and len(stages) > 1:
        _train_and_complete_packed(ctx, stages, mask, rewind, start_step)
    out = {}
    for _, control in CONTROLS.items():
        stage = ctx.layout.control(ticket, control.stage_suffix)
        metrics = ctx.run.finished_stage_metrics(stage)
        if metrics is None:
            model, control_mask = control.start(ctx, mask, rewind)
            metrics = ctx.train_and_complete_stage(stage, model, callbacks=[StaticMask(control_mask)],
                                                   start_step=start_step)
        out[control.key] = metrics["final"]["test_accuracy"]
    return out


def _train_and_complete_packed(ctx: TicketContext, stages: dict[str, StageFiles], mask: Mask, rewind: dict,
                               start_step: int) -> None:
    """Every control at once (one packed job), each then written and completed as its own stage."""
    from pracset.train.packed import fit_packed  # here: torch.func is needed only when packing

    starts = [CONTROLS.get(name).start(ctx, mask, rewind) for name in stages]
    models, masks = [m for m, _ in starts], [m for _, m in starts]
    train_loader, test_loader = ctx.loaders(None, ctx.train)
    for stage in stages.values():
        stage.directory.mkdir(parents=True, exist_ok=True)
    histories, ledgers = fit_packed(models, masks, train_loader, test_loader, ctx.train,
                                    stages=[s.name for s in stages.values()], start_step=start_step,
                                    metrics_logs=[s.metrics_log for s in stages.values()])
    for stage, model, history, ledger in zip(stages.values(), models, histories, ledgers):
        atomic_torch_save(model.state_dict(), stage.model)
        metrics = {"stage": stage.name, "final": dict(history[-1]), "history": history, "epochs": ctx.train.epochs,
                   "epochs_run": history[-1]["epoch"], "examples": train_loader.num_examples, "packed": True,
                   "ledger": ledger.to_dict()["stages"].get(stage.name, {})}
        ctx.run.complete_stage(stage, metrics, ledger)


def verdict(accuracy: float, dense_accuracy: float | None, controls: dict[str, float], tolerance: float, *,
            collapsed: bool = False) -> dict:
    """Whether a ticket matches dense within ``tolerance`` and beats every control by more than it.

    A ticket never matches a dense network that collapsed (or a missing one).
    """
    matches = dense_accuracy is not None and not collapsed and accuracy >= dense_accuracy - tolerance
    beats = accuracy > max(controls.values()) + tolerance
    return {"matches_dense": bool(matches), "beats_controls": bool(beats),
            "winning_ticket": bool(matches and beats), "tolerance": tolerance}
