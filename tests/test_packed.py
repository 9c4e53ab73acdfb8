"""Packed training (the controls of a ticket as one vmap-ed job) against training each model alone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from pracset.data import DataConfig, DeviceLoader, ImageSplit, load_dataset
from pracset.sparse import Mask, StaticMask
from pracset.tickets import IMPConfig, find_tickets
from pracset.train import TrainConfig, Trainer
from pracset.train.packed import fit_packed

CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, warmup_epochs=1, momentum=0.9, weight_decay=5e-4)


class SmallBN(nn.Module):
    """A conv net with BatchNorm: the packed job must keep per-model running statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def _data(n: int, seed: int) -> ImageSplit:
    generator = torch.Generator().manual_seed(seed)
    return ImageSplit(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=generator),
                      torch.randint(0, 3, (n,), generator=generator))


def _random_mask(model: nn.Module, seed: int) -> Mask:
    generator = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(p.shape, generator=generator) < 0.5
                 for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1})


def models_and_twins(count: int) -> tuple[list[SmallBN], list[Mask], list[SmallBN]]:
    """``count`` seeded models with random masks, and an identical twin of each to train alone."""
    torch.manual_seed(0)
    models = [SmallBN() for _ in range(count)]
    masks = [_random_mask(m, i) for i, m in enumerate(models)]
    twins = [SmallBN() for _ in range(count)]
    for twin, model in zip(twins, models):
        twin.load_state_dict(model.state_dict())
    return models, masks, twins


def test_packed_models_train_as_they_would_alone():
    train, test = _data(64, 0), _data(32, 1)
    loaders = (DeviceLoader(train, 16, (0.5,), (0.25,), shuffle=True, seed=3), DeviceLoader(test, 32, (0.5,), (0.25,)))
    models, masks, alone = models_and_twins(3)
    run = fit_packed(models, masks, *loaders, CONFIG, stages=["a", "b", "c"], start_step=2)
    histories, ledgers = run.histories, run.ledgers
    for k, (model, mask) in enumerate(zip(alone, masks)):
        state = Trainer(CONFIG).fit(model, *loaders, [StaticMask(mask)], start_step=2)
        for name, value in model.state_dict().items():  # weights and BN running statistics
            torch.testing.assert_close(models[k].state_dict()[name].float(), value.float(), atol=2e-5, rtol=1e-4)
        for mine, theirs in zip(histories[k], state.history):
            assert mine["step"] == theirs["step"] and mine["lr"] == pytest.approx(theirs["lr"])
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
            assert mine["test_accuracy"] == theirs["test_accuracy"]
        for name, keep in mask.items():
            assert bool((dict(models[k].named_parameters())[name][~keep] == 0).all())
    # each model's iterations, as the Trainer books them: 2 epochs of 4 steps from step 2
    assert [ledger.to_dict()["stages"][stage]["train_iterations"] for ledger, stage in zip(ledgers, "abc")] == [6] * 3


def test_a_ticket_s_controls_packed_equal_the_controls_one_by_one(tmp_path):
    digits = load_dataset(DataConfig("digits"))
    train = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    results = {}
    for pack in ("off", "on"):
        out = tmp_path / pack
        find_tickets("imp", DataConfig("digits"), "mlp", out, train=train, dataset=digits,
                     imp=IMPConfig(rounds=1, controls=True, pack_controls=pack))
        results[pack] = json.loads((out / "tickets.json").read_text())
        packed = json.loads((out / "control-round-01-reinit" / "metrics.json").read_text()).get("packed", False)
        assert packed == (pack == "on")
    off, on = (results[p]["tickets"][-1] for p in ("off", "on"))
    for key in ("reinit", "random_mask"):  # one test example is 1/359
        assert on["controls"][key] == pytest.approx(off["controls"][key], abs=1.01 / 359)
    assert results["on"]["ledger"]["total"] == results["off"]["ledger"]["total"]


def test_cuda_graphs_on_a_cpu_warn_once_and_train_the_packed_job_exactly_as_without(caplog):
    import logging

    from dataclasses import replace

    train, test = _data(64, 0), _data(32, 1)
    runs = []
    for graphs in (False, True):
        loaders = (DeviceLoader(train, 16, (0.5,), (0.25,), shuffle=True, seed=3),
                   DeviceLoader(test, 32, (0.5,), (0.25,)))
        models, masks, _ = models_and_twins(2)
        with caplog.at_level(logging.WARNING, logger="pracset.train.packed"):
            fit_packed(models, masks, *loaders, replace(CONFIG, cuda_graphs=graphs), stages=["a", "b"])
        runs.append(models)
    for plain, flagged in zip(*runs):
        for name, value in plain.state_dict().items():
            assert torch.equal(flagged.state_dict()[name], value)
    warnings = [r.getMessage() for r in caplog.records if "cuda_graphs" in r.getMessage()]
    assert warnings == ["cuda_graphs: it needs a CUDA device and the run is on cpu; the packed job trains without "
                        "capture"]


def test_the_captured_packed_step_records_what_the_eager_packed_step_does():
    """What the CUDA graph would record (its _step, run here eagerly on the CPU; fit_packed's eager steps run the
    same _packed_update) equals the step spelled out: forward, losses, backward, update and mask multiply, on
    per-model batches; and it knows a full (K, B) or (B,) batch and every tensor a step writes (whose values the
    warm-up restores)."""
    from pracset.data.loader import Batch
    from pracset.train.optim import OPTIMIZERS
    from pracset.train.packed import _CapturedPackedStep, _enforce, _Packed, _packed_losses, _stacked_keep

    models, masks, twins = models_and_twins(2)
    device = torch.device("cpu")
    jobs = []
    for group in (models, twins):
        packed = _Packed(group, device)
        jobs.append((packed, _stacked_keep(packed, masks),
                     OPTIMIZERS.get("sgd")(list(packed.params.values()), CONFIG)))
    loaders = [DeviceLoader(_data(64, 0), 16, (0.5,), (0.25,), shuffle=True, seed=s) for s in (3, 4)]
    first, second = (next(iter(loader)) for loader in loaders)
    x, y = torch.stack([first.x, second.x]), torch.stack([first.y, second.y])
    (packed, keep, optimizer), (eager, eager_keep, eager_optimizer) = jobs
    captured = _CapturedPackedStep(packed, keep, optimizer, batch_size=16, bf16=False, label_smoothing=0.1,
                                   per_model=True)
    captured.x, captured.y = x.clone(), y.clone()
    for _ in range(2):  # the second step with momentum; the reference spelled out op by op
        logits, losses = captured._step(None, ())
        eager_logits, eager_losses = _packed_losses(eager, x, y, bf16=False, label_smoothing=0.1, per_model=True)
        eager_optimizer.zero_grad(set_to_none=True)
        eager_losses.mean(1).sum().backward()
        eager_optimizer.step()
        _enforce(eager, eager_keep, eager_optimizer)
        assert torch.equal(logits, eager_logits.detach()) and torch.equal(losses, eager_losses.detach())
    for name, value in eager.params.items():
        assert torch.equal(packed.params[name], value), name
    assert captured._full(Batch(x, y, None)) and not captured._full(Batch(x[:, :8], y[:, :8], None))
    assert captured._full(Batch(x[0], y[0], None)) and not captured._full(Batch(x[0, :8], y[0, :8], None))
    momentum = [s["momentum_buffer"] for s in optimizer.state.values()]
    written = captured._written_tensors()
    assert len(written) == len(packed.params) + len(packed.buffers) + len(momentum)
    assert all(any(t is w for w in written) for t in [*packed.params.values(), *packed.buffers.values(), *momentum])


def test_a_packed_job_that_never_captures_says_so(caplog, monkeypatch):
    """cuda_graphs where capture is supported (faked here) but no batch is full: one warning at the end."""
    import logging
    from dataclasses import replace

    import pracset.train.packed as packed_module

    monkeypatch.setattr(packed_module, "unsupported_reason", lambda config, device, sharded: None)
    loader = DeviceLoader(_data(10, 0), 16, (0.5,), (0.25,), shuffle=True, seed=3)  # one partial batch an epoch
    models, masks, _ = models_and_twins(2)
    with caplog.at_level(logging.WARNING, logger="pracset.train.packed"):
        fit_packed(models, masks, loader, None, replace(CONFIG, cuda_graphs=True), stages=["a", "b"])
    assert [r.getMessage() for r in caplog.records if "cuda_graphs" in r.getMessage()] == [
        "cuda_graphs: no step of this packed job could be captured (every batch partial, or the optimizer's state "
        "never complete); it trained without capture"]
