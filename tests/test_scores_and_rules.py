"""Rules over any score (highest, lowest, coverage-centric) and the EL2N / GraNd scores, by hand."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from pracset.errors import ConfigError
from pracset.selection import SelectionConfig, SelectionInputs, score_values, select
from pracset.selection.by_score import strata_of
from pracset.stats.scores import el2n, grand


def _inputs(n: int, **scores) -> SelectionInputs:
    return SelectionInputs(labels=np.zeros(n, dtype=np.int64), forgetting_events=np.zeros(n, dtype=np.int32),
                           presentations=np.ones(n, dtype=np.int32), never_learned=np.zeros(n, dtype=bool),
                           margin=np.zeros(n, dtype=np.float32), cep_disagreements=None,
                           scores={k: np.asarray(v, dtype=np.float64) for k, v in scores.items()})


EL2N = [0.5, 0.1, 0.9, 0.1, np.nan, 0.7]  # id 4 never measured; ids 1 and 3 tie


def test_highest_and_lowest_keep_their_ends_ties_by_id_and_unmeasured_last():
    """Highest 3 of EL2N: ids 2 (0.9), 5 (0.7), 0 (0.5); lowest 3: ids 1, 3 (0.1, the tie by id), 0 (0.5).
    Mutations caught: the order reversed; NaN ranked first; ties broken by the higher id."""
    inputs = _inputs(6, el2n=EL2N)
    high = select(inputs, SelectionConfig(rule="highest", score="el2n", size=3))
    low = select(inputs, SelectionConfig(rule="lowest", score="el2n", size=3))
    assert high.ids.tolist() == [0, 2, 5] and low.ids.tolist() == [0, 1, 3]
    assert select(inputs, SelectionConfig(rule="lowest", score="el2n", size=5)).ids.tolist() == [0, 1, 2, 3, 5]
    assert select(inputs, SelectionConfig(rule="lowest", score="el2n", size=2)).ids.tolist() == [1, 3]
    # the score column ranks what is kept first highest: the score itself, or its negation for lowest
    assert high.scores[2] == 0.9 and low.scores[1] == -0.1 and high.scores[4] == -np.inf
    assert set(high.reasons[high.selected]) == {"topk"} and high.describe()["score"] == "el2n"


def test_a_fraction_and_the_forgetting_score_work_as_the_size_does():
    inputs = _inputs(4)
    inputs.forgetting_events[:] = [3, 0, 1, 2]
    assert select(inputs, SelectionConfig(rule="highest", fraction=0.5)).ids.tolist() == [0, 3]
    inputs.presentations[0] = 0  # never presented: not measured, ranked last
    assert np.isnan(score_values(inputs, "forgetting")[0])
    assert select(inputs, SelectionConfig(rule="highest", size=3)).ids.tolist() == [1, 2, 3]


def test_a_score_that_was_not_computed_says_how_to_get_it():
    with pytest.raises(ConfigError, match="the grand score is not in these statistics; build the manifest with "
                                          "--scores grand"):
        select(_inputs(3), SelectionConfig(rule="highest", score="grand", size=1))
    with pytest.raises(ConfigError, match="score must be one of forgetting, aum"):
        SelectionConfig(rule="highest", score="loss")


def test_strata_are_equal_width_bins_from_min_to_max():
    values = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    assert strata_of(values, 2).tolist() == [0, 0, 1, 1, 1]  # [0, .5) and [.5, 1], the maximum in the last
    assert strata_of(values, 4).tolist() == [0, 1, 2, 3, 3]
    assert strata_of(np.full(3, 7.0), 5).tolist() == [0, 0, 0]


def test_ccs_covers_a_sparse_stratum_that_top_k_and_the_cutoff_treat_as_they_should():
    """Eight easy examples (EL2N 0.00-0.07) and two hard ones (0.9, 1.0), 2 strata, 4 kept, no cutoff: the
    smallest stratum (the 2 hard ones) fills first with min(2, 4 // 2) = 2, the easy stratum gives the other 2;
    lowest would keep no hard one. With ccs_cutoff 0.1 the hardest (id 9, 1.0) is dropped first.
    Mutations caught: the largest stratum filled first; the cutoff dropping the easiest; the budget not split
    over the strata left (a stratum taking all it holds)."""
    values = [0.00, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.9, 1.0]
    inputs = _inputs(10, el2n=values)
    chosen = select(inputs, SelectionConfig(rule="ccs", score="el2n", size=4, ccs_strata=2))
    assert chosen.size == 4 and {8, 9} <= set(chosen.ids.tolist())
    assert chosen.describe()["dropped_hardest"] == 0 and chosen.describe()["strata"] == 2
    cut = select(inputs, SelectionConfig(rule="ccs", score="el2n", size=4, ccs_strata=2, ccs_cutoff=0.1))
    assert 9 not in cut.ids and 8 in cut.ids and cut.size == 4 and cut.describe()["dropped_hardest"] == 1
    # the easy stratum's two are a seeded draw: the same seed, the same set; the hard end is fixed either way
    again = select(inputs, SelectionConfig(rule="ccs", score="el2n", size=4, ccs_strata=2))
    assert again.ids.tolist() == chosen.ids.tolist()
    assert set(chosen.reasons[chosen.selected]) == {"random"}


def test_ccs_splits_the_budget_left_over_the_strata_left():
    """Strata of 5, 5 and 2 examples, 6 kept: the 2 first (min(2, 6 // 3) = 2), then 4 // 2 = 2 and 2 // 1 = 2:
    two from each stratum, not all the budget to the first strata."""
    values = [0.0, 0.01, 0.02, 0.03, 0.04, 0.5, 0.51, 0.52, 0.53, 0.54, 0.99, 1.0]
    chosen = select(_inputs(12, el2n=values), SelectionConfig(rule="ccs", score="el2n", size=6, ccs_strata=3))
    ids = chosen.ids
    assert [int((ids < 5).sum()), int(((ids >= 5) & (ids < 10)).sum()), int((ids >= 10).sum())] == [2, 2, 2]


def test_ccs_s_hard_end_follows_the_score():
    """For AUM the hard end is the low one: the cutoff drops the lowest AUM (id 0), not the highest."""
    inputs = _inputs(5, aum=[-3.0, -1.0, 0.5, 2.0, 4.0])
    chosen = select(inputs, SelectionConfig(rule="ccs", score="aum", size=4, ccs_strata=1, ccs_cutoff=0.2))
    assert chosen.ids.tolist() == [1, 2, 3, 4]


def _with_labels(inputs: SelectionInputs, labels) -> SelectionInputs:
    return dataclasses.replace(inputs, labels=np.asarray(labels, dtype=np.int64))


def test_class_balanced_ccs_draws_each_class_s_share_over_its_own_strata():
    """Class 0: EL2N 0, 1, 2, 10 (ids 0-3); class 1: 5, 5, 6, 7, 20, 21 (ids 4-9). Size 5: shares 2 and 3.
    Class 0's two strata (width 5): {0, 1, 2} and {3}: the smaller takes 2 // 2 = 1 (id 3), the other 1 of 0-2.
    Class 1's (width 8): {4-7} and {8, 9}: the smaller takes 3 // 2 = 1 of 8, 9, the other 2 of 4-7.
    Without balance the strata span all ten (width 10.5) and both 8 and 9 are kept.
    With ccs_cutoff 0.25 each class drops its own hardest int(0.25 n): id 3 and id 9; class 0's strata are then
    {0} and {1, 2} (id 0 kept), class 1's {4-7} and {8} (id 8 kept).
    Mutations caught: one draw over all classes; the cutoff over all examples (it would drop ids 9 and 8)."""
    inputs = _with_labels(_inputs(10, el2n=[0, 1, 2, 10, 5, 5, 6, 7, 20, 21]), [0] * 4 + [1] * 6)
    for seed in range(5):
        ids = set(select(inputs, SelectionConfig(rule="ccs", score="el2n", size=5, ccs_strata=2, class_balance=True,
                                                 random_seed=seed)).ids.tolist())
        assert len(ids) == 5 and 3 in ids and len(ids & {0, 1, 2}) == 1 and len(ids & {8, 9}) == 1
        assert len(ids & {4, 5, 6, 7}) == 2
        cut = set(select(inputs, SelectionConfig(rule="ccs", score="el2n", size=5, ccs_strata=2, class_balance=True,
                                                 ccs_cutoff=0.25, random_seed=seed)).ids.tolist())
        assert {0, 8} <= cut and not {3, 9} & cut and len(cut & {1, 2}) == 1 and len(cut & {4, 5, 6, 7}) == 2
    together = select(inputs, SelectionConfig(rule="ccs", score="el2n", size=5, ccs_strata=2)).ids.tolist()
    assert {8, 9} <= set(together)


def test_ccs_refuses_what_it_cannot_do_in_one_line():
    inputs = _inputs(4, el2n=[0.1, 0.2, 0.3, np.nan])
    with pytest.raises(ConfigError, match="ccs keeps 4 examples, but only 3 remain"):
        select(inputs, SelectionConfig(rule="ccs", score="el2n", size=4))
    with pytest.raises(ConfigError, match="ccs keeps 3 examples of class 1, but only 2 remain"):
        select(_with_labels(inputs, [0, 1, 1, 1]), SelectionConfig(rule="ccs", score="el2n", size=4,
                                                                   class_balance=True))
    with pytest.raises(ConfigError, match="ccs_cutoff must lie in"):
        SelectionConfig(ccs_cutoff=1.0)


# ----------------------------------------------------------------------------- EL2N and GraNd by hand

W = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
B = torch.tensor([0.25, -0.5])
X = torch.tensor([[2.0, 0.25], [-1.0, 1.0]])
Y = torch.tensor([0, 1])


def _linear(bias: bool = True) -> nn.Module:
    model = nn.Linear(2, 2, bias=bias)
    with torch.no_grad():
        model.weight.copy_(W)
        if bias:
            model.bias.copy_(B)
    return model


def _loader():
    return [SimpleNamespace(x=X, y=Y)]


def _reference():
    """p = softmax(W x + b); EL2N = ||p - e_y||; dL/dW = (p - e_y) x^T, dL/db = p - e_y, so
    GraNd = ||p - e_y|| * sqrt(||x||^2 + 1)."""
    out_el2n, out_grand = [], []
    for x, y in zip(X.double().numpy(), Y.tolist()):
        z = W.double().numpy() @ x + B.double().numpy()
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        p[y] -= 1.0
        out_el2n.append(np.linalg.norm(p))
        out_grand.append(np.linalg.norm(p) * np.sqrt(x @ x + 1.0))
    return np.array(out_el2n), np.array(out_grand)


def test_el2n_and_grand_of_a_linear_model_match_the_formula():
    """Mutations caught: EL2N without the one-hot subtracted (the softmax's norm); GraNd of the batch-mean
    gradient instead of each example's; GraNd leaving out the bias's gradient."""
    expected_el2n, expected_grand = _reference()
    model = _linear()
    np.testing.assert_allclose(el2n(model, _loader()).numpy(), expected_el2n, rtol=1e-5)
    np.testing.assert_allclose(grand(model, _loader(), chunk=1).numpy(), expected_grand, rtol=1e-5)
    np.testing.assert_allclose(grand(model, _loader(), chunk=2).numpy(), expected_grand, rtol=1e-5)
    assert torch.equal(model.weight, W) and model.training  # scoring leaves the model as it was


# ----------------------------------------------------------------------------- EL2N and GraNd in a build

def test_a_build_computes_el2n_and_grand_books_their_cost_and_selects_by_them(tmp_path, run_cli, digits):
    """``--scores el2n grand --score-runs 2``: both columns in the manifest, GraNd at initialisation the mean of
    the two seeds' initial networks' GraNd (seeds 0 and 1), each EL2N run's one epoch booked (ceil(1438 / 128)
    = 12 steps), every scoring pass booked as 1438 probe examples, and ``--rule highest --score el2n`` keeping
    the 100 highest of the column."""
    from pracset.manifest import read_manifest
    from pracset.models import build_model
    from pracset.train.run import input_spec, unaugmented_train_loader

    out = tmp_path / "m.parquet"
    code, _, err = run_cli("build", "--arch", "mlp", "--epochs", "2", "--batch-size", "128", "--device", "cpu",
                           "--probe-sparsity", "--scores", "el2n", "grand", "--score-runs", "2", "--rule",
                           "highest", "--score", "el2n", "--size", "100", "--out", str(out), "-q")
    assert code == 0, err
    manifest = read_manifest(out)
    scores = manifest.column("el2n")
    assert manifest.selected_ids.tolist() == sorted(np.argsort(-scores, kind="stable")[:100].tolist())
    loader = unaugmented_train_loader(digits, torch.device("cpu"))
    expected = np.mean([grand(build_model("mlp", input_spec(digits), seed=s), loader).double().numpy()
                        for s in (0, 1)], axis=0)
    np.testing.assert_allclose(manifest.column("grand"), expected, rtol=1e-4)
    stages = manifest.provenance["ledger"]["stages"]
    assert [stages[f"el2n-run-{k}"]["train_iterations"] for k in (0, 1)] == [12, 12]
    assert [stages[f"grand-run-{k}"]["train_iterations"] for k in (0, 1)] == [0, 0]
    assert all(stages[f"{n}-run-{k}"]["probe_examples"] == 1438 for n in ("el2n", "grand") for k in (0, 1))
    assert manifest.provenance["scores"] == {"el2n": {"runs": 2, "epoch": 1}, "grand": {"runs": 2, "epoch": 0}}


def test_a_rule_over_a_score_the_build_does_not_compute_is_refused_before_training(tmp_path, run_cli):
    out = tmp_path / "m.parquet"
    code, _, err = run_cli("build", "--arch", "mlp", "--epochs", "2", "--device", "cpu", "--rule", "lowest",
                           "--score", "el2n", "--size", "10", "--out", str(out))
    assert code == 2 and err.strip().endswith("--rule lowest --score el2n needs the score: add --scores el2n")
    assert not any(tmp_path.iterdir())
    code, _, err = run_cli("build", "--arch", "mlp", "--epochs", "2", "--device", "cpu", "--scores", "el2n",
                           "--el2n-epoch", "3", "--out", str(out))
    assert code == 2 and "el2n_epoch 3 lies beyond the recipe's 2 epochs" in err
