"""Sparse training in your own loop: one call after ``optimizer.step()``.

:class:`SparseStepper` drives any :class:`~pracset.sparse.base.SparseMethod`
(RigL, GraNet, a fixed mask) outside pracset's Trainer, the way rigl-torch's
scheduler plugs into a user's loop::

    stepper = SparseStepper(model, optimizer, RigL(RigLConfig(sparsity=0.9)), total_steps=epochs * len(loader))
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        stepper.step()        # holds the masked weights at zero; updates the mask on RigL's schedule

The method sees the same hooks as in the Trainer, in the same order, with one
difference: the Trainer skips the optimizer step of a RigL mask-update step
(the official code does), while here the update has already been applied when
``step()`` runs; the mask change then reads the updated weights and this
step's gradient, still in ``param.grad`` (do not zero the gradients between
``optimizer.step()`` and ``step()``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.sparse.base import SparseMethod, StaticMask
from pracset.train.config import TrainConfig
from pracset.train.loop import StepOutput, TrainState


class SparseStepper:
    """Applies a sparse training method to ``model`` in a loop you write.

    Args:
        model: the network (its weights are masked in place at once).
        optimizer: its optimizer (the masked weights' momentum / Adam moments are zeroed too).
        method: a :class:`SparseMethod` (``RigL(...)``, ``GraNet(...)``,
            ``StaticMask(mask)``) or a :class:`Mask`, which is held fixed.
        total_steps: how many optimizer steps the run takes (RigL's and GraNet's schedules depend on it).
        seed: seeds the random starting mask of RigL.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, method: SparseMethod | Mask, *,
                 total_steps: int, seed: int = 0):
        if isinstance(method, Mask):
            method = StaticMask(method)
        if not isinstance(method, SparseMethod):
            raise ConfigError(f"method must be a SparseMethod or a Mask, got {type(method).__name__}")
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
        method.skip_update_step = False  # the optimizer step has happened by the time step() runs
        self.method = method
        self.state = TrainState(model, optimizer, None, TrainConfig(seed=seed), total_steps, total_steps)
        method.on_fit_start(self.state)
        self._empty = torch.empty(0, dtype=torch.int64)

    @property
    def mask(self) -> Mask:
        """The current mask."""
        return self.method.mask

    @property
    def steps(self) -> int:
        """How many times :meth:`step` has run."""
        return self.state.step

    def step(self) -> None:
        """Call once after every ``optimizer.step()``: re-masks, and changes the mask when the method's schedule says so."""
        out = StepOutput(self._empty, self._empty, self._empty, self._empty, self.state.step, 0)
        self.method.before_optimizer_step(self.state, out)
        self.state.skip_step = False
        self.method.after_optimizer_step(self.state, out)
        self.state.step += 1


__all__ = ["SparseStepper"]
