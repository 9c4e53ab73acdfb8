"""Tickets that travel (issue 25, item 4): ``pracset export`` writes a ticket's mask, trained weights and rewind
weights as torch.nn.utils.prune state dicts or safetensors, and both read back (``load_ticket(...,
weights="rewind")`` from the run, ``load_exported`` from the export). The torch-prune form is checked
against torch's own prune module, not against our writer."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn.utils import prune

from pracset.cli import main
from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.export import export_ticket, load_exported
from pracset.interop import load_ticket, to_torch_prune
from pracset.models import build_model
from pracset.tickets import IMPConfig, find_tickets
from pracset.train import TrainConfig
from pracset.train.run import input_spec

TRAIN = TrainConfig(epochs=2, batch_size=128, lr=0.05)


@pytest.fixture(scope="module")
def run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("tickets") / "imp"
    find_tickets("imp", DataConfig(name="digits"), "mlp", out, train=TRAIN, imp=IMPConfig(rounds=2, rewind="5it"),
                 dataset=digits)
    return out, input_spec(digits)


def _model(spec):
    return build_model("mlp", spec, seed=123)


def _final(run_dir):
    rows = json.loads((run_dir / "tickets.json").read_text())["tickets"]
    return rows[-1]


def test_load_ticket_with_the_rewind_weights_is_the_masked_rewind_point(run):
    run_dir, spec = run
    model = _model(spec)
    ticket = load_ticket(model, run_dir, weights="rewind")
    rewind = torch.load(run_dir / "rewind.pt", weights_only=True)
    for name, value in model.state_dict().items():
        expected = rewind[name] * ticket.mask[name] if name in ticket.mask else rewind[name]
        assert torch.equal(value, expected), name
    with pytest.raises(ConfigError, match="weights must be one of trained, rewind, got 'best'"):
        load_ticket(_model(spec), run_dir, weights="best")


def test_the_torch_prune_export_loads_into_torch_s_own_pruned_model(run, tmp_path, capsys):
    run_dir, spec = run
    assert main(["export", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    assert "as torch-prune to" in capsys.readouterr().out
    reference = _model(spec)
    trained = load_ticket(reference, run_dir)  # the run's own trained weights, masked
    for kind in ("trained", "rewind"):
        pruned = _model(spec)
        to_torch_prune(pruned, trained.mask)  # torch's reparametrisation: weight_orig + weight_mask
        pruned.load_state_dict(torch.load(tmp_path / "out" / f"{kind}.pt", weights_only=True))  # strict
        for module in pruned.modules():
            for name, _ in list(module.named_parameters(recurse=False)):
                if name.endswith("_orig"):
                    prune.remove(module, name[:-5])
        if kind == "trained":
            for name, value in reference.state_dict().items():
                assert torch.equal(pruned.state_dict()[name], value), name
    record = json.loads((tmp_path / "out" / "ticket.json").read_text())
    assert record["stage"] == _final(run_dir)["stage"] and record["files"] == {"trained": "trained.pt",
                                                                                "rewind": "rewind.pt"}


@pytest.mark.parametrize("format", ["torch-prune", "safetensors"])
def test_an_export_reads_back_as_the_run_does(run, tmp_path, format):
    if format == "safetensors":
        pytest.importorskip("safetensors", reason="the optional safetensors package is not installed")
    run_dir, spec = run
    export_ticket(run_dir, tmp_path / "out", format=format, sparsity=0.2)
    for weights in ("trained", "rewind"):
        mine, theirs = _model(spec), _model(spec)
        loaded = load_exported(mine, tmp_path / "out", weights=weights)
        expected = load_ticket(theirs, run_dir, 0.2, weights=weights)
        assert loaded.mask == expected.mask and loaded.stage == expected.stage
        assert loaded.sparsity == expected.sparsity and loaded.test_accuracy == expected.test_accuracy
        for name, value in theirs.state_dict().items():
            assert torch.equal(mine.state_dict()[name], value), (weights, name)


def test_refusals_are_one_line_and_leave_nothing(run, tmp_path, capsys):
    run_dir, _ = run
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    assert main(["export", str(run_dir), "--out", str(tmp_path / "full")]) == 2
    assert capsys.readouterr().err == (f"pracset export: error: {tmp_path / 'full'} exists and is not an empty "
                                       "directory; choose another --out\n")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["mine.txt"]
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
    assert "is not a ticket run directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ticket.json").write_text(json.dumps({"format": "torch-prune", "masked": [], "stage": "x",
                                                              "sparsity": 0.5, "test_accuracy": None,
                                                              "files": {"trained": "../../etc/passwd"}}))
    with pytest.raises(ConfigError, match="names a file outside the export"):
        load_exported(_model(run[1]), tmp_path / "bad")


def test_a_damaged_export_is_one_line_and_leaves_the_model_as_it_was(run, tmp_path):
    run_dir, spec = run
    out = export_ticket(run_dir, tmp_path / "out")
    model = _model(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (out / "trained.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"cannot read export file .*trained\.pt"):
        load_exported(model, out)
    torch.save({"0.weight": [1, 2]}, out / "trained.pt")
    with pytest.raises(ConfigError, match=r"trained\.pt holds no state dict"):
        load_exported(model, out)
    record = json.loads((out / "ticket.json").read_text())
    del record["sparsity"]
    (out / "ticket.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"ticket\.json is not a pracset export record"):
        load_exported(model, out)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
