"""``pracset build`` and ``pracset inspect`` end to end on digits."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pracset.build import stats_path
from pracset.cli import main

BUILD = ["build", "--data", "digits", "--arch", "mlp", "--epochs", "6", "-q", "--probe-sparsity", "0.8", "0.9"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "digits-mlp.parquet"
    code = main([*BUILD, "--out", str(path), "--keep-history"])
    assert code == 0
    return path


def test_manifest_reads_back_with_pyarrow_alone(built):
    table = pq.read_table(built)
    meta = json.loads(table.schema.metadata[b"pracset"])
    assert table.num_rows == meta["dataset"]["size"] == 1438
    ids = table.column("example_id").to_numpy()
    assert np.array_equal(ids, np.arange(1438))
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    reasons = table.column("reason").to_pylist()
    assert meta["selection"]["selected"] == selected.sum() > 0
    assert all((r != "") == s for r, s in zip(reasons, selected))
    # CET = forgetting > 0 or never learned; CEP = a probe disagreement: exactly PrAC's union
    forgetting = table.column("forgetting_events").to_numpy()
    never = table.column("never_learned").to_numpy(zero_copy_only=False)
    cep = table.column("cep_disagreements").to_numpy()
    np.testing.assert_array_equal(selected, (forgetting > 0) | never | (cep > 0))
    # every presented example was presented once per epoch
    assert (table.column("presentations").to_numpy() == meta["provenance"]["epochs_run"]).all()
    ledger = meta["provenance"]["ledger"]["stages"]
    assert ledger["dense"]["train_iterations"] == 6 * 12 == meta["provenance"]["iterations"]
    assert ledger["probe"]["probe_examples"] == 3 * 1438  # dense + two pruned models


def test_statistics_are_written_next_to_the_manifest(built):
    stats = np.load(stats_path(built))
    table = pq.read_table(built)
    np.testing.assert_array_equal(stats["forgetting_events"], table.column("forgetting_events").to_numpy())
    assert stats["history_bits"].shape == (6, (1438 + 7) // 8)
    assert not built.with_name(built.name + ".partial").exists()


def test_inspect_prints_a_summary_and_json(built, run_cli):
    code, out, _ = run_cli("inspect", str(built))
    table = pq.read_table(built)
    kept = int(table.column("selected").to_numpy(zero_copy_only=False).sum())
    assert code == 0 and f"selected   {kept} of 1438" in out and "data set   digits" in out
    assert "rule prac" in out and "arch mlp" in out
    code, out, _ = run_cli("inspect", str(built), "--json")
    summary = json.loads(out)
    assert code == 0 and summary["selected"] == kept and summary["dataset"]["name"] == "digits"
    assert sum(v["selected"] for v in summary["per_class"].values()) == kept


def test_same_build_is_skipped_and_another_is_refused(built, run_cli):
    before = built.read_bytes()
    code, out, _ = run_cli(*BUILD, "--out", str(built), "--keep-history")
    assert code == 0 and out.startswith("already built")
    code, _, err = run_cli(*BUILD, "--out", str(built), "--seed", "3")
    assert code == 2 and "exists and was built with other settings" in err and "Traceback" not in err
    assert built.read_bytes() == before


def test_same_seed_gives_identical_selection(built, tmp_path, run_cli):
    again = tmp_path / "again.parquet"
    code, _, err = run_cli(*BUILD, "--out", str(again), "--keep-history")
    assert code == 0, err
    a, b = pq.read_table(built), pq.read_table(again)
    for column in ("selected", "forgetting_events", "cep_disagreements", "content_hash"):
        assert a.column(column).equals(b.column(column)), column


@pytest.mark.parametrize("extra, message", [
    (["--probe-sparsity", "1.5"], "probe sparsities must lie in (0, 1)"),
    (["--rule", "cep", "--probe-sparsity"], "needs the pruning probe's results"),
    (["--rule", "nope"], "unknown selection rule 'nope'; valid names: ccs, cep, cet, highest, lowest, prac, random, topk-forgetting"),
    (["--epochs", "0"], "must be a positive integer"),
])
def test_bad_build_input_is_one_line_exit_2(tmp_path, run_cli, extra, message):
    out = tmp_path / "m.parquet"
    code, _, err = run_cli(*BUILD, "--out", str(out), *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_out_must_be_parquet_and_inspect_rejects_non_manifests(tmp_path, run_cli):
    code, _, err = run_cli(*BUILD, "--out", str(tmp_path / "m.csv"))
    assert code == 2 and "must end in .parquet" in err
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    code, _, err = run_cli("inspect", str(junk))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_build_whose_work_directory_another_process_holds_is_refused(run_cli, tmp_path):
    """Two `pracset build --resume` of one manifest: the second is refused and writes nothing."""
    from pracset.fileio import DirectoryLock

    out = tmp_path / "m.parquet"
    work = tmp_path / "m.parquet.partial"
    work.mkdir()
    with DirectoryLock(work):  # as a first build still running
        code, _, err = run_cli(*BUILD, "--out", str(out), "--resume")
        assert code == 2 and f"{work} is in use by another pracset run" in err
        assert sorted(p.name for p in tmp_path.rglob("*")) == [".lock", "m.parquet.partial"]
    code, _, err = run_cli(*BUILD, "--out", str(out), "--resume")
    assert code == 0, err
    assert out.exists() and not work.exists()


def test_build_with_the_paper_s_cep_keeps_the_set_a_trained_prac_imp_round_selects(tmp_path):
    """--cep trained: the manifest is PrAC-IMP's round-1 set (CET of round 1 union dense-vs-trained-sparse CEP)."""
    import numpy as np

    from pracset.build import BuildConfig, build_manifest
    from pracset.data import DataConfig
    from pracset.manifest import read_manifest
    from pracset.selection import SelectionConfig
    from pracset.train import TrainConfig

    out = tmp_path / "paper.parquet"
    result = build_manifest(DataConfig("digits"), "mlp", out, train=TrainConfig(epochs=3, batch_size=64, lr=0.05),
                            build=BuildConfig(cep="trained", cep_rounds=1), selection=SelectionConfig())
    m = read_manifest(out)
    assert m.provenance["cep"] == "trained-round" and m.provenance["round"] == 1 and m.provenance["command"] == "build"
    assert m.provenance["sparsity"] == pytest.approx(0.2, abs=1e-3)
    cet = (m.column("forgetting_events") > 0) | m.column("never_learned")
    cep = m.column("cep_disagreements") > 0
    np.testing.assert_array_equal(m.selected_ids, np.flatnonzero(cet | cep))
    assert cep.any() and not (out.parent / "paper.parquet.partial").exists()
    # the ledger counts rounds 0 and 1 and the probe, and no full-data ticket
    stages = m.provenance["ledger"]["stages"]
    assert set(stages) == {"round-00", "round-01", "probe-01"}
    again = build_manifest(DataConfig("digits"), "mlp", out, train=TrainConfig(epochs=3, batch_size=64, lr=0.05),
                           build=BuildConfig(cep="trained", cep_rounds=1), selection=SelectionConfig())
    assert again.skipped and result.summary["selected"] == again.summary["selected"]


def test_a_manifest_that_appears_while_a_build_runs_is_never_replaced(tmp_path, monkeypatch):
    """Two builds of one --out: the later one must not rename its manifest over the one that appeared meanwhile."""
    import pracset.build as build_module
    from pracset.build import BuildConfig, build_manifest
    from pracset.data import DataConfig, load_dataset
    from pracset.errors import ConfigError
    from pracset.train import TrainConfig

    out = tmp_path / "m.parquet"
    theirs = b"PAR1 another build's manifest"
    digits = load_dataset(DataConfig("digits"))

    def load_while_another_build_finishes(config):
        out.write_bytes(theirs)  # the other build finished while this one was starting
        return digits

    monkeypatch.setattr(build_module, "load_dataset", load_while_another_build_finishes)
    with pytest.raises(ConfigError, match=r"m.parquet appeared while this build ran; it was left as it is"):
        build_manifest(DataConfig("digits"), "mlp", out, train=TrainConfig(epochs=1, batch_size=64),
                       build=BuildConfig(probe_sparsities=()))
    assert out.read_bytes() == theirs


def test_resuming_a_build_with_changed_settings_is_refused_naming_them(tmp_path):
    from pracset.build import BuildConfig, build_identity, build_manifest
    from pracset.data import DataConfig
    from pracset.errors import ConfigError
    from pracset.selection import SelectionConfig
    from pracset.sparse.early_bird import EarlyBirdConfig
    from pracset.train import TrainConfig

    work = tmp_path / "m.parquet.partial"
    work.mkdir()
    identity = build_identity(DataConfig("digits"), "mlp", TrainConfig(lr=0.1), BuildConfig(), SelectionConfig(),
                              EarlyBirdConfig())
    (work / "run.json").write_text(json.dumps({"identity": identity}))
    (work / "checkpoint.pt").write_bytes(b"the killed build's checkpoint")
    with pytest.raises(ConfigError, match=r"holds another run \(changed train.lr: 0.1 -> 0.05\)"):
        build_manifest(DataConfig("digits"), "mlp", tmp_path / "m.parquet", train=TrainConfig(lr=0.05), resume=True)
    assert (work / "checkpoint.pt").read_bytes() == b"the killed build's checkpoint"


def test_the_build_keeps_its_dense_model_and_records_the_thread_count(built, tmp_path):
    """The kept weights are the trained model: they reproduce the probe's dense training accuracy."""
    import torch

    from pracset.data import DataConfig, DeviceLoader, load_dataset
    from pracset.models import build_model
    from pracset.train.run import input_spec

    meta = json.loads(pq.read_table(built).schema.metadata[b"pracset"])
    data = load_dataset(DataConfig("digits"))
    model = build_model("mlp", input_spec(data))
    model.load_state_dict(torch.load(built.with_name("digits-mlp.dense.pt"), weights_only=True))
    model.eval()
    loader = DeviceLoader(data.train, 2000, *data.normalization)
    with torch.no_grad():
        batch = next(iter(loader))
        accuracy = (model(batch.x).argmax(1) == batch.y).float().mean().item()
    assert accuracy == pytest.approx(meta["provenance"]["probe"]["dense_train_accuracy"], abs=1e-6)
    assert meta["provenance"]["cpu_threads"] == torch.get_num_threads()


def test_a_random_subset_of_a_given_size_trains_nothing(run_cli, tmp_path):
    out = tmp_path / "random.parquet"
    code, _, err = run_cli("build", "--data", "digits", "--arch", "mlp", "-q", "--rule", "random",
                           "--fraction", "0.25", "--random-seed", "3", "--out", str(out))
    assert code == 0, err
    table = pq.read_table(out)
    meta = json.loads(table.schema.metadata[b"pracset"])
    selected = table.column("selected").to_numpy(zero_copy_only=False)
    assert selected.sum() == round(0.25 * 1438)
    # the selection is the seeded draw: the 360 largest of 1438 uniform draws of default_rng(3)
    draw = np.random.default_rng(3).random(1438)
    assert np.array_equal(np.flatnonzero(selected), np.sort(np.argsort(-draw, kind="stable")[:360]))
    assert meta["provenance"]["iterations"] == 0 and meta["provenance"]["epochs_run"] == 0
    assert (table.column("presentations").to_numpy() == 0).all()
    assert not out.with_name("random.dense.pt").exists() and not out.with_name("random.parquet.partial").exists()


def test_threads_are_a_setting_recorded_in_the_run(run_cli, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        code, _, err = run_cli("train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "-q",
                               "--threads", "1", "--out", str(tmp_path / "run"))
        assert code == 0, err
        assert json.loads((tmp_path / "run" / "run.json").read_text())["environment"]["cpu_threads"] == 1
    finally:
        torch.set_num_threads(before)
    code, _, err = run_cli("train", "--arch", "mlp", "--threads", "0", "--out", str(tmp_path / "x"))
    assert code == 2 and "--threads: must be a positive integer, got '0'" in err
