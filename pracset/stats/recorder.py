"""Per-example training statistics (Toneva et al. 2019), kept on the training device.

The recorder is a training callback. At every presentation of an example it
reads the logits of the training forward pass (taken *before* the update,
augmentation on, so it costs no extra pass) and updates per-example state with
vectorised index ops. Nothing goes back to the host per step.

Definitions (per example, over its presentations in order):

- ``forgetting_events``: 1 -> 0 transitions of correctness between
  consecutive presentations. Epochs in which the example is not presented
  (training on a subset) are skipped: "consecutive" means consecutive
  presentations, as in Toneva et al.
- ``never_learned``: presented at least once and never correct.
- ``first_learned_epoch``: the epoch of the first correct presentation (-1 if
  none).
- ``times_correct``, ``presentations``, ``last_correct``, ``last_loss`` and
  ``margin`` (true-class logit minus the best other logit) at the last
  presentation.

Memory: 25 bytes per example (see :data:`BYTES_PER_EXAMPLE`), plus
``ceil(N/8)`` bytes per epoch with ``keep_history=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pracset.errors import ConfigError
from pracset.train.loop import Callback, StepOutput, TrainState

#: Device bytes per example: last_correct int8 (1), forgetting_events,
#: presentations, times_correct, first_learned_epoch int32 (4 x 4), last_loss
#: and margin float32 (2 x 4).
BYTES_PER_EXAMPLE = 1 + 4 * 4 + 2 * 4

_NOT_PRESENTED = -1


@dataclass(frozen=True)
class ExampleStatistics:
    """The recorder's state as host numpy arrays, one entry per example id."""

    forgetting_events: np.ndarray    # int32
    presentations: np.ndarray        # int32
    times_correct: np.ndarray        # int32
    first_learned_epoch: np.ndarray  # int32, -1 = never correct
    never_learned: np.ndarray        # bool: presented, never correct
    last_correct: np.ndarray         # bool
    last_loss: np.ndarray            # float32, NaN if never presented
    margin: np.ndarray               # float32, NaN if never presented
    history: np.ndarray | None = None  # uint8 (epochs, ceil(N/8)) bit-packed correctness, or None
    presented_history: np.ndarray | None = None  # same layout: was the example presented that epoch

    def __len__(self) -> int:
        return len(self.forgetting_events)

    def columns(self) -> dict[str, np.ndarray]:
        """The per-example columns of a manifest."""
        return {
            "forgetting_events": self.forgetting_events,
            "presentations": self.presentations,
            "times_correct": self.times_correct,
            "first_learned_epoch": self.first_learned_epoch,
            "never_learned": self.never_learned,
            "last_correct": self.last_correct,
            "last_loss": self.last_loss,
            "margin": self.margin,
        }

    def correctness_history(self) -> np.ndarray:
        """(epochs, N) int8: 1 correct, 0 wrong, -1 not presented that epoch (needs ``keep_history``)."""
        if self.history is None or self.presented_history is None:
            raise ConfigError("the recorder ran without keep_history=True")
        n = len(self)
        correct = np.unpackbits(self.history, axis=1, count=n, bitorder="little").astype(np.int8)
        presented = np.unpackbits(self.presented_history, axis=1, count=n, bitorder="little").astype(bool)
        correct[~presented] = -1
        return correct


def _pack_bits(flags: torch.Tensor) -> torch.Tensor:
    """Pack a bool vector into uint8 (little bit order, like ``np.packbits(bitorder="little")``), on its device."""
    n = len(flags)
    padded = torch.zeros(8 * math.ceil(n / 8), dtype=torch.uint8, device=flags.device)
    padded[:n] = flags.to(torch.uint8)
    weights = (2 ** torch.arange(8, device=flags.device, dtype=torch.int32)).to(torch.uint8)
    return (padded.view(-1, 8) * weights).sum(1, dtype=torch.int32).to(torch.uint8)


class ExampleRecorder(Callback):
    """Records per-example statistics over a training run.

    Args:
        num_examples: size of the full training split (example ids index it),
            even when the run trains on a subset.
        device: where the state lives (the training device).
        keep_history: also keep the bit-packed per-epoch correctness history.

    Batches must not repeat an example id within one step (the device
    loader never does).
    """

    def __init__(self, num_examples: int, device: torch.device | str = "cpu", *, keep_history: bool = False):
        if num_examples <= 0:
            raise ConfigError("the recorder needs at least one example")
        self.num_examples = num_examples
        self.device = torch.device(device)
        self.keep_history = keep_history
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded (PrAC resets the record every round)."""
        n, device = self.num_examples, self.device
        self.last_correct = torch.full((n,), _NOT_PRESENTED, dtype=torch.int8, device=device)
        self.forgetting_events = torch.zeros(n, dtype=torch.int32, device=device)
        self.presentations = torch.zeros(n, dtype=torch.int32, device=device)
        self.times_correct = torch.zeros(n, dtype=torch.int32, device=device)
        self.first_learned_epoch = torch.full((n,), -1, dtype=torch.int32, device=device)
        self.last_loss = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
        self.margin = torch.full((n,), float("nan"), dtype=torch.float32, device=device)
        self._epoch_correct = torch.zeros(n, dtype=torch.bool, device=device) if self.keep_history else None
        self._epoch_presented = torch.zeros(n, dtype=torch.bool, device=device) if self.keep_history else None
        self._history: list[torch.Tensor] = []
        self._presented: list[torch.Tensor] = []

    # -- the update, usable without a Trainer (tests, custom loops)
    @torch.no_grad()
    def update(self, index: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
               losses: torch.Tensor | None, epoch: int) -> None:
        """Record one presentation of the examples ``index`` (all tensors on the recorder's device)."""
        logits = logits.float()
        correct = logits.argmax(1) == labels
        previous = self.last_correct[index]
        self.forgetting_events.index_add_(0, index, ((previous == 1) & ~correct).to(torch.int32))
        self.presentations.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
        self.times_correct.index_add_(0, index, correct.to(torch.int32))
        first = self.first_learned_epoch[index]
        self.first_learned_epoch[index] = torch.where(correct & (first < 0), torch.full_like(first, epoch), first)
        self.last_correct[index] = correct.to(torch.int8)
        true_logit = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.scatter(1, labels[:, None], float("-inf"))
        self.margin[index] = true_logit - others.max(1).values
        if losses is not None:
            self.last_loss[index] = losses.float()
        if self.keep_history:
            self._epoch_correct[index] = correct
            self._epoch_presented[index] = True

    def end_epoch(self) -> None:
        """Close an epoch of the history (no-op without ``keep_history``)."""
        if self.keep_history:
            self._history.append(_pack_bits(self._epoch_correct))
            self._presented.append(_pack_bits(self._epoch_presented))
            self._epoch_correct.zero_()
            self._epoch_presented.zero_()

    # -- Callback hooks
    def on_batch_end(self, state: TrainState, out: StepOutput) -> None:
        self.update(out.index, out.labels, out.logits, out.losses, out.epoch)

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        self.end_epoch()

    # -- results
    def statistics(self) -> ExampleStatistics:
        """Copy the state to the host (one transfer)."""
        presented = self.presentations > 0
        history = presented_history = None
        if self.keep_history and self._history:
            history = torch.stack(self._history).cpu().numpy()
            presented_history = torch.stack(self._presented).cpu().numpy()
        return ExampleStatistics(
            forgetting_events=self.forgetting_events.cpu().numpy(),
            presentations=self.presentations.cpu().numpy(),
            times_correct=self.times_correct.cpu().numpy(),
            first_learned_epoch=self.first_learned_epoch.cpu().numpy(),
            never_learned=(presented & (self.times_correct == 0)).cpu().numpy(),
            last_correct=(self.last_correct == 1).cpu().numpy(),
            last_loss=self.last_loss.cpu().numpy(),
            margin=self.margin.cpu().numpy(),
            history=history,
            presented_history=presented_history,
        )

    _STATE = ("last_correct", "forgetting_events", "presentations", "times_correct",
              "first_learned_epoch", "last_loss", "margin")

    def state_dict(self) -> dict:
        state = {name: getattr(self, name).cpu() for name in self._STATE}
        state["history"] = [h.cpu() for h in self._history]
        state["presented"] = [h.cpu() for h in self._presented]
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, state[name].to(self.device))
        self._history = [h.to(self.device) for h in state.get("history", [])]
        self._presented = [h.to(self.device) for h in state.get("presented", [])]
