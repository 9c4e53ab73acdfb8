"""The sparse-training callback base: masked weights held at exactly zero, and the shared parts of RigL and GraNet.

A :class:`SparseMethod` owns a :class:`~pracset.mask.Mask` and keeps
the masked weights exactly zero: after every optimizer step it multiplies the
masked weights *and* every optimizer state tensor of the same shape (SGD's
``momentum_buffer``, AdamW's ``exp_avg`` / ``exp_avg_sq``) by the mask, with
one fused ``torch._foreach_mul_`` on the device and no host synchronisation.

Dynamic methods (:class:`DynamicSparseMethod`: RigL in
:mod:`pracset.sparse.rigl`, GraNet in :mod:`pracset.sparse.granet`) override
two hooks: :meth:`SparseMethod.should_update` (a pure function of the step,
evaluated on the host) and :meth:`SparseMethod.update_mask`. Because masked
weights are held at zero rather than removed from the network, autograd
already gives the *dense* gradient of the loss with respect to the whole
weight tensor on the current mini-batch in ``param.grad``, inactive positions
included: RigL's and GraNet's growth criteria read it there, at no extra cost.

Schedules (:mod:`pracset.sparse.schedules`) are functions of the step only
and ties are broken by the lowest flat index, so a run is deterministic and a
resumed run (the mask is saved in the callback's ``state_dict``) continues
exactly.

Where both methods differ from the official code, on purpose (the
differences of one method are listed in its own module):

* Ties are broken by the lowest flat index; official RigL adds N(0, 1e-5)
  noise to the drop scores, official GraNet thresholds with ``>`` (which can
  remove a few more weights than asked on ties). Our counts are exact.
* Initial random masks keep exactly ``round(density * n)`` weights per layer
  (official RigL: ``n - floor(sparsity * n)``; official GraNet: Bernoulli
  draws, so only the expected count is right).
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
from dataclasses import dataclass

import torch
import torch.nn as nn

from pracset.config import ConfigBase, option, require, to_dict
from pracset.distributed import check_same_mask
from pracset.errors import ConfigError
from pracset.mask import PRUNABLE_CHOICES, Mask, optimizer_state_like, prunable_names, zero_masked
from pracset.sparse.distributions import DISTRIBUTIONS, layer_shapes, random_mask
from pracset.sparse.pruning import smallest_k
from pracset.train.loop import Callback, StepOutput, TrainState

log = logging.getLogger(__name__)


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
        log.debug("%s: %d masked tensors, sparsity %.4f", self.name, len(self.mask), self.mask.sparsity())

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

    def capturable(self, step: int) -> bool:
        """A step that changes no mask may replay the captured CUDA graph: its only work is :meth:`graph_work`."""
        return not self.should_update(step)

    def graph_work(self, state: TrainState) -> None:
        """The mask multiply of :meth:`after_optimizer_step`, recorded into the CUDA graph."""
        self.enforce(state.optimizer)

    def state_dict(self) -> dict:
        return {"method": self.name, "mask": None if self.mask is None else {n: t.cpu() for n, t in self.mask.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ConfigError(f"the checkpoint holds the state of sparse method {state.get('method')!r}, not {self.name!r}")
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
        # float multipliers with the parameter's dtype and memory layout, for the fused multiply; rewritten in
        # place when they fit, so that a captured CUDA graph (pracset.train.graphs) multiplies by the new mask
        for name, param in self._params.items():
            keep = self._keep.get(name)
            if keep is None or (keep.shape, keep.dtype, keep.device, keep.stride()) != (
                    param.shape, param.dtype, param.device, param.stride()):
                keep = self._keep[name] = torch.empty_like(param, requires_grad=False)
            keep.copy_(self.mask[name])

    @torch.no_grad()
    def enforce(self, optimizer: torch.optim.Optimizer | None) -> None:
        """Zero the masked weights and their optimizer state (one fused multiply, no host sync)."""
        zero_masked(((param, self._keep[name]) for name, param in self._params.items()), optimizer)

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
                for buf in optimizer_state_like(optimizer, param):
                    buf.masked_fill_(new, 0.0)


class StaticMask(SparseMethod):
    """A fixed mask (IMP tickets, random-mask and random-reinit controls): only enforced, never changed."""

    name = "static"

    def __init__(self, mask: Mask):
        super().__init__(mask)


@dataclass(frozen=True)
class DynamicSparseConfig(ConfigBase):
    """The options RigL and GraNet share, validated in one place.

    The defaults are RigL's (the official code's); a method whose default or
    help text differs redeclares the field in its subclass, where it keeps its
    place in the field order. Subclasses add their own options and extend
    :meth:`__post_init__`, calling this one.
    """

    sparsity: float = option(0.9, "fraction of the masked weights that are zero")
    distribution: str = option("erk", "layer-wise density distribution (uniform, erk)", metavar="NAME")
    erk_power: float = option(1.0, "ERK exponent: 1 = ERK, smaller is softer, 0 = uniform")
    dense_first: bool = option(True, "leave the first prunable layer dense and unmasked")
    dense_layers: tuple[str, ...] = option((), "further layers to leave dense and unmasked")
    prunable: str = option("all", "prunable weights: all (conv and linear) or conv", choices=PRUNABLE_CHOICES)
    delta_t: int = option(100, "optimizer steps between mask updates (Delta T)")

    def __post_init__(self) -> None:
        require(0.0 <= self.sparsity < 1.0, f"sparsity must lie in [0, 1), got {self.sparsity}")
        require(self.distribution in DISTRIBUTIONS, f"unknown density distribution {self.distribution!r}; "
                f"valid names: {', '.join(DISTRIBUTIONS.names())}")
        require(self.delta_t > 0, f"delta_t must be a positive integer, got {self.delta_t}")


class DynamicSparseMethod(SparseMethod):
    """A :class:`SparseMethod` that changes its mask on a schedule, configured by a :class:`DynamicSparseConfig`.

    It knows which weights its configuration masks, draws a random starting
    mask from them, and saves its configuration with its state (a resumed run
    with another configuration is logged).
    """

    config_class: type[DynamicSparseConfig] = DynamicSparseConfig

    def __init__(self, config: DynamicSparseConfig, mask: Mask | None = None):
        super().__init__(mask)
        self.config = config

    def masked_names(self, model: nn.Module) -> list[str]:
        """The prunable weights that the mask covers: all of ``config.prunable`` but the layers kept dense."""
        c = self.config
        dense = list(c.dense_layers)
        if c.dense_first:
            dense.append(prunable_names(model, c.prunable)[0])
        return prunable_names(model, c.prunable, dense)

    def random_start(self, state: TrainState, density: float) -> Mask:
        """A random mask over :meth:`masked_names` at overall ``density``.

        The per-layer densities follow ``config.distribution``; every layer
        keeps exactly its count; the positions are drawn from a generator
        seeded with the training seed.
        """
        c = self.config
        names = self.masked_names(state.model)
        kwargs = {"power": c.erk_power} if c.distribution == "erk" else {}
        # the layers kept dense are already left out of names, so the distribution keeps none dense itself
        densities = DISTRIBUTIONS.get(c.distribution)(layer_shapes(state.model, names), density, dense_first=False,
                                                      **kwargs)
        log.info("%s: initial %s densities %s", self.name, c.distribution,
                 {n: round(d, 4) for n, d in densities.items()})
        generator = torch.Generator().manual_seed(state.config.seed)
        return random_mask(state.model, densities, generator)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "config": to_dict(self.config)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("config") not in (None, to_dict(self.config)):
            log.warning("%s: resuming with another configuration than the checkpoint's: %s, saved %s",
                        self.name, to_dict(self.config), state["config"])


__all__ = ["DynamicSparseConfig", "DynamicSparseMethod", "SparseMethod", "StaticMask", "drop_and_grow"]
