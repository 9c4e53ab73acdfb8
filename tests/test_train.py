import math
import re

import json

import pytest
from hostile import RunsCode
import torch
import torch.nn.functional as F

from pracset.data import DataConfig, load_dataset
from pracset.errors import UnknownNameError
from pracset.models import build_model
from pracset.train import Callback, IterationLedger, TrainConfig, Trainer, evaluate, lr_factor
from pracset.train.run import input_spec, make_loaders

CPU = torch.device("cpu")


def setup(digits, **overrides):
    config = TrainConfig(**{"epochs": 3, "batch_size": 100, "lr": 0.05, **overrides})
    model = build_model("mlp", input_spec(digits), seed=config.seed)
    train, test = make_loaders(digits, config, CPU)
    return config, model, train, test


class Recorder(Callback):
    def __init__(self):
        self.steps, self.epochs, self.indices, self.loss_ok, self.grads_seen = [], [], [], [], []

    def before_optimizer_step(self, state, out):
        self.grads_seen.append(all(p.grad is not None for p in state.model.parameters()))

    def on_batch_end(self, state, out):
        self.steps.append(out.step)
        self.epochs.append(out.epoch)
        self.indices.append(out.index.clone())
        self.loss_ok.append(torch.allclose(out.losses, F.cross_entropy(out.logits, out.labels, reduction="none")))


def test_callbacks_see_indices_logits_losses_and_steps(digits):
    config, model, train, test = setup(digits)
    rec = Recorder()
    state = Trainer(config).fit(model, train, test, [rec])
    per_epoch = math.ceil(1438 / 100)
    assert rec.steps == list(range(3 * per_epoch)) and state.step == 3 * per_epoch
    assert rec.epochs == [e for e in range(3) for _ in range(per_epoch)]
    for epoch in range(3):  # every epoch presents each example exactly once
        ids = torch.cat(rec.indices[epoch * per_epoch:(epoch + 1) * per_epoch])
        assert sorted(ids.tolist()) == list(range(1438))
    assert all(rec.loss_ok) and all(rec.grads_seen)


def test_ledger_counts_a_scripted_run(digits):
    config, model, train, test = setup(digits, eval_every=2)
    ledger = IterationLedger()
    Trainer(config, ledger=ledger, stage="dense").fit(model, train, test)
    evaluate(model, train, ledger=ledger, stage="probe", kind="probe")
    dense, probe = ledger.stages["dense"], ledger.stages["probe"]
    assert dense.train_iterations == 3 * 15 and dense.train_examples == 3 * 1438
    assert dense.eval_examples == 2 * 359 and dense.eval_batches == 2  # epochs 2 and 3 (the last)
    assert probe.probe_examples == 1438 and probe.probe_batches == 15 and probe.train_iterations == 0
    total = ledger.to_dict()["total"]
    assert total["forward_examples"] == 3 * 1438 + 2 * 359 + 1438
    assert IterationLedger.from_dict(ledger.to_dict()).to_dict() == ledger.to_dict()


def test_after_optimizer_step_can_hold_weights_at_zero(digits):
    config, model, train, test = setup(digits)
    weight = model.net[1].weight
    mask = torch.rand_like(weight) > 0.5

    class Masker(Callback):
        def after_optimizer_step(self, state, out):
            with torch.no_grad():
                weight.mul_(mask)

    Trainer(config).fit(model, train, None, [Masker()])
    assert torch.count_nonzero(weight[~mask]) == 0
    assert torch.count_nonzero(weight[mask]) == int(mask.sum())


def test_a_callback_can_stop_training(digits):
    config, model, train, test = setup(digits, epochs=10)

    class StopAtTwo(Callback):
        def on_epoch_end(self, state, metrics):
            state.stop_requested = state.epoch == 2

    state = Trainer(config).fit(model, train, test, [StopAtTwo()])
    assert state.epoch == 2 and len(state.history) == 2


def test_resume_gives_the_same_result_as_an_uninterrupted_run(digits, tmp_path):
    config, model, train, test = setup(digits, epochs=4, crop_padding=1, flip=True)
    full = Trainer(config).fit(model, train, test)

    class Crash(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt

    _, model2, train2, test2 = setup(digits, epochs=4, crop_padding=1, flip=True)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, checkpoint=tmp_path / "ckpt.pt").fit(model2, train2, test2, [Crash()])
    _, model3, train3, test3 = setup(digits, epochs=4, crop_padding=1, flip=True, seed=0)
    torch.nn.init.zeros_(model3.net[1].weight)  # the checkpoint must overwrite everything
    resumed = Trainer(config, checkpoint=tmp_path / "ckpt.pt", resume=True).fit(model3, train3, test3)
    assert resumed.step == full.step
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)
    strip = lambda h: [{k: v for k, v in m.items() if k != "seconds"} for m in h]
    assert strip(resumed.history) == strip(full.history)


def test_training_learns_digits(digits):
    config, model, train, test = setup(digits, epochs=10, lr=0.1)
    state = Trainer(config).fit(model, train, test)
    assert state.history[-1]["test_accuracy"] > 0.9


def test_lr_schedules():
    step = TrainConfig(epochs=10, milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(s, 100, 10, step) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    warm = TrainConfig(epochs=10, warmup_epochs=2)
    assert [lr_factor(s, 100, 10, warm) for s in (0, 9, 19, 20)] == pytest.approx([0.05, 0.5, 1.0, 1.0])
    cosine = TrainConfig(epochs=10, schedule="cosine")
    assert [lr_factor(s, 100, 10, cosine) for s in (0, 50, 100)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)


def test_unknown_optimizer_lists_valid_names(digits):
    config, model, train, test = setup(digits, optimizer="adam")
    with pytest.raises(UnknownNameError, match="valid names: adamw, nesterov, sgd"):
        Trainer(config).fit(model, train, test)


@pytest.mark.parametrize("optimizer", ["nesterov", "adamw"])
def test_other_optimizers_train(digits, optimizer):
    config, model, train, test = setup(digits, optimizer=optimizer, lr=0.01 if optimizer == "adamw" else 0.05, epochs=4)
    state = Trainer(config).fit(model, train, test)
    assert state.history[-1]["test_accuracy"] > 0.8


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path):
    """A checkpoint is loaded with weights_only=True: a pickled call is refused with one line, never run."""
    import pytest

    from pracset.data import DataConfig, load_dataset
    from pracset.errors import ConfigError
    from pracset.models import build_model
    from pracset.train import TrainConfig, Trainer

    marker = tmp_path / "ran"
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"model": RunsCode(marker)}, checkpoint)
    data = load_dataset(DataConfig("digits"))
    config = TrainConfig(epochs=1, batch_size=64)
    train, test = make_loaders(data, config, torch.device("cpu"))
    trainer = Trainer(config, checkpoint=checkpoint, resume=True)
    with pytest.raises(ConfigError, match=r"checkpoint.pt is not a checkpoint pracset can load safely \(.*\); remove"):
        trainer.fit(build_model("mlp", input_spec(data)), train, test)
    assert not marker.exists()


@pytest.mark.parametrize("changes, message", [
    ({"lr": float("inf")}, "lr must be a finite number, got inf"),
    ({"weight_decay": float("nan")}, "weight_decay must be a finite number, got nan"),
    ({"warmup_epochs": float("inf")}, "warmup_epochs must be a finite number, got inf"),
    ({"seed": -1}, "seed must be an integer from 0 to 4294967295, got -1"),
    ({"seed": 2**32}, "seed must be an integer from 0 to 4294967295, got 4294967296"),
])
def test_values_numpy_and_torch_would_reject_are_refused_when_the_config_is_made(changes, message):
    from pracset.errors import ConfigError
    from pracset.train import TrainConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        TrainConfig(**changes)


def test_a_bad_value_on_the_command_line_stops_a_build_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from pracset.cli import main
    from pracset.errors import ConfigError
    from pracset.config import from_dict
    from pracset.selection import SelectionConfig
    from pracset.train import TrainConfig

    monkeypatch.chdir(tmp_path)
    for flags, message in ((["--lr", "nan"], "lr must be a finite number, got nan"),
                           (["--random-seed", "-3"], "random_seed must be an integer from 0 to 4294967295, got -3")):
        assert main(["build", "--arch", "mlp", "--out", "m.parquet", "--epochs", "1", "-q", *flags]) == 2
        assert message in capsys.readouterr().err
        assert list(tmp_path.iterdir()) == []  # no .partial left to block the corrected command
    with pytest.raises(ConfigError, match="train.lr must be a finite number"):
        from_dict(TrainConfig, {"lr": float("inf")}, where="train")
    with pytest.raises(ConfigError, match="random_seed must be an integer"):
        SelectionConfig(random_seed=2**40)


def test_each_epoch_logs_the_learning_rate_it_trained_with(tmp_path):
    """Step schedule at 1/2 and 3/4 of 4 epochs: the epochs train at 0.1, 0.1, 0.01, 0.001 (not the next rates)."""
    from pracset.data import DataConfig, load_dataset
    from pracset.train import TrainConfig, Trainer

    data = load_dataset(DataConfig("digits"))
    config = TrainConfig(epochs=4, batch_size=64, lr=0.1, milestones=(0.5, 0.75), gamma=0.1)
    train, test = make_loaders(data, config, torch.device("cpu"))
    state = Trainer(config).fit(build_model("mlp", input_spec(data)), train, test)
    assert [h["lr"] for h in state.history] == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_tensorboard_scalars_are_written_per_epoch(tmp_path):
    """--tensorboard: one point per epoch of each scalar, at the epoch's last step, equal to metrics.jsonl's."""
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pracset.cli import main

    assert main(["train", "--data", "digits", "--arch", "mlp", "--epochs", "3", "-q", "--tensorboard",
                 "--out", str(tmp_path / "run")]) == 0
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "dense"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/accuracy")]
    assert steps == [12, 24, 36]  # 1438 examples at batch 128: 12 steps per epoch
    for scalar, key in (("train/accuracy", "train_accuracy"), ("test/loss", "test_loss"), ("lr", "lr")):
        assert [e.value for e in events.Scalars(scalar)] == pytest.approx([m[key] for m in logged], rel=1e-6)
    assert [e.value for e in events.Scalars("examples_per_epoch")] == [1438, 1438, 1438]
    assert [e.value for e in events.Scalars("sparsity")] == [0.0, 0.0, 0.0]  # dense training


def test_tensorboard_without_the_package_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    import sys

    from pracset.cli import main

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # an import of it now fails
    code = main(["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "-q", "--tensorboard",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("pracset train: error: --tensorboard needs the tensorboard package: "
                   "pip install 'pracset[tensorboard]'\n")
    assert not (tmp_path / "run").exists()


def test_the_metrics_log_grows_one_line_per_epoch_while_the_run_runs(tmp_path):
    """Watched from inside the run: at the start of epoch k the log holds the k epochs already done."""
    data = load_dataset(DataConfig("digits"))
    config = TrainConfig(epochs=3, batch_size=256, warmup_epochs=0)
    model = build_model("mlp", input_spec(data), seed=0)
    train, test = make_loaders(data, config, torch.device("cpu"))
    log_path = tmp_path / "metrics.jsonl"
    seen = []

    class Watch(Callback):
        def on_epoch_start(self, state):
            seen.append([json.loads(line)["epoch"] for line in log_path.read_text().splitlines()])

    Trainer(config, metrics_log=log_path).fit(model, train, test, [Watch()])
    assert seen == [[], [1], [1, 2]]
    assert [json.loads(line)["epoch"] for line in log_path.read_text().splitlines()] == [1, 2, 3]


def test_label_smoothing_is_the_loss_trained_on_and_evaluation_stays_plain_cross_entropy():
    """Callbacks see (1 - e) * -log p_y + e * mean_k(-log p_k) per example; evaluation reports plain cross-entropy."""
    from torch.utils.data import DataLoader, TensorDataset

    from pracset.errors import ConfigError

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=gen), torch.tensor([0, 1, 2, 2, 1, 0])
    smoothing = 0.2
    seen = []

    class Losses(Callback):
        def on_batch_end(self, state, out):
            seen.append((out.logits.clone(), out.labels.clone(), out.losses.clone()))

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    config = TrainConfig(epochs=1, batch_size=3, lr=0.1, warmup_epochs=0, label_smoothing=smoothing)
    batches = DataLoader(TensorDataset(x, y, torch.arange(6)), batch_size=3)
    state = Trainer(config).fit(model, batches, DataLoader(TensorDataset(x, y), batch_size=3), [Losses()])
    assert len(seen) == 2
    for logits, labels, losses in seen:
        for logit, label, loss in zip(logits.tolist(), labels.tolist(), losses.tolist()):
            log_p = [v - math.log(sum(math.exp(u) for u in logit)) for v in logit]
            by_hand = (1 - smoothing) * -log_p[label] + smoothing * -sum(log_p) / 3
            assert loss == pytest.approx(by_hand, rel=1e-5)
    metrics = state.history[-1]
    assert metrics["train_loss"] == pytest.approx(float(torch.cat([s[2] for s in seen]).mean()), rel=1e-6)
    assert metrics["test_loss"] == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)  # not smoothed
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=rf"label_smoothing must lie in \[0, 1\), got {bad}"):
            TrainConfig(label_smoothing=bad)


# ----------------------------------------------------------------------------- TrainConfig.cuda_graphs
def _fit_digits_with_recorder_and_mask(digits, **overrides):
    """Three epochs of the digits MLP with the recorder and a fixed 50% mask; the last batch is partial."""
    from pracset.sparse import Mask, StaticMask, prune_to_sparsity
    from pracset.stats import ExampleRecorder

    config, model, train, test = setup(digits, **overrides)
    mask = prune_to_sparsity(model, Mask.ones(model), 0.5)
    recorder = ExampleRecorder(len(digits.train))
    state = Trainer(config).fit(model, train, test, [recorder, StaticMask(mask)])
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in state.history]
    return history, model, recorder.statistics()


def test_cuda_graphs_on_the_cpu_warn_once_and_train_exactly_as_without(digits, caplog):
    import logging

    without = _fit_digits_with_recorder_and_mask(digits)
    with caplog.at_level(logging.WARNING, logger="pracset.train"):
        with_flag = _fit_digits_with_recorder_and_mask(digits, cuda_graphs=True)
    warnings = [r.getMessage() for r in caplog.records if "cuda_graphs" in r.getMessage()]
    assert warnings == ["cuda_graphs: it needs a CUDA device and the run is on cpu; training without capture"]
    assert with_flag[0] == without[0]  # every epoch's metrics, bit for bit
    for a, b in zip(with_flag[1].state_dict().values(), without[1].state_dict().values()):
        assert torch.equal(a, b)
    for name, column in without[2].columns().items():
        assert (with_flag[2].columns()[name].tobytes() == column.tobytes()), name


def test_which_steps_may_replay_a_captured_graph(digits):
    """Callbacks that leave the optimizer hooks alone allow every step; sparse methods all but their mask updates."""
    from pracset.sparse import GraNet, GraNetConfig, Mask, RigL, RigLConfig, StaticMask
    from pracset.stats import ExampleRecorder

    class ReadsGradients(Callback):
        def before_optimizer_step(self, state, out):
            pass

    class Counts(Callback):
        def on_batch_end(self, state, out):
            pass

    assert Counts().capturable(5) and ExampleRecorder(10).capturable(5)
    assert not ReadsGradients().capturable(5)
    model = build_model("mlp", input_spec(digits), seed=0)
    assert all(StaticMask(Mask.ones(model)).capturable(step) for step in range(300))
    rigl = RigL(RigLConfig(sparsity=0.5, delta_t=4))
    granet = GraNet(GraNetConfig(sparsity=0.8, init_sparsity=0.5, delta_t=4, prune_end=0.5))
    for method in (rigl, granet):  # a fit binds each to a model and sets its schedule
        config, model, train, test = setup(digits, epochs=1)
        Trainer(config).fit(model, train, callbacks=[method])
    steps = range(len(train))
    # RigL updates at every 4th step up to T_end = floor(0.75 * 15) = 11; GraNet after every 4th completed step
    assert [s for s in steps if not rigl.capturable(s)] == [s for s in steps if rigl.should_update(s)] == [0, 4, 8]
    assert [s for s in steps if not granet.capturable(s)] == [3, 7, 11]


def test_a_mask_change_rewrites_the_multipliers_a_captured_graph_reads(digits):
    """A graph records the addresses of the mask multipliers: set_mask must write the new mask into them."""
    from pracset.sparse import Mask, StaticMask, prune_to_sparsity

    config, model, train, test = setup(digits, epochs=1)
    method = StaticMask(Mask.ones(model))
    Trainer(config).fit(model, train, callbacks=[method])
    before = {name: keep for name, keep in method._keep.items()}
    new_mask = prune_to_sparsity(model, method.mask, 0.5)
    method.set_mask(new_mask)
    for name, keep in method._keep.items():
        assert keep is before[name] and torch.equal(keep.bool(), new_mask[name])


def test_a_captured_step_falls_back_to_the_eager_step_without_touching_the_device(digits):
    """The gates of CapturedStep.replay, on the CPU: no capture is tried before a step qualifies."""
    from pracset.train.graphs import CapturedStep, unsupported_reason

    config, model, train, test = setup(digits, epochs=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step = CapturedStep(model, optimizer, batch_size=100, bf16=False)
    batch = next(iter(train))
    state = type("State", (), {"step": 1})()

    class NeedsHost(Callback):
        def after_optimizer_step(self, state, out):
            pass

    assert step.replay(batch, state, [NeedsHost()]) is None  # a callback needs the host at this step
    assert step.replay(batch, state, []) is None              # no momentum buffers yet: the first step is eager
    F.cross_entropy(model(batch.x), batch.y).backward()
    optimizer.step()                                          # now they exist
    assert step.replay(batch._replace(x=batch.x[:50], y=batch.y[:50]), state, []) is None  # a partial batch
    assert step.replay(batch, state, [NeedsHost()]) is None
    assert step.graph is None and step.x is None and not step.failed
    assert unsupported_reason(config, torch.device("cpu"), sharded=False) == (
        "it needs a CUDA device and the run is on cpu")
    adamw = TrainConfig(optimizer="adamw")
    assert unsupported_reason(adamw, torch.device("cuda"), sharded=False) == (
        "it supports the sgd and nesterov optimizers, not adamw")
    assert unsupported_reason(config, torch.device("cuda"), sharded=True) == "it does not run under torch.distributed"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_a_captured_run_matches_the_eager_run_on_a_gpu(digits):
    """Written for a GPU (skipped elsewhere): fp32, so the two runs differ only by the fused SGD kernel's rounding."""
    cuda = torch.device("cuda")

    def run(flag):
        from pracset.sparse import Mask, StaticMask, prune_to_sparsity

        config = TrainConfig(epochs=3, batch_size=100, lr=0.05, precision="fp32", cuda_graphs=flag)
        model = build_model("mlp", input_spec(digits), seed=0)
        mask = prune_to_sparsity(model, Mask.ones(model), 0.5)
        train, test = make_loaders(digits, config, cuda)
        state = Trainer(config).fit(model, train, test, [StaticMask(mask)])
        return state.history, model, mask

    (eager, eager_model, _), (captured, captured_model, mask) = run(False), run(True)
    for a, b in zip(captured, eager):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=0.01)
    params = dict(captured_model.named_parameters())
    for name, keep in mask.items():
        assert not params[name][~keep.to(cuda)].any()  # the graph's mask multiply held the pruned weights at 0
    for a, b in zip(captured_model.parameters(), eager_model.parameters()):
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-5)


def test_the_tensorboard_sparsity_counts_zero_weights_of_conv_and_linear_layers_only():
    from pracset.train.tensorboard import weight_sparsity

    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 4.0, 5.0]]))
        model[0].bias.zero_()  # biases and normalisation weights are not pruned, so not counted
    assert weight_sparsity(model) == 3 / 8


def test_a_schedule_continued_from_a_step_gives_that_step_s_rate_and_then_the_next():
    """Rewinding to step 3 of a 10-step linear warm-up: rate 0.1 x 4/10, then 0.1 x 5/10 (hand-computed)."""
    from pracset.train.optim import make_scheduler, start_schedule_at

    config = TrainConfig(lr=0.1, warmup_epochs=1, epochs=2)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    scheduler = make_scheduler(optimizer, total_steps=20, steps_per_epoch=10, config=config)
    start_schedule_at(optimizer, scheduler, 3)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.04)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
