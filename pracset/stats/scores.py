"""EL2N and GraNd (Paul et al. 2021, "Deep Learning on a Data Diet"): per-example scores from short extra runs.

Both are averaged over ``runs`` (K) independent networks, each with its own
initialisation and data order (the recipe's seed plus ``k``):

``el2n``
    ``|| softmax(f(x)) - onehot(y) ||_2`` of the network after ``el2n_epoch``
    epochs of the recipe's own schedule (the run is stopped there, not a
    shorter schedule), in eval mode on the unaugmented example.
``grand``
    ``|| grad_theta loss(f(x), y) ||_2`` over every trainable parameter, at
    initialisation (``grand_epoch = 0``, Paul et al.'s choice) or after that
    many epochs; per-example gradients with ``torch.func`` (``vmap`` of
    ``grad``, ``grand_batch`` examples at a time), in eval mode (BatchNorm uses
    its running statistics, so one example's gradient does not depend on the
    others in its batch).

Their cost is real training and gradient work: each run's training steps
are booked in the ledger under ``SCORE-run-K`` (``train``) and each scoring
pass over the training split as probe examples, so a comparison charges them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from pracset.ledger import IterationLedger
from pracset.train.config import TrainConfig
from pracset.train.loop import Trainer
from pracset.train.step import Callback, TrainState

log = logging.getLogger(__name__)

#: The scores this module computes, with what a high value means.
EXTRA_SCORES = ("el2n", "grand")


class StopAfterEpoch(Callback):
    """Ends a run after ``epochs`` epochs of its own schedule (the schedule is not shortened)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        if state.epoch >= self.epochs:
            state.stop_requested = True


@torch.no_grad()
def el2n(model: nn.Module, loader) -> torch.Tensor:
    """EL2N of every example of ``loader`` (in its order): the L2 norm of the softmax minus the one-hot label."""
    was = model.training
    model.eval()
    out = []
    for batch in loader:
        probabilities = F.softmax(model(batch.x).float(), dim=1)
        probabilities[torch.arange(len(batch.y), device=batch.y.device), batch.y] -= 1.0
        out.append(probabilities.norm(dim=1))
    model.train(was)
    return torch.cat(out)


def grand(model: nn.Module, loader, *, chunk: int = 64) -> torch.Tensor:
    """GraNd of every example of ``loader`` (in its order): the L2 norm of its loss gradient over every trainable
    parameter, from per-example gradients (``torch.func``: ``vmap`` of ``grad``, ``chunk`` examples at a time)."""
    was = model.training
    model.eval()
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def loss(p, x, y):
        logits = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(logits.float(), y.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    out = []
    for batch in loader:
        for start in range(0, len(batch.y), chunk):
            grads = per_example(params, batch.x[start:start + chunk], batch.y[start:start + chunk])
            squared = sum(g.flatten(1).float().pow(2).sum(1) for g in grads.values())
            out.append(squared.sqrt())
    model.train(was)
    return torch.cat(out)


@dataclass(frozen=True)
class ScoreRun:
    """What one of the K runs needs: a fresh model of seed ``seed``, trained ``epochs`` epochs (0: not at all)."""

    seed: int
    epochs: int


def averaged_scores(name: str, runs: int, epochs: int, *, base_seed: int,
                    train_run: Callable[[ScoreRun, IterationLedger, str], nn.Module],
                    score: Callable[[nn.Module], torch.Tensor], num_examples: int,
                    ledger: IterationLedger) -> np.ndarray:
    """``score`` (per example, in id order) averaged over ``runs`` networks; ``train_run`` trains run k's network
    (seed ``base_seed + k``) for ``epochs`` epochs, booking its steps in ``ledger`` under its stage name; each
    scoring pass is booked as ``num_examples`` probe examples."""
    total = None
    for k in range(runs):
        stage = f"{name}-run-{k}"
        model = train_run(ScoreRun(base_seed + k, epochs), ledger, stage)
        values = score(model).double()
        ledger.add(stage, "probe", examples=num_examples, batches=1)
        total = values if total is None else total + values
        log.info("%s: run %d of %d scored", name, k + 1, runs)
    return (total / runs).cpu().numpy()


def extra_scores(names, *, runs: int, el2n_epoch: int, grand_epoch: int, base_seed: int,
                 new_model: Callable[[int], nn.Module], train_loader: Callable[[int], object], score_loader,
                 config: TrainConfig, device: torch.device, ledger: IterationLedger) -> dict[str, np.ndarray]:
    """The scores ``names`` (of :data:`EXTRA_SCORES`) of every training example, in id order, each averaged over
    ``runs`` networks: ``new_model(seed)`` trained on ``train_loader(seed)`` with the recipe ``config`` (its own
    schedule, stopped after the score's epoch), scored over ``score_loader`` (the split in id order, without
    augmentation). Every training step and scoring pass is booked in ``ledger``."""
    def train_run(run: ScoreRun, book: IterationLedger, stage: str) -> nn.Module:
        model = new_model(run.seed).to(device)
        if run.epochs > 0:
            Trainer(replace(config, seed=run.seed), ledger=book, stage=stage).fit(
                model, train_loader(run.seed), None, [StopAfterEpoch(run.epochs)])
        return model

    how = {"el2n": (el2n_epoch, lambda model: el2n(model, score_loader)),
           "grand": (grand_epoch, lambda model: grand(model, score_loader))}
    out = {}
    for name in names:
        epochs, score = how[name]
        out[name] = averaged_scores(name, runs, epochs, base_seed=base_seed, train_run=train_run, score=score,
                                    num_examples=score_loader.num_examples, ledger=ledger)
    return out


__all__ = ["EXTRA_SCORES", "ScoreRun", "StopAfterEpoch", "averaged_scores", "el2n", "extra_scores", "grand"]
