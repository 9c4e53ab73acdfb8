"""What the logs say (issue 25, item 3): an epoch's ``lr`` is the mean of the rates its steps trained with
(one by one and packed), and TensorBoard gets Lightning's per-step training loss every N steps, written once
per epoch. Expected values are computed by hand here."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pracset.data import DeviceLoader
from pracset.data.base import ImageSplit
from pracset.mask import Mask
from pracset.train import TrainConfig, Trainer
from pracset.train.packed import fit_packed

# 64 examples at batch 16: 4 steps an epoch; warm-up over the first epoch, then constant
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.1, warmup_epochs=1, schedule="constant", momentum=0.0,
                     weight_decay=0.0)
# warm-up rates (step + 1) / 4 * 0.1 for steps 0..3, then 0.1: the means of the two epochs
EXPECTED_LR = [0.1 * (1 + 2 + 3 + 4) / 16, 0.1]


def _loader():
    generator = torch.Generator().manual_seed(0)
    data = ImageSplit(torch.randint(0, 256, (64, 1, 4, 4), dtype=torch.uint8, generator=generator),
                      torch.randint(0, 2, (64,), generator=generator))
    return DeviceLoader(data, 16, (0.5,), (0.25,), shuffle=True, seed=1)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 2))


def test_an_epochs_lr_is_the_mean_of_its_steps_rates_one_by_one():
    state = Trainer(CONFIG).fit(_model(), _loader(), None)
    assert [h["lr"] for h in state.history] == pytest.approx(EXPECTED_LR)


def test_an_epochs_lr_is_the_mean_of_its_steps_rates_packed():
    model = _model()
    mask = Mask({"1.weight": torch.ones(2, 16, dtype=torch.bool)})
    run = fit_packed([model], [mask], _loader(), None, CONFIG, stages=["a"])
    assert [h["lr"] for h in run.histories[0]] == pytest.approx(EXPECTED_LR)


def test_tensorboard_gets_the_training_loss_every_n_steps(tmp_path):
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pracset.train import Callback
    from pracset.train.tensorboard import TensorBoardLogger

    class Losses(Callback):  # the per-step mean loss, read here on the host for the expected values
        def __init__(self):
            self.seen = {}

        def on_batch_end(self, state, out):
            self.seen[out.step] = float(out.losses.mean())

    losses = Losses()
    Trainer(CONFIG).fit(_model(), _loader(), None, [losses, TensorBoardLogger(tmp_path / "tb", log_every_n_steps=3)])
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = events.Scalars("train/loss_step")
    assert [e.step for e in logged] == [0, 3, 6]  # steps 0..7, every third
    assert [e.value for e in logged] == pytest.approx([losses.seen[s] for s in (0, 3, 6)], rel=1e-6)
    with pytest.raises(Exception, match="log_every_n_steps must be a positive integer, got 0"):
        TensorBoardLogger(tmp_path / "tb2", log_every_n_steps=0)


def test_a_stage_trained_packed_gets_its_per_epoch_scalars(tmp_path, digits):
    """With packing on and TensorBoard, a PrAC-IMP ticket and its controls train as one packed job; each stage's
    folder then holds its own test accuracy per epoch (the values of its metrics.json), at each epoch's step.

    Mutation caught: ``_train_packed`` not writing the history (no event file), or writing one stage's history
    under another's name (another model's accuracies).
    """
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    import json

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pracset.data import DataConfig
    from pracset.tickets import IMPConfig, find_tickets

    out = tmp_path / "run"
    imp = IMPConfig(rounds=1, controls=True, early_bird=False, budget="linear", rewind="1ep", pack_controls="on")
    find_tickets("prac-imp", DataConfig("digits"), "mlp", out, train=TrainConfig(epochs=2, batch_size=128, lr=0.05),
                 imp=imp, dataset=digits, tensorboard=True)
    for stage in ("ticket-01", "control-ticket-01-reinit", "control-ticket-01-random-mask"):
        metrics = json.loads((out / stage / "metrics.json").read_text())
        assert metrics["packed"] is True
        events = EventAccumulator(str(out / "tensorboard" / stage))
        events.Reload()
        logged = events.Scalars("test/accuracy")
        assert [e.step for e in logged] == [h["step"] for h in metrics["history"]]
        assert [e.value for e in logged] == pytest.approx([h["test_accuracy"] for h in metrics["history"]])
