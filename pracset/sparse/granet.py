"""GraNet, gradual pruning with zero-cost neuroregeneration (Liu et al. 2021), as Shiweiliuiiiiiii/GraNet.

Where we differ from the official code, on purpose (the differences shared
with RigL are listed in :mod:`pracset.sparse.base`):

* The last pruning step: the official loop prunes while
  ``t // delta_t <= fin - 1`` and so stops at sparsity
  ``s_f + (s_i - s_f) / n**3``; we also prune at ``fin`` (Zhu & Gupta's
  ``t0 + n * delta_t``), so the run ends exactly at ``s_f``.
* The pruning window is given as fractions of training (``prune_start``,
  ``prune_end``) instead of epochs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from pracset.config import option, require
from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.sparse.base import DynamicSparseConfig, DynamicSparseMethod, drop_and_grow
from pracset.sparse.pruning import magnitude_prune
from pracset.sparse.schedules import cosine_regrow_fraction, cubic_sparsity, step_at_fraction
from pracset.train.loop import StepOutput, TrainState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GraNetConfig(DynamicSparseConfig):
    """GraNet (Liu et al. 2021) with the official code's defaults (Shiweiliuiiiiiii/GraNet)."""

    # The shared options whose default or help text differs from RigL's (DynamicSparseConfig's).
    sparsity: float = option(0.95, "final sparsity s_f of the masked weights (official --final-density 0.05)")
    distribution: str = option("erk", "layer-wise density distribution of the initial mask (uniform, erk)", metavar="NAME")
    dense_first: bool = option(False, "leave the first prunable layer dense and unmasked (official --rm-first, off)")
    delta_t: int = option(100, "optimizer steps between updates (official code default 100; the README's CIFAR runs use 1000)")
    # GraNet's own options
    init_sparsity: float = option(0.5, "initial sparsity s_i: 0 = dense-to-sparse, 0.5 = the official sparse-to-sparse default")
    prune_start: float = option(0.0, "t0, start of gradual pruning, as a fraction of the training steps")
    prune_end: float = option(110 / 160, "t_f, end of gradual pruning, as a fraction of the training steps (110 of 160 epochs)")
    regrow_fraction: float = option(0.5, "initial neuroregeneration fraction r (official --prune-rate)")
    regrow_fraction_min: float = option(0.005, "final regeneration fraction, reached by cosine decay at the end of training")

    def __post_init__(self) -> None:
        # First: this rule covers the shared sparsity range, and its message names both sparsities.
        require(0.0 <= self.init_sparsity <= self.sparsity < 1.0,
                f"sparsities must satisfy 0 <= init_sparsity <= sparsity < 1, got {self.init_sparsity} and {self.sparsity}")
        super().__post_init__()
        require(0.0 <= self.prune_start < self.prune_end <= 1.0,
                f"need 0 <= prune_start < prune_end <= 1, got {self.prune_start} and {self.prune_end}")
        require(0.0 <= self.regrow_fraction_min <= self.regrow_fraction < 1.0,
                f"need 0 <= regrow_fraction_min <= regrow_fraction < 1, got {self.regrow_fraction_min} and {self.regrow_fraction}")


class GraNet(DynamicSparseMethod):
    """Gradual pruning with zero-cost neuroregeneration (Liu et al. 2021), as the official code.

    With ``t`` the number of completed optimizer steps (the official counter),
    at every ``t`` with ``t % delta_t == 0`` and ``t >= t0``, *after* the
    optimizer step and the mask are applied:

    1. Gradual pruning, while ``ini <= t // delta_t <= fin`` (``ini = t0 //
       delta_t``, ``fin = t_f // delta_t``): global magnitude pruning of the
       masked weights down to exactly ``round((1 - s_t) * N)`` kept, with
       ``s_t = cubic_sparsity(t, t0=ini*delta_t, n=fin-ini, ...)``.
    2. Neuroregeneration, until the end of training: per layer drop the
       ``ceil(r_t * active)`` active weights of smallest magnitude and grow as
       many inactive ones (just-dropped included) with the largest
       ``|dense gradient|`` of this step's mini-batch, ``r_t`` cosine-decayed
       from ``regrow_fraction`` to ``regrow_fraction_min`` over training.
       New connections start at zero with zero optimizer state.

    The initial mask is all ones (``init_sparsity = 0``) or random with exact
    per-layer counts at ``distribution`` densities.
    """

    name = "granet"
    update_phase = "after"
    config_class = GraNetConfig

    def __init__(self, config: GraNetConfig = GraNetConfig(), mask: Mask | None = None):
        super().__init__(config, mask)
        self.start_step = 0
        self.first_iter = 0
        self.final_iter = 0
        self._grads: dict[str, torch.Tensor] = {}

    def initial_mask(self, state: TrainState) -> Mask:
        if self.config.init_sparsity == 0.0:
            params = dict(state.model.named_parameters())
            return Mask({n: torch.ones_like(params[n], dtype=torch.bool) for n in self.masked_names(state.model)})
        return self.random_start(state, 1.0 - self.config.init_sparsity)

    def _window(self, total_steps: int) -> tuple[int, int, int]:
        """(first pruning step, first and last update index) of a run of ``total_steps`` steps."""
        c = self.config
        start_step = step_at_fraction(c.prune_start, total_steps)
        return start_step, start_step // c.delta_t, step_at_fraction(c.prune_end, total_steps) // c.delta_t

    def check_schedule(self, total_steps: int) -> None:
        c = self.config
        _, first_iter, final_iter = self._window(total_steps)
        if final_iter <= first_iter:
            raise ConfigError(f"the pruning window of {total_steps} training steps "
                              f"[{c.prune_start}, {c.prune_end}] holds no update every delta_t={c.delta_t} steps")

    def setup(self, state: TrainState) -> None:
        c = self.config
        self.check_schedule(state.total_steps)
        self.start_step, self.first_iter, self.final_iter = self._window(state.total_steps)
        if round((1.0 - c.sparsity) * self.mask.num_weights) < 1:
            raise ConfigError(f"sparsity {c.sparsity} leaves no weight of {self.mask.num_weights}")

    def target_sparsity(self, t: int) -> float:
        """``s_t`` after ``t`` completed steps."""
        c = self.config
        return cubic_sparsity(t, t0=self.first_iter * c.delta_t, n=self.final_iter - self.first_iter,
                              delta_t=c.delta_t, s_i=c.init_sparsity, s_f=c.sparsity)

    def regrow_fraction(self, t: int) -> float:
        """``r_t`` after ``t`` completed steps."""
        c = self.config
        return cosine_regrow_fraction(t, self.total_steps, c.regrow_fraction, c.regrow_fraction_min)

    def should_update(self, step: int) -> bool:
        t = step + 1  # the official counter: completed steps
        return t % self.config.delta_t == 0 and t >= self.start_step

    def before_optimizer_step(self, state: TrainState, out: StepOutput) -> None:
        if self.should_update(out.step):  # keep this step's dense gradient for the growth after the step
            self._grads = {}
            for name, param in self._params.items():
                if param.grad is None:
                    raise ConfigError(f"{name} has no gradient: GraNet grows connections by the dense gradient")
                self._grads[name] = param.grad.detach().abs()

    @torch.no_grad()
    def update_mask(self, state: TrainState, out: StepOutput) -> None:
        t = out.step + 1
        mask = self.mask
        if self.first_iter <= t // self.config.delta_t <= self.final_iter:
            sparsity = self.target_sparsity(t)
            target = round((1.0 - sparsity) * mask.num_weights)
            kept = mask.num_kept()
            if target < kept:
                mask = magnitude_prune(state.model, mask, (kept - target) / kept, ranking="global")
            log.debug("granet: step %d pruned to sparsity %.4f (%d kept)", t, sparsity, min(target, kept))
        fraction = self.regrow_fraction(t)
        new_mask, new_connections = {}, {}
        for name, param in self._params.items():
            count = math.ceil(fraction * int(mask[name].sum()))  # the official math.ceil
            new_mask[name], new_connections[name] = drop_and_grow(param, self._grads[name], mask[name], count)
        self._grads = {}
        self.set_mask(Mask(new_mask), state.optimizer, new_connections)


__all__ = ["GraNet", "GraNetConfig"]
