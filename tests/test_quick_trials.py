"""Quick trials (issue 25, item 6): any command on the first N, or a seeded N, training examples, recorded in
the run's identity; bad limits refused in one line."""

from __future__ import annotations

import json

import pytest
import torch

from pracset.cli import main
from pracset.data import DataConfig, load_dataset
from pracset.errors import ConfigError


def test_the_first_n_and_a_seeded_n(capsys):
    full = load_dataset(DataConfig(name="digits"))
    first = load_dataset(DataConfig(name="digits", limit=50))
    assert torch.equal(first.train.images, full.train.images[:50]) and torch.equal(first.train.labels,
                                                                                    full.train.labels[:50])
    assert torch.equal(first.test.images, full.test.images)  # the test split is untouched
    drawn = load_dataset(DataConfig(name="digits", limit=50, limit_seed=3))
    # a reference of the draw: 50 distinct ids of 1438, in canonical order, seed 3
    ids = torch.randperm(1438, generator=torch.Generator().manual_seed(3))[:50].sort().values
    assert torch.equal(drawn.train.images, full.train.images[ids]) and torch.equal(drawn.train.labels,
                                                                                    full.train.labels[ids])
    assert int(ids[-1]) > 50  # not the first 50
    other = load_dataset(DataConfig(name="digits", limit=50, limit_seed=4))
    assert not torch.equal(other.train.images, drawn.train.images)
    assert len({first.fingerprint, drawn.fingerprint, full.fingerprint}) == 3  # a trial's manifest is its own


@pytest.mark.parametrize("settings, message", [
    (dict(limit=0), "limit must be a positive integer, got 0"),
    (dict(limit_seed=3), "limit_seed needs limit (how many examples)"),
    (dict(limit=10, limit_seed=-1), "limit_seed must be an integer from 0 to 4294967295, got -1"),
    (dict(limit=10, limit_seed=2 ** 70), f"limit_seed must be an integer from 0 to 4294967295, got {2 ** 70}"),
    (dict(limit=10, stream=True, name="imagefolder"), "limit works on data held in memory, not with stream"),
])
def test_bad_limits_are_refused_when_the_config_is_made(settings, message):
    with pytest.raises(ConfigError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        DataConfig(**settings)


def test_a_limit_larger_than_the_split_is_one_line(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--arch", "mlp", "--limit", "5000", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err == "pracset train: error: limit 5000 is more than the 1438 training examples of digits\n"


def test_a_trial_is_recorded_in_the_identity_and_another_limit_is_another_run(tmp_path, capsys):
    out = tmp_path / "trial"
    argv = ["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "-q", "--out", str(out)]
    assert main([*argv, "--limit", "100", "--limit-seed", "1"]) == 0
    identity = json.loads((out / "run.json").read_text())["identity"]["data"]
    assert (identity["limit"], identity["limit_seed"]) == (100, 1)
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["stages"]["dense"]["train_examples"] == 100  # one epoch of the 100 examples
    capsys.readouterr()
    assert main([*argv, "--limit", "200", "--limit-seed", "1"]) == 2
    assert "data.limit: 100 -> 200" in capsys.readouterr().err
    plain = tmp_path / "plain"
    assert main(["train", "--data", "digits", "--arch", "mlp", "--epochs", "1", "-q", "--out", str(plain)]) == 0
    assert "limit" not in json.loads((plain / "run.json").read_text())["identity"]["data"]  # old identities stand


def test_a_manifest_built_on_a_trial_covers_its_examples_only(tmp_path, capsys):
    from pracset.manifest import read_manifest

    path = tmp_path / "m.parquet"
    assert main(["build", "--data", "digits", "--arch", "mlp", "--epochs", "2", "-q", "--limit", "120",
                 "--out", str(path)]) == 0
    manifest = read_manifest(path)
    assert manifest.size == 120 and manifest.dataset["fingerprint"] == load_dataset(
        DataConfig(name="digits", limit=120)).fingerprint
