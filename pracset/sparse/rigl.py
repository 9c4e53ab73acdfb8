"""RigL, the Rigged Lottery (Evci et al. 2020), step by step as google-research/rigl.

Where we differ from the official code, on purpose (the differences shared
with GraNet are listed in :mod:`pracset.sparse.base`):

* Skipped update steps: in the official code an update iteration does not
  advance the global step, so the run takes one extra mini-batch per update
  and the learning rate does not move on it. Here the Trainer's step counter
  counts mini-batches: an update step uses one of the run's mini-batches
  without an optimizer update (0.75% of the steps with the defaults) and the
  learning-rate schedule, indexed by mini-batch, moves on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pracset.config import option, require
from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.sparse.base import DynamicSparseConfig, DynamicSparseMethod, drop_and_grow
from pracset.sparse.schedules import rigl_drop_fraction, step_at_fraction
from pracset.train.loop import StepOutput, TrainState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RigLConfig(DynamicSparseConfig):
    """RigL (Evci et al. 2020) with the official code's defaults.

    The shared options keep :class:`~pracset.sparse.base.DynamicSparseConfig`'s
    defaults, which are RigL's.
    """

    alpha: float = option(0.3, "initial drop fraction, cosine-decayed to 0 at T_end")
    end_fraction: float = option(0.75, "T_end, the last mask update, as a fraction of the training steps")
    skip_update_step: bool = option(True, "skip the optimizer step on mask-update steps (as the official code)")

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0.0 <= self.alpha <= 1.0, f"alpha must lie in [0, 1], got {self.alpha}")
        require(0.0 < self.end_fraction <= 1.0, f"end_fraction must lie in (0, 1], got {self.end_fraction}")


class RigL(DynamicSparseMethod):
    """Rigged Lottery (Evci et al. 2020), step by step as google-research/rigl.

    * Start: a random mask with exact per-layer counts at the ``distribution``
      densities (ERK by default; the first layer dense and unmasked), drawn
      from a generator seeded with the training seed.
    * Every ``delta_t`` steps ``t`` from 0 while ``t <= T_end`` (``T_end =
      floor(end_fraction * total_steps)``), per layer: drop the
      ``floor(f_t * active)`` active weights of smallest magnitude, with
      ``f_t = alpha/2 (1 + cos(pi t / T_end))``, then grow as many among the
      inactive positions (just-dropped ones included) with the largest
      ``|dense gradient|`` on the current mini-batch. Connections that were
      inactive before the update start at zero with zero optimizer state;
      a dropped-and-regrown one keeps its value. Per-layer counts never change.
    * The optimizer step of an update step is skipped (``skip_update_step``).
    """

    name = "rigl"
    update_phase = "before"
    config_class = RigLConfig

    def __init__(self, config: RigLConfig = RigLConfig(), mask: Mask | None = None):
        super().__init__(config, mask)
        self.skip_update_step = config.skip_update_step
        self.end_step = 0
        self._active: dict[str, int] = {}

    def initial_mask(self, state: TrainState) -> Mask:
        return self.random_start(state, 1.0 - self.config.sparsity)

    def setup(self, state: TrainState) -> None:
        self.end_step = step_at_fraction(self.config.end_fraction, state.total_steps)
        self._active = {n: int(t.sum()) for n, t in self.mask.items()}  # constant: one sync per fit

    def drop_fraction(self, step: int) -> float:
        """``f_t`` at optimizer step ``step`` (0 once past ``T_end``)."""
        return rigl_drop_fraction(step, self.config.alpha, self.end_step)

    def should_update(self, step: int) -> bool:
        return step % self.config.delta_t == 0 and step <= self.end_step

    def update_mask(self, state: TrainState, out: StepOutput) -> None:
        fraction = self.drop_fraction(out.step)
        new_mask, new_connections = {}, {}
        for name, param in self._params.items():
            count = int(fraction * self._active[name])  # the official int() cast: floor
            if param.grad is None:
                raise ConfigError(f"{name} has no gradient: RigL grows connections by the dense gradient")
            new_mask[name], new_connections[name] = drop_and_grow(param, param.grad, self.mask[name], count)
        self.set_mask(Mask(new_mask), state.optimizer, new_connections)
        log.debug("rigl: mask update at step %d, drop fraction %.4f", out.step, fraction)


__all__ = ["RigL", "RigLConfig"]
