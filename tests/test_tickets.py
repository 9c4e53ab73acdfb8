"""IMP with rewinding, PrAC-IMP and dynamic sparse training through ``find_tickets`` on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.sparse import Mask
from pracset.tickets import IMPConfig, find_tickets
from pracset.train import TrainConfig
from pracset.train import loop as loop_module

DATA = DataConfig(name="digits")
TRAIN = TrainConfig(epochs=3, batch_size=64, lr=0.05)


def imp(out, digits, **kw):
    config = IMPConfig(**{"rounds": 2, "rewind": "5it", **kw})
    return find_tickets("imp", DATA, "mlp", out, train=TRAIN, imp=config, device=torch.device("cpu"), dataset=digits)


def test_imp_rounds_have_exact_nested_masks_and_zero_weights(tmp_path, digits):
    summary = imp(tmp_path / "imp", digits)
    rows = summary["tickets"]
    assert [r["stage"] for r in rows] == ["round-00", "round-01", "round-02"]
    m1, m2 = (Mask.load(tmp_path / "imp" / f"round-0{r}" / "mask.pt") for r in (1, 2))
    total = m1.num_weights
    # global pruning of 20% of the remaining weights, exactly rounded
    assert m1.num_kept() == total - round(0.2 * total)
    assert m2.num_kept() == m1.num_kept() - round(0.2 * m1.num_kept())
    assert all(not (m2[n] & ~m1[n]).any() for n in m1)  # round 2 only removes weights
    weights = torch.load(tmp_path / "imp" / "round-02" / "model.pt", weights_only=True)
    assert all((weights[n][~m2[n]] == 0).all() for n in m2)
    # every round after the dense one trains the schedule's remaining steps from the rewind step
    steps = 3 * 23
    assert rows[0]["iterations"] == steps and rows[1]["iterations"] == rows[2]["iterations"] == steps - 5
    assert summary["ledger"]["total"]["train_iterations"] == steps + 2 * (steps - 5)
    # the mask of round 2 was found by rounds 0 and 1; round 2's training is its (full-data) evaluation
    assert summary["costs"] == {"search": steps + (steps - 5), "evaluation": steps - 5, "controls": 0,
                                "probe_examples": 0}
    assert rows[2]["test_accuracy"] > 0.8


def test_interrupted_imp_resumes_to_the_same_result(tmp_path, digits, monkeypatch):
    reference = imp(tmp_path / "ref", digits)
    calls = {"n": 0}
    original = loop_module.Trainer._save_checkpoint

    def crash_after_fifth_checkpoint(self, state, callbacks):
        original(self, state, callbacks)
        calls["n"] += 1
        if calls["n"] == 5:  # in round 1, after its second epoch
            raise KeyboardInterrupt

    monkeypatch.setattr(loop_module.Trainer, "_save_checkpoint", crash_after_fifth_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        imp(tmp_path / "run", digits)
    monkeypatch.setattr(loop_module.Trainer, "_save_checkpoint", original)
    with pytest.raises(ConfigError, match="unfinished run; pass --resume"):
        imp(tmp_path / "run", digits)
    resumed = find_tickets("imp", DATA, "mlp", tmp_path / "run", train=TRAIN, imp=IMPConfig(rounds=2, rewind="5it"),
                           device=torch.device("cpu"), dataset=digits, resume=True)
    for a, b in zip(reference["tickets"], resumed["tickets"]):
        assert a["test_accuracy"] == b["test_accuracy"] and a["sparsity"] == b["sparsity"]
    for r in range(3):
        assert Mask.load(tmp_path / "ref" / f"round-0{r}" / "mask.pt") == Mask.load(tmp_path / "run" / f"round-0{r}" / "mask.pt")
    assert resumed["ledger"]["total"]["train_iterations"] == reference["ledger"]["total"]["train_iterations"]
    # the live log of the interrupted round holds each epoch once, as the uninterrupted run's does
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "run" / "round-01" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def test_another_run_in_the_same_directory_is_refused(tmp_path, digits):
    imp(tmp_path / "imp", digits, rounds=1)
    before = (tmp_path / "imp" / "tickets.json").read_bytes()
    with pytest.raises(ConfigError, match="holds another run"):
        imp(tmp_path / "imp", digits, rounds=1, prune_fraction=0.5)
    assert (tmp_path / "imp" / "tickets.json").read_bytes() == before
    again = imp(tmp_path / "imp", digits, rounds=1)
    assert again.get("skipped")


def test_output_layer_rate_and_controls(tmp_path, digits):
    summary = imp(tmp_path / "imp", digits, rounds=1, output_rate=0.1, controls=True)
    mask = Mask.load(tmp_path / "imp" / "round-01" / "mask.pt")
    names = list(mask)
    out = mask[names[-1]]
    assert out.numel() - int(out.sum()) == round(0.1 * out.numel())
    rest = sum(mask[n].numel() for n in names[:-1])
    assert rest - sum(int(mask[n].sum()) for n in names[:-1]) == round(0.2 * rest)
    row = summary["tickets"][1]
    assert set(row["controls"]) == {"reinit", "random_mask"}
    assert set(row["verdict"]) == {"matches_dense", "beats_controls", "winning_ticket", "tolerance"}
    # the random-mask control keeps the ticket's layer-wise sparsity exactly
    random_weights = torch.load(tmp_path / "imp" / "control-round-01-random-mask" / "model.pt", weights_only=True)
    for name in names:
        assert int((random_weights[name] != 0).sum()) <= int(mask[name].sum())


def test_prac_imp_on_a_fixed_manifest_set(tmp_path, digits):
    from pracset.build import BuildConfig, build_manifest
    from pracset.selection import SelectionConfig

    manifest = tmp_path / "m.parquet"
    build_manifest(DATA, "mlp", manifest, train=TRAIN, build=BuildConfig(probe_sparsities=(0.8, 0.9)),
                   selection=SelectionConfig(), device=torch.device("cpu"), dataset=digits)
    kept = json.loads(__import__("pyarrow.parquet", fromlist=["x"]).read_table(manifest).schema.metadata[b"pracset"])
    kept = kept["selection"]["selected"]
    summary = find_tickets("prac-imp", DATA, "lenet300", tmp_path / "prac", train=TRAIN,
                           imp=IMPConfig(rounds=2, budget="linear", early_bird=False, rewind="60it",
                                         evaluate="every-round"), manifest=manifest,
                           device=torch.device("cpu"), dataset=digits)
    rows = summary["tickets"]
    assert [r["stage"] for r in rows] == ["round-00", "ticket-01", "ticket-02"]
    assert rows[1]["set_size"] == kept  # round 2, the last, is not trained on the subset: its mask is the ticket's
    assert not (tmp_path / "prac" / "round-02" / "metrics.json").exists()
    ids = np.load(tmp_path / "prac" / "round-01" / "ids.npy")
    assert len(ids) == kept
    round_metrics = json.loads((tmp_path / "prac" / "round-01" / "metrics.json").read_text())
    assert round_metrics["examples"] == kept
    for r in (1, 2):
        ticket_metrics = json.loads((tmp_path / "prac" / f"ticket-0{r}" / "metrics.json").read_text())
        assert ticket_metrics["examples"] == len(digits.train)
    # the rounds on the subset cost |P|/N of the full-data rounds (linear budget)
    steps_subset = 3 * -(-kept // 64)
    assert summary["ledger"]["stages"]["round-01"]["train_iterations"] == steps_subset
    # search = rounds 0 and 1 (both on the subset), evaluation = the two tickets on the full split (69 - 60 steps)
    assert summary["costs"] == {"search": 2 * steps_subset, "evaluation": 2 * (3 * 23 - 60), "controls": 0,
                                "probe_examples": 0}


def test_prac_imp_trains_only_the_final_ticket_on_full_data_by_default(tmp_path, digits):
    summary = find_tickets("prac-imp", DATA, "mlp", tmp_path / "prac", train=TRAIN,
                           imp=IMPConfig(rounds=3, budget="linear", early_bird=False, rewind="20it"),
                           device=torch.device("cpu"), dataset=digits)
    rows = summary["tickets"]
    assert [(r["stage"], r["evaluated"]) for r in rows] == [
        ("round-00", True), ("round-01", False), ("round-02", False), ("ticket-03", True)]
    assert rows[1]["test_accuracy"] is None and rows[3]["test_accuracy"] > 0.5
    assert not (tmp_path / "prac" / "ticket-01").exists() and not (tmp_path / "prac" / "round-03" / "metrics.json").exists()
    stages = summary["ledger"]["stages"]
    rounds = [stages[f"round-0{r}"]["train_iterations"] for r in range(3)]
    assert rounds[0] == 3 * 23  # the dense round on all 1,438 examples: 23 batches of 64, 3 epochs
    assert summary["costs"]["search"] == sum(rounds)
    assert summary["costs"]["evaluation"] == stages["ticket-03"]["train_iterations"] == 3 * 23 - 20
    assert summary["ledger"]["total"]["train_iterations"] == summary["costs"]["search"] + summary["costs"]["evaluation"]
    # the dense round ran its full budget on the full split: it is the reference tickets are judged against
    assert rows[3]["dense_reference"] == "round-00"


def test_prac_imp_recomputes_its_set_every_round(tmp_path, digits):
    summary = find_tickets("prac-imp", DATA, "mlp", tmp_path / "prac", train=TRAIN,
                           imp=IMPConfig(rounds=2, budget="linear", early_bird=False, rewind="20it"),
                           device=torch.device("cpu"), dataset=digits)
    first = np.load(tmp_path / "prac" / "round-00" / "next_ids.npy")
    used = np.load(tmp_path / "prac" / "round-01" / "ids.npy")
    np.testing.assert_array_equal(first, used)
    # (what the next set holds is checked against a plain reference in test_science.py)
    assert "probe-01" in summary["ledger"]["stages"]
    assert summary["ledger"]["stages"]["probe-01"]["probe_examples"] == 2 * len(digits.train)


@pytest.mark.parametrize("method", ["rigl", "granet"])
def test_dynamic_sparse_methods_reach_their_sparsity(tmp_path, digits, method):
    from pracset.sparse import GraNetConfig, RigLConfig

    summary = find_tickets(method, DATA, "mlp", tmp_path / method, train=TrainConfig(epochs=4, batch_size=64, lr=0.05),
                           imp=IMPConfig(sparsity=0.8), rigl=RigLConfig(sparsity=0.8, delta_t=10),
                           granet=GraNetConfig(sparsity=0.8, delta_t=10), device=torch.device("cpu"), dataset=digits)
    mask = Mask.load(tmp_path / method / "sparse" / "mask.pt")
    assert summary["final"]["sparsity"] == pytest.approx(0.8, abs=2e-3) == mask.sparsity()
    assert summary["final"]["test_accuracy"] > 0.5


def test_schedule_checks_use_the_run_s_step_counts():
    """Hand-counted steps: 1,000 examples at batch 64 = 16 steps/epoch (15 with drop_last)."""
    from pracset.sparse import GraNetConfig
    from pracset.tickets import TICKET_METHODS, ticket_settings

    def check(method, train, imp, granet, n, fixed):
        TICKET_METHODS.get(method).check(ticket_settings(imp=imp, granet=granet), train, n, fixed)

    train = TrainConfig(epochs=2, batch_size=64)
    check("imp", train, IMPConfig(rewind="31it"), None, 1000, None)  # 32 steps: 31 is the last
    with pytest.raises(ConfigError, match=r"rewind point 32it \(iteration 32\) lies beyond the dense run's 32 steps"):
        check("imp", train, IMPConfig(rewind="32it"), None, 1000, None)
    with pytest.raises(ConfigError, match=r"dense run's 30 steps"):
        check("imp", TrainConfig(epochs=2, batch_size=64, drop_last=True), IMPConfig(rewind="30it"), None, 1000, None)
    # PrAC-IMP on a fixed set of 100: round 0 runs max(1, int(2 * 0.1)) = 1 epoch of 2 steps, and rewinds to
    # round(k * 0.1): k = 25 -> 2 (its last step, allowed), k = 25 + 5 = 30 -> 3 (beyond it).
    subset = np.arange(100)
    check("prac-imp", train, IMPConfig(rewind="25it"), None, 1000, subset)
    with pytest.raises(ConfigError, match=r"on the manifest's 100 examples \(iteration 3\), lies beyond round 0's 2"):
        check("prac-imp", train, IMPConfig(rewind="30it"), None, 1000, subset)
    # In epochs: 2ep of the full split = 2 x 16 = 32 steps, beyond; 1ep = 16 fits. With 3 epochs (48 steps) and
    # the fixed set of 100 (round 0: max(1, int(3 * 0.1)) = 1 epoch of ceil(100 / 64) = 2 steps), 1ep = 2 steps
    # (round 0's last) fits and 2ep = 4 steps is beyond it.
    check("imp", train, IMPConfig(rewind="1ep"), None, 1000, None)
    with pytest.raises(ConfigError, match=r"rewind point 2ep \(iteration 32\)"):
        check("imp", train, IMPConfig(rewind="2ep"), None, 1000, None)
    with pytest.raises(ConfigError, match=r"rewind point 2ep \(iteration 30\) lies beyond the dense run's 30"):
        check("imp", TrainConfig(epochs=2, batch_size=64, drop_last=True), IMPConfig(rewind="2ep"), None, 1000, None)
    three = TrainConfig(epochs=3, batch_size=64)
    check("prac-imp", three, IMPConfig(rewind="1ep"), None, 1000, subset)
    with pytest.raises(ConfigError, match=r"rewind point 2ep, on the manifest's 100 examples \(iteration 4\)"):
        check("prac-imp", three, IMPConfig(rewind="2ep"), None, 1000, subset)
    # GraNet prunes in [0, 0.5] of 32 steps = steps 0..16: delta_t=16 holds one update, 17 none.
    check("granet", train, IMPConfig(), GraNetConfig(delta_t=16, prune_end=0.5), 1000, None)
    with pytest.raises(ConfigError, match="holds no update every delta_t=17"):
        check("granet", train, IMPConfig(), GraNetConfig(delta_t=17, prune_end=0.5), 1000, None)


def test_a_ticket_run_on_a_directory_another_process_holds_is_refused(tmp_path, digits):
    """The run's directory is flock-ed; the refused run writes nothing into it."""
    from pracset.fileio import DirectoryLock

    out = tmp_path / "imp"
    out.mkdir()
    with DirectoryLock(out):  # as another pracset process holding it
        with pytest.raises(ConfigError, match=f"{out} is in use by another pracset run"):
            imp(out, digits, rounds=1)
        assert [p.name for p in out.iterdir()] == [".lock"]
    imp(out, digits, rounds=1)  # once the holder is gone, the same run goes ahead
    assert (out / "tickets.json").exists() and not (out / ".lock").exists()


def _zeros_and_weights(mask_file) -> tuple[int, int]:
    """Pruned (False) entries and all entries of a mask file, counted from its raw tensors."""
    masks = torch.load(mask_file, weights_only=True)["masks"]
    return sum(int((~t).sum()) for t in masks.values()), sum(t.numel() for t in masks.values())


@pytest.mark.parametrize("method", ["imp", "prac-imp", "rigl"])
def test_every_ticket_row_names_its_mask_and_weights_files(tmp_path, digits, method):
    """A row's ``mask``/``weights`` lead, from the run directory, to that ticket's files; no layout knowledge needed."""
    out = tmp_path / method
    summary = find_tickets(method, DATA, "mlp", out, train=TRAIN,
                           imp=IMPConfig(rounds=2, rewind="5it", early_bird=False, sparsity=0.8),
                           device=torch.device("cpu"), dataset=digits)
    rows = summary["tickets"]
    assert rows == json.loads((out / "tickets.json").read_text())["tickets"]
    for row in rows:
        assert not row["mask"].startswith("/") and (out / row["mask"]).is_file(), row
        zeros, total = _zeros_and_weights(out / row["mask"])
        assert row["sparsity"] == round(zeros / total, 6)
        if row.get("evaluated", True):
            weights = torch.load(out / row["weights"], weights_only=True)
            masks = torch.load(out / row["mask"], weights_only=True)["masks"]
            assert all((weights[name][~kept] == 0).all() for name, kept in masks.items())
        else:
            assert row["weights"] is None
    if method == "prac-imp":  # round 1's mask was found on the subset and never trained on the full split
        assert (rows[1]["stage"], rows[1]["mask"], rows[1]["weights"]) == ("round-01", "round-01/mask.pt", None)
    if method == "rigl":
        assert [(r["mask"], r["weights"]) for r in rows] == [("sparse/mask.pt", "sparse/model.pt")]
        return
    # The ticket at 36% is the second prune: 20% of the weights, then 20% of the rest (each exactly rounded).
    row = min(rows, key=lambda r: abs(r["sparsity"] - 0.36))
    zeros, total = _zeros_and_weights(out / row["mask"])
    first = round(0.2 * total)
    assert zeros == first + round(0.2 * (total - first))
    assert row["mask"] == "round-02/mask.pt"
    # IMP's round 2 is its own ticket; PrAC-IMP's last mask is trained on the full split as ticket-02.
    assert row["weights"] == ("round-02/model.pt" if method == "imp" else "ticket-02/model.pt")
    assert summary["mask"] == str(out / row["mask"])  # the top-level keys stay as they were
    assert summary["weights"] == str(out / row["weights"])
