"""The run-directory module: identity records, refusals that name changes, locks, stage bookkeeping, layouts."""

from __future__ import annotations

import json

import pytest

from pracset.errors import ConfigError
from pracset.fileio import DirectoryLock
from pracset.runs import (BuildLayout, PipelineLayout, RunDirectory, StageFiles, StageMetrics, TicketLayout, describe_changes,
                          refuse_changed)
from pracset.train.ledger import IterationLedger


def test_describe_changes_names_each_leaf_setting_and_both_values():
    before = {"train": {"lr": 0.1, "epochs": 3, "milestones": [0.5, 0.75]}, "arch": "mlp", "manifest": None}
    after = {"train": {"lr": 0.05, "epochs": 3, "milestones": [0.5]}, "arch": "mlp", "seed": 1, "manifest": None}
    assert describe_changes(before, after) == [
        "seed: (absent) -> 1",
        "train.lr: 0.1 -> 0.05",
        "train.milestones: [0.5, 0.75] -> [0.5]",
    ]
    assert describe_changes(before, before) == []
    # a table that became a value (and back) is one change, not a crash
    assert describe_changes({"rigl": None}, {"rigl": {"delta_t": 100}}) == ["rigl: null -> (absent)",
                                                                            "rigl.delta_t: (absent) -> 100"]


def test_refuse_changed_is_one_line_and_caps_the_list():
    with pytest.raises(ConfigError) as info:
        refuse_changed("out holds another run", {"a": 1}, {"a": 2}, "choose another --out")
    assert str(info.value) == "out holds another run (changed a: 1 -> 2); choose another --out"
    many_before = {f"k{i:02d}": i for i in range(12)}
    many_after = {k: v + 1 for k, v in many_before.items()}
    with pytest.raises(ConfigError, match=r"k07: 7 -> 8; and 4 more\); x$"):
        refuse_changed("w", many_before, many_after, "x")
    refuse_changed("w", {"a": 1}, {"a": 1}, "x")  # nothing changed: no error


def test_a_run_directory_records_refuses_and_resumes(tmp_path):
    root = tmp_path / "run"
    identity = {"train": {"lr": 0.1}, "arch": "mlp"}
    with RunDirectory(root, identity, resume=False, finished="done.json") as run:
        assert run.status == "new"
        assert not (root / "run.json").exists()  # nothing is written before the run claims the directory
        run.claim()
        import torch

        record = json.loads((root / "run.json").read_text())
        assert record["identity"] == identity
        assert record["environment"]["cpu_threads"] == torch.get_num_threads()  # results on the CPU depend on it
        assert (root / DirectoryLock.NAME).exists()
    assert not (root / DirectoryLock.NAME).exists()  # released and removed on exit
    with pytest.raises(ConfigError, match=r"holds an unfinished run; pass --resume"):
        RunDirectory(root, identity, resume=False, finished="done.json").__enter__()
    with pytest.raises(ConfigError, match=r"holds another run \(changed train.lr: 0.1 -> 0.05\)"):
        with RunDirectory(root, {"train": {"lr": 0.05}, "arch": "mlp"}, resume=True, finished="done.json"):
            pass
    (root / ".run.json.abcd1234.tmp").write_text("half")  # a killed write
    with RunDirectory(root, identity, resume=True, finished="done.json") as run:
        assert run.status == "resume"
    assert not (root / ".run.json.abcd1234.tmp").exists()
    (root / "done.json").write_text("{}")
    with RunDirectory(root, identity, resume=False, finished="done.json") as run:
        assert run.status == "done"


def test_a_directory_of_other_files_or_held_by_another_process_is_refused_untouched(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is not empty and holds no pracset pipeline run"):
        with RunDirectory(mine, {}, resume=False, finished="x", kind="pipeline run"):
            pass
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    held = tmp_path / "held"
    held.mkdir()
    with DirectoryLock(held):
        # the lock comes before every other check: a second process hears about the lock
        with pytest.raises(ConfigError, match="is in use by another pracset run"):
            with RunDirectory(held, {}, resume=False, finished="x"):
                pass
    assert not (held / "run.json").exists()
    gone = tmp_path / "new"
    with pytest.raises(RuntimeError):
        with RunDirectory(gone, {}, resume=False, finished="x"):
            raise RuntimeError("failed before claiming the directory (say, the data set is missing)")
    assert not gone.exists()  # a directory this run created and left empty is removed


def test_a_stage_is_booked_before_it_is_marked_done(tmp_path, monkeypatch):
    root = tmp_path / "run"
    stage = TicketLayout(root).round(1)
    with RunDirectory(root, {}, resume=False, finished="tickets.json") as run:
        run.claim()
        assert run.finished_stage_metrics(stage) is None
        stage.directory.mkdir()
        stage.checkpoint.write_bytes(b"epoch 3")
        ledger = IterationLedger()
        ledger.add(stage.name, "train", examples=640, batches=10)
        order = []
        real_save = IterationLedger.save
        monkeypatch.setattr(IterationLedger, "save", lambda self, path: (order.append("ledger"), real_save(self, path)))
        import pracset.runs as runs_module
        real_write = runs_module.atomic_write_json
        monkeypatch.setattr(runs_module, "atomic_write_json",
                            lambda path, obj: (order.append(path.name), real_write(path, obj)))
        run.complete_stage(stage, StageMetrics(stage.name, {"test_accuracy": 0.5}), ledger)
        assert order == ["ledger", "metrics.json"]
        assert not stage.checkpoint.exists()
        # the same stage booked again (a resume that redid it) replaces its entry instead of adding to it
        run.book_and_save_ledger(ledger)
        assert run.ledger.total().train_iterations == 10
        assert run.finished_stage_metrics(stage).test_accuracy == 0.5
    saved = json.loads((root / "ledger.json").read_text())
    assert saved["stages"]["round-01"]["train_iterations"] == 10


def test_layouts_name_every_file(tmp_path):
    layout = TicketLayout(tmp_path)
    assert layout.round(3) == StageFiles("round-03", tmp_path / "round-03")
    assert layout.ticket(3).model == tmp_path / "ticket-03" / "model.pt"
    assert layout.control(layout.round(2), "reinit").directory == tmp_path / "control-round-02-reinit"
    assert layout.dense.metrics == tmp_path / "metrics.json"
    assert layout.probe_stage(4) == "probe-04"
    for r in (10, 2, 0):  # finished rounds are listed in order; an unfinished one is not
        layout.round(r).directory.mkdir()
        layout.round(r).metrics.write_text("{}")
    layout.round(5).directory.mkdir()
    (tmp_path / "round-xx").mkdir()
    assert [r for r, _ in layout.rounds()] == [0, 2, 10]
    pipeline = PipelineLayout(tmp_path)
    assert pipeline.ticket_run("vgg16", "prac-imp", 2).root == tmp_path / "vgg16" / "prac-imp-s2"
    assert pipeline.plot("accuracy") == tmp_path / "accuracy.png"
    build = BuildLayout(tmp_path / "m.parquet")
    assert (build.statistics.name, build.work.name) == ("m.stats.npz", "m.parquet.partial")
    with pytest.raises(ConfigError, match="must end in .parquet"):
        BuildLayout(tmp_path / "m.csv")


def test_the_lock_never_follows_a_link_nor_touches_a_file_it_did_not_create(tmp_path):
    """A .lock that links to a user's file is refused and the file left as it was; a user's own .lock survives."""
    precious = tmp_path / "precious.txt"
    precious.write_text("the user's data")
    out = tmp_path / "out"
    out.mkdir()
    (out / DirectoryLock.NAME).symlink_to(precious)
    with pytest.raises(ConfigError, match=r"\.lock is a link or cannot be opened"):
        with RunDirectory(out, {}, resume=False, finished="x"):
            pass
    assert precious.read_text() == "the user's data" and (out / DirectoryLock.NAME).is_symlink()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / DirectoryLock.NAME).write_text("my notes")
    with RunDirectory(mine, {}, resume=False, finished="x") as run:
        run.claim()
    assert (mine / DirectoryLock.NAME).read_text() == "my notes"  # neither truncated nor deleted
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / DirectoryLock.NAME).mkdir()
    with pytest.raises(ConfigError, match=r"\.lock is (a link or cannot be opened|not a regular file)"):
        with RunDirectory(odd, {}, resume=False, finished="x"):
            pass


def test_settings_added_later_keep_older_identities_while_at_their_default():
    """A run recorded before label_smoothing / pack_controls existed is still the same run at their defaults."""
    from pracset.config import to_dict
    from pracset.tickets import IMPConfig
    from pracset.train import TrainConfig

    assert "label_smoothing" not in to_dict(TrainConfig()) and "pack_controls" not in to_dict(IMPConfig())
    assert to_dict(TrainConfig(label_smoothing=0.1))["label_smoothing"] == 0.1
    assert to_dict(IMPConfig(pack_controls="on"))["pack_controls"] == "on"
    assert "lr" in to_dict(TrainConfig())  # the settings that were always there stay recorded at their default


def test_a_renamed_setting_reads_under_its_new_name_in_files_and_old_runs(tmp_path):
    """rewind_step = k (before the rewind point took units) is rewind = "kit": in TOML and in recorded runs."""
    from pracset.config import from_dict
    from pracset.tickets import IMPConfig

    assert from_dict(IMPConfig, {"rewind_step": 500}).rewind == "500it"
    assert IMPConfig(rewind=" 03ep").rewind == "3ep"  # one spelling per point, so one identity
    root = tmp_path / "old"
    root.mkdir()
    (root / "run.json").write_text(json.dumps({"identity": {"imp": {"rewind_step": 5, "rounds": 2}}}))
    (root / "done.json").write_text("{}")
    with RunDirectory(root, {"imp": {"rewind": "5it", "rounds": 2}}, resume=False, finished="done.json") as run:
        assert run.status == "done"
    with pytest.raises(ConfigError, match=r"changed imp.rewind: \"5it\" -> \"6it\""):
        with RunDirectory(root, {"imp": {"rewind": "6it", "rounds": 2}}, resume=False, finished="done.json"):
            pass
