"""A pipeline's [ablate] table: PrAC-IMP with one part changed at a time, beside full-data IMP at every sparsity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pracset.ablate import AblateConfig
from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.manifest import read_manifest
from pracset.pipeline import pipeline_from_dict, run_pipeline
from pracset.report.ablate import AS_CONFIGURED, ablation_markdown, ablation_rows
from pracset.selection import SelectionConfig, reads_cep
from pracset.tickets import IMPConfig, find_tickets, round_budget
from pracset.train.config import TrainConfig

CPU = torch.device("cpu")


def test_the_full_data_budget_scales_the_epochs_up_by_n_over_p():
    """By hand: 3 epochs on 10% of the data: 30 (as many iterations as 3 on all of it); on 40%: 7.5 -> 8; on all:
    3. Mutations caught: ``round`` -> ``int`` (7 on 40%); ``/`` -> ``*`` (the official rule's 0.3 -> 1)."""
    def epochs(fraction, e=3):
        return round_budget(TrainConfig(epochs=e), fraction, "full").epochs

    assert [epochs(0.1), epochs(0.4), epochs(1.0), epochs(0.9)] == [30, 8, 3, 3]
    assert epochs(0.4, e=1) == 3  # 2.5: halves round up (Python's round would give 2)
    # it evaluates once per full-data epoch's worth of iterations, not after each of the 30 short epochs
    assert round_budget(TrainConfig(epochs=3, eval_every=1), 0.1, "full").eval_every == 10


def test_each_variant_changes_one_part_and_a_variant_that_changes_nothing_is_refused():
    imp, selection = IMPConfig(budget="linear", early_bird=True), SelectionConfig()
    runs = {r.name: r for r in AblateConfig().runs(imp, selection)}
    # the default leaves out budget-linear, which is the configured budget
    assert set(runs) == {"early-bird-off", "budget-official", "budget-full", "fixed-set", "cet-only", "cep-only"}
    assert runs["early-bird-off"].imp == IMPConfig(budget="linear", early_bird=False)
    # the full-data budget is a full-data round's iterations: Early-Bird, which counts epochs, is off with it
    assert runs["budget-full"].imp == IMPConfig(budget="full", early_bird=False)
    assert runs["budget-full"].selection == selection
    assert runs["cet-only"].selection.rule == "cet" and runs["cep-only"].selection.rule == "cep"
    assert runs["cet-only"].imp == imp
    assert runs["fixed-set"].fixed_set and (runs["fixed-set"].imp, runs["fixed-set"].selection) == (imp, selection)
    assert runs["cep-only"].label == "ablate-cep-only"
    with pytest.raises(ConfigError, match="ablate variant 'budget-linear' changes nothing"):
        AblateConfig(variants=("budget-linear",)).runs(imp, selection)
    with pytest.raises(ConfigError, match="unknown ablation 'no-cep'; valid names: budget-full, budget-linear"):
        AblateConfig(variants=("no-cep",))
    base = {"name": "a", "arch": "mlp", "data": {"name": "digits"}}
    with pytest.raises(ConfigError, match="add imp and prac-imp to methods"):
        pipeline_from_dict({**base, "methods": ["prac-imp"], "ablate": {}})
    with pytest.raises(ConfigError, match="'budget-official' changes nothing"):
        pipeline_from_dict({**base, "ablate": {"variants": ["budget-official"]}})  # official is the default


def _run(label, seed, accuracies, stages):
    """A ticket run's summary by hand: rounds 0, 1, 2 at sparsity 0, 0.2, 0.36."""
    rows = [{"round": r, "stage": f"ticket-{r:02d}", "sparsity": s, "test_accuracy": a}
            for r, (s, a) in enumerate(zip((0.0, 0.2, 0.36), accuracies))]
    return {"arch": "mlp", "method": label, "seed": seed, "dir": f"runs/{label}-s{seed}",
            "summary": {"tickets": rows, "ledger": {"stages": stages}}}


def _by_method(runs):
    out = {}
    for run in runs:
        out.setdefault((run["arch"], run["method"]), []).append(run)
    return out


IMP_STAGES = {"round-00": {"train_iterations": 100}, "round-01": {"train_iterations": 100}}


def test_rows_set_each_variant_beside_imp_at_every_sparsity_by_hand():
    """IMP: 0.95/0.97 at 20% (mean 0.96, std 0.01414), 0.94/0.96 at 36%; search 100 and 200 iterations.
    PrAC-IMP as configured: 0.955/0.965 (gap 0, within), then 0.92/0.93 (gap -2.5 points, outside); search
    round-00 = 60, then 60 + 10 + a probe of 640 examples at batch 64 (10) = 80: 60% and 40% of IMP's.
    fixed-set, charged a set of 50: 0.90/0.92 (outside), then 0.95/0.95 (inside): it matches at no sparsity *up to*
    which it matches everywhere; costs (20 + 50) / 100 and (40 + 50) / 200.
    Mutations caught: probes not charged (0.35); the set not charged (0.2); 'matches up to' the last match (36%)."""
    prac_stages = {"round-00": {"train_iterations": 60}, "round-01": {"train_iterations": 10},
                   "probe-01": {"probe_examples": 640}}
    fixed_stages = {"round-00": {"train_iterations": 20}, "round-01": {"train_iterations": 20}}
    runs = [_run("imp", 0, (0.98, 0.95, 0.94), IMP_STAGES), _run("imp", 1, (0.98, 0.97, 0.96), IMP_STAGES),
            _run("prac-imp", 0, (0.98, 0.955, 0.92), prac_stages), _run("prac-imp", 1, (0.98, 0.965, 0.93), prac_stages),
            _run("ablate-fixed-set", 0, (0.5, 0.90, 0.95), fixed_stages),
            _run("ablate-fixed-set", 1, (0.5, 0.92, 0.95), fixed_stages)]
    variants = AblateConfig(variants=("fixed-set",)).runs(IMPConfig(), SelectionConfig())
    rows = {r["variant"]: r for r in ablation_rows(_by_method(runs), "mlp", variants, 0.003, 64, set_iterations=50)}
    prac, fixed = rows[AS_CONFIGURED], rows["fixed-set"]
    assert [p["gap"] for p in prac["per_sparsity"]] == pytest.approx([0.0, -0.025])
    assert [p["within"] for p in prac["per_sparsity"]] == [True, False]
    assert [p["cost_share"] for p in prac["per_sparsity"]] == pytest.approx([0.6, 0.4])
    assert prac["matches_up_to"]["sparsity"] == 0.2 and prac["final"]["std"] == pytest.approx(np.std([.92, .93], ddof=1))
    assert [p["cost_share"] for p in fixed["per_sparsity"]] == pytest.approx([0.7, 0.45])
    assert [p["within"] for p in fixed["per_sparsity"]] == [False, True] and fixed["matches_up_to"] is None
    text = "\n".join(ablation_markdown(list(rows.values())))
    assert "| prac-imp (as configured) | - | 2 | 20.0% | 60% | 36.0% | -2.50 ± 0.71 | 40% |" in text
    assert "| fixed-set |" in text and "| none | - | 36.0% | +0.00 ± 0.00 | 45% |" in text
    assert "+0.00* (60%) | -2.50 (40%)" in text


def test_a_variant_stopped_on_any_seed_is_reported_stopped_not_averaged_over_the_others():
    runs = [_run("imp", 0, (0.98, 0.95, 0.94), IMP_STAGES), _run("imp", 1, (0.98, 0.97, 0.96), IMP_STAGES),
            _run("ablate-cet-only", 0, (0.98, 0.96, 0.95), IMP_STAGES)]
    variants = AblateConfig(variants=("cet-only",)).runs(IMPConfig(), SelectionConfig())
    stopped = [{"variant": "cet-only", "seed": 1, "reason": "the cet rule selected no examples"}]
    missing, row = ablation_rows(_by_method(runs), "mlp", variants, 0.003, 64, stopped=stopped)
    assert row["stopped"] == ["seed 1: the cet rule selected no examples"] and "per_sparsity" not in row
    assert missing["variant"] == AS_CONFIGURED and missing["stopped"] == ["no finished run"]  # not left out
    text = "\n".join(ablation_markdown([missing, row]))
    assert "| cet-only | each round's set is CET alone" in text and "| stopped | no finished run |" in text


def test_cep_alone_trains_round_one_on_the_full_split(tmp_path, digits):
    """Round 0 has no sparse model to compare with the dense one: with the cep rule, round 1 trains on all 1,438
    examples, 2 epochs of ceil(1438 / 64) = 23 steps, from the rewind point (1 epoch): 46 iterations; round 2 on
    round 1's CEP. Mutation caught: the round-0 branch dropped (the cep rule refuses: no probe yet)."""
    train = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    summary = find_tickets("prac-imp", DataConfig(name="digits"), "mlp", tmp_path / "run", train=train, device=CPU,
                           dataset=digits,
                           imp=IMPConfig(rounds=2, rewind="1ep", early_bird=False, budget="linear",
                                         evaluate="none"),
                           selection=SelectionConfig(rule="cep"))
    stages = summary["ledger"]["stages"]
    assert stages["round-01"]["train_iterations"] == 46 and stages["round-01"]["train_examples"] == 2 * 1438
    round1 = json.loads((tmp_path / "run" / "round-01" / "metrics.json").read_text())
    chosen = read_manifest(tmp_path / "run" / "round-01" / "prac-set.parquet")
    assert chosen.selection["rule"] == "cep" and round1["next_set"] == chosen.num_selected == round1["cep"]
    with pytest.raises(ConfigError, match="cep rule selects its first set after round 1"):
        find_tickets("prac-imp", DataConfig(name="digits"), "mlp", tmp_path / "one", train=train, device=CPU,
                     dataset=digits, imp=IMPConfig(rounds=1), selection=SelectionConfig(rule="cep"))


@pytest.mark.slow
def test_an_ablate_pipeline_runs_each_variant_and_reports_it(tmp_path, monkeypatch):
    import pracset.pipeline as pipeline_module

    real = pipeline_module.find_tickets

    def cep_selects_nothing(method, data, arch, out, **kw):  # a variant whose rule finds nothing goes no further
        if "ablate-cep-only-s1" in str(out):
            from pracset.selection import EmptySelectionError
            raise EmptySelectionError("the cep rule selected no examples: scripted")
        return real(method, data, arch, out, **kw)

    monkeypatch.setattr(pipeline_module, "find_tickets", cep_selects_nothing)
    pipeline = pipeline_from_dict({
        "name": "a", "arch": "mlp", "seeds": [0, 1], "data": {"name": "digits"},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05}, "build": {"probe_sparsities": [0.5]},
        "imp": {"rounds": 2, "rewind": "1ep", "early_bird": False, "budget": "linear"},
        "ablate": {"variants": ["fixed-set", "budget-full", "cep-only"]}})
    report = run_pipeline(pipeline, tmp_path / "run", device=CPU)
    root = tmp_path / "run"
    rows = {r["variant"]: r for r in report["ablation"]}
    assert list(rows) == [AS_CONFIGURED, "fixed-set", "budget-full", "cep-only"]
    assert rows["cep-only"]["stopped"] == ["seed 1: the cep rule selected no examples: scripted"]
    assert rows["fixed-set"]["seeds"] == 2 and len(rows["fixed-set"]["per_sparsity"]) == 2
    build = read_manifest(root / "manifest.parquet")
    stages = build.provenance["ledger"]["stages"]
    assert rows["fixed-set"]["set_iterations"] == stages["dense"]["train_iterations"] + -(
        -stages["probe"]["probe_examples"] // 64)
    for seed in (0, 1):
        fixed = json.loads((root / "mlp" / f"ablate-fixed-set-s{seed}" / "tickets.json").read_text())
        assert fixed["manifest"]["selected"] == build.num_selected
        full = json.loads((root / "mlp" / f"ablate-budget-full-s{seed}" / "round-01" / "metrics.json").read_text())
        n = full["examples"]  # round 1 on PrAC's set: round(2 * 1438 / n) epochs of ceil(n / 64) steps
        assert full["epochs"] == round(2 * 1438 / n)
    text = (root / "report.md").read_text()
    assert "## Which part of PrAC-IMP costs accuracy" in text and (root / "ablation.png").is_file()


def test_only_rules_that_read_cep_pay_for_prac_imp_s_probes(tmp_path, digits):
    """CET alone reads no disagreement: its rounds run no probe and book none (the ablation would otherwise charge
    it for work it does not use). A sized rule given no size keeps PrAC's count, which counts CEP: it probes.
    Mutation caught: the probe run for every rule (a probe-01 stage appears)."""
    assert [reads_cep(SelectionConfig(rule=r)) for r in ("prac", "cep", "cet", "random")] == [True, True, False, True]
    assert not reads_cep(SelectionConfig(rule="random", size=10))
    assert not reads_cep(SelectionConfig(rule="highest", score="aum", fraction=0.1))
    train = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    summary = find_tickets("prac-imp", DataConfig(name="digits"), "mlp", tmp_path / "run", train=train, device=CPU,
                           dataset=digits, selection=SelectionConfig(rule="cet"),
                           imp=IMPConfig(rounds=3, rewind="1ep", early_bird=False, budget="linear", evaluate="none"))
    assert not [s for s in summary["ledger"]["stages"] if s.startswith("probe")]
    chosen = read_manifest(tmp_path / "run" / "round-01" / "prac-set.parquet")
    assert chosen.provenance["cep"] == "none" and not chosen.column("cep_disagreements").any()
