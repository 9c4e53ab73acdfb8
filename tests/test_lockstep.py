"""Packing across runs: models with their own data order, IMP seeds in lockstep, PrAC tickets with controls."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pracset.data import DataConfig, DeviceLoader
from pracset.errors import ConfigError
from pracset.pipeline import pipeline_from_dict, run_pipeline
from pracset.sparse import StaticMask
from pracset.tickets import IMPConfig, Snapshot, find_tickets, train_imp_seeds_packed
from pracset.train import TrainConfig, Trainer
from pracset.train.packed import fit_packed
from tests.test_packed import CONFIG, SmallBN, _data, _random_mask, models_and_twins

ONE_EXAMPLE = 1.01 / 359  # digits' test split holds 359 examples


@pytest.mark.parametrize("start_step", [0, 2])  # 2: the rewound schedule starts inside the first epoch
def test_packed_models_with_their_own_data_order_train_as_they_would_alone(start_step):
    """Models 0 and 1 read one shuffling, model 2 another: each ends as the Trainer leaves it on its own loader,
    and each snapshot is the Snapshot callback's state at that step."""
    train, test = _data(64, 0), _data(32, 1)
    first, second = (DeviceLoader(train, 16, (0.5,), (0.25,), shuffle=True, crop_padding=1, flip=True, seed=s)
                     for s in (3, 4))
    test_loader = DeviceLoader(test, 32, (0.5,), (0.25,))
    models, masks, alone = models_and_twins(3)
    readers = [first, first, second]
    run = fit_packed(models, masks, readers, test_loader, CONFIG, stages=["a", "b", "c"], snapshot_step=5,
                     start_step=start_step)
    for k, (model, mask, loader) in enumerate(zip(alone, masks, readers)):
        snapshot = Snapshot(5)
        state = Trainer(CONFIG).fit(model, loader, test_loader, [StaticMask(mask), snapshot], start_step=start_step)
        for name, value in model.state_dict().items():
            torch.testing.assert_close(models[k].state_dict()[name].float(), value.float(), atol=2e-5, rtol=1e-4)
            torch.testing.assert_close(run.snapshots[k][name].float(), snapshot.state[name].float(),
                                       atol=2e-5, rtol=1e-4)
        assert list(run.snapshots[k]) == list(snapshot.state)  # the state_dict's order, as rewind.pt holds it
        for mine, theirs in zip(run.histories[k], state.history):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
            assert mine["train_accuracy"] == theirs["train_accuracy"]
    # the precondition: the two loaders really read different orders
    first.set_epoch(0), second.set_epoch(0)
    assert not torch.equal(next(iter(first)).index, next(iter(second)).index)


def test_a_snapshot_at_the_start_is_the_initial_state_and_loaders_must_agree_in_length():
    loader = DeviceLoader(_data(64, 0), 16, (0.5,), (0.25,), shuffle=True, seed=3)
    torch.manual_seed(0)
    model = SmallBN()
    mask = _random_mask(model, 0)
    before = {k: v * mask[k] if k in mask else v.clone() for k, v in model.state_dict().items()}
    run = fit_packed([model], [mask], loader, None, CONFIG, stages=["a"], snapshot_step=0)
    for name, value in before.items():  # the initial weights, masked (as StaticMask leaves them before step 0)
        assert torch.equal(run.snapshots[0][name], value)
    shorter = DeviceLoader(_data(48, 2), 16, (0.5,), (0.25,), shuffle=True, seed=3)
    models = [SmallBN(), SmallBN()]
    with pytest.raises(ConfigError, match="same number of examples in the same number of steps"):
        fit_packed(models, [_random_mask(m, 0) for m in models], [loader, shorter], None, CONFIG, stages=["a", "b"])
    with pytest.raises(ConfigError, match="snapshot step 99 is outside"):
        fit_packed(models, [_random_mask(m, 0) for m in models], loader, None, CONFIG, stages=["a", "b"],
                   snapshot_step=99)


def _tickets(path) -> dict:
    return json.loads((path / "tickets.json").read_text())


def _stage_metrics(path, stage) -> dict:
    return json.loads((path / stage / "metrics.json").read_text())


def test_imp_seeds_in_lockstep_equal_the_seeds_one_by_one(tmp_path, digits):
    """Two seeds' rounds and controls as packed jobs: the same tickets, controls and ledger as each seed alone,
    and the same rewind point (taken after one epoch, inside the packed job)."""
    train = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    imp = IMPConfig(rounds=2, controls=True, rewind="1ep", pack_controls="on")
    runs = [(tmp_path / f"packed-{s}", TrainConfig(**{**train.__dict__, "seed": s})) for s in (0, 1)]
    train_imp_seeds_packed(DataConfig("digits"), "mlp", runs, imp=imp, dataset=digits)
    for out, seed_train in runs:
        assert not (out / "tickets.json").exists()  # trained, not summarised: find_tickets reads the stages back
        for stage in ("round-00", "round-01", "round-02", "control-round-02-reinit", "control-round-02-random-mask"):
            assert _stage_metrics(out, stage)["packed"] is True
        packed = find_tickets("imp", DataConfig("digits"), "mlp", out, train=seed_train, imp=imp, dataset=digits,
                              resume=True)
        alone_dir = out.with_name(out.name.replace("packed", "alone"))
        alone = find_tickets("imp", DataConfig("digits"), "mlp", alone_dir, train=seed_train, dataset=digits,
                             imp=IMPConfig(rounds=2, controls=True, rewind="1ep", pack_controls="off"))
        assert packed["ledger"] == alone["ledger"]  # nothing trained twice, nothing missing
        for mine, theirs in zip(packed["tickets"], alone["tickets"]):
            assert mine["sparsity"] == theirs["sparsity"]
            assert mine["test_accuracy"] == pytest.approx(theirs["test_accuracy"], abs=ONE_EXAMPLE)
            for key in theirs.get("controls", {}):
                assert mine["controls"][key] == pytest.approx(theirs["controls"][key], abs=ONE_EXAMPLE)
        mine = torch.load(out / "rewind.pt", weights_only=True)
        theirs = torch.load(alone_dir / "rewind.pt", weights_only=True)
        for name, value in theirs.items():
            torch.testing.assert_close(mine[name], value, atol=1e-5, rtol=1e-4)
    # the seeds are different runs: different initialisations and data orders
    first, second = (torch.load(out / "rewind.pt", weights_only=True) for out, _ in runs)
    assert not all(torch.equal(first[n], second[n]) for n in first)


def test_a_stage_started_alone_continues_alone_and_a_finished_run_is_left_alone(tmp_path, digits, monkeypatch):
    """The executor rule: a stage with a Trainer checkpoint (started one by one, then killed) trains eagerly and
    resumes from it while the other seeds' stages of its round pack; a finished run is not touched.

    Mutation caught: ``packable`` ignoring ``started_alone`` (the started stage then packs, and its metrics say
    ``packed``), or the lockstep training a finished run again (its summary changes).
    """
    from pracset.tickets import stages

    train = TrainConfig(epochs=1, batch_size=256, lr=0.05)
    imp = IMPConfig(rounds=1, pack_controls="on")
    done, started, fresh, other = (tmp_path / name for name in ("done", "started", "fresh", "other"))
    runs = [(done, train), (started, TrainConfig(**{**train.__dict__, "seed": 1})),
            (fresh, TrainConfig(**{**train.__dict__, "seed": 2})),
            (other, TrainConfig(**{**train.__dict__, "seed": 3}))]
    find_tickets("imp", DataConfig("digits"), "mlp", done, train=train, imp=imp, dataset=digits)
    summary = (done / "tickets.json").read_text()
    alone = []
    eager = stages._train_eagerly
    monkeypatch.setattr(stages, "_train_eagerly", lambda job: alone.append(str(job.stage.directory)) or eager(job))
    killed = {"once": True}
    real_fit = stages.fit_packed

    def fit_then_die(*args, **kwargs):  # the lockstep's first packed job dies before it trains
        if killed.pop("once", False):
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(stages, "fit_packed", fit_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_imp_seeds_packed(DataConfig("digits"), "mlp", runs[1:], imp=imp, dataset=digits)
    # As if a one-by-one run had started round 0 of seed 1 since, and been killed after its first epoch:
    find_tickets_started = TrainConfig(**{**train.__dict__, "seed": 1})
    (started / "round-00").mkdir(exist_ok=True)
    with monkeypatch.context() as patch:
        from pracset.train import loop

        def stop_after_checkpoint(self, state, callbacks):
            real_save(self, state, callbacks)
            raise KeyboardInterrupt

        real_save = loop.Trainer._save_checkpoint
        patch.setattr(loop.Trainer, "_save_checkpoint", stop_after_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            find_tickets("imp", DataConfig("digits"), "mlp", started, train=find_tickets_started, imp=imp,
                         dataset=digits, resume=True)  # round 0 of one run is a group of one: the Trainer
    assert (started / "round-00" / "checkpoint.pt").is_file()
    alone.clear()
    train_imp_seeds_packed(DataConfig("digits"), "mlp", runs, imp=imp, dataset=digits)
    assert (done / "tickets.json").read_text() == summary
    assert alone == [str(started / "round-00")]
    assert "packed" not in _stage_metrics(started, "round-00")
    assert _stage_metrics(fresh, "round-00")["packed"] is True and _stage_metrics(other, "round-00")["packed"] is True
    assert _stage_metrics(started, "round-01")["packed"] is True


@pytest.mark.slow
def test_a_pipeline_trains_imp_seeds_in_lockstep_and_reports_what_one_by_one_does(tmp_path):
    base = {"name": "lockstep", "arch": "mlp", "methods": ["imp"], "seeds": [0, 1], "data": {"name": "digits"},
            "train": {"epochs": 2, "batch_size": 128}, "imp": {"rounds": 1, "controls": True}}
    for pack in ("on", "off"):
        pipeline = pipeline_from_dict({**base, "imp": {**base["imp"], "pack_controls": pack}})
        run_pipeline(pipeline, tmp_path / pack, device=torch.device("cpu"))
        for seed in (0, 1):
            run = tmp_path / pack / "mlp" / f"imp-s{seed}"
            assert _stage_metrics(run, "round-01").get("packed", False) == (pack == "on")
            assert _stage_metrics(run, "control-round-01-reinit").get("packed", False) == (pack == "on")
    for seed in (0, 1):
        mine, theirs = (_tickets(tmp_path / pack / "mlp" / f"imp-s{seed}") for pack in ("on", "off"))
        assert mine["ledger"] == theirs["ledger"]
        assert mine["final"]["test_accuracy"] == pytest.approx(theirs["final"]["test_accuracy"], abs=ONE_EXAMPLE)
        assert mine["final"]["controls"] == pytest.approx(theirs["final"]["controls"], abs=ONE_EXAMPLE)


def test_a_prac_imp_ticket_trains_packed_with_its_controls(tmp_path, digits):
    train = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    results = {}
    for pack in ("on", "off"):
        imp = IMPConfig(rounds=1, controls=True, early_bird=False, budget="linear", rewind="1ep", pack_controls=pack)
        results[pack] = find_tickets("prac-imp", DataConfig("digits"), "mlp", tmp_path / pack, train=train, imp=imp,
                                     dataset=digits)
        for stage in ("ticket-01", "control-ticket-01-reinit", "control-ticket-01-random-mask"):
            assert _stage_metrics(tmp_path / pack, stage).get("packed", False) == (pack == "on")
        assert "packed" not in _stage_metrics(tmp_path / pack, "round-00")  # a PrAC round trains on its own set
    on, off = results["on"]["tickets"][-1], results["off"]["tickets"][-1]
    assert on["test_accuracy"] == pytest.approx(off["test_accuracy"], abs=ONE_EXAMPLE)
    for key in off["controls"]:
        assert on["controls"][key] == pytest.approx(off["controls"][key], abs=ONE_EXAMPLE)
    assert results["on"]["ledger"] == results["off"]["ledger"]


@pytest.mark.slow
def test_the_fast_replication_recipe_runs_end_to_end_packed_where_it_can(tmp_path):
    """pipelines/cifar10-resnet20-fast.toml shrunk onto digits: every seed's IMP rounds and controls in lockstep,
    every PrAC-IMP ticket with its controls, and a report over the three seeds."""
    from pathlib import Path

    from pracset.pipeline import load_pipeline

    recipe = Path(__file__).parents[1] / "pipelines" / "cifar10-resnet20-fast.toml"
    pipeline = load_pipeline(recipe, overrides=[
        "data.name=digits", "arch=mlp", "transfer=['mlp']", "train.epochs=3", "train.batch_size=128",
        "train.lr=0.05", "train.warmup_epochs=0.5", "imp.rounds=2", "imp.prunable=all", "build.prunable=all",
        "imp.rewind=1ep", "imp.pack_controls=on"])
    report = run_pipeline(pipeline, tmp_path / "run", device=torch.device("cpu"))
    root = tmp_path / "run" / "mlp"
    for seed in (0, 1, 2):
        for stage in ("round-00", "round-02", "control-round-02-reinit"):
            assert _stage_metrics(root / f"imp-s{seed}", stage)["packed"] is True
        for stage in ("ticket-02", "control-ticket-02-random-mask"):
            assert _stage_metrics(root / f"prac-imp-s{seed}", stage)["packed"] is True
        assert (root / f"random-subset-s{seed}" / "tickets.json").exists()
    assert sorted({(r["method"], r["seed"]) for r in report["runs"]}) == sorted(
        (m, s) for m in ("imp", "prac-imp", "random-subset") for s in (0, 1, 2))


def test_auto_packs_small_registered_models_on_one_cuda_process_only():
    from pracset.tickets.stages import AUTO_PACK_MAX_PARAMETERS, packs

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    small = torch.nn.Linear(10, 10)  # 110 parameters
    large = torch.nn.Linear(AUTO_PACK_MAX_PARAMETERS, 1)  # one weight per input, and a bias: one over the limit
    assert packs("auto", cuda, small) and not packs("auto", cpu, small)
    assert not packs("auto", cuda, large)
    assert not packs("auto", cuda, small, python_arch=True) and not packs("auto", cuda, small, tensorboard=True)
    assert packs("on", cpu, large) and not packs("off", cuda, small)


def test_packed_jobs_are_split_evenly_and_a_model_left_alone_trains_alone(tmp_path, digits, monkeypatch):
    from pracset.tickets import stages

    assert [len(c) for c in stages.chunks(list(range(13)))] == [7, 6]  # 13 > 12: two jobs, not 12 + 1
    assert [len(c) for c in stages.chunks(list(range(25)))] == [9, 9, 7]
    assert [len(c) for c in stages.chunks(list(range(12)))] == [12] and stages.chunks([]) == []
    monkeypatch.setattr(stages, "MAX_MODELS_PER_JOB", 2)
    train = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    imp = IMPConfig(rounds=1, controls=True, early_bird=False, budget="linear", rewind="1ep", pack_controls="on")
    out = tmp_path / "run"
    packed = find_tickets("prac-imp", DataConfig("digits"), "mlp", out, train=train, imp=imp, dataset=digits)
    # ticket-01 and its two controls in the registry's (sorted) order: a job of 2, then the third alone
    assert [_stage_metrics(out, s).get("packed", False) for s in
            ("ticket-01", "control-ticket-01-random-mask", "control-ticket-01-reinit")] == [True, True, False]
    alone = find_tickets("prac-imp", DataConfig("digits"), "mlp", tmp_path / "alone", train=train, dataset=digits,
                         imp=IMPConfig(rounds=1, controls=True, early_bird=False, budget="linear", rewind="1ep",
                                       pack_controls="off"))
    assert packed["ledger"] == alone["ledger"]
    assert packed["final"]["controls"] == pytest.approx(alone["final"]["controls"], abs=ONE_EXAMPLE)


def test_a_ticket_started_alone_resumes_alone_and_its_controls_pack_without_it(tmp_path, digits, monkeypatch):
    """A run killed during ticket-01 (one by one: auto on the CPU), resumed where auto packs (a GPU): ticket-01
    continues from its checkpoint with the Trainer; its unstarted controls train as one packed job."""
    from pracset.tickets import stages
    from pracset.train.loop import Trainer

    save = Trainer._save_checkpoint

    def killed_after_first_epoch(self, state, callbacks):
        save(self, state, callbacks)
        if self.stage == "ticket-01":
            raise KeyboardInterrupt

    train = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    imp = IMPConfig(rounds=1, controls=True, early_bird=False, budget="linear")
    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "_save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        find_tickets("prac-imp", DataConfig("digits"), "mlp", out, train=train, imp=imp, dataset=digits)
    assert (out / "ticket-01" / "checkpoint.pt").exists()
    monkeypatch.setattr(Trainer, "_save_checkpoint", save)
    monkeypatch.setattr(stages, "run_packs", lambda ctx, choice: True)
    find_tickets("prac-imp", DataConfig("digits"), "mlp", out, train=train, imp=imp, dataset=digits, resume=True)
    assert "packed" not in _stage_metrics(out, "ticket-01")
    assert [_stage_metrics(out, s).get("packed") for s in
            ("control-ticket-01-reinit", "control-ticket-01-random-mask")] == [True, True]


def _fresh_models(count: int):
    models, masks, _ = models_and_twins(count)
    return models, masks


def test_a_killed_packed_job_resumes_from_its_checkpoints_exactly(tmp_path, monkeypatch):
    """Killed after epoch 2 of 3, then started again with the same checkpoint paths: the same weights, momentum
    and BN statistics (bitwise, on the CPU), histories, ledgers and rewind snapshot as a job never killed."""
    from pracset.train import packed as packed_module

    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, warmup_epochs=1, momentum=0.9, weight_decay=5e-4)

    def loaders():
        train = _data(64, 0)
        return [DeviceLoader(train, 16, (0.5,), (0.25,), shuffle=True, crop_padding=1, flip=True, seed=s)
                for s in (3, 4, 3)], DeviceLoader(_data(32, 1), 32, (0.5,), (0.25,))

    models, masks = _fresh_models(3)
    whole = fit_packed(models, masks, *loaders(), config, stages=["a", "b", "c"], snapshot_step=6)
    paths = [tmp_path / f"{k}.pt" for k in range(3)]
    save = packed_module.save_checkpoints

    def killed_after_epoch_2(*args, **kwargs):
        save(*args, **kwargs)
        if kwargs["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(packed_module, "save_checkpoints", killed_after_epoch_2)
    first, masks = _fresh_models(3)
    with pytest.raises(KeyboardInterrupt):
        fit_packed(first, masks, *loaders(), config, stages=["a", "b", "c"], snapshot_step=6, checkpoints=paths)
    monkeypatch.undo()
    epochs_trained = []
    monkeypatch.setattr(DeviceLoader, "set_epoch", lambda self, e: (epochs_trained.append(e),
                                                                    setattr(self, "epoch", e)))
    again, masks = _fresh_models(3)
    resumed = fit_packed(again, masks, *loaders(), config, stages=["a", "b", "c"], snapshot_step=6,
                         checkpoints=paths)
    assert sorted(set(epochs_trained)) == [2]  # only the last epoch was trained again
    for k in range(3):
        for name, value in models[k].state_dict().items():
            assert torch.equal(again[k].state_dict()[name], value), name
        for name, value in whole.snapshots[k].items():
            assert torch.equal(resumed.snapshots[k][name], value), name
        drop = [{key: v for key, v in h.items() if key != "seconds"} for h in whole.histories[k]]
        assert [{key: v for key, v in h.items() if key != "seconds"} for h in resumed.histories[k]] == drop
        assert resumed.ledgers[k].to_dict() == whole.ledgers[k].to_dict()


def test_checkpoints_of_another_job_are_not_resumed(tmp_path):
    from pracset.train.packed import load_checkpoints

    loader = DeviceLoader(_data(64, 0), 16, (0.5,), (0.25,), shuffle=True, seed=3)
    models, masks = _fresh_models(2)
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    fit_packed(models, masks, loader, None, CONFIG, stages=["a", "b"], checkpoints=paths)
    device = torch.device("cpu")
    assert [one["epoch"] for one in load_checkpoints(paths, device)] == [2, 2]
    assert load_checkpoints(paths[::-1], device) is None  # the same files, another job (another order)
    assert load_checkpoints(paths[:1], device) is None  # a job of one of them
    a, b = paths[0].read_bytes(), paths[1].read_bytes()
    paths[0].write_bytes(b), paths[1].write_bytes(a)  # each file holds the other model's slice
    assert load_checkpoints(paths, device) is None
    paths[1].write_bytes(b"not a checkpoint")
    assert load_checkpoints(paths, device) is None


@pytest.mark.parametrize("tamper, message", [
    (lambda one: one["state"].update({next(iter(one["state"])): torch.zeros(3)}), r"its model: '.*' has shape \(3,\)"),
    (lambda one: one["state"].pop(next(iter(one["state"]))), r"its model lacks 1 of the model's tensors"),
    (lambda one: one.pop("history"), r"lacks 'history'"),
    (lambda one: one.update(step=-4), r"step must be a non-negative integer"),
    (lambda one: one.update(optimizer=5), r"does not hold this job's optimizer and schedule \(TypeError\)"),
])
def test_a_packed_checkpoint_of_the_wrong_structure_is_one_line_naming_it(tmp_path, tamper, message):
    """A packed checkpoint that carries the job's signature but the wrong structure (a run directory may come
    from anyone) is refused in one RunFileError naming the file, before the stacked weights are touched."""
    from pracset.errors import RunFileError

    loader = DeviceLoader(_data(64, 0), 16, (0.5,), (0.25,), shuffle=True, seed=3)
    paths = [tmp_path / "a.pt", tmp_path / "b.pt"]
    models, masks = _fresh_models(2)
    fit_packed(models, masks, loader, None, CONFIG, stages=["a", "b"], checkpoints=paths)
    for path in paths:  # every file alike: the job's signature and step still agree
        one = torch.load(path, weights_only=True)
        tamper(one)
        torch.save(one, path)
    again, masks = _fresh_models(2)
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in again]
    with pytest.raises(RunFileError, match=message) as error:
        fit_packed(again, masks, loader, None, CONFIG, stages=["a", "b"], checkpoints=paths)
    assert str(paths[0]) in str(error.value) or "optimizer" in str(error.value)
    for model, state in zip(again, before):
        for name, value in model.state_dict().items():
            assert torch.equal(value, state[name]), name


def test_a_lockstep_killed_mid_round_continues_from_its_packed_checkpoints(tmp_path, digits, monkeypatch):
    from pracset.train import packed as packed_module

    train = TrainConfig(epochs=2, batch_size=128, lr=0.05)
    imp = IMPConfig(rounds=1, controls=True, pack_controls="on")
    runs = [(tmp_path / f"s{s}", TrainConfig(**{**train.__dict__, "seed": s})) for s in (0, 1)]
    save = packed_module.save_checkpoints
    round_one = [p / "round-01" / "packed-checkpoint.pt" for p, _ in runs]

    def killed_in_round_one(paths, *args, **kwargs):
        save(paths, *args, **kwargs)
        if "round-01" in str(paths[0]):
            raise KeyboardInterrupt

    monkeypatch.setattr(packed_module, "save_checkpoints", killed_in_round_one)
    with pytest.raises(KeyboardInterrupt):
        train_imp_seeds_packed(DataConfig("digits"), "mlp", runs, imp=imp, dataset=digits)
    assert all(path.exists() for path in round_one)  # round 1 of both seeds: one packed job (controls come later)
    assert all((p / "round-00" / "metrics.json").exists() and not (p / "round-00" / "packed-checkpoint.pt").exists()
               for p, _ in runs)  # a completed stage keeps no checkpoint
    monkeypatch.undo()
    epochs = []
    monkeypatch.setattr(DeviceLoader, "set_epoch", lambda self, e: (epochs.append(e), setattr(self, "epoch", e)))
    train_imp_seeds_packed(DataConfig("digits"), "mlp", runs, imp=imp, dataset=digits)
    # round 1 continued at its second epoch (each seed's loader), then the 4 controls trained both epochs
    assert epochs == [1, 1, 0, 0, 1, 1]
    assert not any(path.exists() for path in round_one)
    for out, seed_train in runs:
        summary = find_tickets("imp", DataConfig("digits"), "mlp", out, train=seed_train, imp=imp, dataset=digits,
                               resume=True)
        # ceil(1438 / 128) = 12 steps an epoch, 2 epochs: booked once, though trained in two parts
        assert summary["final"]["controls"] and summary["ledger"]["stages"]["round-01"]["train_iterations"] == 24


@pytest.mark.parametrize("pack", ["off", "on"])
def test_imp_leaves_the_dense_layers_out_of_every_mask_one_by_one_and_in_lockstep(tmp_path, digits, pack):
    """dense_layers = ["net.1"]: the MLP's first layer is never masked; the others lose 20% a round."""
    from pracset.sparse.mask import Mask

    train = TrainConfig(epochs=1, batch_size=256, lr=0.05)
    imp = IMPConfig(rounds=1, dense_layers=("net.1",), pack_controls=pack)
    runs = [(tmp_path / f"s{s}", TrainConfig(**{**train.__dict__, "seed": s})) for s in (0, 1)]
    if pack == "on":
        train_imp_seeds_packed(DataConfig("digits"), "mlp", runs, imp=imp, dataset=digits)
    for out, seed_train in runs:
        find_tickets("imp", DataConfig("digits"), "mlp", out, train=seed_train, imp=imp, dataset=digits, resume=True)
        for r, kept in ((0, 1.0), (1, 0.8)):
            mask = Mask.load(out / f"round-{r:02d}" / "mask.pt")
            assert sorted(mask) == ["net.3.weight", "net.5.weight"]
            total = sum(t.numel() for t in mask.values())
            assert sum(int(t.sum()) for t in mask.values()) == round(kept * total)


def test_the_executor_rule_groups_jobs_by_recipe_examples_and_steps(tmp_path):
    """``plan`` by hand: jobs that differ only in their seed pack; another start step, other examples, a callback,
    a changing mask or a stage started alone each train alone; ``off`` packs nothing; order is kept.

    Mutations caught: ``pack_key`` without the start step or the examples; ``packable`` ignoring callbacks,
    ``fixed_mask`` or a Trainer checkpoint; a group of one handed to the packed executor.
    """
    import numpy as np

    from pracset.runs import StageFiles
    from pracset.tickets.stages import StageJob, plan

    base = TrainConfig(epochs=1, batch_size=16)
    ctx = object()

    def job(name, seed=0, lr=base.lr, **kwargs):
        return StageJob(ctx, StageFiles(name, tmp_path / name), None, recipe=replace(base, seed=seed, lr=lr), **kwargs)

    started = job("started", seed=5)
    started.stage.create()
    started.stage.checkpoint.write_bytes(b"")
    jobs = [job("a"), job("b", seed=1), job("later", start_step=3), job("subset", ids=np.array([1, 2])),
            job("c", seed=2), job("hooked", seed=3, callbacks=lambda mask: []), job("moving", seed=4, fixed_mask=False),
            started, job("later-too", seed=6, start_step=3), job("other-lr", lr=1.0)]
    names = [[j.stage.name for j in group] for group in plan(jobs, True)]
    assert names == [["a", "b", "c"], ["later", "later-too"], ["subset"], ["hooked"], ["moving"], ["started"],
                     ["other-lr"]]
    assert [[j.stage.name for j in group] for group in plan(jobs, "off")] == [[j.stage.name] for j in jobs]
