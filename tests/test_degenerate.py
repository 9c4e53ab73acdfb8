"""Degenerate training is said, never silent (issue 22.2 and 22.6): near-chance networks for any number of
classes, rounds below the budget floor, collapsed probe sparsities, and the headline's caveats."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from pracset.build import BuildConfig, build_manifest
from pracset.cli import main
from pracset.data import DataConfig
from pracset.errors import DegenerateTrainingWarning
from pracset.manifest import read_manifest
from pracset.manifest.assemble import write_random_manifest
from pracset.report import caveats
from pracset.stats import pruning_probe
from pracset.tickets import IMPConfig, find_tickets
from pracset.tickets.health import chance_threshold, dense_collapsed, majority_rate, near_chance, round_problems
from pracset.train import TrainConfig

DATA = DataConfig(name="digits")


# --- the near-chance rule, by hand, for 2, 3 and 10 classes --------------------------------------------------

@pytest.mark.parametrize("labels, majority, threshold", [
    ([0, 1] * 50, 0.5, 0.55),                       # 2 balanced classes: 0.5 + 0.5 / 10
    ([0] * 90 + [1] * 10, 0.9, 0.91),               # 2 classes, 90/10: always guessing 0 scores 0.9
    ([0, 1, 2] * 40, 1 / 3, 1 / 3 + (2 / 3) / 10),  # 3 balanced classes: 0.4
    (list(range(10)) * 20, 0.1, 0.19),              # 10 balanced classes: 0.1 + 0.9 / 10
])
def test_near_chance_against_the_majority_class_rate(labels, majority, threshold):
    assert majority_rate(labels) == pytest.approx(majority)
    assert chance_threshold(majority) == pytest.approx(threshold)
    assert near_chance(threshold, majority) and dense_collapsed(threshold, majority)
    assert not near_chance(threshold + 0.01, majority) and not dense_collapsed(threshold + 0.01, majority)


def test_a_good_binary_model_is_not_collapsed():
    # the old rule (accuracy <= 2 / classes) called every binary model collapsed, 99% included
    assert not dense_collapsed(0.99, majority_rate([0, 1] * 50))
    assert not dense_collapsed(0.6, 0.5) and dense_collapsed(0.5, 0.5)
    assert dense_collapsed(0.9, 0.9)  # an imbalanced binary model that always says "0" learned nothing


# --- the budget floor, by hand -------------------------------------------------------------------------------

def _metrics(epochs, examples, accuracy=0.9):
    return {"epochs": epochs, "examples": examples, "final": {"test_accuracy": accuracy}}


def test_round_budget_floor_by_hand():
    ok = dict(batch_size=64, drop_last=False, majority=0.1)
    assert round_problems(_metrics(2, 1600), start_step=0, **ok) == []          # 25 batches x 2 = 50 steps
    assert "49 steps" in round_problems(_metrics(2, 1600), start_step=1, **ok)[0]  # a rewound round: 49
    assert "1 epoch(s)" in round_problems(_metrics(1, 6400), start_step=0, **ok)[0]  # 100 steps, but 1 epoch
    assert round_problems(_metrics(2, 1601), start_step=1, **ok) == []          # 26 x 2 - 1 = 51 steps
    short = round_problems(_metrics(1, 768), start_step=0, **ok)                 # 12 steps in 1 epoch
    assert len(short) == 1 and "1 epoch(s)" in short[0] and "12 steps" in short[0]
    chance = round_problems(_metrics(20, 1600, accuracy=0.19), start_step=0, **ok)
    assert len(chance) == 1 and "near chance" in chance[0]
    assert round_problems(_metrics(20, 1600, accuracy=0.2), start_step=0, **ok) == []


# --- through find_tickets: warned, flagged in tickets.json, masks marked, printed by the CLI -------------------

@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("m")
    build_manifest(DATA, "mlp", folder / "b.parquet", train=TrainConfig(epochs=1, batch_size=64),
                   build=BuildConfig(probe_sparsities=()), device=torch.device("cpu"), dataset=digits)
    write_random_manifest(folder / "b.parquet", folder / "r.parquet", seed=1, size=400)
    return folder / "r.parquet"


def test_official_budget_of_one_epoch_is_flagged(tmp_path, digits, small_manifest):
    # the case: official budget, a short recipe: a round on 400 of 1438 examples gets
    # max(1, int(3 x 400 / 1438)) = 1 epoch of ceil(400 / 64) = 7 steps
    train = TrainConfig(epochs=3, batch_size=64, lr=0.05)
    with pytest.warns(DegenerateTrainingWarning, match="round-00 is degenerate.*1 epoch"):
        summary = find_tickets("prac-imp", DATA, "mlp", tmp_path / "run", train=train, manifest=small_manifest,
                               imp=IMPConfig(rounds=2, early_bird=False), device=torch.device("cpu"), dataset=digits)
    rows = summary["tickets"]
    assert any("1 epoch(s)" in p for p in rows[0]["degenerate"])
    assert [row.get("mask_from_degenerate_round") for row in rows] == [None, 0, 0]
    written = json.loads((tmp_path / "run" / "tickets.json").read_text())
    assert written["warnings"] and written["warnings"][0].startswith("round 0 is degenerate")
    assert "rounds 1, 2" in written["warnings"][-1]


def test_near_chance_dense_round_is_flagged_and_printed(tmp_path, digits, capsys):
    args = ["ticket", "--method", "imp", "--data", "digits", "--arch", "mlp", "--rounds", "1", "--epochs", "2",
            "--lr", "1e-9", "--batch-size", "64", "--out", str(tmp_path / "run"), "-q"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "run" / "tickets.json").read_text())
    dense = summary["tickets"][0]
    assert dense["dense_collapsed"] and any("near chance" in p for p in dense["degenerate"])
    assert summary["tickets"][1]["mask_from_degenerate_round"] == 0
    out = capsys.readouterr().out
    assert "warning: round 0 is degenerate: it ended near chance" in out
    assert "warning: the dense reference collapsed" in out


def test_a_healthy_run_says_nothing(tmp_path, digits, recwarn):
    summary = find_tickets("imp", DATA, "mlp", tmp_path / "run", train=TrainConfig(epochs=4, batch_size=64, lr=0.05),
                           imp=IMPConfig(rounds=1), device=torch.device("cpu"), dataset=digits)
    assert summary["warnings"] == []
    assert not [w for w in recwarn if issubclass(w.category, DegenerateTrainingWarning)]
    assert all("degenerate" not in row and "mask_from_degenerate_round" not in row for row in summary["tickets"])


# --- a collapsed probe sparsity is left out of the set by default --------------------------------------------

def _collapsing_probe_case():
    """A 4-input, 2-class linear model: weights 5 on inputs 0 and 1, weight 1 on inputs 2 and 3.

    Examples: input 0 (class 0), input 1 (class 1), then four of input 2 (class 1) and four of input 3
    (class 0). Dense: all 10 right. Keeping 2 of 8 weights (75% sparsity) keeps only the 5s: inputs 2 and 3 get
    logits (0, 0), argmax class 0, so the four input-2 examples (ids 2-5) flip: accuracy 0.6, 0.4 below dense
    (collapsed). Keeping 4 of 8 (50%) keeps the 1s too: nothing changes.
    """
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 0.0, 0.0, 1.0], [0.0, 5.0, 1.0, 0.0]]))
    inputs = torch.eye(4)[[0, 1, 2, 2, 2, 2, 3, 3, 3, 3]]
    labels = torch.tensor([0, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    return model, torch.utils.data.TensorDataset(inputs, labels)


@pytest.mark.parametrize("drop, expected", [(True, [0] * 10), (False, [0, 0, 1, 1, 1, 1, 0, 0, 0, 0])])
def test_collapsed_probe_sparsity_by_hand(drop, expected):
    model, data = _collapsing_probe_case()
    result = pruning_probe(model, data, [0.5, 0.75], num_examples=10, drop_collapsed=drop)
    assert result.pruned_accuracy == {0.5: 1.0, 0.75: 0.6}
    assert result.collapsed == (0.75,) and result.collapsed_dropped == drop
    assert result.disagreed_at == {0.5: 0, 0.75: 4}
    assert result.disagreements.tolist() == expected


@pytest.mark.parametrize("keep", [False, True])
def test_build_leaves_a_collapsed_probe_out_unless_asked(tmp_path, digits, keep):
    out = tmp_path / "m.parquet"
    build_manifest(DATA, "mlp", out, train=TrainConfig(epochs=2, batch_size=64, lr=0.05),
                   build=BuildConfig(probe_sparsities=(0.995,), keep_collapsed_probes=keep),
                   device=torch.device("cpu"), dataset=digits)
    m = read_manifest(out)
    assert m.provenance["probe"]["collapsed"] == [0.995]  # 99.5% of an MLP's weights gone: it collapses
    assert m.provenance["probe_collapsed"] == ([] if keep else [0.995])
    cep = m.column("cep_disagreements")
    assert (cep.sum() > 0) == keep


# --- the headline's caveats ---------------------------------------------------------------------------------

def _pipeline(seeds, tolerance):
    return SimpleNamespace(seeds=seeds, report=SimpleNamespace(tolerance=tolerance))


def _report(warnings=(), provenance=None):
    return {"manifest": {"dataset": {"test_examples": 359}, "provenance": provenance or {}}, "warnings": list(warnings)}


def test_caveats_one_seed_is_a_demonstration_with_the_tolerance_in_examples():
    said = caveats(_pipeline([0], 0.006), _report())
    assert said[0].startswith("1 seed: a demonstration")
    assert said[1] == "a ticket matches within 0.60 points = 2.2 of 359 test examples"  # 0.006 x 359 = 2.154


def test_caveats_several_seeds_and_warnings_and_a_dropped_probe():
    said = caveats(_pipeline([0, 1, 2], 0.006),
                   _report(["x"], {"probe": {"collapsed": [0.9], "collapsed_kept": False}, "probe_collapsed": [0.9]}))
    assert said[0] == "3 seeds"
    assert "one standard deviation" in said[1] and "359 test examples" in said[1]
    assert said[2] == "1 warning(s) of degenerate training: see the report"
    assert said[3] == "the probe at 90% sparsity collapsed and was left out of the set"


def test_build_on_a_network_near_chance_warns_and_records_it(tmp_path, digits):
    out = tmp_path / "m.parquet"
    with pytest.warns(DegenerateTrainingWarning, match="dense network ended near chance"):
        build_manifest(DATA, "mlp", out, train=TrainConfig(epochs=1, batch_size=64, lr=1e-9),
                       build=BuildConfig(probe_sparsities=()), device=torch.device("cpu"), dataset=digits)
    assert "near chance" in read_manifest(out).provenance["warnings"][0]
