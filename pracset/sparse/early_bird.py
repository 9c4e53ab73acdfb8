"""Early-Bird stopping (You et al. 2020, as used in every PrAC-IMP round): stop once the pruning mask settles."""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from pracset.config import ConfigBase, option, require
from pracset.mask import Mask
from pracset.sparse.pruning import magnitude_prune
from pracset.train.loop import Callback, TrainState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EarlyBirdConfig(ConfigBase):
    """Options of Early-Bird stopping (defaults: the official PrAC-LTH code)."""

    eps: float = option(0.08, "stop once every mask distance in the queue is below this "
                              "(0.08 in the official code, 0.07 in the paper's appendix)")
    queue_length: int = option(5, "number of recent epoch-to-epoch mask distances that must all be below eps")
    prune_fraction: float = option(0.2, "pracset build: fraction of the remaining weights the judged mask prunes (global magnitude); PrAC-IMP judges the mask its own prune gives")
    wait_for_change: bool = option(True, "start counting only once a distance first exceeds eps (the official rule; "
                                         "small networks whose mask never moves that much then never stop)")

    def __post_init__(self) -> None:
        require(0 < self.eps < 1, f"eps must lie in (0, 1), got {self.eps}")
        require(self.queue_length >= 1, f"queue_length must be a positive integer, got {self.queue_length}")
        require(0 < self.prune_fraction < 1, f"prune_fraction must lie in (0, 1), got {self.prune_fraction}")


def earliest_stop_epoch(config: EarlyBirdConfig, warmup_epochs: int = 0) -> int:
    """The earliest epoch :class:`EarlyBirdStop` can stop at.

    Epoch 1 has no distance; distances enter the queue from epoch
    ``warmup + 2``, and ``queue_length`` of them below eps must be queued. With
    ``wait_for_change`` and no warm-up, the distance that starts the recording
    is above eps and is queued too, so ``queue_length`` more must follow: one
    epoch later. (A warm-up of at least one epoch can absorb that first change.)
    """
    late_start = config.wait_for_change and warmup_epochs == 0
    return config.queue_length + 1 + warmup_epochs + (1 if late_start else 0)


class EarlyBirdStop(Callback):
    """Stops a training run once the mask that pruning would give stops changing.

    After every epoch the callback computes the mask global magnitude pruning
    of ``prune_fraction`` of the ``mask``'s remaining weights would give, and
    its distance ``d`` to the previous epoch's: the number of bits that changed
    divided by the number of remaining weights. Recording starts the first
    time ``d`` exceeds ``eps`` (the early epochs of a rewound network can look
    stable before training moves it; ``wait_for_change=False`` starts at once,
    for small networks whose mask never moves by ``eps``); from then on each ``d`` enters a FIFO of
    ``queue_length`` entries initialised to 1, and the run stops when the
    largest entry is below ``eps``. This is the official PrAC-LTH rule, step by
    step. After the run, :attr:`mask` is the mask at the stopping epoch (the
    one PrAC prunes with) and :attr:`stopped_epoch` the epoch it stopped at
    (``None`` if it ran to the end).
    """

    def __init__(self, config: EarlyBirdConfig, mask: Mask, *, warmup_epochs: int = 0,
                 prune: Callable[[nn.Module, Mask], Mask] | None = None):
        self.config = config
        self.base_mask = mask
        # The mask to judge: by default global magnitude pruning of ``prune_fraction``; IMP passes its own
        # prune (its fraction, ranking and per-layer rates), so the mask that settles is the one it prunes with.
        self.prune = prune or (lambda model, base: magnitude_prune(model, base, config.prune_fraction))
        self.remaining = mask.num_kept()
        self.warmup_epochs = warmup_epochs
        self.reset()

    def reset(self) -> None:
        self.queue = deque([1.0] * self.config.queue_length, maxlen=self.config.queue_length)
        self.recording = False
        self.previous: Mask | None = None
        self.mask: Mask | None = None
        self.distances: list[float] = []
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        current = self.prune(state.model, self.base_mask.to(next(state.model.parameters()).device))
        self.mask = current
        if self.previous is None:  # the first epoch has nothing to compare with
            self.previous = current
            return
        changed = sum(int((current[n] != self.previous[n]).sum()) for n in current)
        distance = changed / self.remaining
        self.distances.append(distance)
        metrics["mask_distance"] = distance
        self.recording = self.recording or distance > self.config.eps or not self.config.wait_for_change
        if self.recording and state.epoch - 1 > self.warmup_epochs:
            self.queue.append(distance)
        if max(self.queue) < self.config.eps:
            self.stopped_epoch = state.epoch
            state.stop_requested = True
            log.info("Early-Bird: mask settled after epoch %d (distances %s)", state.epoch,
                     ", ".join(f"{d:.4f}" for d in self.queue))
        else:
            self.previous = current

    def state_dict(self) -> dict:
        return {"queue": list(self.queue), "recording": self.recording, "distances": self.distances,
                "previous": dict(self.previous) if self.previous is not None else None,
                "mask": dict(self.mask) if self.mask is not None else None, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.queue = deque(state["queue"], maxlen=self.config.queue_length)
        self.recording = state["recording"]
        self.distances = list(state["distances"])
        self.previous = Mask(state["previous"]) if state["previous"] is not None else None
        self.mask = Mask(state["mask"]) if state["mask"] is not None else None
        self.stopped_epoch = state["stopped_epoch"]
