"""The Data-Diet protocol (IMP with ``manifest_use = "pretrain"``): pretraining on a set, IMP on the full split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.manifest import read_manifest
from pracset.tickets import IMPConfig, find_tickets
from pracset.train import TrainConfig

TRAIN = TrainConfig(epochs=3, batch_size=128, lr=0.05)
DIET = IMPConfig(rounds=1, rewind="1ep", manifest_use="pretrain")


@pytest.fixture(scope="module")
def easy_set(tmp_path_factory):
    """300 of digits' 1438 training examples, drawn at random (a build that trains nothing)."""
    from pracset.cli import main

    out = tmp_path_factory.mktemp("set") / "m.parquet"
    assert main(["build", "--arch", "mlp", "--rule", "random", "--size", "300", "--out", str(out), "-q"]) == 0
    return out


def _metrics(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "metrics.json").read_text())


def test_the_pretraining_runs_on_the_set_and_imp_continues_on_the_full_split(tmp_path, digits, easy_set,
                                                                             monkeypatch):
    """By hand: the pretraining is the recipe's first epoch on the 300 examples (ceil(300 / 128) = 3 steps) and
    its final state is the rewind point; round 0 starts from that state and trains the recipe's last 2 epochs on
    all 1438 examples (2 x ceil(1438 / 128) = 24 steps), as round 1 does from the rewind point; the search costs
    3 + 24. Mutations caught: round 0 from the initialisation; the pretraining on the full split; the pretraining
    left out of the search's cost."""
    from pracset.tickets import stages

    starts = {}
    eager = stages._train_eagerly

    def spy(job):
        model, _ = job.start()
        starts[job.stage.name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return eager(job)

    monkeypatch.setattr(stages, "_train_eagerly", spy)
    out = tmp_path / "diet"
    summary = find_tickets("imp", DataConfig("digits"), "mlp", out, train=TRAIN, imp=DIET, manifest=easy_set,
                           dataset=digits)
    chosen = read_manifest(easy_set).selected_ids
    assert np.array_equal(np.load(out / "pretrain" / "ids.npy"), chosen)
    pretrain = _metrics(out, "pretrain")
    assert pretrain["epochs_run"] == 1 and pretrain["ledger"]["train_iterations"] == 3
    rewind = torch.load(out / "rewind.pt", weights_only=True)
    pretrained = torch.load(out / "pretrain" / "model.pt", weights_only=True)
    for name, value in pretrained.items():
        assert torch.equal(rewind[name], value), name
        assert torch.equal(starts["round-00"][name], value), name  # round 0 starts where the pretraining ended
    for stage in ("round-00", "round-01"):
        assert not (out / stage / "ids.npy").exists()
        assert _metrics(out, stage)["ledger"]["train_iterations"] == 24
        assert _metrics(out, stage)["history"][0]["epoch"] == 2
    assert summary["costs"]["search"] == 3 + 24
    # round 0 is judged on the 24 steps it trained, not the recipe's 36 (it started after the pretraining)
    assert "24 steps" in " ".join(summary["tickets"][0]["degenerate"])


def test_what_the_protocol_cannot_do_is_refused_before_training(tmp_path, digits, easy_set):
    cases = [("imp", None, DIET, "give --manifest and a rewind point in epochs"),
             ("imp", easy_set, IMPConfig(rounds=1, rewind="5it", manifest_use="pretrain"), "in epochs, e.g. --rewind"),
             ("imp", easy_set, IMPConfig(rounds=1, rewind="3ep", manifest_use="pretrain"),
              "the pretraining's 3 epochs (--rewind 3ep) must be fewer than the recipe's 3"),
             ("prac-imp", easy_set, DIET, "is a setting of imp")]
    for method, manifest, imp, message in cases:
        out = tmp_path / f"{method}-{imp.rewind}-{manifest is None}"
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            find_tickets(method, DataConfig("digits"), "mlp", out, train=TRAIN, imp=imp, manifest=manifest,
                         dataset=digits)
        assert not out.exists()
