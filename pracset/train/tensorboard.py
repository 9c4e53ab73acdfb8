"""TensorBoard scalars of a training stage, written while it runs (``--tensorboard``).

Needs the optional ``tensorboard`` package (``pip install 'pracset[tensorboard]'``).
Per epoch, at the global step it ended on, the writer adds the epoch's
metrics (losses, accuracies, the mean learning rate of its steps), the
sparsity of the model's conv and linear weights and, when the caller gives
it, the number of examples an epoch trains on (a PrAC round's set size).
Every ``log_every_n_steps`` steps (50, Lightning's default) it also adds the
step's mean training loss as ``train/loss_step``, at that step (under
torch.distributed, rank 0's share of the batch; the epoch's ``train/loss`` is
the whole job's): those losses
stay on the device as the epoch runs and are copied to the host with the
epoch's other numbers, so nothing is synchronised per step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pracset.errors import ConfigError
from pracset.fileio import make_directory
from pracset.mask import prunable_names
from pracset.train.loop import Callback, TrainState

log = logging.getLogger(__name__)


def require_tensorboard() -> None:
    """Refuse with one line, before any training, when the optional ``tensorboard`` package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (the import is the check)
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install 'pracset[tensorboard]'") from None


@torch.no_grad()
def weight_sparsity(model: torch.nn.Module) -> float:
    """The fraction of exact zeros among the model's conv and linear weights."""
    params = dict(model.named_parameters())
    names = prunable_names(model, "all")
    zeros = sum(int((params[n] == 0).sum()) for n in names)
    total = sum(params[n].numel() for n in names)
    return zeros / total if total else 0.0


class TensorBoardLogger(Callback):
    """Writes a stage's per-epoch scalars into ``log_dir`` (one event file per fit)."""

    def __init__(self, log_dir: str | Path, examples_per_epoch: int | None = None, log_every_n_steps: int = 50):
        require_tensorboard()
        if isinstance(log_every_n_steps, bool) or not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ConfigError(f"log_every_n_steps must be a positive integer, got {log_every_n_steps!r}")
        self.log_dir = Path(log_dir)
        self.examples_per_epoch = examples_per_epoch
        self.log_every_n_steps = log_every_n_steps
        self._writer = None
        self._step_losses: list[tuple[int, torch.Tensor]] = []  # (step, mean loss on the device) of this epoch

    def on_batch_end(self, state: TrainState, out) -> None:
        if out.step % self.log_every_n_steps == 0:
            self._step_losses.append((out.step, out.losses.float().mean()))  # stays on the device: no sync

    def on_fit_start(self, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter  # here: an optional dependency

        make_directory(self.log_dir)  # never through a linked folder of a run directory
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        if self._step_losses:
            values = torch.stack([loss for _, loss in self._step_losses]).tolist()  # one copy for the epoch
            for (at, _), value in zip(self._step_losses, values):
                self._writer.add_scalar("train/loss_step", value, at)
            self._step_losses.clear()
        _epoch_scalars(self._writer, metrics, state.step, weight_sparsity(state.model), self.examples_per_epoch)
        self._writer.flush()

    def on_fit_end(self, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _epoch_scalars(writer, metrics: dict, step: int, sparsity: float | None, examples: int | None) -> None:
    """One epoch's scalars at ``step``: its metrics (``train/loss``, ``test/accuracy``, ``lr``, ...), the
    weights' sparsity and the examples it read."""
    for key, value in metrics.items():
        if key not in ("epoch", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
            group = "lr" if key == "lr" else key.replace("_", "/", 1)  # train/loss, test/accuracy, ...
            writer.add_scalar(group, value, step)
    if sparsity is not None:
        writer.add_scalar("sparsity", sparsity, step)
    if examples is not None:  # the loader's count: the whole job's, also under torchrun
        writer.add_scalar("examples_per_epoch", examples, step)


def write_history(log_dir: str | Path, history: list[dict], model: torch.nn.Module, examples_per_epoch: int) -> None:
    """A stage trained in a packed job: its per-epoch scalars, written from its history once the job is done (the
    same tags as :class:`TensorBoardLogger`'s; the weights' sparsity at the last epoch only, and no per-step loss:
    a packed job runs no callbacks)."""
    require_tensorboard()
    from torch.utils.tensorboard import SummaryWriter  # here: an optional dependency

    make_directory(Path(log_dir))
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for position, metrics in enumerate(history):
            last = position == len(history) - 1
            _epoch_scalars(writer, metrics, metrics["step"], weight_sparsity(model) if last else None,
                           examples_per_epoch)
    finally:
        writer.close()


__all__ = ["TensorBoardLogger", "require_tensorboard", "weight_sparsity", "write_history"]
