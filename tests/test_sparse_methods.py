import argparse
import dataclasses
import math

import pytest
import torch
import torch.nn as nn

from pracset.config import add_arguments, from_args, from_dict, to_dict
from pracset.errors import ConfigError, UnknownNameError
from pracset.models import build_model
from pracset.sparse import (DISTRIBUTIONS, PRUNABLE_CHOICES, RANKING_CHOICES, SPARSE_METHODS, DynamicSparseConfig,
                            GraNet, GraNetConfig, Mask, RigL, RigLConfig, StaticMask, cosine_regrow_fraction,
                            cubic_sparsity, erk_densities, magnitude_prune, prunable_names, prune_to_sparsity,
                            random_mask, rigl_drop_fraction, uniform_densities)
from pracset.train import Callback, StepOutput, TrainConfig, Trainer, TrainState
from pracset.train.run import input_spec, make_loaders

CPU = torch.device("cpu")


def setup(digits, **overrides):
    config = TrainConfig(**{"epochs": 8, "batch_size": 100, "lr": 0.1, **overrides})
    model = build_model("mlp", input_spec(digits), seed=config.seed)
    train, test = make_loaders(digits, config, CPU)
    return config, model, train, test


# ----------------------------------------------------------------------------- distributions

def test_erk_pushes_a_layer_dense_and_solves_again():
    shapes = {"a": (10, 2), "b": (10, 10), "c": (50, 10)}  # raw 12/20=0.6, 20/100=0.2, 60/500=0.12
    # first solve: eps = 310 / (12 + 20 + 60) = 3.37, a would get 2.02 > 1 -> dense (stays in the budget);
    # second solve: eps = (310 - 20) / (20 + 60) = 3.625 -> b 0.725, c 0.435
    densities = erk_densities(shapes, 0.5, dense_first=False)
    assert densities == pytest.approx({"a": 1.0, "b": 0.725, "c": 0.435})
    kept = sum(densities[n] * math.prod(s) for n, s in shapes.items())
    assert kept == pytest.approx(0.5 * 620)


def test_erk_first_layer_dense_by_choice_is_outside_the_budget():
    shapes = {"a": (10, 2), "b": (10, 10), "c": (50, 10)}
    # a is unmasked; b and c share density 0.5 of their 600 weights: eps = 300 / (20 + 60) = 3.75
    assert erk_densities(shapes, 0.5) == pytest.approx({"a": 1.0, "b": 0.75, "c": 0.45})
    assert erk_densities(shapes, 0.5, dense_first=False, dense_layers=["a"]) == pytest.approx(
        {"a": 1.0, "b": 0.75, "c": 0.45})


def test_erk_counts_kernel_dimensions_and_power():
    shapes = {"conv": (4, 2, 3, 3), "fc": (10, 20)}  # raw 12/72 = 1/6 and 30/200 = 0.15
    # eps = 0.25 * 272 / (12 + 30) = 68 / 42
    assert erk_densities(shapes, 0.25, dense_first=False) == pytest.approx({"conv": 17 / 63, "fc": 17 / 70})
    assert erk_densities(shapes, 0.25, dense_first=False, power=0.0) == pytest.approx({"conv": 0.25, "fc": 0.25})


def test_uniform_densities_keep_the_first_layer_dense():
    shapes = {"a": (4, 4), "b": (8, 4), "c": (2, 8)}
    assert uniform_densities(shapes, 0.2) == {"a": 1.0, "b": 0.2, "c": 0.2}
    assert uniform_densities(shapes, 0.2, dense_first=False) == {"a": 0.2, "b": 0.2, "c": 0.2}
    assert uniform_densities(shapes, 0.2, dense_first=False, dense_layers=["c"]) == {"a": 0.2, "b": 0.2, "c": 1.0}


def test_distribution_errors():
    with pytest.raises(ConfigError, match="density"):
        uniform_densities({"a": (2, 2)}, 0.0)
    with pytest.raises(ConfigError, match="not among the layers: z"):
        erk_densities({"a": (2, 2), "b": (2, 2)}, 0.5, dense_layers=["z"])
    with pytest.raises(ConfigError, match="every layer is kept dense"):
        erk_densities({"a": (2, 2)}, 0.5)
    with pytest.raises(UnknownNameError, match="valid names: erk, uniform"):
        DISTRIBUTIONS.get("er")


def test_random_mask_exact_per_layer_counts():
    shapes = {"a": (10, 10), "b": (3, 7), "c": (5,), "d": (2, 3)}
    densities = {"a": 0.25, "b": 0.5, "c": 1.0, "d": 0.0}
    mask = random_mask(shapes, densities, torch.Generator().manual_seed(0))
    assert list(mask) == ["a", "b", "c", "d"]
    # round(10.5) == 10: Python's round, half to even
    assert {n: int(t.sum()) for n, t in mask.items()} == {"a": 25, "b": 10, "c": 5, "d": 0}
    assert {n: tuple(t.shape) for n, t in mask.items()} == shapes
    again = random_mask(shapes, densities, torch.Generator().manual_seed(0))
    other = random_mask(shapes, densities, torch.Generator().manual_seed(1))
    assert mask == again and mask != other
    model = nn.Sequential(nn.Linear(7, 3), nn.Linear(3, 2))
    from_model = random_mask(model, {"0.weight": 0.5, "1.weight": 1 / 3}, torch.Generator().manual_seed(0))
    assert {n: int(t.sum()) for n, t in from_model.items()} == {"0.weight": 10, "1.weight": 2}


# ----------------------------------------------------------------------------- schedules

def test_rigl_drop_fraction_schedule_and_update_steps():
    assert [rigl_drop_fraction(t, 0.3, 750) for t in (0, 250, 375, 750, 800)] == pytest.approx(
        [0.3, 0.225, 0.15, 0.0, 0.0], abs=1e-12)
    rigl = RigL(RigLConfig())
    rigl.end_step = 750  # what on_fit_start sets for 1000 training steps
    assert [rigl.should_update(t) for t in (0, 50, 100, 700, 750, 800, 900)] == [True, False, True, True,
                                                                                  False, False, False]
    assert rigl.drop_fraction(250) == pytest.approx(0.225)


def test_cubic_schedule_values():
    kw = dict(t0=100, n=4, delta_t=100, s_i=0.0, s_f=0.9)
    values = [cubic_sparsity(t, **kw) for t in (50, 100, 200, 300, 400, 500, 600)]
    assert values == pytest.approx([0.0, 0.0, 0.5203125, 0.7875, 0.8859375, 0.9, 0.9])
    assert cubic_sparsity(150, t0=100, n=1, delta_t=100, s_i=0.5, s_f=0.9) == pytest.approx(0.9 - 0.4 * 0.125)
    assert cubic_sparsity(100, t0=100, n=0, delta_t=100, s_i=0.5, s_f=0.9) == 0.9


def test_granet_regrow_fraction_decays_from_half_to_0005():
    assert [cosine_regrow_fraction(t, 1000) for t in (0, 500, 1000)] == pytest.approx([0.5, 0.2525, 0.005])


# ----------------------------------------------------------------------------- RigL update by hand

def hand_state(model, optimizer, total_steps=1000):
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return TrainState(model, optimizer, scheduler, TrainConfig(epochs=10), total_steps // 10, total_steps)


def out_at(step):
    empty = torch.zeros(0)
    return StepOutput(empty.long(), empty.long(), empty, empty, step, 0)


def run_step(method, state, step):
    """What Trainer does around the optimizer step."""
    method.before_optimizer_step(state, out_at(step))
    if not state.skip_step:
        state.optimizer.step()
    skipped, state.skip_step = state.skip_step, False
    method.after_optimizer_step(state, out_at(step))
    return skipped


def test_rigl_update_drops_and_grows_the_expected_entries():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    weight = model[0].weight
    keep = torch.tensor([True] * 6 + [False] * 6).view(3, 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = hand_state(model, optimizer)
    rigl = RigL(RigLConfig(alpha=0.5, dense_first=False), mask=Mask({"0.weight": keep}))
    rigl.on_fit_start(state)
    with torch.no_grad():
        # stale values at inactive positions: grown connections must start at zero anyway
        weight.copy_(torch.tensor([0.5, -0.1, 0.3, 0.05, -0.7, -0.3, 0.42, 0.42, 0.42, 0.42, 0.42, 0.42]).view(3, 4))
    momentum = torch.arange(1.0, 13.0).view(3, 4)
    optimizer.state[weight]["momentum_buffer"] = momentum.clone()
    weight.grad = torch.tensor([9, -0.8, 0.05, 0.1, 9, 9, 0.3, 0.9, 0.3, -0.7, 0.7, 0.01]).view(3, 4)

    # step 0: f = 0.5 -> drop floor(0.5 * 6) = 3 of the 6 active: |w| 0.05 (3), 0.1 (1), then the tie 0.3
    # between 2 and 5 goes to the lower index 2. Grow 3 of the inactive (1, 2, 3, 6..11) by |grad|:
    # 7 (0.9), 1 (0.8, just dropped: regrows), then the tie 0.7 between 9 and 10 goes to 9.
    skipped = run_step(rigl, state, 0)
    assert skipped  # the official code applies no optimizer update on a mask-update step
    new_keep = rigl.mask["0.weight"].flatten()
    assert new_keep.nonzero().flatten().tolist() == [0, 1, 4, 5, 7, 9]
    w, m = weight.detach().flatten(), optimizer.state[weight]["momentum_buffer"].flatten()
    expected_w = torch.tensor([0.5, -0.1, 0, 0, -0.7, -0.3, 0, 0, 0, 0, 0, 0])
    assert torch.equal(w, expected_w)  # kept and regrown weights unchanged, dropped and grown ones zero
    expected_m = torch.tensor([1.0, 2, 0, 0, 5, 6, 0, 0, 0, 0, 0, 0])  # new connections 7, 9: zero momentum
    assert torch.equal(m, expected_m)

    # a step that is not an update step is an ordinary masked step
    weight.grad = torch.ones(3, 4)
    assert not run_step(rigl, state, 1)
    assert torch.equal(rigl.mask["0.weight"].flatten(), new_keep)
    assert torch.count_nonzero(weight.detach().flatten()[~new_keep]) == 0
    assert torch.count_nonzero(optimizer.state[weight]["momentum_buffer"].flatten()[~new_keep]) == 0
    assert torch.count_nonzero(weight.detach().flatten()[new_keep]) == 6


def test_rigl_drop_count_is_the_official_floor():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = hand_state(model, optimizer)
    keep = torch.tensor([True] * 6 + [False] * 6).view(3, 4)
    rigl = RigL(RigLConfig(dense_first=False), mask=Mask({"0.weight": keep}))  # alpha 0.3
    rigl.on_fit_start(state)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([6.0, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0]).view(3, 4))
    model[0].weight.grad = torch.tensor([0.0] * 6 + [1, 2, 3, 4, 5, 6]).view(3, 4)
    run_step(rigl, state, 0)  # int(0.3 * 6) = 1 swap: drop 5 (|w| 1), grow 11 (|g| 6)
    assert rigl.mask["0.weight"].flatten().nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 11]


def test_rigl_update_at_t_end_changes_nothing_and_none_follow():
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    state = hand_state(model, optimizer)
    keep = torch.tensor([True, False] * 6).view(3, 4)
    rigl = RigL(RigLConfig(dense_first=False, end_fraction=0.8), mask=Mask({"0.weight": keep}))
    rigl.on_fit_start(state)
    assert rigl.end_step == 800 and rigl.should_update(800) and not rigl.should_update(900)
    model[0].weight.grad = torch.arange(12.0).view(3, 4)
    assert run_step(rigl, state, 800)  # f = 0: the mask stays, the step is skipped (as the official code)
    assert torch.equal(rigl.mask["0.weight"], keep)
    assert not run_step(rigl, state, 900)
    assert torch.equal(rigl.mask["0.weight"], keep)


# ----------------------------------------------------------------------------- mask enforcement

@pytest.mark.parametrize("optimizer,lr,wd", [("sgd", 0.1, 5e-4), ("adamw", 0.01, 0.05)])
def test_masked_weights_stay_exactly_zero(digits, optimizer, lr, wd):
    config, model, train, test = setup(digits, epochs=7, batch_size=50, optimizer=optimizer, lr=lr, weight_decay=wd)
    names = ["net.1.weight", "net.3.weight", "net.5.weight"]
    mask = random_mask(model, {n: 0.3 for n in names}, torch.Generator().manual_seed(3))
    state = Trainer(config).fit(model, train, test, [StaticMask(mask)])
    assert state.step >= 200
    params = dict(model.named_parameters())
    slots = {"sgd": ["momentum_buffer"], "adamw": ["exp_avg", "exp_avg_sq"]}[optimizer]
    for name in names:
        keep = mask[name]
        assert torch.count_nonzero(params[name][~keep]) == 0
        assert torch.count_nonzero(params[name][keep]) == int(keep.sum())
        for slot in slots:
            buf = state.optimizer.state[params[name]][slot]
            assert torch.count_nonzero(buf[~keep]) == 0 and torch.count_nonzero(buf[keep]) > 0
    assert state.history[-1]["test_accuracy"] > 0.8


# ----------------------------------------------------------------------------- training runs

class Watch(Callback):
    """Records the method's kept count per step and whether the bias moved on each step."""

    def __init__(self, method, model):
        self.method, self.bias = method, model.net[5].bias
        self.kept, self.masks, self.bias_moved = [], [], []

    def before_optimizer_step(self, state, out):
        self.before = self.bias.detach().clone()

    def on_batch_end(self, state, out):
        self.bias_moved.append(not torch.equal(self.before, self.bias))
        self.kept.append(self.method.mask.num_kept())
        self.masks.append({n: t.clone() for n, t in self.method.mask.items()})


def test_rigl_trains_digits_at_constant_sparsity(digits):
    config, model, train, test = setup(digits)
    rigl = RigL(RigLConfig(sparsity=0.9, delta_t=10))
    watch = Watch(rigl, model)
    state = Trainer(config).fit(model, train, test, [rigl, watch])
    total = state.total_steps
    assert total == 8 * 15 and rigl.end_step == 90
    # the first layer is dense and unmasked; ERK over the other two
    assert list(rigl.mask) == ["net.3.weight", "net.5.weight"]
    densities = erk_densities({"net.3.weight": (128, 256), "net.5.weight": (10, 128)}, 0.1, dense_first=False)
    counts = {n: round(d * t.numel()) for (n, t), d in zip(rigl.mask.items(), densities.values())}
    assert {n: int(t.sum()) for n, t in rigl.mask.items()} == counts
    assert set(watch.kept) == {sum(counts.values())}
    assert abs(rigl.mask.sparsity() - 0.9) < 2 / rigl.mask.num_weights
    updates = [t for t in range(total) if t % 10 == 0 and t <= 90]
    assert [not moved for moved in watch.bias_moved] == [t in updates for t in range(total)]  # skipped steps
    assert any(not torch.equal(watch.masks[0][n], watch.masks[90][n]) for n in rigl.mask)
    for t in range(91, total):  # no update after T_end
        assert all(torch.equal(watch.masks[t][n], watch.masks[90][n]) for n in rigl.mask)
    params = dict(model.named_parameters())
    for name, keep in rigl.mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0
    assert state.history[-1]["test_accuracy"] > 0.85


def test_granet_prunes_to_the_cubic_schedule_and_trains_digits(digits):
    config, model, train, test = setup(digits)
    granet = GraNet(GraNetConfig(sparsity=0.9, init_sparsity=0.0, delta_t=10, prune_end=0.5))
    watch = Watch(granet, model)
    state = Trainer(config).fit(model, train, test, [granet, watch])
    n_weights = granet.mask.num_weights
    assert n_weights == 64 * 256 + 256 * 128 + 128 * 10  # dense_first is off, as the official default
    assert (granet.first_iter, granet.final_iter) == (0, 6)
    for t in range(1, state.total_steps + 1):  # t = completed steps
        if t < 10:
            expected = n_weights
        elif t <= 60:  # pruned at t = 10, 20, ..., 60 to s_t = 0.9 - 0.9 (1 - t / 60) ** 3
            expected = round((1 - (0.9 - 0.9 * (1 - (t // 10 * 10) / 60) ** 3)) * n_weights)
        else:
            expected = round(0.1 * n_weights)  # exactly s_f at the end of pruning, kept by regeneration
        assert watch.kept[t - 1] == expected, t
    changed = [t for t in range(70, state.total_steps + 1, 10)
               if any(not torch.equal(watch.masks[t - 2][n], watch.masks[t - 1][n]) for n in granet.mask)]
    assert changed  # regeneration goes on after pruning ends
    assert not any(not moved for moved in watch.bias_moved)  # GraNet skips no optimizer step
    params = dict(model.named_parameters())
    for name, keep in granet.mask.items():
        assert torch.count_nonzero(params[name][~keep]) == 0
    assert state.history[-1]["test_accuracy"] > 0.85


def test_granet_sparse_to_sparse_starts_from_erk(digits):
    config, model, train, test = setup(digits, epochs=4)
    granet = GraNet(GraNetConfig(sparsity=0.8, init_sparsity=0.5, delta_t=10, prune_end=0.5))
    watch = Watch(granet, model)
    Trainer(config).fit(model, train, test, [granet, watch])
    shapes = {"net.1.weight": (256, 64), "net.3.weight": (128, 256), "net.5.weight": (10, 128)}
    densities = erk_densities(shapes, 0.5, dense_first=False)
    assert watch.kept[0] == sum(round(d * math.prod(shapes[n])) for n, d in densities.items())
    assert watch.kept[-1] == round(0.2 * granet.mask.num_weights)


# ----------------------------------------------------------------------------- state and configuration

def test_state_dict_round_trip():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(RigLConfig(sparsity=0.5, dense_first=False))
    rigl.on_fit_start(hand_state(model, optimizer))
    saved = rigl.state_dict()
    assert saved["method"] == "rigl" and saved["config"]["sparsity"] == 0.5
    restored = RigL(RigLConfig(sparsity=0.5, dense_first=False))
    restored.load_state_dict(saved)
    assert restored.mask == rigl.mask
    with pytest.raises(ConfigError, match="sparse method 'rigl', not 'granet'"):
        GraNet().load_state_dict(saved)


def test_resumed_rigl_run_continues_exactly(digits, tmp_path):
    config, model, train, test = setup(digits, epochs=4, crop_padding=1)
    rigl = RigL(RigLConfig(delta_t=7, end_fraction=1.0))
    Trainer(config).fit(model, train, test, [rigl])

    class Crash(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt

    _, model2, train2, test2 = setup(digits, epochs=4, crop_padding=1)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, checkpoint=tmp_path / "ckpt.pt").fit(model2, train2, test2,
                                                             [RigL(RigLConfig(delta_t=7, end_fraction=1.0)), Crash()])
    _, model3, train3, test3 = setup(digits, epochs=4, crop_padding=1)
    resumed = RigL(RigLConfig(delta_t=7, end_fraction=1.0))
    Trainer(config, checkpoint=tmp_path / "ckpt.pt", resume=True).fit(model3, train3, test3, [resumed, Callback()])
    assert resumed.mask == rigl.mask
    for a, b in zip(model.state_dict().values(), model3.state_dict().values()):
        assert torch.equal(a, b)


def test_configs_registry_and_flags():
    assert RigLConfig() == RigLConfig(sparsity=0.9, distribution="erk", dense_first=True, delta_t=100,
                                      alpha=0.3, end_fraction=0.75, skip_update_step=True)
    assert GraNetConfig().init_sparsity == 0.5 and GraNetConfig().regrow_fraction == 0.5
    with pytest.raises(ConfigError, match="sparsity"):
        RigLConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="valid names: erk, uniform"):
        RigLConfig(distribution="er")
    with pytest.raises(ConfigError, match="init_sparsity <= sparsity"):
        GraNetConfig(init_sparsity=0.9, sparsity=0.8)
    assert from_dict(GraNetConfig, {"delta_t": 1000, "dense_layers": ["fc"]}).dense_layers == ("fc",)
    parser = argparse.ArgumentParser()
    add_arguments(parser, RigLConfig)
    parsed = from_args(RigLConfig, parser.parse_args(["--delta-t", "50", "--no-dense-first"]))
    assert parsed.delta_t == 50 and parsed.dense_first is False
    assert SPARSE_METHODS.get("rigl") is RigL and SPARSE_METHODS.get("granet").config_class is GraNetConfig
    with pytest.raises(UnknownNameError, match="valid names: granet, rigl, static"):
        SPARSE_METHODS.get("set")


def test_configs_share_their_common_options_and_keep_their_own_defaults():
    shared = [f.name for f in dataclasses.fields(DynamicSparseConfig)]
    assert shared == ["sparsity", "distribution", "erk_power", "dense_first", "dense_layers", "prunable", "delta_t"]
    for cls in (RigLConfig, GraNetConfig):
        assert issubclass(cls, DynamicSparseConfig)
        assert [f.name for f in dataclasses.fields(cls)][:len(shared)] == shared
    assert (RigLConfig().sparsity, RigLConfig().dense_first) == (0.9, True)
    assert (GraNetConfig().sparsity, GraNetConfig().dense_first) == (0.95, False)
    assert RigLConfig().prunable == GraNetConfig().prunable == "all"
    helps = {cls: {f.name: f.metadata["help"] for f in dataclasses.fields(cls)} for cls in (RigLConfig, GraNetConfig)}
    assert "official --final-density 0.05" in helps[GraNetConfig]["sparsity"]
    assert helps[RigLConfig]["sparsity"] == "fraction of the masked weights that are zero"
    # the shared validation runs for both methods
    for cls in (RigLConfig, GraNetConfig):
        with pytest.raises(ConfigError, match="prunable must be one of all, conv, got 'linear'"):
            cls(prunable="linear")
        with pytest.raises(ConfigError, match="delta_t must be a positive integer, got 0"):
            cls(delta_t=0)
        with pytest.raises(ConfigError, match="valid names: erk, uniform"):
            cls(distribution="er")
    with pytest.raises(ConfigError, match="end_fraction"):
        RigLConfig(end_fraction=0.0)
    with pytest.raises(ConfigError, match="prune_start < prune_end"):
        GraNetConfig(prune_start=0.5, prune_end=0.5)
    # (de)serialisation sees the inherited fields
    rigl = from_dict(RigLConfig, {"prunable": "conv", "sparsity": 0.8, "alpha": 0.5, "dense_layers": ["fc"]})
    assert (rigl.prunable, rigl.sparsity, rigl.alpha, rigl.dense_layers) == ("conv", 0.8, 0.5, ("fc",))
    assert from_dict(RigLConfig, to_dict(rigl)) == rigl
    granet = from_dict(GraNetConfig, {"prunable": "conv", "init_sparsity": 0.0})
    assert from_dict(GraNetConfig, to_dict(granet)) == granet and to_dict(granet)["sparsity"] == 0.95
    with pytest.raises(ConfigError, match="unknown key scope"):
        from_dict(RigLConfig, {"scope": "conv"})
    parser = argparse.ArgumentParser()
    add_arguments(parser, GraNetConfig, prefix="granet")
    parsed = from_args(GraNetConfig, parser.parse_args(["--granet-prunable", "conv", "--granet-delta-t", "10"]),
                       prefix="granet")
    assert (parsed.prunable, parsed.delta_t, parsed.sparsity) == ("conv", 10, 0.95)
    with pytest.raises(SystemExit):
        parser.parse_args(["--granet-prunable", "linear"])


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6, 3)


def test_prunable_choices_pick_the_weights():
    assert PRUNABLE_CHOICES == ("all", "conv")
    model = ConvNet()
    assert prunable_names(model) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert prunable_names(model, prunable="conv") == ["conv1.weight", "conv2.weight"]
    assert prunable_names(model, "all", dense=["conv1"]) == ["conv2.weight", "fc.weight"]
    assert list(Mask.ones(model, prunable="conv", dense=["conv2.weight"])) == ["conv1.weight"]
    with pytest.raises(ConfigError, match="unknown prunable choice 'global'; valid: all, conv"):
        prunable_names(model, prunable="global")
    with pytest.raises(ConfigError, match="no prunable weights for prunable='conv'"):
        Mask.ones(nn.Sequential(nn.Linear(2, 2)), prunable="conv")


def test_dynamic_methods_mask_the_prunable_choice():
    model = ConvNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    rigl = RigL(RigLConfig(prunable="conv", sparsity=0.5))  # dense_first: conv1 stays dense and unmasked
    rigl.on_fit_start(hand_state(model, optimizer))
    assert list(rigl.mask) == ["conv2.weight"] and rigl.mask.num_kept() == 108
    granet = GraNet(GraNetConfig(prunable="conv", init_sparsity=0.0, prune_end=0.5))
    assert granet.masked_names(model) == ["conv1.weight", "conv2.weight"]


def test_ranking_choices_rank_globally_or_per_layer():
    assert RANKING_CHOICES == ("global", "layerwise")
    model = nn.Sequential(nn.Linear(4, 1, bias=False), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2, 3, 4]]))
        model[1].weight.copy_(torch.tensor([[5.0, 6, 7, 8]]))
    ones = Mask.ones(model)
    by_global = magnitude_prune(model, ones, 0.5)  # the four smallest are all in the first layer
    assert [int(t.sum()) for t in by_global.values()] == [0, 4]
    by_layer = magnitude_prune(model, ones, 0.5, ranking="layerwise")
    assert [t.flatten().tolist() for t in by_layer.values()] == [[False, False, True, True]] * 2
    assert prune_to_sparsity(model, ones, 0.5, ranking="layerwise") == by_layer
    with pytest.raises(ConfigError, match="unknown ranking choice 'conv'; valid: global, layerwise"):
        magnitude_prune(model, ones, 0.5, ranking="conv")
    with pytest.raises(ConfigError, match="unknown ranking choice 'all'"):
        prune_to_sparsity(model, ones, 0.5, ranking="all")


def test_static_mask_needs_matching_shapes():
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = StaticMask(Mask({"0.weight": torch.ones(4, 3, dtype=torch.bool)}))
    with pytest.raises(ConfigError, match="shape"):
        bad.on_fit_start(hand_state(model, optimizer))


@pytest.mark.parametrize("seed", range(4))
def test_smallest_k_is_a_stable_argsort_prefix(seed):
    from pracset.sparse.pruning import smallest_k

    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (200,), generator=generator).float()  # many ties
    scores[torch.randperm(200, generator=generator)[:30]] = float("inf")
    for k in (0, 1, 7, 50, 169, 170):
        expected = torch.zeros(200, dtype=torch.bool)
        expected[torch.argsort(scores, stable=True)[:k]] = True
        assert torch.equal(smallest_k(scores, k), expected), k
