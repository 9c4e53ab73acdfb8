"""A pipeline's [compare] table: the rules' sets, their tickets beside full-data IMP, every cost charged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pracset.compare import CompareConfig, probe_passes, set_iterations, statistics_iterations
from pracset.errors import ConfigError
from pracset.manifest import read_manifest
from pracset.pipeline import pipeline_from_dict, run_pipeline
from pracset.report.compare import compare_rows, versus_random
from pracset.selection import SelectionConfig

BUILD = {"dense": {"train_iterations": 46}, "el2n-run-0": {"train_iterations": 12},
         "el2n-run-1": {"train_iterations": 12}, "grand-run-0": {"train_iterations": 0}, "probe": {}}


def test_a_set_is_charged_its_dense_run_and_its_own_score_s_runs_only():
    """By hand: random 0; a forgetting rule the dense run's 46; EL2N 46 + 12 + 12; GraNd at init 46 + 0.
    Mutations caught: random charged the dense run; every score charged every extra run."""
    sets = CompareConfig(rules=("random", "highest:forgetting", "lowest:el2n", "ccs:grand"),
                         fractions=(0.1,)).sets(SelectionConfig())
    assert {label: set_iterations(s, BUILD) for label, s in sets.items()} == {
        "random-f0.1": 0, "highest-forgetting-f0.1": 46, "lowest-el2n-f0.1": 70, "ccs-grand-f0.1": 46}


def test_a_trained_cep_build_charges_every_round_it_ran_and_each_probe_stage():
    """By hand: rounds 40 + 10 = 50 iterations; EL2N's run 12 more for an EL2N rule; the probe stages 640 and 100
    examples at batch 64: 10 + 2 (EL2N's 1438 scoring passes are not a probe). Mutations caught: only a stage named
    dense charged (0); the probe charged over all stages at once (12 -> ceil(740 / 64) = 12 too: see the split)."""
    stages = {"round-00": {"train_iterations": 40}, "round-01": {"train_iterations": 10},
              "probe-01": {"probe_examples": 640}, "probe-02": {"probe_examples": 100},
              "el2n-run-0": {"train_iterations": 12, "probe_examples": 1438}}
    sets = CompareConfig(rules=("highest:forgetting", "highest:el2n"), fractions=(0.1,)).sets(SelectionConfig())
    assert [set_iterations(s, stages) for s in sets.values()] == [50, 62]
    assert statistics_iterations(stages) == 50 and probe_passes(stages, 64) == 12
    assert probe_passes({"probe": {"probe_examples": 65}, "probe-01": {"probe_examples": 65}}, 64) == 4


def _run(arch, method, accuracy, search):
    return {"arch": arch, "method": method, "summary": {"final": {"test_accuracy": accuracy, "sparsity": 0.36},
                                                         "costs": {"search": search}}}


def test_rows_set_each_rule_beside_imp_and_random_by_hand(tmp_path, monkeypatch):
    """IMP 0.95 and 0.97 (mean 0.96, std 0.01414); rule A 0.955 and 0.965 (within IMP's std), rule B 0.90 and 0.92
    (not); random 0.93 and 0.95 (std 0.01414): A is better than random by 2 points (> 1.414), B and C (0.94, 0.96)
    no better. Mutations caught: a gap above zero called better; the within test one-sided."""
    import pracset.report.compare as compare

    monkeypatch.setattr(compare, "read_manifest", lambda path: type("M", (), {"provenance": {"ledger": {
        "stages": BUILD}}})())
    runs = [_run("mlp", "imp", 0.95, 100), _run("mlp", "imp", 0.97, 110),
            _run("mlp", "compare-highest-forgetting-f0.1", 0.955, 10), _run("mlp", "compare-highest-forgetting-f0.1",
                                                                             0.965, 12),
            _run("mlp", "compare-lowest-el2n-f0.1", 0.90, 10), _run("mlp", "compare-lowest-el2n-f0.1", 0.92, 10),
            _run("mlp", "compare-random-f0.1", 0.93, 10), _run("mlp", "compare-random-f0.1", 0.95, 10),
            _run("mlp", "compare-ccs-forgetting-f0.1", 0.94, 10), _run("mlp", "compare-ccs-forgetting-f0.1", 0.96, 10)]
    sets = CompareConfig(rules=("random", "highest:forgetting", "lowest:el2n", "ccs:forgetting"),
                         fractions=(0.1,)).sets(SelectionConfig())
    rows = {r["set"]: r for r in compare_rows(runs, ("mlp",), sets, tmp_path / "m.parquet")}
    a, b, random = rows["highest-forgetting-f0.1"], rows["lowest-el2n-f0.1"], rows["random-f0.1"]
    assert a["accuracy"] == pytest.approx(0.96) and a["imp_accuracy"] == pytest.approx(0.96)
    assert a["imp_std"] == pytest.approx(np.std([0.95, 0.97], ddof=1))
    assert a["within_imp_std"] is True and b["within_imp_std"] is False
    assert a["search_iterations"] == 11 and a["total_iterations"] == 46 + 11 and b["total_iterations"] == 70 + 10
    assert random["total_iterations"] == 10 and a["imp_search_iterations"] == 105
    assert versus_random(a, list(rows.values())).startswith("better by 2.00")
    assert versus_random(b, list(rows.values())).startswith("no better (-3.00)")
    # C is 1 point above random, less than their spread (1.414): no better
    assert versus_random(rows["ccs-forgetting-f0.1"], list(rows.values())) == "no better (+1.00)"


def test_bad_compare_tables_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="highest, lowest and ccs take a score"):
        CompareConfig(rules=("highest",))
    with pytest.raises(ConfigError, match="unknown score"):
        CompareConfig(rules=("ccs:loss",))
    with pytest.raises(ConfigError, match="the rule must be one of"):
        CompareConfig(rules=("prac",))
    with pytest.raises(ConfigError, match=r"fractions must lie in \(0, 1\)"):
        CompareConfig(fractions=(0.0,))
    base = {"name": "c", "arch": "mlp", "data": {"name": "digits"}}
    with pytest.raises(ConfigError, match="add imp to methods"):
        pipeline_from_dict({**base, "methods": ["prac-imp"], "compare": {}})
    with pytest.raises(ConfigError, match="compare ranks by el2n: add it to \\[build\\] scores"):
        pipeline_from_dict({**base, "methods": ["imp"], "compare": {"rules": ["lowest:el2n"]}})


@pytest.mark.slow
def test_a_compare_pipeline_writes_each_set_trains_its_tickets_and_reports_them(tmp_path):
    pipeline = pipeline_from_dict({
        "name": "c", "arch": "mlp", "methods": ["imp"], "seeds": [0, 1], "data": {"name": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05}, "imp": {"rounds": 1, "rewind": "1ep"},
        "compare": {"rules": ["random", "lowest:forgetting"], "fractions": [0.3]}})
    report = run_pipeline(pipeline, tmp_path / "run", device=torch.device("cpu"))
    root = tmp_path / "run"
    chosen = read_manifest(root / "compare" / "lowest-forgetting-f0.3.parquet")
    assert chosen.num_selected == round(0.3 * 1438) and chosen.selection["rule"] == "lowest"
    rows = {r["set"]: r for r in report["compare"]}
    assert set(rows) == {"random-f0.3", "lowest-forgetting-f0.3"} and all(r["seeds"] == 2 for r in rows.values())
    dense = read_manifest(root / "manifest.parquet").provenance["ledger"]["stages"]["dense"]["train_iterations"]
    assert dense == 2 * 23 and rows["lowest-forgetting-f0.3"]["set_iterations"] == dense
    assert rows["random-f0.3"]["set_iterations"] == 0
    for seed in (0, 1):
        run = json.loads((root / "mlp" / f"compare-lowest-forgetting-f0.3-s{seed}" / "tickets.json").read_text())
        assert run["manifest"]["selected"] == chosen.num_selected
    text = (root / "report.md").read_text()
    assert "## Selection rules compared" in text and (root / "compare.png").is_file()
