"""TOML pipelines: validation, a whole tiny run with its report, resume, refusal and the lock."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pracset.cli import main
from pracset.errors import ConfigError, PracsetError
from pracset.fileio import DirectoryLock
from pracset.pipeline import load_pipeline, run_pipeline

TINY = """
name = "tiny"
arch = "mlp"
methods = ["imp", "prac-imp"]
transfer = ["lenet300"]

[data]
name = "digits"

[train]
epochs = 2
batch_size = 128

[build]
probe_sparsities = [0.8, 0.9]

[imp]
rounds = 2
budget = "linear"
early_bird = false
controls = true
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    pipeline = load_pipeline(write(root, TINY))
    report = run_pipeline(pipeline, root / "out", device=torch.device("cpu"))
    return root, pipeline, report


@pytest.mark.slow
def test_a_tiny_pipeline_writes_its_report(finished):
    root, pipeline, report = finished
    out = root / "out"
    for name in ("report.json", "report.md", "manifest.parquet", "manifest-random.parquet",
                 "accuracy_vs_sparsity.png", "iterations_vs_sparsity.png", "forgetting_histogram.png"):
        assert (out / name).exists(), name
    assert (out / "mlp" / "imp-s0" / "tickets.json").exists()
    assert (out / "lenet300" / "random-subset-s0" / "tickets.json").exists()
    text = (out / "report.md").read_text()
    assert text.startswith("# tiny") and "![Test accuracy against sparsity (mean ± std over seeds)](accuracy_vs_sparsity.png)" in text
    saved = report["iterations_saved"]["per_round"]
    assert [round(r["sparsity"], 2) for r in saved] == [0.2, 0.36]
    # search costs grow round by round; IMP's mask at s_1 costs exactly its dense round (2 epochs of 12 batches)
    assert saved[1]["imp_search"] > saved[0]["imp_search"] == 2 * 12
    from pracset.manifest import read_manifest

    # the random subset is as large as the paper's set (PrAC-IMP's set after its last trained round, seed 0)
    paper_set = out / "mlp" / "prac-imp-s0" / "round-01" / "prac-set.parquet"
    assert read_manifest(paper_set).provenance["cep"] == "trained-round"
    assert read_manifest(out / "manifest-random.parquet").num_selected == read_manifest(paper_set).num_selected
    assert read_manifest(out / "manifest.parquet").provenance["cep"] == "one-shot-probe"
    assert {r["method"] for r in report["runs"] if r["arch"] == "lenet300"} == {
        "imp", "paper-set-transfer", "one-shot-set-transfer", "random-subset"}
    assert report["transfer"][0]["arch"] == "lenet300"
    assert "controls" in report["curves"]["mlp/imp"][1] and "controls" not in report["curves"]["lenet300/imp"][1]


@pytest.mark.slow
def test_a_finished_pipeline_is_not_rerun_and_a_changed_one_is_refused(finished, tmp_path):
    root, pipeline, _ = finished
    out = root / "out"
    before = (out / "mlp" / "imp-s0" / "round-01" / "model.pt").stat().st_mtime_ns
    run_pipeline(pipeline, out, device=torch.device("cpu"))
    assert (out / "mlp" / "imp-s0" / "round-01" / "model.pt").stat().st_mtime_ns == before
    changed = load_pipeline(write(tmp_path, TINY.replace("rounds = 2", "rounds = 3")))
    with pytest.raises(ConfigError, match=r"holds another run \(changed imp.rounds: 2 -> 3\); choose another --out"):
        run_pipeline(changed, out, device=torch.device("cpu"))


@pytest.mark.slow
def test_cli_run_resumes_an_interrupted_pipeline(finished, tmp_path, capsys):
    root, _, report = finished
    out = tmp_path / "out"
    path = write(tmp_path, TINY)
    (out).mkdir()
    # an interrupted run: the configuration is recorded but no report was written
    (out / "pipeline.json").write_text(json.dumps({"identity": load_pipeline(path).to_dict()}))
    assert main(["run", str(path), "--out", str(out), "-q"]) == 2
    assert "unfinished pipeline run; pass --resume" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(out), "-q", "--resume"]) == 0
    assert "report: " in capsys.readouterr().out
    again = json.loads((out / "report.json").read_text())
    assert again["iterations_saved"]["per_round"] == report["iterations_saved"]["per_round"]


@pytest.mark.parametrize("text, message", [
    ('name = "x"\narch = "mlp"\n[data]\nname = "digits"\n[train]\nepochz = 3\n', "unknown key train.epochz"),
    ('name = "x"\narch = "mlp"\n[data]\nname = "digits"\n[train]\nepochs = "3"\n', "train.epochs must be an integer"),
    ('name = "x"\narch = "mlp"\ncolour = 1\n[data]\nname = "digits"\n', "unknown key 'colour'"),
    ('name = "x"\narch = "nope"\n[data]\nname = "digits"\n', "unknown model 'nope'"),
    ('name = "x"\narch = "mlp"\nmethods = ["imp", "magic"]\n[data]\nname = "digits"\n', "unknown method 'magic'"),
    ('name = "x"\n[data]\nname = "digits"\n', "missing key 'arch'"),
    ('name = "x"\narch = "mlp"\n[data\n', "is not valid TOML"),
])
def test_bad_pipelines_are_refused_clearly(tmp_path, text, message):
    with pytest.raises(PracsetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline(write(tmp_path, text))


def test_missing_pipeline_file_and_data_dir_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline(tmp_path / "absent.toml")
    pipeline = load_pipeline(write(tmp_path, TINY), data_dir=str(tmp_path))
    assert pipeline.data.data_dir == str(tmp_path)


def test_shipped_pipelines_parse():
    shipped = sorted((Path(__file__).parents[1] / "pipelines").glob("*.toml"))
    assert {p.stem for p in shipped} >= {"digits", "mnist-lenet300"}
    for path in shipped:
        load_pipeline(path)


def test_a_second_run_on_the_same_directory_is_locked_out(tmp_path):
    with DirectoryLock(tmp_path):
        with pytest.raises(ConfigError, match="in use by another pracset run"):
            with DirectoryLock(tmp_path):
                pass
    # a lock left by a killed process does not block the next run, which locks through it without
    # rewriting or deleting a file it did not create
    (tmp_path / ".lock").write_text("999999999")
    with DirectoryLock(tmp_path):
        with pytest.raises(ConfigError, match="in use by another pracset run"):
            with DirectoryLock(tmp_path):
                pass
    assert (tmp_path / ".lock").read_text() == "999999999"


def test_set_overrides_a_setting_of_the_file_and_is_checked_like_it(tmp_path):
    path = write(tmp_path, TINY)
    pipeline = load_pipeline(path, overrides=["train.lr=0.05", "seeds=[0, 1]", "train.optimizer=adamw",
                                              "report.plots=false"])
    assert (pipeline.train.lr, pipeline.seeds, pipeline.train.optimizer, pipeline.report.plots) == (
        0.05, (0, 1), "adamw", False)
    assert load_pipeline(path).train.lr == 0.1  # the file itself is unchanged
    with pytest.raises(ConfigError, match=r"train.epochs must be an integer, got 'two'"):
        load_pipeline(path, overrides=["train.epochs=two"])
    with pytest.raises(ConfigError, match=r"unknown key train.epoch;"):
        load_pipeline(path, overrides=["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"--set takes KEY=VALUE or SECTION.KEY=VALUE, got 'lr'"):
        load_pipeline(path, overrides=["lr"])


def test_a_pipeline_says_which_run_of_how_many_and_the_time_left(caplog, monkeypatch):
    import logging

    import pracset.pipeline as pipeline_module
    from pracset.pipeline import StageProgress

    clock = iter([0.0, 120.0, 120.0, 120.0, 360.0, 360.0])  # read at each start and at each finish not skipped
    monkeypatch.setattr(pipeline_module.time, "perf_counter", lambda: next(clock))
    progress = StageProgress("p", 4)
    with caplog.at_level(logging.INFO, logger="pracset.pipeline"):
        for skipped in (False, True, False):
            progress.start("mlp imp seed 0")
            progress.finish(skipped)
        progress.start("mlp prac-imp seed 0")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "pipeline p: run 1 of 4: mlp imp seed 0"
    assert lines[1] == "pipeline p: run 2 of 4: mlp imp seed 0; about 6 min left"  # 3 runs x 2 min
    # the finished run that was skipped does not count; the mean of 2 and 4 minutes, for the one run left
    assert lines[2] == "pipeline p: run 3 of 4: mlp imp seed 0; about 4 min left"
    assert lines[3] == "pipeline p: run 4 of 4: mlp prac-imp seed 0; about 3 min left"


def test_the_imagenet_recipe_steps_its_rate_at_epochs_30_60_and_80():
    """pipelines/imagenet-resnet50.toml: open_lth's ResNet-50 schedule, streamed, with ImageNet's augmentation."""
    from pracset.train import lr_factor

    pipeline = load_pipeline(Path(__file__).parents[1] / "pipelines" / "imagenet-resnet50.toml")
    train = pipeline.train
    assert (pipeline.arch, pipeline.data.name, pipeline.data.stream, pipeline.data.image_size) == (
        "resnet50-imagenet", "imagefolder", True, 224)
    assert (train.epochs, train.batch_size, train.lr, train.warmup_epochs) == (90, 1024, 0.4, 5.0)
    assert train.random_resized_crop and train.flip and train.label_smoothing == 0.1 and not train.crop_padding
    per_epoch = -(-1_281_167 // 1024)  # ILSVRC-2012's training images, the last batch kept
    factor = [lr_factor(epoch * per_epoch, 90 * per_epoch, per_epoch, train) for epoch in range(90)]
    changes = [epoch for epoch in range(6, 90) if factor[epoch] != factor[epoch - 1]]
    assert changes == [30, 60, 80] and factor[5] == 1.0 and factor[89] == pytest.approx(1e-3)
    assert factor[0] == pytest.approx(1 / (5 * per_epoch))  # the linear warm-up's first step


def test_the_fast_cifar10_replication_is_the_experiment_issue_14_asks_for():
    """pipelines/cifar10-resnet20-fast.toml: IMP, PrAC-IMP and a random subset on ResNet-20, 3 seeds, >= 83%."""
    pipeline = load_pipeline(Path(__file__).parents[1] / "pipelines" / "cifar10-resnet20-fast.toml")
    assert (pipeline.arch, pipeline.data.name, pipeline.seeds, pipeline.methods) == (
        "resnet20", "cifar10", (0, 1, 2), ("imp", "prac-imp"))
    assert 1 - (1 - pipeline.imp.prune_fraction) ** pipeline.imp.num_rounds >= 0.83
    # the random subset of PrAC's size runs on resnet20 itself as a transfer (its full-data IMP is the main run);
    # both controls on every ticket
    assert pipeline.transfer == (pipeline.arch,) and pipeline.imp.controls and pipeline.controls_on is None
    assert pipeline.train.cuda_graphs and pipeline.train.schedule == "cosine"


def test_a_transfer_onto_the_building_architecture_reuses_its_imp_run(tmp_path):
    """transfer = [arch]: the random subset of PrAC's size on the same network. Its full-data IMP is the main IMP
    run (with its controls), counted once, not a second run refused for its other settings."""
    from pracset.pipeline import pipeline_from_dict, run_pipeline

    pipeline = pipeline_from_dict({
        "name": "self-transfer", "arch": "mlp", "methods": ["imp", "prac-imp"], "transfer": ["mlp"],
        "data": {"name": "digits"}, "train": {"epochs": 2, "batch_size": 128},
        "imp": {"rounds": 1, "controls": True, "early_bird": False}})
    report = run_pipeline(pipeline, tmp_path / "run", device=torch.device("cpu"))
    methods = [(r["arch"], r["method"]) for r in report["runs"]]
    assert methods.count(("mlp", "imp")) == 1
    assert {"paper-set-transfer", "one-shot-set-transfer", "random-subset"} <= {m for _, m in methods}


def test_transfer_sets_choose_the_sets_the_transfer_trains_on(tmp_path):
    from pracset.pipeline import pipeline_from_dict, run_pipeline

    base = {"name": "sets", "arch": "mlp", "methods": ["imp"], "transfer": ["lenet300"], "data": {"name": "digits"},
            "train": {"epochs": 1, "batch_size": 256}, "imp": {"rounds": 1, "early_bird": False},
            "selection": {"rule": "prac"}}
    with pytest.raises(ConfigError, match="transfer_sets names paper-set-transfer.*add prac-imp to methods"):
        pipeline_from_dict({**base, "transfer_sets": ["paper-set-transfer"]})
    with pytest.raises(ConfigError, match="unknown transfer set 'random'; valid names: paper-set-transfer, "
                                          "one-shot-set-transfer, random-subset"):
        pipeline_from_dict({**base, "transfer_sets": ["random"]})
    pipeline = pipeline_from_dict({**base, "transfer_sets": ["random-subset"]})
    report = run_pipeline(pipeline, tmp_path / "run", device=torch.device("cpu"))
    assert sorted({r["method"] for r in report["runs"] if r["arch"] == "lenet300"}) == ["imp", "random-subset"]
    assert "transfer_sets" not in pipeline_from_dict(base).to_dict()  # older pipeline runs keep their identity


def test_runs_trained_ahead_together_count_their_share_in_the_time_left(caplog, monkeypatch):
    """Full-data IMP of 2 seeds in lockstep took 8 minutes; each seed's run is then summarised in no time: each
    counts 4 minutes, not 0 (which would promise the rest in no time)."""
    import logging

    import pracset.pipeline as pipeline_module
    from pracset.pipeline import StageProgress

    clock = iter([0.0, 0.0, 0.0, 0.0, 0.0])  # starts and finishes read the clock; the runs take no time
    monkeypatch.setattr(pipeline_module.time, "perf_counter", lambda: next(clock))
    progress = StageProgress("p", 3)
    progress.prepay(["mlp imp seed 0", "mlp imp seed 1"], 480.0)
    with caplog.at_level(logging.INFO, logger="pracset.pipeline"):
        for seed in (0, 1):
            progress.start(f"mlp imp seed {seed}")
            progress.finish(False)
        progress.start("mlp prac-imp seed 0")
    assert caplog.records[-1].getMessage() == "pipeline p: run 3 of 3: mlp prac-imp seed 0; about 4 min left"
