"""Sparse training methods as training callbacks: a static mask, RigL and GraNet.

A :class:`SparseMethod` owns a :class:`~pracset.sparse.mask.Mask` and keeps
the masked weights exactly zero: after every optimizer step it multiplies the
masked weights *and* every optimizer state tensor of the same shape (SGD's
``momentum_buffer``, AdamW's ``exp_avg`` / ``exp_avg_sq``) by the mask, with
one fused ``torch._foreach_mul_`` on the device and no host synchronisation.

Dynamic methods override two hooks: :meth:`SparseMethod.should_update` (a pure
function of the step, evaluated on the host) and
:meth:`SparseMethod.update_mask`. Because masked weights are held at zero
rather than removed from the network, autograd already gives the *dense*
gradient of the loss with respect to the whole weight tensor on the current
mini-batch in ``param.grad``, inactive positions included: RigL's and
GraNet's growth criteria read it there, at no extra cost.

Schedules are functions of the step only and ties are broken by the lowest
flat index, so a run is deterministic and a resumed run (the mask is saved in
the callback's ``state_dict``) continues exactly.

Where we differ from the official code, on purpose:

* Ties are broken by the lowest flat index; official RigL adds N(0, 1e-5)
  noise to the drop scores, official GraNet thresholds with ``>`` (which can
  remove a few more weights than asked on ties). Our counts are exact.
* Initial random masks keep exactly ``round(density * n)`` weights per layer
  (official RigL: ``n - floor(sparsity * n)``; official GraNet: Bernoulli
  draws, so only the expected count is right).
* RigL's skipped update steps: in the official code an update iteration does
  not advance the global step, so the run takes one extra mini-batch per
  update and the learning rate does not move on it. Here the Trainer's step
  counter counts mini-batches: an update step uses one of the run's
  mini-batches without an optimizer update (0.75% of the steps with the
  defaults) and the learning-rate schedule, indexed by mini-batch, moves on.
* GraNet's last pruning step: the official loop prunes while
  ``t // delta_t <= fin - 1`` and so stops at sparsity
  ``s_f + (s_i - s_f) / n**3``; we also prune at ``fin`` (Zhu & Gupta's
  ``t0 + n * delta_t``), so the run ends exactly at ``s_f``.
* GraNet's pruning window is given as fractions of training
  (``prune_start``, ``prune_end``) instead of epochs.
* Adam's per-tensor step count cannot be reset per element: a new connection
  starts with zero ``exp_avg`` / ``exp_avg_sq`` but the tensor's bias
  correction step (the official TF code has the same limitation).

Under torch.distributed (torchrun) every rank computes the same mask: the
weights are identical (DistributedDataParallel starts them equal and applies
the same all-reduced update) and ``param.grad``, read for growth, is already the
gradient averaged over all ranks' shards of the global batch (DDP all-reduces it
during ``backward``, before the callbacks run), so no further all-reduce of the
growth scores is needed. A cheap check (:func:`~pracset.distributed.check_same_mask`:
one all-reduce of per-tensor checksums at the start of a fit and after every
mask change, never on other steps) raises if the ranks ever disagree.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn as nn

from pracset.config import option, require, to_dict
from pracset.distributed import check_same_mask
from pracset.errors import ConfigError
from pracset.registry import Registry
from pracset.sparse.distributions import DISTRIBUTIONS, layer_shapes, random_mask
from pracset.sparse.mask import PRUNING_SCOPES, Mask, prunable_names
from pracset.sparse.pruning import magnitude_prune, smallest_k
from pracset.train.loop import Callback, StepOutput, TrainState

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- schedules

def rigl_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """RigL's cosine-annealed drop fraction ``alpha/2 * (1 + cos(pi * t / T_end))`` (0 after ``T_end``).

    This is ``tf.train.cosine_decay(alpha, t, T_end)`` as in the official code
    (mask updates begin at step 0).
    """
    if end_step <= 0 or step > end_step:
        return 0.0
    return 0.5 * alpha * (1.0 + math.cos(math.pi * step / end_step))


def cubic_sparsity(step: int, *, t0: int, n: int, delta_t: int, s_i: float, s_f: float) -> float:
    """Zhu & Gupta's gradual schedule ``s_f + (s_i - s_f) * (1 - (t - t0) / (n * delta_t)) ** 3``.

    ``s_i`` before ``t0``, ``s_f`` from ``t0 + n * delta_t`` on; ``n`` is the
    number of pruning intervals (``n = 0`` jumps to ``s_f`` at ``t0``).
    """
    if step < t0:
        return s_i
    if n <= 0:
        return s_f
    progress = min(1.0, (step - t0) / (n * delta_t))
    return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def cosine_regrow_fraction(step: int, total_steps: int, start: float = 0.5, end: float = 0.005) -> float:
    """GraNet's regeneration fraction: cosine from ``start`` at step 0 to ``end`` at ``total_steps``.

    The official ``CosineDecay`` (``CosineAnnealingLR`` with ``T_max`` = all
    training steps, ``eta_min`` = ``end``), stepped once per optimizer step.
    """
    progress = min(1.0, max(0.0, step / max(total_steps, 1)))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _steps(fraction: float, total_steps: int) -> int:
    """``floor(fraction * total_steps)``, robust to float error (0.29 * 100 is 28.999...)."""
    return int(math.floor(fraction * total_steps + 1e-9))


# ----------------------------------------------------------------------------- drop and grow

@torch.no_grad()
def drop_and_grow(weight: torch.Tensor, grad: torch.Tensor, keep: torch.Tensor,
                  count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the ``count`` active weights of smallest ``|weight|``, then grow ``count`` connections of largest ``|grad|``.

    Growth candidates are the positions inactive *after* the drop, so a
    connection dropped now may be grown back (it then keeps its value, as in
    the official code). Ties go to the lowest flat index. No host sync.

    Returns ``(new_keep, new_connections)``, both boolean and shaped like
    ``keep``; ``new_connections`` marks positions inactive before and active
    after (they are to start at zero with zero optimizer state).
    """
    flat_keep = keep.reshape(-1)
    if count <= 0:
        return keep.clone(), torch.zeros_like(keep)
    inf = torch.tensor(float("inf"), device=keep.device)
    # NaNs (a diverged run) sort above +inf and would make the selections pick excluded (+inf) positions, so
    # the active count would change: a NaN weight ranks as 0 (dropped first), a NaN gradient grows last.
    magnitude = torch.nan_to_num(weight.detach().reshape(-1).abs().float(), nan=0.0)
    drop_score = torch.where(flat_keep, magnitude, inf)
    after_drop = flat_keep & ~smallest_k(drop_score, count)
    # largest |grad| first = smallest -|grad|; active positions are not candidates
    growth = torch.nan_to_num(-grad.detach().reshape(-1).abs().float(), nan=torch.finfo(torch.float32).max)
    grow_score = torch.where(after_drop, inf, growth)
    new_keep = after_drop | smallest_k(grow_score, count)
    new_connections = new_keep & ~flat_keep
    return new_keep.view_as(keep), new_connections.view_as(keep)


# ----------------------------------------------------------------------------- base class

class SparseMethod(Callback):
    """A training callback that owns a :class:`Mask` and holds the masked weights at exactly zero.

    Subclasses override :meth:`should_update` and :meth:`update_mask` (and
    :meth:`initial_mask` when they build their own starting mask). On steps
    where :meth:`should_update` is true, :meth:`update_mask` runs before the
    optimizer step (``update_phase = "before"``, RigL) or after it and after
    the mask is enforced (``"after"``, GraNet). With
    ``skip_update_step = True`` the callback sets ``state.skip_step`` so that
    the Trainer skips the optimizer step of an update step (official RigL).
    """

    name = "sparse"
    update_phase = "before"
    config_class: type | None = None

    def __init__(self, mask: Mask | None = None):
        self.mask = mask
        self.skip_update_step = False
        self.total_steps = 0
        self._params: dict[str, nn.Parameter] = {}
        self._keep: dict[str, torch.Tensor] = {}

    # -- hooks for subclasses
    def initial_mask(self, state: TrainState) -> Mask:
        """The mask to start from when none was given (or loaded from a checkpoint)."""
        raise ConfigError(f"the {self.name} method needs a mask to start from")

    def setup(self, state: TrainState) -> None:
        """Called at the start of every fit, after the mask is bound to the model."""

    def check_schedule(self, total_steps: int) -> None:
        """Refuse a configuration whose update schedule cannot work in a run of ``total_steps`` steps.

        Called by :meth:`setup` and, before any output is written, by callers
        that know the run's length (``find_tickets``).
        """

    def should_update(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based) updates the mask. A host-side function of ``step`` only."""
        return False

    def update_mask(self, state: TrainState, out: StepOutput) -> None:
        """Change the mask (with :meth:`set_mask`); ``param.grad`` holds this step's dense gradient."""

    # -- Callback
    def on_fit_start(self, state: TrainState) -> None:
        self.total_steps = state.total_steps
        if self.skip_update_step and "skip_step" not in getattr(type(state), "__dataclass_fields__", {}):
            raise RuntimeError("this Trainer cannot skip an optimizer step (TrainState has no skip_step field); "
                               "set skip_update_step=False")
        if self.mask is None:
            self.mask = self.initial_mask(state)
        self.mask.check_model(state.model)
        self._bind(state.model)
        check_same_mask(self.mask, f"the {self.name} mask at the start of training")  # distributed only
        self.enforce(state.optimizer)
        self.setup(state)
        log.info("%s: %d masked tensors, sparsity %.4f", self.name, len(self.mask), self.mask.sparsity())

    def before_optimizer_step(self, state: TrainState, out: StepOutput) -> None:
        if self.update_phase == "before" and self.should_update(out.step):
            self.update_mask(state, out)
            if self.skip_update_step:
                state.skip_step = True

    def after_optimizer_step(self, state: TrainState, out: StepOutput) -> None:
        self.enforce(state.optimizer)
        if self.update_phase == "after" and self.should_update(out.step):
            self.update_mask(state, out)
            self.enforce(state.optimizer)

    def state_dict(self) -> dict:
        return {"method": self.name, "mask": None if self.mask is None else {n: t.cpu() for n, t in self.mask.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ConfigError(f"the checkpoint holds the state of sparse method {state.get('method')!r}, not {self.name!r}")
        config = getattr(self, "config", None)
        if config is not None and state.get("config") not in (None, to_dict(config)):
            log.warning("%s: resuming with another configuration than the checkpoint's: %s, saved %s",
                        self.name, to_dict(config), state["config"])
        if state.get("mask") is not None:
            self.mask = Mask(state["mask"])
            self._params, self._keep = {}, {}

    # -- mask handling
    def _bind(self, model: nn.Module) -> None:
        params = dict(model.named_parameters())
        self._params = {n: params[n] for n in self.mask}
        self.mask = Mask({n: t.to(self._params[n].device) for n, t in self.mask.items()})
        self._refresh_keep()

    def _refresh_keep(self) -> None:
        # float multipliers with the parameter's dtype and memory layout, for the fused multiply
        self._keep = {n: torch.empty_like(p, requires_grad=False).copy_(self.mask[n]) for n, p in self._params.items()}

    def _state_tensors(self, optimizer: torch.optim.Optimizer, param: nn.Parameter) -> list[torch.Tensor]:
        st = optimizer.state.get(param)
        if not st:
            return []
        return [v for v in st.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]

    @torch.no_grad()
    def enforce(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero the masked weights and their optimizer state (one fused multiply, no host sync)."""
        tensors, keeps = [], []
        for name, param in self._params.items():
            keep = self._keep[name]
            tensors.append(param)
            keeps.append(keep)
            if optimizer is not None:
                for buf in self._state_tensors(optimizer, param):
                    tensors.append(buf)
                    keeps.append(keep)
        if tensors:
            torch._foreach_mul_(tensors, keeps)

    @torch.no_grad()
    def set_mask(self, mask: Mask, optimizer: torch.optim.Optimizer | None = None,
                 new_connections: dict[str, torch.Tensor] | None = None) -> None:
        """Replace the mask; ``new_connections`` (name -> bool) are set to zero with zero optimizer state.

        The weights the new mask drops are zeroed by the next :meth:`enforce`.
        """
        if set(mask) != set(self._params):
            raise ConfigError("the new mask covers other tensors than the current one")
        check_same_mask(mask, f"the {self.name} mask")  # distributed only: the ranks must agree
        self.mask = mask
        self._refresh_keep()
        for name, new in (new_connections or {}).items():
            param = self._params[name]
            param.masked_fill_(new, 0.0)
            if optimizer is not None:
                for buf in self._state_tensors(optimizer, param):
                    buf.masked_fill_(new, 0.0)

    def masked_names(self, model: nn.Module, scope: str, dense_first: bool, dense_layers: Iterable[str]) -> list[str]:
        """The prunable weights that the mask covers: all of ``scope`` but the layers kept dense."""
        dense = list(dense_layers)
        if dense_first:
            dense.append(prunable_names(model, scope)[0])
        return prunable_names(model, scope, dense)


def _density_distribution(model: nn.Module, names: list[str], density: float, distribution: str,
                          erk_power: float) -> dict[str, float]:
    fn = DISTRIBUTIONS.get(distribution)
    kwargs = {"power": erk_power} if distribution == "erk" else {}
    return fn(layer_shapes(model, names), density, dense_first=False, **kwargs)


# ----------------------------------------------------------------------------- static mask

class StaticMask(SparseMethod):
    """A fixed mask (IMP tickets, random-mask and random-reinit controls): only enforced, never changed."""

    name = "static"

    def __init__(self, mask: Mask):
        super().__init__(mask)


# ----------------------------------------------------------------------------- RigL

@dataclass(frozen=True)
class RigLConfig:
    """RigL (Evci et al. 2020) with the official code's defaults."""

    sparsity: float = option(0.9, "fraction of the masked weights that are zero")
    distribution: str = option("erk", "layer-wise density distribution (uniform, erk)", metavar="NAME")
    erk_power: float = option(1.0, "ERK exponent: 1 = ERK, smaller is softer, 0 = uniform")
    dense_first: bool = option(True, "leave the first prunable layer dense and unmasked")
    dense_layers: tuple[str, ...] = option((), "further layers to leave dense and unmasked")
    scope: str = option("all", "prunable weights: all (conv and linear) or conv", choices=PRUNING_SCOPES)
    delta_t: int = option(100, "optimizer steps between mask updates (Delta T)")
    alpha: float = option(0.3, "initial drop fraction, cosine-decayed to 0 at T_end")
    end_fraction: float = option(0.75, "T_end, the last mask update, as a fraction of the training steps")
    skip_update_step: bool = option(True, "skip the optimizer step on mask-update steps (as the official code)")

    def __post_init__(self) -> None:
        require(0.0 <= self.sparsity < 1.0, f"sparsity must lie in [0, 1), got {self.sparsity}")
        require(self.distribution in DISTRIBUTIONS, f"unknown density distribution {self.distribution!r}; "
                f"valid names: {', '.join(DISTRIBUTIONS.names())}")
        require(self.scope in PRUNING_SCOPES, f"scope must be one of {', '.join(PRUNING_SCOPES)}, got {self.scope!r}")
        require(self.delta_t > 0, f"delta_t must be a positive integer, got {self.delta_t}")
        require(0.0 <= self.alpha <= 1.0, f"alpha must lie in [0, 1], got {self.alpha}")
        require(0.0 < self.end_fraction <= 1.0, f"end_fraction must lie in (0, 1], got {self.end_fraction}")


class RigL(SparseMethod):
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
        super().__init__(mask)
        self.config = config
        self.skip_update_step = config.skip_update_step
        self.end_step = 0
        self._active: dict[str, int] = {}

    def initial_mask(self, state: TrainState) -> Mask:
        c = self.config
        names = self.masked_names(state.model, c.scope, c.dense_first, c.dense_layers)
        densities = _density_distribution(state.model, names, 1.0 - c.sparsity, c.distribution, c.erk_power)
        log.info("rigl: initial %s densities %s", c.distribution, {n: round(d, 4) for n, d in densities.items()})
        generator = torch.Generator().manual_seed(state.config.seed)
        return random_mask(state.model, densities, generator)

    def setup(self, state: TrainState) -> None:
        self.end_step = _steps(self.config.end_fraction, state.total_steps)
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

    def state_dict(self) -> dict:
        return {**super().state_dict(), "config": to_dict(self.config)}


# ----------------------------------------------------------------------------- GraNet

@dataclass(frozen=True)
class GraNetConfig:
    """GraNet (Liu et al. 2021) with the official code's defaults (Shiweiliuiiiiiii/GraNet)."""

    sparsity: float = option(0.95, "final sparsity s_f of the masked weights (official --final-density 0.05)")
    init_sparsity: float = option(0.5, "initial sparsity s_i: 0 = dense-to-sparse, 0.5 = the official sparse-to-sparse default")
    distribution: str = option("erk", "layer-wise density distribution of the initial mask (uniform, erk)", metavar="NAME")
    erk_power: float = option(1.0, "ERK exponent: 1 = ERK, smaller is softer, 0 = uniform")
    dense_first: bool = option(False, "leave the first prunable layer dense and unmasked (official --rm-first, off)")
    dense_layers: tuple[str, ...] = option((), "further layers to leave dense and unmasked")
    scope: str = option("all", "prunable weights: all (conv and linear) or conv", choices=PRUNING_SCOPES)
    delta_t: int = option(100, "optimizer steps between updates (official code default 100; the README's CIFAR runs use 1000)")
    prune_start: float = option(0.0, "t0, start of gradual pruning, as a fraction of the training steps")
    prune_end: float = option(110 / 160, "t_f, end of gradual pruning, as a fraction of the training steps (110 of 160 epochs)")
    regrow_fraction: float = option(0.5, "initial neuroregeneration fraction r (official --prune-rate)")
    regrow_fraction_min: float = option(0.005, "final regeneration fraction, reached by cosine decay at the end of training")

    def __post_init__(self) -> None:
        require(0.0 <= self.init_sparsity <= self.sparsity < 1.0,
                f"sparsities must satisfy 0 <= init_sparsity <= sparsity < 1, got {self.init_sparsity} and {self.sparsity}")
        require(self.distribution in DISTRIBUTIONS, f"unknown density distribution {self.distribution!r}; "
                f"valid names: {', '.join(DISTRIBUTIONS.names())}")
        require(self.scope in PRUNING_SCOPES, f"scope must be one of {', '.join(PRUNING_SCOPES)}, got {self.scope!r}")
        require(self.delta_t > 0, f"delta_t must be a positive integer, got {self.delta_t}")
        require(0.0 <= self.prune_start < self.prune_end <= 1.0,
                f"need 0 <= prune_start < prune_end <= 1, got {self.prune_start} and {self.prune_end}")
        require(0.0 <= self.regrow_fraction_min <= self.regrow_fraction < 1.0,
                f"need 0 <= regrow_fraction_min <= regrow_fraction < 1, got {self.regrow_fraction_min} and {self.regrow_fraction}")


class GraNet(SparseMethod):
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
        super().__init__(mask)
        self.config = config
        self.start_step = 0
        self.first_iter = 0
        self.final_iter = 0
        self._grads: dict[str, torch.Tensor] = {}

    def initial_mask(self, state: TrainState) -> Mask:
        c = self.config
        names = self.masked_names(state.model, c.scope, c.dense_first, c.dense_layers)
        if c.init_sparsity == 0.0:
            params = dict(state.model.named_parameters())
            return Mask({n: torch.ones_like(params[n], dtype=torch.bool) for n in names})
        densities = _density_distribution(state.model, names, 1.0 - c.init_sparsity, c.distribution, c.erk_power)
        log.info("granet: initial %s densities %s", c.distribution, {n: round(d, 4) for n, d in densities.items()})
        generator = torch.Generator().manual_seed(state.config.seed)
        return random_mask(state.model, densities, generator)

    def _window(self, total_steps: int) -> tuple[int, int, int]:
        """(first pruning step, first and last update index) of a run of ``total_steps`` steps."""
        c = self.config
        start_step = _steps(c.prune_start, total_steps)
        return start_step, start_step // c.delta_t, _steps(c.prune_end, total_steps) // c.delta_t

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
                mask = magnitude_prune(state.model, mask, (kept - target) / kept, scope="global")
            log.debug("granet: step %d pruned to sparsity %.4f (%d kept)", t, sparsity, min(target, kept))
        fraction = self.regrow_fraction(t)
        new_mask, new_connections = {}, {}
        for name, param in self._params.items():
            count = math.ceil(fraction * int(mask[name].sum()))  # the official math.ceil
            new_mask[name], new_connections[name] = drop_and_grow(param, self._grads[name], mask[name], count)
        self._grads = {}
        self.set_mask(Mask(new_mask), state.optimizer, new_connections)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "config": to_dict(self.config)}


#: Sparse training methods by name. ``static`` takes a mask; ``rigl`` and
#: ``granet`` take their ``config_class`` (and optionally a starting mask).
SPARSE_METHODS: Registry[type[SparseMethod]] = Registry("sparse training method", {
    "static": StaticMask,
    "rigl": RigL,
    "granet": GraNet,
})

__all__ = ["GraNet", "GraNetConfig", "RigL", "RigLConfig", "SPARSE_METHODS", "SparseMethod", "StaticMask",
           "cosine_regrow_fraction", "cubic_sparsity", "drop_and_grow", "rigl_drop_fraction"]
