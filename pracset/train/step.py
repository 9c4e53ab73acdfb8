"""What one training step is, below the loop that runs it: its output, the run's state, the callbacks' hooks.

:class:`StepOutput` (what a callback sees of one step), :class:`TrainState`
(the mutable state of a run), :class:`Callback` (the hooks the
:class:`~pracset.train.loop.Trainer` calls, and the name each callback's
state is saved under), and :func:`forward_losses` (the step's forward pass,
shared by the eager step and the captured CUDA graph). The loop, the CUDA
graphs, the checkpoint checks and every callback build on this module; it
imports none of them. :mod:`pracset.train.loop` re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from pracset.train.config import TrainConfig


@dataclass
class StepOutput:
    """What a callback sees of one training step.

    ``logits`` and ``losses`` come from the forward pass *before* this step's
    update (detached); ``index`` holds the batch's example ids; ``step`` is the
    0-based global step of this update.
    """

    index: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    losses: torch.Tensor
    step: int
    epoch: int


@dataclass
class TrainState:
    """The mutable state of a run, handed to every callback hook."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    steps_per_epoch: int
    total_steps: int
    epoch: int = 0                    # completed epochs
    step: int = 0                     # completed optimizer steps
    stop_requested: bool = False      # set by a callback to end the run after this epoch
    skip_step: bool = False           # set in before_optimizer_step to skip this optimizer step
    history: list[dict] = field(default_factory=list)


class Callback:
    """Base class of training callbacks; override the hooks you need.

    Hooks run on the host but must not synchronise with the device per step
    (no ``.item()``, ``.cpu()`` or ``bool(tensor)`` in the per-step hooks).
    """

    def on_fit_start(self, state: TrainState) -> None: ...
    def on_epoch_start(self, state: TrainState) -> None: ...
    def before_optimizer_step(self, state: TrainState, out: StepOutput) -> None:
        """Gradients of this step are in ``param.grad``."""
    def after_optimizer_step(self, state: TrainState, out: StepOutput) -> None:
        """The update has been applied (e.g. re-apply a mask here)."""
    def on_batch_end(self, state: TrainState, out: StepOutput) -> None: ...
    def on_epoch_end(self, state: TrainState, metrics: dict) -> None: ...
    def on_fit_end(self, state: TrainState) -> None: ...

    def capturable(self, step: int) -> bool:
        """Whether step ``step`` may replay the captured CUDA graph (``TrainConfig.cuda_graphs``).

        A replayed step calls neither :meth:`before_optimizer_step` nor
        :meth:`after_optimizer_step`; what they would do on the device goes in
        :meth:`graph_work`. By default a callback that overrides neither hook
        allows every step, and one that overrides either allows none.
        """
        own = type(self)
        return (own.before_optimizer_step is Callback.before_optimizer_step
                and own.after_optimizer_step is Callback.after_optimizer_step)

    def graph_work(self, state: TrainState) -> None:
        """Device work recorded into the CUDA graph after the optimizer step (e.g. a mask multiply); no host sync."""

    @property
    def state_key(self) -> str:
        """The name this callback's state is saved under in a checkpoint (its class name by default).

        States are matched by name on resume, never by position, so adding, removing or reordering a
        callback cannot restore one callback's state into another. Two callbacks of one class are told
        apart by their order among that class (``Name``, ``Name#2``); override this to name them yourself.
        """
        return type(self).__name__

    def state_dict(self) -> dict:
        """State saved in checkpoints so that a resumed run continues exactly."""
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def callback_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Each callback's checkpoint key: its :attr:`~Callback.state_key`, with ``#2``, ``#3``... on repeats."""
    seen: dict[str, int] = {}
    keys = []
    for callback in callbacks:
        key = callback.state_key
        seen[key] = seen.get(key, 0) + 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys


def has_state(callback: Callback) -> bool:
    """Whether ``callback`` keeps state across a resume (it overrides :meth:`Callback.state_dict`)."""
    return type(callback).state_dict is not Callback.state_dict


def forward_losses(forward: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bf16: bool, label_smoothing: float,
                   autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The training step's logits and per-example losses: the eager step's and the captured graph's, of one model
    (logits ``(B, classes)``) or of a packed job's K models (``(K, B, classes)``, with ``y`` of shape ``(B,)``
    shared by all or ``(K, B)``, one row per model).

    The loss trained on (smoothed when asked) is what callbacks and ``train_loss`` see;
    :func:`~pracset.train.loop.evaluate` is plain cross-entropy.
    """
    with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=autocast_cache):
        logits = forward(x)
    return logits, per_example_losses(logits, y, label_smoothing=label_smoothing)


def per_example_losses(logits: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of every example, in float32, shaped as ``logits`` without its class dimension; ``y`` is
    broadcast over the leading (model) dimension of packed logits."""
    classes = logits.shape[-1]
    targets = y.expand(logits.shape[:-1]).reshape(-1)
    return F.cross_entropy(logits.float().reshape(-1, classes), targets, reduction="none",
                           label_smoothing=label_smoothing).view(logits.shape[:-1])


__all__ = ["Callback", "StepOutput", "TrainState", "callback_keys", "forward_losses", "has_state",
           "per_example_losses"]
