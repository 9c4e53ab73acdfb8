"""Value-pinned rules (issue 22, item 5): each expected value is computed by hand or by a plain reference here.

Every test names, in its docstring, the rule it pins and the mutation of the library it was checked to catch.
The rules: (a) the ``official`` round budget floors, (b) the random subset is drawn from the whole split,
(c) every seed has its own data order, (d) tickets are judged against the fully trained dense network,
(e) the verdict's tolerance and its stronger control, (f) the transfer's "no better than random" rule with
several seeds, (g) the Early-Bird "earliest possible" flag, (h) the rewind point is the state after exactly k
optimizer steps.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pracset.data import DataConfig
from pracset.manifest import read_manifest, write_manifest
from pracset.manifest.assemble import dataset_metadata, write_random_manifest
from pracset.pipeline import pipeline_from_dict
from pracset.report import _transfer_row, write_report
from pracset.report.figures import curves
from pracset.report.markdown import _rounds
from pracset.runs import PipelineLayout, TicketLayout
from pracset.sparse.early_bird import EarlyBirdConfig, EarlyBirdStop
from pracset.sparse.mask import Mask
from pracset.tickets import IMPConfig, TicketContext, find_tickets, train_imp_seeds_packed
from pracset.tickets.config import round_budget
from pracset.tickets.controls import verdict
from pracset.tickets.stages import StageJob, _training_loaders
from pracset.train import Callback, TrainConfig, Trainer
from tests.test_manifest import make_columns

DATA = DataConfig(name="digits")
CPU = torch.device("cpu")
TRAIN = TrainConfig(epochs=3, batch_size=64, lr=0.05)
N = 1438  # digits' training split; 23 batches of 64 per epoch


def context(digits, train: TrainConfig = TRAIN) -> TicketContext:
    return TicketContext(digits, "mlp", train, CPU, run=None, layout=None)


def _manifest(path, n: int, selected: np.ndarray, *, hashes=None, labels=None, metadata=None):
    """A valid manifest of ``n`` rows whose selected examples are exactly ``selected`` (a boolean array)."""
    columns = make_columns(n, hashes=hashes, labels=labels, selected=selected)
    columns["reason"] = np.where(selected, "random", "")
    meta = metadata or {"dataset": {"name": "synthetic", "split": "train", "size": n, "fingerprint": "f" * 32},
                        "selection": {"rule": "random"}, "provenance": {"arch": "mlp"}}
    return write_manifest(path, columns, meta)


# ----------------------------------------------------------------------------- (a) the official round budget

def test_the_official_round_budget_floors_the_scaled_epochs():
    """Rule (a): ``official`` runs max(1, int(epochs * |P|/N)) epochs (floor), ``linear`` all of them.

    Mutation caught: ``int`` -> ``math.ceil`` (and ``round``) in ``round_budget``.
    """
    def epochs(e, fraction, rule="official"):
        return round_budget(TrainConfig(epochs=e), fraction, rule).epochs

    assert epochs(20, 0.33) == 6  # 6.6: floor 6 (ceil 7, round 7)
    assert epochs(10, 0.25) == 2  # 2.5: floor 2 (ceil 3)
    assert epochs(182, 0.3666) == 66  # 66.72: the paper's CIFAR-10 recipe on its 36.66% set (ceil 67, round 67)
    assert epochs(3, 0.1) == 1  # 0.3 floors to 0: at least one epoch
    assert epochs(20, 0.5) == 10  # exact products stay as they are
    assert epochs(20, 0.33, "linear") == 20


def test_a_prac_imp_round_on_a_fixed_set_runs_the_floored_budget(tmp_path, digits):
    """Rule (a) through a run: a fixed set of 700 of the 1,438 examples, 4 epochs, batch 64, ``official``.

    Hand count: 4 * 700 / 1438 = 1.947 -> int -> 1 epoch of ceil(700 / 64) = 11 steps per round (ceil or round
    would give 2 epochs, 22 steps). Rounds 0 and 1 (both on the set) are the search: 22 iterations; ticket-02
    trains on the full split: 4 * 23 = 92.
    Mutation caught: ``int`` -> ``math.ceil`` in ``round_budget``.
    """
    selected = np.arange(N) < 700
    metadata = {"dataset": dataset_metadata(digits), "selection": {"rule": "random"}, "provenance": {"arch": "mlp"}}
    labels = digits.train.labels.cpu().numpy()
    manifest = _manifest(tmp_path / "set.parquet", N, selected, hashes=digits.train_hashes, labels=labels,
                         metadata=metadata)
    train = TrainConfig(epochs=4, batch_size=64, lr=0.05)
    summary = find_tickets("prac-imp", DATA, "mlp", tmp_path / "prac", train=train,
                           imp=IMPConfig(rounds=2, budget="official", early_bird=False), manifest=manifest,
                           device=CPU, dataset=digits)
    stages = summary["ledger"]["stages"]
    per_round = math.ceil(700 / 64) * 1
    assert per_round == 11
    assert stages["round-00"]["train_iterations"] == stages["round-01"]["train_iterations"] == per_round
    assert summary["costs"]["search"] == 2 * per_round
    assert stages["ticket-02"]["train_iterations"] == 4 * 23
    round0 = json.loads((tmp_path / "prac" / "round-00" / "metrics.json").read_text())
    assert (round0["epochs"], round0["examples"]) == (1, 700)


# ----------------------------------------------------------------------------- (b) the random-subset control

def test_the_random_subset_is_drawn_from_the_whole_split_not_from_the_prac_set(tmp_path):
    """Rule (b): ``write_random_manifest`` keeps ``size`` examples drawn uniformly from all N, whatever the
    source manifest selected.

    The source selects ids 0..19 of N = 200. A uniform draw of 20 lies entirely inside them with probability
    1 / C(200, 20) (about 6e-28) and holds 20 * 20 / 200 = 2 of them on average (more than 10 with probability
    below 1e-6); a draw of 50 cannot come from 20 selected examples at all.
    Mutation caught: the draw made among the source's selected ids.
    """
    n, inside = 200, np.arange(200) < 20
    source = _manifest(tmp_path / "source.parquet", n, inside)
    assert 1 / math.comb(200, 20) < 1e-27
    for size in (20, 50):
        out = tmp_path / f"random-{size}.parquet"
        write_random_manifest(source, out, seed=0, size=size)
        ids = read_manifest(out).selected_ids
        assert len(ids) == size
        outside = ids[~inside[ids]]
        assert len(outside) >= size - 10, (size, ids)
        assert read_manifest(out).selection["rule"] == "random"


# ----------------------------------------------------------------------------- (c) every seed's data order

class _FirstBatch(Callback):
    """Records the example ids of the first training step the Trainer takes."""

    def __init__(self):
        self.ids = None

    def on_batch_end(self, state, out):
        if self.ids is None:
            self.ids = out.index.cpu().clone()


def _first_batch_ids(loader) -> torch.Tensor:
    loader.set_epoch(0)
    return next(iter(loader)).index.cpu().clone()


def test_every_seed_trains_on_its_own_data_order_one_by_one(digits):
    """Rule (c), one by one: the Trainer's first batch (through the run's own loaders) differs between seeds 0
    and 1 and is the same for two runs with seed 0.

    Mutation caught: ``make_loaders`` giving every loader seed 0 (and ``DeviceLoader`` ignoring its seed).
    """
    one = TrainConfig(epochs=1, batch_size=64, lr=0.05)
    seen = {}
    for label, seed in (("a", 0), ("b", 1), ("c", 0)):
        ctx = context(digits, replace(one, seed=seed))
        train, _ = ctx.loaders()
        watch = _FirstBatch()
        Trainer(ctx.train).fit(ctx.model(), train, None, [watch])
        seen[label] = watch.ids
    assert len(seen["a"]) == 64
    assert torch.equal(seen["a"], seen["c"])
    assert not torch.equal(seen["a"], seen["b"])
    assert len(set(seen["a"].tolist()) & set(seen["b"].tolist())) < 32  # two permutations, not one shifted


def test_every_seed_trains_on_its_own_data_order_packed(digits):
    """Rule (c), packed: ``_training_loaders`` gives each run the order of its own seed (seeds 0, 1 and another
    run with seed 0): the first batches of seeds 0 and 1 differ, the two seed-0 runs' are equal, and each is
    the order that seed's run reads alone.

    Mutation caught: ``_training_loaders`` handing every run the first run's loader (or ``reseeded`` keeping
    the old seed).
    """
    contexts = [context(digits, replace(TRAIN, seed=s)) for s in (0, 1, 0)]
    jobs = [StageJob(ctx, None, None) for ctx in contexts]
    loaders, _ = _training_loaders(jobs)
    first = [_first_batch_ids(loader) for loader in loaders]
    assert torch.equal(first[0], first[2])
    assert not torch.equal(first[0], first[1])
    for ctx, ids in zip(contexts, first):
        assert torch.equal(ids, _first_batch_ids(ctx.loaders()[0]))


# ----------------------------------------------------------------------------- (d) the dense reference

def test_an_early_bird_stopped_round_0_is_not_the_dense_reference(tmp_path, digits):
    """Rule (d): PrAC-IMP's round 0 stopped by Early-Bird is under-trained; tickets are judged against the
    ``dense-reference`` stage, trained on the full split for the full budget.

    Early-Bird with a queue of 1, eps 0.99 and no wait must stop round 0 after epoch 2 (the first distance, at
    most 0.4 for a 20% prune, enters the queue), one epoch short of its 3.
    Mutation caught: ``PracSetPolicy.dense_reference`` returning round 0 always.
    """
    out = tmp_path / "prac"
    summary = find_tickets("prac-imp", DATA, "mlp", out, train=TRAIN,
                           imp=IMPConfig(rounds=1, budget="linear", controls=True, pack_controls="off"),
                           early_bird=EarlyBirdConfig(eps=0.99, queue_length=1, wait_for_change=False),
                           device=CPU, dataset=digits)
    layout = TicketLayout(out)
    round0 = json.loads(layout.round(0).metrics.read_text())
    assert round0["early_bird_epoch"] == 2 and round0["epochs_run"] == 2  # the precondition: it stopped early
    reference = json.loads(layout.dense_reference.metrics.read_text())
    assert (reference["epochs_run"], reference["examples"]) == (3, N)
    assert reference["ledger"]["train_iterations"] == 3 * 23
    ticket = summary["tickets"][-1]
    assert ticket["stage"] == "ticket-01"
    assert ticket["dense_reference"] == layout.dense_reference.name == "dense-reference"
    assert ticket["dense_accuracy"] == reference["final"]["test_accuracy"]
    matches = ticket["test_accuracy"] >= reference["final"]["test_accuracy"] - 0.005
    assert ticket["verdict"]["matches_dense"] == matches


# ----------------------------------------------------------------------------- (e) the verdict

def test_the_verdict_matches_within_exactly_the_tolerance_and_beats_the_stronger_control():
    """Rule (e), hand numbers at the boundaries (binary fractions, so ``dense - tolerance`` is exact).

    Mutations caught: the tolerance doubled in the match (or the beat); ``min`` instead of ``max`` over the
    controls; ``>`` instead of ``>=`` at the match boundary.
    """
    tol = 0.125
    controls = {"reinit": 0.25, "random_mask": 0.375}
    # matches dense: accuracy >= dense - tolerance, exactly at the boundary included
    assert verdict(0.625, 0.75, controls, tol)["matches_dense"]
    assert not verdict(0.625 - 0.001, 0.75, controls, tol)["matches_dense"]
    assert not verdict(0.75 - 1.5 * tol, 0.75, controls, tol)["matches_dense"]  # inside a doubled tolerance
    assert not verdict(0.75, None, controls, tol)["matches_dense"]
    assert not verdict(0.75, 0.75, controls, tol, collapsed=True)["matches_dense"]
    # beats controls: above the stronger control by more than the tolerance (strictly)
    assert not verdict(0.85, 0.9, {"reinit": 0.80, "random_mask": 0.90}, 0.005)["beats_controls"]
    assert not verdict(0.85, 0.9, {"reinit": 0.90, "random_mask": 0.80}, 0.005)["beats_controls"]
    assert not verdict(0.5, 0.5, controls, tol)["beats_controls"]  # 0.375 + 0.125 = 0.5: not more than
    assert verdict(0.5 + 0.001, 0.5, controls, tol)["beats_controls"]
    assert verdict(0.375 + 1.5 * tol, 0.5, controls, tol)["beats_controls"]  # more than one tolerance, < two
    # winning: both
    v = verdict(0.5 + 0.001, 0.5, controls, tol)
    assert v == {"matches_dense": True, "beats_controls": True, "winning_ticket": True, "tolerance": tol}
    assert not verdict(0.5 + 0.001, 0.75, controls, tol)["winning_ticket"]


# ----------------------------------------------------------------------------- (f) the transfer rule

def _run(arch, method, seed, accuracy, selected):
    rows = [{"stage": "round-00", "round": 0, "sparsity": 0.0, "test_accuracy": 0.95},
            {"stage": "ticket-01", "round": 1, "sparsity": 0.2, "test_accuracy": accuracy}]
    return {"arch": arch, "method": method, "seed": seed, "dir": f"{arch}/{method}-s{seed}",
            "summary": {"tickets": rows, "ledger": {"stages": {"round-00": {"train_iterations": 100}}},
                        "manifest": {"selected": selected}}}


def _verdict_against_random(chosen: list[float], random: list[float], tolerance: float = 0.003) -> str:
    runs = ([_run("lenet", "paper-set-transfer", s, a, 500) for s, a in enumerate(chosen)]
            + [_run("lenet", "random-subset", s, a, 500) for s, a in enumerate(random)])
    by_method: dict = {}
    for run in runs:
        by_method.setdefault(("lenet", run["method"]), []).append(run)
    row = _transfer_row("lenet", curves(runs), by_method, tolerance=tolerance, batch=128)
    return row["paper-set-transfer-vs-random"]


def test_a_transferred_set_is_better_than_random_only_beyond_the_larger_seed_spread():
    """Rule (f): with several seeds the set beats the random subset when the gap of the means exceeds
    max(std_set, std_random) (sample std); a spread of 0 falls back to the single-seed tolerance (0.003).

    Three seeds at m - d, m, m + d have mean m and sample std d (hand). Gaps of 0.01 lie between the tolerance
    and a 0.02 spread: "no better", whichever side has the spread; 0.03 is "better".
    Mutations caught: ``min`` instead of ``max`` of the two stds; the tolerance instead of the spread; no
    fallback to the tolerance for a spread of 0.
    """
    def seeds(mean, d):
        return [mean - d, mean, mean + d]

    no = "**no better than the random subset**"
    assert _verdict_against_random(seeds(0.93, 0.02), seeds(0.92, 0.005)).startswith(no)  # the set's spread
    assert _verdict_against_random(seeds(0.93, 0.005), seeds(0.92, 0.02)).startswith(no)  # the random one's
    assert _verdict_against_random(seeds(0.95, 0.02), seeds(0.92, 0.005)).startswith(
        "better than the random subset by 3.00 points")
    # a spread of 0: the tolerance decides (0.002 is within it, 0.005 beyond)
    assert _verdict_against_random([0.922] * 3, [0.92] * 3).startswith(no)
    assert _verdict_against_random([0.925] * 3, [0.92] * 3).startswith("better than the random subset by 0.50")


# ----------------------------------------------------------------------------- (g) the Early-Bird flag

def _report_earliest(tmp_path, queue_length: int, warmup: int, wait_for_change: bool = True) -> int:
    """``early_bird_earliest`` as ``write_report`` writes it into report.json for such a pipeline."""
    pipeline = pipeline_from_dict({
        "name": "p", "arch": "mlp", "data": {"name": "digits"}, "train": {"warmup_epochs": warmup},
        "early_bird": {"queue_length": queue_length, "wait_for_change": wait_for_change},
        "report": {"plots": False}})
    root = tmp_path / f"report-{queue_length}-{warmup}-{wait_for_change}"
    root.mkdir()
    manifest = _manifest(root / "m.parquet", 40, np.arange(40) % 3 == 0)
    return write_report(pipeline, PipelineLayout(root), {"manifest": manifest, "runs": []})["early_bird_earliest"]


def test_a_round_stopped_at_the_earliest_epoch_is_flagged_and_one_later_is_not(tmp_path):
    """Rule (g), the report: earliest = queue_length + 1 + warm-up epochs (5, 0 -> 6; 4, 2 -> 7), one more
    when the recording waits for a change with no warm-up (5, 0 -> 7); a stop at epoch <= earliest is marked
    "earliest possible", one epoch later is not.

    Mutations caught: ``<`` instead of ``<=`` in ``_rounds``; the ``+ 1`` or the warm-up left out of the formula.
    """
    assert _report_earliest(tmp_path, 5, 0, wait_for_change=False) == 6
    assert _report_earliest(tmp_path, 5, 0) == 7
    assert _report_earliest(tmp_path, 4, 2) == 7

    def table(stop):
        return "\n".join(_rounds([{"round": 0, "set_size": 100, "next_set": 30, "cep": None,
                                   "early_bird_epoch": stop, "iterations": 60}], earliest=6))

    assert "| 6 (earliest possible) |" in table(6) and "acted as a fixed budget" in table(6)
    assert "earliest possible" not in table(7) and "fixed budget" not in table(7) and "| 7 |" in table(7)


def _earliest_stop(queue_length: int, warmup: int, wait_for_change: bool) -> int:
    """The earliest epoch EarlyBirdStop can stop at, over every script of settled / moving masks.

    Each epoch's judged mask either equals the previous one (distance 0) or flips 5 of its 10 weights (0.5,
    above eps); every sequence of the two over the first epochs is tried.
    """
    config = EarlyBirdConfig(queue_length=queue_length, wait_for_change=wait_for_change)
    horizon = queue_length + warmup + 4
    model = nn.Linear(1, 1)
    base = Mask({"w": torch.ones(10, dtype=torch.bool)})
    settled, moved = (Mask({"w": torch.arange(10) < k}) for k in (8, 3))
    best = None
    for script in itertools.product((False, True), repeat=horizon - 1):
        sequence, current = [settled], settled
        for move in script:
            current = (moved if current is settled else settled) if move else current
            sequence.append(current)
        bird = EarlyBirdStop(config, base, warmup_epochs=warmup, prune=lambda m, b, it=iter(sequence): next(it))
        state = SimpleNamespace(model=model, epoch=0, stop_requested=False)
        for epoch in range(1, horizon + 1):
            state.epoch = epoch
            bird.on_epoch_end(state, {})
            if state.stop_requested:
                break
        if bird.stopped_epoch is not None:
            best = bird.stopped_epoch if best is None else min(best, bird.stopped_epoch)
    assert best is not None
    return best


@pytest.mark.parametrize("queue_length, warmup, wait_for_change", [
    (5, 0, False), (4, 2, True), (2, 1, False),
    # with wait_for_change (the default) and no warm-up the distance that starts the recording (> eps) is queued
    # too, so the earliest stop is one epoch later (queue_length + 2): the report said queue_length + 1 before
    (5, 0, True), (1, 0, True),
])
def test_the_report_s_earliest_epoch_is_the_earliest_early_bird_can_stop(tmp_path, queue_length, warmup,
                                                                          wait_for_change):
    """Rule (g), against the callback itself: driving EarlyBirdStop through every script of mask changes, the
    earliest epoch it stops at is the report's ``early_bird_earliest``.

    Mutations caught: the formula without ``+ 1`` or without the warm-up; EarlyBirdStop's warm-up test changed.
    """
    assert _earliest_stop(queue_length, warmup, wait_for_change) == _report_earliest(
        tmp_path, queue_length, warmup, wait_for_change)


# ----------------------------------------------------------------------------- (h) the rewind point

def _hand_sgd_states(model: nn.Module, loader, config: TrainConfig, steps: int) -> list[dict]:
    """The model's state after 0..steps plain SGD steps (momentum, weight decay, constant rate: every step
    here lies before the first milestone) over ``loader``'s batches, epoch after epoch."""
    params = list(model.parameters())
    buffers = [None] * len(params)
    states = [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    epoch = 0
    while len(states) <= steps:
        loader.set_epoch(epoch)
        for batch in loader:
            if len(states) > steps:
                break
            loss = F.cross_entropy(model(batch.x), batch.y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for i, (p, g) in enumerate(zip(params, grads)):
                    d = g + config.weight_decay * p
                    buffers[i] = d.clone() if buffers[i] is None else config.momentum * buffers[i] + d
                    p -= config.lr * buffers[i]
            states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        epoch += 1
    return states


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _assert_is_step(rewind: dict, states: list[dict], k: int, atol: float) -> None:
    """``rewind`` is the state after exactly k steps: within ``atol`` of it, and far from k - 1 and k + 1."""
    assert list(rewind) == list(states[k])
    assert _max_difference(rewind, states[k]) < atol
    for other in (k - 1, k + 1):
        assert _max_difference(rewind, states[other]) > 20 * atol, other


def test_the_rewind_point_is_the_state_after_exactly_k_steps_one_by_one(tmp_path, digits):
    """Rule (h), the Trainer path: ``rewind = "25it"`` saves round 0's state after exactly 25 optimizer steps
    (across the epoch boundary at 23), as a hand-written SGD loop over the same batches leaves it.

    Also the step counts by hand: ``Nep`` = N epochs of batches, ``Nit`` on a subset scaled by |P|/N.
    Mutation caught: the Snapshot taken one step late (``state.step == self.step + 1``) or early, and
    ``train_rounds`` snapshotting at ``rewind_step + 1``.
    """
    assert IMPConfig(rewind="2ep").rewind_step_on(N, N, TRAIN) == 46
    assert IMPConfig(rewind="100it").rewind_step_on(719, N, TRAIN) == 50
    assert IMPConfig(rewind="25it").rewind_step_on(N, N, TRAIN) == 25
    out = tmp_path / "imp"
    find_tickets("imp", DATA, "mlp", out, train=TRAIN, imp=IMPConfig(rounds=1, rewind="25it"), device=CPU,
                 dataset=digits)
    rewind = torch.load(TicketLayout(out).rewind, weights_only=True)
    ctx = context(digits)
    assert 26 < 0.5 * 3 * 23  # every step compared lies before the first milestone: the rate is constant
    states = _hand_sgd_states(ctx.model(), ctx.loaders()[0], TRAIN, 26)
    _assert_is_step(rewind, states, 25, atol=1e-5)


def test_the_rewind_point_is_the_state_after_exactly_k_steps_packed(tmp_path, digits):
    """Rule (h), the packed path: full-data IMP of seeds 0 and 1 in lockstep (``fit_packed(snapshot_step=k)``)
    saves each seed's state after exactly k = 5 steps of its own data order, as a hand SGD loop leaves it.

    Mutation caught: ``fit_packed`` taking the snapshot one step late (``step == snapshot_step + 1``) or early,
    and the lockstep snapshotting at ``rewind_step + 1``.
    """
    runs = [(tmp_path / f"s{seed}", replace(TRAIN, seed=seed)) for seed in (0, 1)]
    train_imp_seeds_packed(DATA, "mlp", runs, imp=IMPConfig(rounds=1, rewind="5it"), device=CPU, dataset=digits)
    rewinds = []
    for out, train in runs:
        rewind = torch.load(TicketLayout(out).rewind, weights_only=True)
        ctx = context(digits, train)
        states = _hand_sgd_states(ctx.model(), ctx.loaders()[0], train, 6)
        _assert_is_step(rewind, states, 5, atol=1e-5)
        rewinds.append(rewind)
    assert _max_difference(*rewinds) > 1e-3  # two seeds: two initialisations and orders
