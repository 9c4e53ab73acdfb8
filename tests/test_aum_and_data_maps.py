"""AUM (Pleiss et al. 2020) and data maps (Swayamdipta et al. 2020) from the recorder (issue 26, item 1), on a
scripted sequence of logits, against values computed here by hand with numpy: through ``update``, and
through the Trainer hooks with the epoch's logits stashed and with per-step observation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pracset.stats import ExampleRecorder
from pracset.train.step import StepOutput

# 4 examples, 3 classes, labels 0, 1, 2, 0; three epochs of logits (example 3 is never presented)
LABELS = np.array([0, 1, 2, 0])
EPOCHS = [
    {0: [2.0, 1.0, 0.0], 1: [0.0, 1.0, 3.0], 2: [1.0, 1.0, 1.0]},
    {0: [0.5, 2.0, 0.0], 1: [0.0, 2.0, 1.0], 2: [0.0, 0.0, 4.0]},
    {0: [3.0, 0.0, 0.0], 1: [1.0, 0.5, 0.0]},  # example 2 is not presented in the last epoch
]


def _expected():
    margins, probabilities = {i: [] for i in range(4)}, {i: [] for i in range(4)}
    for epoch in EPOCHS:
        for i, logits in epoch.items():
            z = np.array(logits)
            others = np.delete(z, LABELS[i])
            margins[i].append(z[LABELS[i]] - others.max())
            probabilities[i].append(np.exp(z[LABELS[i]]) / np.exp(z).sum())
    aum = [np.mean(margins[i]) if margins[i] else np.nan for i in range(4)]
    confidence = [np.mean(probabilities[i]) if probabilities[i] else np.nan for i in range(4)]
    variability = [np.std(probabilities[i]) if probabilities[i] else np.nan for i in range(4)]  # population std
    return np.array(aum), np.array(confidence), np.array(variability)


def _check(stats):
    aum, confidence, variability = _expected()
    np.testing.assert_allclose(stats.aum, aum, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.confidence, confidence, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats.variability, variability, rtol=1e-4, atol=1e-6)
    assert np.isnan(stats.aum[3]) and np.isnan(stats.confidence[3]) and np.isnan(stats.variability[3])
    # by hand for example 0: margins 1, -1.5, 3 -> AUM 2.5 / 3
    assert stats.aum[0] == pytest.approx(2.5 / 3, rel=1e-6)
    columns = stats.columns()
    assert {"aum", "confidence", "variability"} <= set(columns)


def _batches(epoch):
    ids = sorted(epoch)
    return (torch.tensor(ids), torch.tensor(LABELS[ids]), torch.tensor([epoch[i] for i in ids]))


def test_through_update():
    recorder = ExampleRecorder(4)
    for e, epoch in enumerate(EPOCHS):
        index, labels, logits = _batches(epoch)
        recorder.update(index, labels, logits, None, e)
    _check(recorder.statistics())


@pytest.mark.parametrize("stash", [True, False])
def test_through_the_trainer_hooks(stash, monkeypatch):
    if not stash:
        monkeypatch.setattr(ExampleRecorder, "STASH_LOGITS_BYTES", 0)  # observe every step
    recorder = ExampleRecorder(4)
    step = 0
    for e, epoch in enumerate(EPOCHS):
        index, labels, logits = _batches(epoch)
        for k in range(len(index)):  # one example a step
            out = StepOutput(index[k:k + 1], labels[k:k + 1], logits[k:k + 1], torch.zeros(1), step, e)
            recorder.on_batch_end(None, out)
            step += 1
        recorder.on_epoch_end(None, {})
    _check(recorder.statistics())


def test_a_checkpoint_from_before_the_sums_reads_them_as_unknown():
    recorder = ExampleRecorder(4)
    index, labels, logits = _batches(EPOCHS[0])
    recorder.update(index, labels, logits, None, 0)
    state = recorder.state_dict()
    for name in ("margin_sum", "confidence_sum", "confidence_sq_sum"):
        del state[name]
    resumed = ExampleRecorder(4)
    resumed.load_state_dict(state)
    stats = resumed.statistics()
    assert np.isnan(stats.aum[:3]).all() and stats.forgetting_events.tolist() == [0, 0, 0, 0]
