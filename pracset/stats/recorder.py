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
- ``aum`` (area under the margin, Pleiss et al. 2020): that margin averaged
  over every presentation.
- data maps (Swayamdipta et al. 2020): ``confidence``, the mean over the
  presentations of the softmax probability of the true class, and
  ``variability``, its standard deviation (the population's, as in their
  code); their ``correctness`` is ``times_correct / presentations``.

All three come from the same logits as the forgetting events, accumulated on
the device with the same index ops: no extra pass, no host sync.

Memory: 37 bytes per example (see :data:`BYTES_PER_EXAMPLE`), plus
``ceil(N/8)`` bytes per epoch with ``keep_history=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from pracset.distributed import all_gather_cat_many, is_distributed
from pracset.errors import ConfigError
from pracset.train.loop import Callback, StepOutput, TrainState

#: Device bytes per example: last_correct int8 (1), forgetting_events,
#: presentations, times_correct, first_learned_epoch int32 (4 x 4), last_loss,
#: margin and the sums of margins, confidences and squared confidences float32 (5 x 4).
BYTES_PER_EXAMPLE = 1 + 4 * 4 + 5 * 4

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
    aum: np.ndarray | None = None          # float32 mean margin over presentations, NaN if never presented
    confidence: np.ndarray | None = None   # float32 mean true-class probability, NaN if never presented
    variability: np.ndarray | None = None  # float32 its standard deviation, NaN if never presented

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
            **{name: values for name, values in (("aum", self.aum), ("confidence", self.confidence),
                                                 ("variability", self.variability)) if values is not None},
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

    #: Up to this many bytes of float32 logits per epoch (N x classes x 4) are kept
    #: and observed once at the end of the epoch; larger runs observe per step.
    STASH_LOGITS_BYTES = 256 * 2**20

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
        self.margin_sum = torch.zeros(n, dtype=torch.float32, device=device)
        self.confidence_sum = torch.zeros(n, dtype=torch.float32, device=device)
        self.confidence_sq_sum = torch.zeros(n, dtype=torch.float32, device=device)
        self._epoch_correct = torch.zeros(n, dtype=torch.bool, device=device) if self.keep_history else None
        self._epoch_presented = torch.zeros(n, dtype=torch.bool, device=device) if self.keep_history else None
        self._history: list[torch.Tensor] = []
        self._presented: list[torch.Tensor] = []
        self._pending: list[tuple] = []
        self._pending_epoch = 0
        self._stash_logits = False

    # -- the update, usable without a Trainer (tests, custom loops)
    @staticmethod
    @torch.no_grad()
    def _observe(labels: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Correctness, margin (true-class logit minus the best other) and true-class probability of one batch."""
        logits = logits.float()
        top2 = logits.topk(2, dim=1)
        true_logit = logits.gather(1, labels[:, None]).squeeze(1)
        correct = top2.indices[:, 0] == labels
        # The best other logit is the runner-up when the prediction is right, the winner otherwise.
        best_other = torch.where(correct, top2.values[:, 1], top2.values[:, 0])
        confidence = (true_logit - logits.logsumexp(1)).exp()  # softmax at the true class, without the whole softmax
        return correct, true_logit - best_other, confidence

    @torch.no_grad()
    def update(self, index: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor,
               losses: torch.Tensor | None, epoch: int) -> None:
        """Record one presentation of the examples ``index`` (all tensors on the recorder's device)."""
        correct, margin, confidence = self._observe(labels, logits)
        self._apply(index, correct, margin, confidence, losses, epoch)

    @torch.no_grad()
    def _apply(self, index: torch.Tensor, correct: torch.Tensor, margin: torch.Tensor, confidence: torch.Tensor,
               losses: torch.Tensor | None, epoch: int) -> None:
        previous = self.last_correct[index]
        self.forgetting_events.index_add_(0, index, ((previous == 1) & ~correct).to(torch.int32))
        self.presentations.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
        self.times_correct.index_add_(0, index, correct.to(torch.int32))
        first = self.first_learned_epoch[index]
        self.first_learned_epoch[index] = torch.where(correct & (first < 0), torch.full_like(first, epoch), first)
        self.last_correct[index] = correct.to(torch.int8)
        self.margin[index] = margin
        self.margin_sum.index_add_(0, index, margin)
        self.confidence_sum.index_add_(0, index, confidence)
        self.confidence_sq_sum.index_add_(0, index, confidence * confidence)
        if losses is not None:
            self.last_loss[index] = losses.float()
        if self.keep_history:
            self._epoch_correct[index] = correct
            self._epoch_presented.index_fill_(0, index, True)  # index_put_ of a Python scalar would sync

    def flush(self) -> None:
        """Apply the presentations stashed since the last flush, in one vectorised update.

        During training the recorder only stashes each batch's ids, labels,
        logits and losses (when an epoch of logits fits in
        :attr:`STASH_LOGITS_BYTES`; otherwise its correctness and margin, 17
        bytes per example) and applies them once per epoch: launching the ~20 index kernels of an
        update per step costs more than the training step of a small model. This
        is exact because a loader presents an example at most once per epoch.

        Under torch.distributed every rank gathers the epoch's presentations of
        all ranks (ids, correctness, margin, loss) before applying them, so each
        rank ends with the statistics of one process over the same presentations.
        This assumes a sharded loader (each example on one rank per epoch, the
        default) and that every rank flushes at the same points (the Trainer's hooks do).
        """
        if not self._pending:
            return
        parts = list(zip(*self._pending))
        epoch = self._pending_epoch
        self._pending = []
        losses = None if any(p is None for p in parts[3]) else torch.cat(parts[3])
        if self._stash_logits:  # parts hold labels and logits: observe the whole epoch at once
            correct, margin, confidence = self._observe(torch.cat(parts[1]), torch.cat(parts[2]))
        else:
            correct, margin, confidence = torch.cat(parts[1]), torch.cat(parts[2]), torch.cat(parts[4])
        index = torch.cat(parts[0])
        if is_distributed():  # under torch.distributed: apply the whole job's presentations on every rank
            index, correct, margin, confidence, losses = all_gather_cat_many([index, correct, margin, confidence,
                                                                              losses])
        self._apply(index, correct, margin, confidence, losses, epoch)

    def end_epoch(self) -> None:
        """Close an epoch: apply the stashed presentations and record the history (``keep_history``)."""
        self.flush()
        if self.keep_history:
            self._history.append(_pack_bits(self._epoch_correct))
            self._presented.append(_pack_bits(self._epoch_presented))
            self._epoch_correct.zero_()
            self._epoch_presented.zero_()

    # -- Callback hooks
    def on_epoch_start(self, state: TrainState) -> None:
        self.flush()

    def on_batch_end(self, state: TrainState, out: StepOutput) -> None:
        if not self._pending:
            # Keeping an epoch of raw logits is the cheapest per step; above the cap, observe per step.
            self._stash_logits = self.num_examples * out.logits.shape[1] * 4 <= self.STASH_LOGITS_BYTES
        if self._stash_logits:
            self._pending.append((out.index, out.labels, out.logits, out.losses, None))
        else:
            correct, margin, confidence = self._observe(out.labels, out.logits)
            self._pending.append((out.index, correct, margin, out.losses, confidence))
        self._pending_epoch = out.epoch

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        self.end_epoch()

    def on_fit_end(self, state: TrainState) -> None:
        self.flush()  # a run stopped mid-epoch

    # -- results
    def statistics(self) -> ExampleStatistics:
        """Copy the state to the host (one transfer)."""
        self.flush()
        presented = self.presentations > 0
        history = presented_history = None
        if self.keep_history and self._history:
            history = torch.stack(self._history).cpu().numpy()
            presented_history = torch.stack(self._presented).cpu().numpy()
        count = self.presentations.float()
        seen = count.clamp_min(1)
        mean_confidence = self.confidence_sum / seen
        spread = (self.confidence_sq_sum / seen - mean_confidence * mean_confidence).clamp_min(0).sqrt()
        unseen = torch.tensor(float("nan"), device=self.device)

        def per_example(values: torch.Tensor) -> np.ndarray:  # NaN where never presented
            return torch.where(presented, values, unseen).cpu().numpy()

        return ExampleStatistics(
            aum=per_example(self.margin_sum / seen), confidence=per_example(mean_confidence),
            variability=per_example(spread),
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
    #: Added later: a checkpoint written before them lacks them (its sums then read as NaN: unknown, never
    #: averaged over fewer presentations than counted).
    _SUMS = ("margin_sum", "confidence_sum", "confidence_sq_sum")

    def state_dict(self) -> dict:
        self.flush()
        state = {name: getattr(self, name).cpu() for name in (*self._STATE, *self._SUMS)}
        state["history"] = [h.cpu() for h in self._history]
        state["presented"] = [h.cpu() for h in self._presented]
        return state

    def load_state_dict(self, state: dict) -> None:
        for name in self._STATE:
            setattr(self, name, state[name].to(self.device))
        for name in self._SUMS:
            saved = state.get(name)
            setattr(self, name, saved.to(self.device) if saved is not None else
                    torch.full((self.num_examples,), float("nan"), dtype=torch.float32, device=self.device))
        self._history = [h.to(self.device) for h in state.get("history", [])]
        self._presented = [h.to(self.device) for h in state.get("presented", [])]
