"""Every ticket method honours a manifest: read from the ledger, the metrics and ``ids.npy``, which examples
every stage trained on (issue 22.1)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pracset.build import BuildConfig, build_manifest
from pracset.data import DataConfig
from pracset.manifest import read_manifest
from pracset.manifest.assemble import write_random_manifest
from pracset.sparse import GraNetConfig, RigLConfig
from pracset.tickets import IMPConfig, find_tickets
from pracset.train import TrainConfig

DATA = DataConfig(name="digits")
TRAIN = TrainConfig(epochs=2, batch_size=64, lr=0.05)
SUBSET = 400  # of digits' 1438 training examples


@pytest.fixture(scope="module")
def subset_manifest(tmp_path_factory, digits):
    folder = tmp_path_factory.mktemp("manifest")
    built = folder / "built.parquet"
    build_manifest(DATA, "mlp", built, train=TrainConfig(epochs=1, batch_size=64), build=BuildConfig(probe_sparsities=()),
                   device=torch.device("cpu"), dataset=digits)
    out = folder / "random.parquet"
    write_random_manifest(built, out, seed=3, size=SUBSET)
    return out


def _stages_seen(out) -> dict[str, tuple[int, np.ndarray | None, int]]:
    """Per stage of the ledger: the examples its metrics say, the ids it recorded, and the examples it was charged."""
    ledger = json.loads((out / "ledger.json").read_text())["stages"]
    seen = {}
    for name, cost in ledger.items():
        if name.startswith("probe-"):
            continue
        metrics = json.loads((out / name / "metrics.json").read_text())
        ids = out / name / "ids.npy"
        seen[name] = (metrics["examples"], np.load(ids) if ids.exists() else None, cost["train_examples"],
                      metrics["epochs_run"])
    return seen


def _check(out, on_subset: dict[str, int], on_full: dict[str, int], selected: np.ndarray, total: int) -> None:
    """``on_subset`` / ``on_full``: the stages expected on the set / the full split, with the step each starts at
    (a rewound stage skips the schedule's first batches, each of 64 examples)."""
    seen = _stages_seen(out)
    assert set(seen) == set(on_subset) | set(on_full)
    for name, start in on_subset.items():
        examples, ids, charged, epochs = seen[name]
        assert examples == SUBSET, name
        np.testing.assert_array_equal(np.sort(ids), np.sort(selected), err_msg=name)
        # every epoch presents each example of the set once (no drop_last), less the steps skipped: hand count
        assert charged == SUBSET * epochs - 64 * start, name
    for name, start in on_full.items():
        examples, ids, charged, epochs = seen[name]
        assert examples == total and ids is None, name
        assert charged == total * epochs - 64 * start, name


@pytest.mark.parametrize("pack", ["off", "on"])
def test_imp_trains_its_rounds_and_controls_on_the_manifest(tmp_path, digits, subset_manifest, pack):
    selected = read_manifest(subset_manifest).selected_ids
    summary = find_tickets("imp", DATA, "mlp", tmp_path / "imp", train=TRAIN, manifest=subset_manifest,
                           imp=IMPConfig(rounds=1, rewind="2it", controls=True, pack_controls=pack),
                           device=torch.device("cpu"), dataset=digits)
    subset = {"round-00": 0, "round-01": 1, "control-round-01-reinit": 1, "control-round-01-random-mask": 1}
    _check(tmp_path / "imp", subset, {"dense-reference": 0}, selected, len(digits.train))
    # the rewind point in iterations scales with the set: round(2 * 400 / 1438) = 1; round 1 continues from it
    steps = 2 * 7  # ceil(400 / 64) batches x 2 epochs
    rows = summary["tickets"]
    assert rows[1]["iterations"] == steps - 1
    # the ticket is judged against the dense network trained on the full split, not the subset's round 0
    reference = json.loads((tmp_path / "imp" / "dense-reference" / "metrics.json").read_text())
    assert rows[1]["dense_reference"] == "dense-reference"
    assert rows[1]["dense_accuracy"] == reference["final"]["test_accuracy"]


def test_prac_imp_rounds_on_the_manifest_tickets_on_the_full_split(tmp_path, digits, subset_manifest):
    selected = read_manifest(subset_manifest).selected_ids
    find_tickets("prac-imp", DATA, "mlp", tmp_path / "prac", train=TRAIN, manifest=subset_manifest,
                 imp=IMPConfig(rounds=2, rewind="0it", controls=True, budget="linear", early_bird=False),
                 device=torch.device("cpu"), dataset=digits)
    full = {"ticket-02": 0, "control-ticket-02-reinit": 0, "control-ticket-02-random-mask": 0, "dense-reference": 0}
    _check(tmp_path / "prac", {"round-00": 0, "round-01": 0}, full, selected, len(digits.train))


@pytest.mark.parametrize("method", ["rigl", "granet"])
def test_dynamic_sparse_trains_on_the_manifest(tmp_path, digits, subset_manifest, method):
    selected = read_manifest(subset_manifest).selected_ids
    dynamic = {"rigl": RigLConfig(sparsity=0.5, delta_t=4), "granet": GraNetConfig(sparsity=0.5, init_sparsity=0.3,
                                                                                     delta_t=4)}
    find_tickets(method, DATA, "mlp", tmp_path / method, train=TRAIN, manifest=subset_manifest, device=torch.device("cpu"),
                 dataset=digits, **{method: dynamic[method]})
    _check(tmp_path / method, {"sparse": 0}, {}, selected, len(digits.train))
