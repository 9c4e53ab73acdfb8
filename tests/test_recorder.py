"""The per-example recorder against hand-computed forgetting counts, and inside the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pracset.data import DeviceLoader
from pracset.models import InputSpec, build_model
from pracset.stats import BYTES_PER_EXAMPLE, ExampleRecorder
from pracset.train import TrainConfig, Trainer

CLASSES = 3


def logits_for(labels: torch.Tensor, correct: list[bool], true_value: float = 2.0) -> torch.Tensor:
    """Logits whose argmax is the label where ``correct`` and label+1 elsewhere.

    The true class gets ``true_value``, the wrong "winner" 3.0 when wrong, and
    the remaining class 0.0, so margins are known: correct -> true_value - max(0, ...).
    """
    logits = torch.zeros(len(labels), CLASSES)
    for row, (label, ok) in enumerate(zip(labels.tolist(), correct)):
        logits[row, label] = true_value
        if not ok:
            logits[row, (label + 1) % CLASSES] = 3.0
    return logits


# Presentations per epoch: example id -> correct?  (absent ids are not presented that epoch)
SCRIPT = [
    {0: True, 1: False, 2: False, 3: True},
    {0: False, 1: False, 2: True},
    {0: True, 1: False, 2: True},
    {0: False, 1: False, 2: True, 3: False},
]
LABELS = torch.tensor([0, 1, 2, 0, 1])  # id 4 is never presented


def run_script(recorder: ExampleRecorder, script=SCRIPT, labels=LABELS) -> None:
    for epoch, presented in enumerate(script):
        ids = list(presented)
        # present in two batches to check that state carries across batches
        for chunk in (ids[: len(ids) // 2], ids[len(ids) // 2:]):
            if not chunk:
                continue
            index = torch.tensor(chunk)
            logits = logits_for(labels[index], [presented[i] for i in chunk])
            losses = torch.nn.functional.cross_entropy(logits, labels[index], reduction="none")
            recorder.update(index, labels[index], logits, losses, epoch)
        recorder.end_epoch()


def test_hand_computed_counts():
    recorder = ExampleRecorder(5, keep_history=True)
    run_script(recorder)
    stats = recorder.statistics()
    # id 0: 1 0 1 0 -> two 1->0 transitions; id 1: never correct; id 2: 0 1 1 1;
    # id 3: presented at epochs 0 and 3 only: 1 .. 0 -> one forgetting event across the gap.
    np.testing.assert_array_equal(stats.forgetting_events, [2, 0, 0, 1, 0])
    np.testing.assert_array_equal(stats.presentations, [4, 4, 4, 2, 0])
    np.testing.assert_array_equal(stats.times_correct, [2, 0, 3, 1, 0])
    np.testing.assert_array_equal(stats.first_learned_epoch, [0, -1, 1, 0, -1])
    np.testing.assert_array_equal(stats.never_learned, [False, True, False, False, False])
    np.testing.assert_array_equal(stats.last_correct, [False, False, True, False, False])
    # margins at the last presentation: wrong -> 2 - 3 = -1, correct -> 2 - 0 = 2; never presented -> NaN
    np.testing.assert_allclose(stats.margin[:4], [-1.0, -1.0, 2.0, -1.0])
    assert math.isnan(stats.margin[4]) and math.isnan(stats.last_loss[4])
    wrong_loss = -torch.log_softmax(torch.tensor([2.0, 3.0, 0.0]), 0)[0].item()
    right_loss = -torch.log_softmax(torch.tensor([2.0, 0.0, 0.0]), 0)[0].item()
    np.testing.assert_allclose(stats.last_loss[:4], [wrong_loss, wrong_loss, right_loss, wrong_loss], rtol=1e-6)
    history = stats.correctness_history()
    assert history.shape == (4, 5)
    np.testing.assert_array_equal(history[:, 3], [1, -1, -1, 0])
    np.testing.assert_array_equal(history[:, 0], [1, 0, 1, 0])
    np.testing.assert_array_equal(history[:, 4], [-1, -1, -1, -1])


def test_reset_forgets_everything():
    recorder = ExampleRecorder(5)
    run_script(recorder)
    recorder.reset()
    stats = recorder.statistics()
    assert stats.presentations.sum() == 0 and stats.forgetting_events.sum() == 0
    assert (stats.first_learned_epoch == -1).all() and not stats.never_learned.any()


def reference_counts(sequences: list[list[int | None]]):
    """Plain-Python Toneva counts; None = not presented that epoch."""
    out = []
    for seq in sequences:
        seen = [s for s in seq if s is not None]
        forgetting = sum(1 for a, b in zip(seen, seen[1:]) if a == 1 and b == 0)
        first = next((e for e, s in enumerate(seq) if s == 1), -1)
        out.append((forgetting, len(seen), sum(seen), first, bool(seen) and sum(seen) == 0))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_random_sequences_match_reference(seed):
    rng = np.random.default_rng(seed)
    n, epochs = 40, 7
    labels = torch.as_tensor(rng.integers(0, CLASSES, n))
    table = [[None if rng.random() < 0.2 else int(rng.random() < 0.6) for _ in range(epochs)] for _ in range(n)]
    script = [{i: bool(table[i][e]) for i in rng.permutation(n) if table[i][e] is not None} for e in range(epochs)]
    recorder = ExampleRecorder(n)
    run_script(recorder, script, labels)
    stats = recorder.statistics()
    for i, (forgetting, presented, correct, first, never) in enumerate(reference_counts(table)):
        assert (stats.forgetting_events[i], stats.presentations[i], stats.times_correct[i],
                stats.first_learned_epoch[i], stats.never_learned[i]) == (forgetting, presented, correct, first, never), i


def test_bytes_per_example_matches_the_state():
    recorder = ExampleRecorder(1000)
    names = (*ExampleRecorder._STATE, *ExampleRecorder._SUMS)
    used = sum(getattr(recorder, name).element_size() * 1000 for name in names)
    assert used == BYTES_PER_EXAMPLE * 1000


def test_recorder_in_the_training_loop_on_a_subset(digits):
    split = digits.train
    subset = np.arange(0, len(split), 3)
    loader = DeviceLoader(split, 64, digits.normalization[0], digits.normalization[1], ids=subset, shuffle=True)
    model = build_model("mlp", InputSpec(1, 8, 8, 10), seed=0)
    recorder = ExampleRecorder(len(split), keep_history=True)
    Trainer(TrainConfig(epochs=3, batch_size=64, lr=0.05)).fit(model, loader, callbacks=[recorder])
    stats = recorder.statistics()
    in_subset = np.zeros(len(split), dtype=bool)
    in_subset[subset] = True
    assert (stats.presentations[in_subset] == 3).all() and (stats.presentations[~in_subset] == 0).all()
    history = stats.correctness_history()
    assert history.shape == (3, len(split)) and (history[:, ~in_subset] == -1).all()
    # The recorded history reproduces the counters.
    h = history[:, in_subset]
    np.testing.assert_array_equal(stats.times_correct[in_subset], (h == 1).sum(0))
    np.testing.assert_array_equal(stats.forgetting_events[in_subset], ((h[:-1] == 1) & (h[1:] == 0)).sum(0))
    assert stats.times_correct[in_subset].mean() > 1.5  # it learned: mostly correct in later epochs


def test_recorder_state_survives_a_checkpoint():
    recorder = ExampleRecorder(5, keep_history=True)
    run_script(recorder, SCRIPT[:2])
    restored = ExampleRecorder(5, keep_history=True)
    restored.load_state_dict(recorder.state_dict())
    run_script(restored, SCRIPT[2:])
    full = ExampleRecorder(5, keep_history=True)
    run_script(full)
    a, b = restored.statistics(), full.statistics()
    for name in ("forgetting_events", "presentations", "times_correct", "first_learned_epoch"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # the restored history lacks nothing: epoch numbering is by position
    np.testing.assert_array_equal(a.correctness_history(), b.correctness_history())


def test_per_step_and_per_epoch_observation_agree(digits, monkeypatch):
    """Above the logits cap the recorder observes per step; both paths give identical statistics."""
    split = digits.train

    def run():
        loader = DeviceLoader(split, 64, digits.normalization[0], digits.normalization[1], shuffle=True)
        recorder = ExampleRecorder(len(split))
        Trainer(TrainConfig(epochs=2, batch_size=64, lr=0.05)).fit(
            build_model("mlp", InputSpec(1, 8, 8, 10), seed=0), loader, callbacks=[recorder])
        return recorder

    stashed = run()
    assert stashed._stash_logits
    monkeypatch.setattr(ExampleRecorder, "STASH_LOGITS_BYTES", 0)
    stepwise = run()
    assert not stepwise._stash_logits
    a, b = stashed.statistics(), stepwise.statistics()
    for name, column in a.columns().items():
        np.testing.assert_array_equal(column, b.columns()[name], err_msg=name)
