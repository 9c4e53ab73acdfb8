"""The report says what it measured: verdicts as counts of seeds, a useless set called useless, forced stops flagged."""

from __future__ import annotations

from pracset.report import _transfer_row
from pracset.report.figures import curves
from pracset.report.markdown import _rounds, _tickets


def _run(arch, method, seed, rows, stages=None, selected=None):
    ledger = {name: {"train_iterations": n} for name, n in (stages or {}).items()}
    return {"arch": arch, "method": method, "seed": seed, "dir": f"{arch}/{method}-s{seed}",
            "summary": {"tickets": rows, "ledger": {"stages": ledger}, "manifest": {"selected": selected}}}


def _row(stage, r, sparsity, accuracy, verdict=None):
    row = {"stage": stage, "round": r, "sparsity": sparsity, "test_accuracy": accuracy}
    if verdict:
        row["controls"] = {"reinit": 0.5, "random_mask": 0.5}
        row["verdict"] = dict(zip(("winning_ticket", "matches_dense", "beats_controls"), verdict))
    return row


def test_verdicts_are_counts_of_seeds_and_round_0_of_other_methods_is_not_a_ticket():
    runs = [_run("mlp", "imp", s, [_row("round-00", 0, 0.0, 0.9), _row("round-01", 1, 0.2, 0.9, v)])
            for s, v in enumerate([(True, True, True), (False, True, False), (False, True, False)])]
    runs.append(_run("mlp", "prac-imp", 0, [_row("round-00", 0, 0.0, 0.7), _row("ticket-01", 1, 0.2, 0.9)]))
    text = "\n".join(_tickets({f"{a}/{m}": c for (a, m), c in curves(runs).items()}))
    assert "| 1/3 seeds | 3/3 seeds | 1/3 seeds |" in text
    prac = text.split("### mlp/prac-imp")[1]
    assert "| 0.00% |" not in prac and "| 20.00% |" in prac  # PrAC-IMP's own dense round is not shown


def test_a_set_no_better_than_the_random_subset_is_called_so():
    def method(m, acc, selected):
        return _run("lenet", m, 0, [_row("round-00", 0, 0.0, 0.95), _row("ticket-01", 1, 0.2, acc)],
                    {"round-00": 100}, selected)

    runs = [method("paper-set-transfer", 0.931, 500), method("one-shot-set-transfer", 0.95, 400),
            method("random-subset", 0.93, 500)]
    by_method = {("lenet", r["method"]): [r] for r in runs}
    row = _transfer_row("lenet", curves(runs), by_method, tolerance=0.003, batch=128)
    assert row["paper-set-transfer-vs-random"].startswith("**no better than the random subset** at 20.0% sparsity "
                                                          "(500 vs 500 examples)")
    assert row["one-shot-set-transfer-vs-random"].startswith("better than the random subset by 2.00 points")


def test_an_early_bird_stop_at_the_earliest_epoch_its_queue_allows_is_flagged():
    rounds = [{"round": 0, "set_size": 100, "next_set": 30, "cep": None, "early_bird_epoch": 6, "iterations": 60},
              {"round": 1, "set_size": 30, "next_set": 20, "cep": 5, "early_bird_epoch": 9, "iterations": 20}]
    text = "\n".join(_rounds(rounds, earliest=6))
    assert "| 6 (earliest possible) |" in text and "| 9 |" in text and "acted as a fixed budget" in text
    assert "fixed budget" not in "\n".join(_rounds(rounds[1:], earliest=6))
