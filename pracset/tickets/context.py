"""What every stage of a ticket run shares: the data, the architecture, the recipe, the run directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from pracset.data import DeviceLoader, ImageDataset
from pracset.errors import RunFileError
from pracset.fileio import atomic_torch_save, naming, require_regular_file
from pracset.mask import Mask
from pracset.models import has_convolutions
from pracset.models.custom import Architecture, resolve_architecture
from pracset.runs import RunDirectory, StageFiles, TicketLayout
from pracset.train.config import TrainConfig
from pracset.train.loop import Callback, StepOutput, TrainState, check_state_dict
from pracset.train.run import make_loaders, new_model, unaugmented_train_loader


class Snapshot(Callback):
    """Keeps a copy of the model's whole state (BN statistics included) at a given global step."""

    def __init__(self, step: int):
        self.step = step
        self.state: dict | None = None

    def _take(self, model: nn.Module) -> None:
        self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def on_fit_start(self, state: TrainState) -> None:
        if self.step == 0 and self.state is None:
            self._take(state.model)

    def on_batch_end(self, state: TrainState, out: StepOutput) -> None:
        if state.step == self.step and self.state is None:
            self._take(state.model)

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = state["state"]


@dataclass(frozen=True)
class RewindPoint:
    """What IMP's rounds rewind to: round 0's whole state (BN statistics included) after ``step`` steps."""

    state: dict
    step: int


@dataclass
class TicketContext:
    """The shared pieces of one ticket run, and the few operations every method needs."""

    dataset: ImageDataset
    arch: Architecture
    train: TrainConfig
    device: torch.device
    run: RunDirectory
    layout: TicketLayout
    progress: bool = False
    tensorboard: Path | None = None  # where the stages write TensorBoard scalars (None: nowhere)

    def __post_init__(self) -> None:
        self.arch = resolve_architecture(self.arch)  # a registered name, a module or a factory

    @property
    def num_examples(self) -> int:
        return len(self.dataset.train)

    def model(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model (on the CPU), seeded with the recipe's seed unless ``seed`` is given.

        With another ``seed`` (the random re-initialisation control) the
        weights are random even where the architecture starts from pretrained ones.
        """
        return new_model(self.arch, self.dataset, seed=self.train.seed if seed is None else seed,
                         pretrained=seed is None)

    def loaders(self, ids=None, train: TrainConfig | None = None) -> tuple[DeviceLoader, DeviceLoader]:
        return make_loaders(self.dataset, train or self.train, self.device, ids=ids,
                            conv_net=has_convolutions(self.model()))

    def full_split_loader(self) -> DeviceLoader:
        """The whole training split in id order, without augmentation (for probes)."""
        return unaugmented_train_loader(self.dataset, self.device)

    def load_model(self, stage: StageFiles) -> nn.Module:
        """The trained model of a finished stage, on the run's device."""
        model = self.model()
        require_regular_file(stage.model, "model weights", error=RunFileError)  # a FIFO would block forever
        with naming(stage.model):  # an OSError of read() names no file
            state = torch.load(stage.model, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.to(self.device)

    def rewound(self, mask: Mask, rewind: RewindPoint, seed: int | None = None) -> nn.Module:
        """A model at the rewind point (or freshly initialised with ``seed``) with ``mask`` applied."""
        model = self.model(seed)
        if seed is None:
            model.load_state_dict(rewind.state)
        mask.check_model(model)  # a mask read from the run directory must fit the model it is applied to
        mask.apply_(model)
        return model.to(self.device)

    def save_rewind_point(self, state: dict) -> None:
        atomic_torch_save(state, self.layout.rewind)

    def load_rewind_point(self, step: int) -> RewindPoint:
        """The model state saved at the rewind step ``step`` (``rewind.pt``), checked against this run's model: every
        key of its state dict, each a tensor of the same shape, and no other; a truncated or damaged file,
        or one of another model, is one :class:`~pracset.errors.RunFileError` naming it."""
        path = self.layout.rewind
        if path.exists():  # (a missing one is answered below) a FIFO or a device would block or never end
            require_regular_file(path, "rewind point", error=RunFileError)
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise RunFileError(f"rewind point {path} does not exist; the run directory is incomplete") from None
        except OSError:
            raise  # the system's words (permission denied, ...): one line from the command line
        except Exception as exc:  # torch raises many kinds for a truncated or damaged file
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RunFileError(f"rewind point {path} is damaged or truncated ({first})") from None
        check_state_dict(saved, self.model().state_dict(), f"rewind point {path}")
        return RewindPoint(saved, step)
