"""SNIP as a ticket method: connection sensitivity by hand, exact sparsity, its controls, its flags and table."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.tickets import IMPConfig, find_tickets
from pracset.tickets.snip import SNIPConfig, connection_sensitivity, snip_mask
from pracset.train import TrainConfig

W = [[1.0, -2.0], [0.5, 3.0]]
BATCHES = [([[2.0, 0.25]], [0]), ([[-1.0, 1.0], [0.5, 0.5]], [1, 0])]


def _linear() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W))
    return model


def _reference_scores(batches) -> np.ndarray:
    """|w * dL/dw| written out: L = sum over batches of each batch's mean cross-entropy of logits W x."""
    w = np.array(W)
    grad = np.zeros_like(w)
    for xs, ys in batches:
        for x, y in zip(np.array(xs), ys):
            z = w @ x
            p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            p[y] -= 1.0  # dL/dz = softmax - one-hot
            grad += np.outer(p, x) / len(ys)
    return np.abs(w * grad)


def _batches(count: int):
    return [SimpleNamespace(x=torch.tensor(xs), y=torch.tensor(ys)) for xs, ys in BATCHES[:count]]


@pytest.mark.parametrize("count", [1, 2])
def test_connection_sensitivity_is_w_times_the_loss_gradient(count):
    """By hand for one batch: z = W x = (1.5, 1.75), softmax (0.4378, 0.5622), so dL/dW = (p - e0) x^T and the
    scores are (1.1244, 0.2811; 0.5622, 0.4216). Mutations caught: |dL/dw| or |w| alone; a mean over batches
    instead of the sum; the model's weights changed by scoring."""
    model = _linear()
    scores = connection_sensitivity(model, Mask.ones(model), _batches(count))["0.weight"]
    np.testing.assert_allclose(scores.numpy(), _reference_scores(BATCHES[:count]), rtol=1e-5)
    if count == 1:
        np.testing.assert_allclose(scores.numpy(), [[1.1244, 0.2811], [0.5622, 0.4216]], atol=1e-4)
    assert torch.equal(model[0].weight, torch.tensor(W))


def test_the_mask_keeps_the_most_sensitive_weights_not_the_largest():
    """At 50% the two highest scores stay (w00 = 1.0 and w10 = 0.5); magnitude pruning would keep 3.0 and -2.0."""
    model = _linear()
    mask = snip_mask(model, Mask.ones(model), _batches(1), SNIPConfig(sparsity=0.5))
    assert mask["0.weight"].tolist() == [[True, False], [True, False]]
    three_quarters = snip_mask(model, Mask.ones(model), _batches(1), SNIPConfig(sparsity=0.75))
    assert three_quarters["0.weight"].tolist() == [[True, False], [False, False]]


def test_bad_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="sparsity must lie in"):
        SNIPConfig(sparsity=1.0)
    with pytest.raises(ConfigError, match="batches must be at least 1"):
        SNIPConfig(batches=0)
    with pytest.raises(ConfigError, match="ranking must be one of"):
        SNIPConfig(ranking="Global")


TRAIN = TrainConfig(epochs=2, batch_size=128, lr=0.05)


def test_a_snip_ticket_has_the_exact_sparsity_its_controls_and_a_dense_reference(tmp_path, digits):
    """On digits' MLP: 80% of the prunable weights pruned at initialisation (exactly), the ticket trained from
    that initialisation under its mask, both controls and a full-split dense reference trained, a verdict."""
    out = tmp_path / "snip"
    summary = find_tickets("snip", DataConfig("digits"), "mlp", out, train=TRAIN, dataset=digits,
                           imp=IMPConfig(controls=True), snip=SNIPConfig(sparsity=0.8, batches=2))
    row = summary["final"]
    mask = Mask.load(out / "sparse" / "mask.pt")
    assert mask.num_kept() == round(0.2 * mask.num_weights)
    assert row["sparsity"] == pytest.approx(1 - mask.num_kept() / mask.num_weights, abs=1e-6)
    weights = torch.load(out / "sparse" / "model.pt", weights_only=True)
    for name, keep in mask.items():
        assert not weights[name][~keep].any(), name  # trained under the mask
    assert set(row["controls"]) == {"reinit", "random_mask"} and set(row["verdict"]) >= {"winning_ticket"}
    assert row["dense_reference"] == "dense-reference" and row["dense_accuracy"] > 0.5
    assert json.loads((out / "run.json").read_text())["identity"]["snip"]["batches"] == 2
    again = find_tickets("snip", DataConfig("digits"), "mlp", out, train=TRAIN, dataset=digits, resume=True,
                         imp=IMPConfig(controls=True), snip=SNIPConfig(sparsity=0.8, batches=2))
    assert again["skipped"] and again["final"] == row


def test_snip_takes_its_flags_and_its_toml_table(tmp_path, run_cli):
    """``--snip-batches`` and a ``[snip]`` table reach the run (the flag wins); the sparsity is ``--sparsity``'s."""
    config = tmp_path / "c.toml"
    config.write_text('arch = "mlp"\n[data]\nname = "digits"\n[snip]\nbatches = 3\nranking = "layerwise"\n')
    out = tmp_path / "run"
    code, _, err = run_cli("ticket", "--method", "snip", "--config", str(config), "--snip-batches", "2",
                           "--sparsity", "0.5", "--epochs", "1", "--out", str(out), "--device", "cpu", "-q")
    assert code == 0, err
    identity = json.loads((out / "run.json").read_text())["identity"]
    assert identity["snip"] == {"sparsity": 0.5, "batches": 2, "ranking": "layerwise"}
    mask = Mask.load(out / "sparse" / "mask.pt")
    assert math.isclose(mask.sparsity(), 0.5, abs_tol=0.01)


def test_a_snip_ticket_travels_with_its_initialisation_as_its_rewind_weights(tmp_path, digits):
    """SNIP's ticket starts from the initialisation: ``load_ticket(weights="rewind")`` gives that initialisation
    under the mask (the run's seed-0 model), and ``pracset export`` writes it."""
    from pracset.export import export_ticket
    from pracset.interop import load_ticket
    from pracset.models import build_model
    from pracset.train.run import input_spec

    out = tmp_path / "snip"
    find_tickets("snip", DataConfig("digits"), "mlp", out, train=TRAIN, dataset=digits, snip=SNIPConfig(sparsity=0.5))
    model = build_model("mlp", input_spec(digits), seed=123)
    ticket = load_ticket(model, out, weights="rewind")
    initial = build_model("mlp", input_spec(digits), seed=TRAIN.seed).state_dict()
    for name, value in model.state_dict().items():
        expected = initial[name] * ticket.mask[name] if name in ticket.mask else initial[name]
        assert torch.equal(value, expected), name
    assert (export_ticket(out, tmp_path / "export") / "ticket.json").is_file()
