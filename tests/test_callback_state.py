"""Callback state is saved in a checkpoint by name (issue 24, item 4), never by position.

Adding, removing or reordering a callback between a crash and ``--resume`` cannot restore one callback's
state into another; a callback that keeps state but finds none saved is refused in one line; a checkpoint
written before names were saved (a list of states) still resumes, paired by position as it was written.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pracset.data import DeviceLoader
from pracset.data.base import ImageSplit
from pracset.errors import RunFileError
from pracset.train import Callback, TrainConfig, Trainer
from pracset.train.loop import callback_keys

CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05)


class Counter(Callback):
    """Counts the steps it saw; its state is that count and its own label, to tell states apart."""

    def __init__(self, label: str, key: str | None = None):
        self.label, self.key, self.steps, self.restored = label, key, 0, None

    @property
    def state_key(self) -> str:
        return self.key or super().state_key

    def on_batch_end(self, state, out):
        self.steps += 1

    def state_dict(self) -> dict:
        return {"label": self.label, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.restored, self.steps = state["label"], state["steps"]


class Other(Counter):
    pass


class Crash(Callback):
    def on_epoch_start(self, state):
        if state.epoch == 2:
            raise KeyboardInterrupt


def _fit(tmp_path, callbacks, *, resume: bool):
    generator = torch.Generator().manual_seed(0)
    data = ImageSplit(torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8, generator=generator),
                      torch.randint(0, 2, (64,), generator=generator))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    loader = DeviceLoader(data, 16, (0.5,), (0.25,), shuffle=True, seed=1)
    return Trainer(CONFIG, checkpoint=tmp_path / "ckpt.pt", resume=resume).fit(model, loader, None, callbacks)


def _crash_after_two_epochs(tmp_path, callbacks):
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path, [*callbacks, Crash()], resume=False)


def test_keys_are_class_names_numbered_on_repeats():
    assert callback_keys([Counter("a"), Other("b"), Counter("c"), Counter("d"), Counter("e", key="mine")]) == [
        "Counter", "Other", "Counter#2", "Counter#3", "mine"]


def test_reordered_callbacks_each_get_their_own_state(tmp_path):
    """Saved as [Counter, Other], resumed as [Other, Counter]: by position each would get the other's state."""
    _crash_after_two_epochs(tmp_path, [Counter("first"), Other("second")])
    first, second = Counter("first"), Other("second")
    _fit(tmp_path, [second, first], resume=True)
    assert (first.restored, second.restored) == ("first", "second")
    assert first.steps == second.steps == 3 * 4  # 8 restored after two epochs of 4 steps, then one more epoch


def test_an_added_stateless_callback_and_a_dropped_one_do_not_shift_the_states(tmp_path):
    _crash_after_two_epochs(tmp_path, [Other("dropped"), Counter("kept")])
    kept = Counter("kept")
    _fit(tmp_path, [Callback(), kept], resume=True)  # a new stateless callback first, the Other gone
    assert kept.restored == "kept" and kept.steps == 12


def test_a_callback_with_state_but_none_saved_is_refused(tmp_path):
    _crash_after_two_epochs(tmp_path, [Counter("only")])
    with pytest.raises(RunFileError, match=r"ckpt\.pt holds no state for the callback Other \(it holds Counter\); "
                                           "remove it to train this stage again"):
        _fit(tmp_path, [Counter("only"), Other("new")], resume=True)


def test_a_checkpoint_of_positional_states_still_resumes(tmp_path):
    """Checkpoints written before names were saved hold a list: paired by position, as they were written."""
    _crash_after_two_epochs(tmp_path, [Counter("a"), Other("b")])
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    saved["callbacks"] = [saved["callbacks"]["Counter"], saved["callbacks"]["Other"]]
    torch.save(saved, tmp_path / "ckpt.pt")
    a, b = Counter("a"), Other("b")
    _fit(tmp_path, [a, b], resume=True)
    assert (a.restored, b.restored) == ("a", "b")
