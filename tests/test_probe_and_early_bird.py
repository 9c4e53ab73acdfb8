"""The pruning probe (CEP) and Early-Bird stopping."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from pracset.data import DeviceLoader, load_dataset
from pracset.data.sources import DataConfig
from pracset.errors import ConfigError
from pracset.models import InputSpec, build_model
from pracset.sparse import Mask, prune_to_sparsity
from pracset.sparse.early_bird import EarlyBirdConfig, EarlyBirdStop
from pracset.stats import pruning_probe
from pracset.train import IterationLedger, TrainConfig, Trainer


@pytest.fixture(scope="module")
def trained():
    digits = load_dataset(DataConfig(name="digits"))
    mean, std = digits.normalization
    model = build_model("mlp", InputSpec(1, 8, 8, 10), seed=0)
    Trainer(TrainConfig(epochs=4, batch_size=64, lr=0.05)).fit(model, DeviceLoader(digits.train, 64, mean, std, shuffle=True))
    return digits, model


def test_probe_matches_a_hand_comparison(trained):
    digits, model = trained
    mean, std = digits.normalization
    ids = np.arange(0, len(digits.train), 2)
    loader = DeviceLoader(digits.train, 100, mean, std, ids=ids)
    ledger = IterationLedger()
    result = pruning_probe(model, loader, [0.5, 0.95], num_examples=len(digits.train), ledger=ledger, stage="probe")
    x = torch.addcmul(loader._shift, digits.train.images[ids].float(), loader._scale)
    model.eval()
    with torch.no_grad():
        dense = model(x).argmax(1)
        expected = torch.zeros(len(digits.train), dtype=torch.int32)
        for s in (0.5, 0.95):
            pruned = copy.deepcopy(model)
            prune_to_sparsity(pruned, Mask.ones(model), s).apply_(pruned)
            differs = pruned(x).argmax(1) != dense
            expected[ids] += differs.int()
            assert result.disagreed_at[s] == int(differs.sum())
    np.testing.assert_array_equal(result.disagreements, expected.numpy())
    # ids outside the probed subset are never critical; at 95% sparsity some examples flip
    assert result.disagreements[1::2].sum() == 0 and result.disagreed_at[0.95] > result.disagreed_at[0.5]
    # every probe forward pass is booked: dense + two pruned models over the probed examples
    assert ledger.stages["probe"].probe_examples == 3 * len(ids)


def test_probe_restores_training_mode_and_rejects_augmented_loaders(trained):
    digits, model = trained
    mean, std = digits.normalization
    model.train()
    pruning_probe(model, DeviceLoader(digits.train, 256, mean, std), [0.5], num_examples=len(digits.train))
    assert model.training
    with pytest.raises(ConfigError, match="without shuffling or augmentation"):
        pruning_probe(model, DeviceLoader(digits.train, 256, mean, std, shuffle=True), [0.5], num_examples=len(digits.train))
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        pruning_probe(model, DeviceLoader(digits.train, 256, mean, std), [1.0], num_examples=len(digits.train))


def test_probe_with_an_externally_pruned_model(trained):
    digits, model = trained
    mean, std = digits.normalization
    pruned = copy.deepcopy(model)
    prune_to_sparsity(pruned, Mask.ones(model), 0.9).apply_(pruned)
    loader = DeviceLoader(digits.train, 256, mean, std)
    a = pruning_probe(model, loader, [], pruned_models=[pruned], num_examples=len(digits.train))
    b = pruning_probe(model, loader, [0.9], num_examples=len(digits.train))
    np.testing.assert_array_equal(a.disagreements, b.disagreements)
    assert list(a.disagreed_at) == [0.9]


def test_probe_ranks_globally_or_per_layer(trained):
    digits, model = trained
    mean, std = digits.normalization
    loader = DeviceLoader(digits.train, 256, mean, std)
    x = torch.addcmul(loader._shift, digits.train.images.float(), loader._scale)
    result = pruning_probe(model, loader, [0.9], ranking="layerwise", num_examples=len(digits.train))
    pruned = copy.deepcopy(model)
    prune_to_sparsity(pruned, Mask.ones(model), 0.9, ranking="layerwise").apply_(pruned)
    model.eval()
    with torch.no_grad():
        differs = pruned.eval()(x).argmax(1) != model(x).argmax(1)
    np.testing.assert_array_equal(result.disagreements, differs.int().numpy())
    with pytest.raises(ConfigError, match="unknown ranking choice 'conv'; valid: global, layerwise"):
        pruning_probe(model, loader, [0.5], ranking="conv", num_examples=len(digits.train))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 1, bias=False)


def epoch_end(callback: EarlyBirdStop, model: Tiny, weights: list[float], epoch: int) -> SimpleNamespace:
    with torch.no_grad():
        model.fc.weight.copy_(torch.tensor([weights]))
    state = SimpleNamespace(model=model, epoch=epoch, stop_requested=False)
    callback.on_epoch_end(state, {})
    return state


def test_early_bird_stops_when_the_queue_settles():
    model = Tiny()
    callback = EarlyBirdStop(EarlyBirdConfig(eps=0.08, queue_length=5, prune_fraction=0.2), Mask.ones(model))
    a = [0.1, 0.2, 1, 1, 1, 1, 1, 1, 1, 1]   # pruning 20% drops weights 0 and 1
    b = [1, 1, 0.1, 0.2, 1, 1, 1, 1, 1, 1]   # ... then weights 2 and 3: 4 of 10 bits change
    assert not epoch_end(callback, model, a, 1).stop_requested     # nothing to compare yet
    assert not epoch_end(callback, model, a, 2).stop_requested     # d = 0 <= eps: not recording yet
    assert callback.recording is False and list(callback.queue) == [1.0] * 5
    assert not epoch_end(callback, model, b, 3).stop_requested     # d = 0.4 > eps: recording starts
    assert callback.distances == [0.0, 0.4] and list(callback.queue) == [1, 1, 1, 1, 0.4]
    for epoch in range(4, 8):                                       # four settled epochs: 0.4 still queued
        assert not epoch_end(callback, model, b, epoch).stop_requested
    state = epoch_end(callback, model, b, 8)                        # the fifth pushes 0.4 out
    assert state.stop_requested and callback.stopped_epoch == 8
    assert callback.mask == Mask({"fc.weight": torch.tensor([[True, True, False, False] + [True] * 6])})


def test_early_bird_distance_counts_remaining_weights_only():
    model = Tiny()
    base = Mask({"fc.weight": torch.tensor([[False] * 5 + [True] * 5])})   # 5 weights remain
    callback = EarlyBirdStop(EarlyBirdConfig(eps=0.3, queue_length=1, prune_fraction=0.2), base)
    epoch_end(callback, model, [9, 9, 9, 9, 9, 0.1, 1, 1, 1, 1], 1)   # prunes weight 5
    state = epoch_end(callback, model, [9, 9, 9, 9, 9, 1, 0.1, 1, 1, 1], 2)  # prunes weight 6: 2 bits of 5 remaining
    assert callback.distances == [pytest.approx(0.4)] and not state.stop_requested
    state = epoch_end(callback, model, [9, 9, 9, 9, 9, 1, 0.1, 1, 1, 1], 3)
    assert state.stop_requested and callback.stopped_epoch == 3


def test_early_bird_in_a_training_run_stops_it(trained):
    digits, _ = trained
    mean, std = digits.normalization
    model = build_model("mlp", InputSpec(1, 8, 8, 10), seed=1)
    # The mask of this small net never moves by eps = 0.08 between epochs: with the official rule
    # (wait for a change first) it never stops; counting from the start stops it early.
    bird = EarlyBirdStop(EarlyBirdConfig(wait_for_change=False), Mask.ones(model))
    state = Trainer(TrainConfig(epochs=40, batch_size=64, lr=0.05)).fit(
        model, DeviceLoader(digits.train, 64, mean, std, shuffle=True), callbacks=[bird])
    assert bird.stopped_epoch is not None and state.epoch == bird.stopped_epoch < 40
    assert len(bird.distances) == state.epoch - 1 and max(list(bird.queue)) < 0.08
    assert state.epoch == 6  # five settled distances after the first epoch
    official = EarlyBirdStop(EarlyBirdConfig(), Mask.ones(model))
    state = Trainer(TrainConfig(epochs=8, batch_size=64, lr=0.05)).fit(
        build_model("mlp", InputSpec(1, 8, 8, 10), seed=1), DeviceLoader(digits.train, 64, mean, std, shuffle=True),
        callbacks=[official])
    assert official.stopped_epoch is None and state.epoch == 8 and max(official.distances) < 0.08
