"""Property tests (hypothesis): manifests round-trip, masks keep their exact sparsity, the recorder counts right.

* Any schema-valid manifest content (sizes, labels, counts at the int32
  limits, float columns with NaN, infinities and signed zeros, unsorted ids,
  any reasons from ``REASONS`` on selected rows, an extra column, arbitrary
  JSON provenance) reads back bit for bit through ``write_manifest`` /
  ``read_manifest``, and the summary counts agree with plain Python.
* A mask keeps its exact per-layer kept counts through ``Mask.save`` /
  ``Mask.load``, through RigL's updates (every layer keeps its count) and
  through GraNet's (the total is exactly the cubic schedule's target; after
  the pruning window every layer keeps its count), driven by hand on small
  models with random weights and gradients full of ties.
* ``ExampleRecorder`` equals a plain-Python reference on random presentation
  sequences (random subsets per epoch, random batches, scripted logits), both
  through ``update`` and through the Trainer hooks with and without the
  per-epoch logit stash.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pracset.manifest import COLUMNS, REASONS, SCHEMA_VERSION, read_manifest, write_manifest
from pracset.sparse import GraNet, GraNetConfig, Mask, RigL, RigLConfig, cubic_sparsity, drop_and_grow
from pracset.stats import ExampleRecorder
from pracset.train import StepOutput, TrainConfig, TrainState

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INT32 = 2**31 - 1


# ----------------------------------------------------------------------------- manifests
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


@st.composite
def manifest_contents(draw):
    n = draw(st.integers(1, 30))
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=n, max_size=n)  # noqa: E731
    floats32 = st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=n, max_size=n)
    selected = draw(st.lists(st.booleans(), min_size=n, max_size=n).filter(any))
    reasons = [draw(st.sampled_from(REASONS)) if s else "" for s in selected]
    columns = {
        "example_id": np.array(draw(st.permutations(range(n))), dtype=np.int64),
        "content_hash": np.array(draw(st.lists(st.text("0123456789abcdef", min_size=16, max_size=16),
                                               min_size=n, max_size=n))),
        "label": np.array(draw(ints(0, draw(st.sampled_from([0, 3, 1000, 2**40])))), dtype=np.int64),
        "forgetting_events": np.array(draw(ints(0, INT32)), dtype=np.int32),
        "presentations": np.array(draw(ints(0, INT32)), dtype=np.int32),
        "times_correct": np.array(draw(ints(0, INT32)), dtype=np.int32),
        "first_learned_epoch": np.array(draw(ints(-1, INT32)), dtype=np.int32),
        "never_learned": np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        "last_correct": np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n))),
        "last_loss": np.array(draw(floats32), dtype=np.float32),
        "margin": np.array(draw(floats32), dtype=np.float32),
        "cep_disagreements": np.array(draw(ints(0, INT32)), dtype=np.int32),
        "score": np.array(draw(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=n, max_size=n)),
                          dtype=np.float64),
        "selected": np.array(selected),
        "reason": np.array(reasons, dtype=object),
    }
    if draw(st.booleans()):
        # No NUL: Manifest.column turns strings into a numpy str array, which drops trailing NULs
        # (test_string_column_keeps_trailing_nul).
        text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=5)
        columns["note"] = np.array(draw(st.lists(text, min_size=n, max_size=n)), dtype=object)
    metadata = {
        "dataset": {"name": draw(st.text(min_size=1, max_size=10)), "split": "train", "size": n,
                    "fingerprint": draw(st.text("0123456789abcdef", min_size=1, max_size=32))},
        "selection": {"rule": draw(st.sampled_from(["prac", "cet", "cep", "random", "topk-forgetting"])),
                      "params": draw(st.dictionaries(st.text(max_size=6), json_values, max_size=3))},
        "provenance": draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    }
    return columns, metadata


def _bits(values: np.ndarray) -> np.ndarray:
    """Floats as their bit patterns (NaN payloads and the sign of zero included)."""
    return values.view(np.uint32 if values.dtype == np.float32 else np.uint64)


@SETTINGS
@given(manifest_contents())
def test_manifest_round_trip(contents):
    columns, metadata = contents
    order = np.argsort(columns["example_id"])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_manifest(Path(tmp) / "m.parquet", columns, metadata)
        m = read_manifest(path)
    n = len(order)
    assert m.size == n and m.table.column_names == [*COLUMNS, *[c for c in columns if c not in COLUMNS]]
    for name, values in columns.items():
        got, expected = m.column(name), np.asarray(values)[order]
        if expected.dtype.kind == "f":
            assert got.dtype == expected.dtype and np.array_equal(_bits(got), _bits(expected)), name
        elif expected.dtype.kind in "OU":
            assert got.tolist() == expected.tolist(), name
        else:
            assert got.dtype == COLUMNS[name].to_pandas_dtype() and np.array_equal(got, expected), name
    assert m.metadata == {"schema_version": SCHEMA_VERSION, **json.loads(json.dumps(metadata))}
    # The summary agrees with plain Python counting.
    selected = columns["selected"]
    assert m.selected_ids.tolist() == sorted(int(i) for i, s in zip(columns["example_id"], selected) if s)
    reasons: dict[str, int] = {}
    for r, s in zip(columns["reason"], selected):
        if s:
            reasons[r] = reasons.get(r, 0) + 1
    assert m.reason_counts() == reasons
    per_class: dict[int, dict[str, int]] = {}
    for label, s in zip(columns["label"].tolist(), selected):
        entry = per_class.setdefault(label, {"total": 0, "selected": 0})
        entry["total"] += 1
        entry["selected"] += int(s)
    assert m.per_class_counts() == dict(sorted(per_class.items()))


def test_string_column_keeps_trailing_nul(tmp_path):
    n = 2
    columns = {name: np.zeros(n, dtype=kind.to_pandas_dtype()) for name, kind in COLUMNS.items()
               if name not in ("content_hash", "reason", "selected")}
    columns.update(example_id=np.arange(n), content_hash=np.array(["0" * 16] * n), selected=np.array([True, False]),
                   reason=np.array(["cet", ""]), note=np.array(["a\x00", "b"], dtype=object))
    meta = {"dataset": {"name": "x", "split": "train", "size": n, "fingerprint": "f"}, "selection": {"rule": "cet"},
            "provenance": {}}
    m = read_manifest(write_manifest(tmp_path / "m.parquet", columns, meta))
    assert m.table.column("note").to_pylist() == ["a\x00", "b"]  # the file holds it
    assert m.column("note").tolist() == ["a\x00", "b"]



@st.composite
def masks(draw, max_layers: int = 4):
    tensors = {}
    for i in range(draw(st.integers(1, max_layers))):
        shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
        numel = math.prod(shape)
        kept = draw(st.integers(0, numel))
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**32))))[:kept]] = True
        tensors[f"layer{i}.weight"] = flat.view(shape)
    return Mask(tensors)


@SETTINGS
@given(masks())
def test_mask_keeps_its_exact_sparsity_through_save_and_load(mask):
    kept = {n: int(t.sum()) for n, t in mask.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = mask.save(Path(tmp) / "mask.pt")
        loaded = Mask.load(path)
        report = json.loads(path.with_suffix(".json").read_text())
    assert loaded == mask and list(loaded) == list(mask)
    assert {n: int(t.sum()) for n, t in loaded.items()} == kept
    assert all(loaded[n].dtype == torch.bool and loaded[n].shape == mask[n].shape for n in mask)
    total = sum(t.numel() for t in mask.values())
    assert loaded.sparsity() == mask.sparsity() == 1.0 - sum(kept.values()) / total
    assert report["kept"] == sum(kept.values()) and report["weights"] == total
    assert {n: v["kept"] for n, v in report["layers"].items()} == kept


# ----------------------------------------------------------------------------- masks: RigL and GraNet updates
def _model(widths: list[int]) -> nn.Module:
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _state(model: nn.Module, total_steps: int) -> TrainState:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return TrainState(model, optimizer, scheduler, TrainConfig(epochs=1), total_steps, total_steps)


def _out(step: int) -> StepOutput:
    empty = torch.zeros(0)
    return StepOutput(empty.long(), empty.long(), empty, empty, step, 0)


def _random_mask(model: nn.Module, densities: list[float], seed: int) -> Mask:
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for (name, param), density in zip([(n, p) for n, p in model.named_parameters() if n.endswith("weight")],
                                      densities):
        numel = param.numel()
        flat = torch.zeros(numel, dtype=torch.bool)
        flat[torch.randperm(numel, generator=generator)[:max(1, round(density * numel))]] = True
        tensors[name] = flat.view_as(param)
    return Mask(tensors)


def _fill(generator: torch.Generator, tensor: torch.Tensor, levels: int) -> None:
    """Values from a few levels (many ties) with random signs."""
    values = torch.randint(0, levels, tensor.shape, generator=generator).float() / levels
    signs = torch.randint(0, 2, tensor.shape, generator=generator).float() * 2 - 1
    tensor.copy_(values * signs)


def _filled_weights(model: nn.Module, seed: int, levels: int) -> torch.Generator:
    """Give every parameter few-level values (:func:`_fill`); returns the generator for the steps that follow."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            _fill(generator, param, levels)
    return generator


def _step(method, state: TrainState, step: int, generator: torch.Generator, levels: int) -> None:
    """What the Trainer does around one optimizer step, with a random dense gradient."""
    for param in state.model.parameters():
        param.grad = torch.empty_like(param)
        _fill(generator, param.grad, levels)
    out = _out(step)
    method.before_optimizer_step(state, out)
    if not state.skip_step:
        state.optimizer.step()
    state.skip_step = False
    method.after_optimizer_step(state, out)


def _check_enforced(method, state: TrainState) -> None:
    params = dict(state.model.named_parameters())
    for name, keep in method.mask.items():
        assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name
        buffer = state.optimizer.state.get(params[name], {}).get("momentum_buffer")
        if buffer is not None:
            assert torch.count_nonzero(buffer[~keep]) == 0, name


widths = st.lists(st.integers(1, 12), min_size=2, max_size=4)


@SETTINGS
@given(widths=widths, data=st.data(), seed=st.integers(0, 2**32), levels=st.integers(1, 6))
def test_rigl_updates_keep_every_layer_count(widths, data, seed, levels):
    torch.manual_seed(seed)
    model = _model(widths)
    n_layers = len(widths) - 1
    densities = data.draw(st.lists(st.floats(0.05, 1.0), min_size=n_layers, max_size=n_layers))
    mask = _random_mask(model, densities, seed)
    kept = {n: int(t.sum()) for n, t in mask.items()}
    config = RigLConfig(dense_first=False, alpha=data.draw(st.floats(0.01, 1.0)), delta_t=data.draw(st.integers(1, 4)),
                        end_fraction=data.draw(st.floats(0.1, 1.0)),
                        skip_update_step=data.draw(st.booleans()))
    total = data.draw(st.integers(4, 40))
    rigl = RigL(config, mask=mask)
    state = _state(model, total)
    generator = _filled_weights(model, seed + 1, levels)
    rigl.on_fit_start(state)
    updates = 0
    for step in range(total):
        updates += rigl.should_update(step)
        _step(rigl, state, step, generator, levels)
        assert {n: int(t.sum()) for n, t in rigl.mask.items()} == kept, step
        _check_enforced(rigl, state)
    assert updates >= 1  # step 0 is always an update step


def test_drop_and_grow_keeps_the_count_with_nan_weights():
    weight = torch.tensor([math.nan, math.nan, 1.0, 0.0, 0.0, 0.0])
    keep = torch.tensor([True, True, True, False, False, False])
    new_keep, _ = drop_and_grow(weight, torch.tensor([0.0, 0, 0, 1, 2, 3]), keep, 2)
    assert int(new_keep.sum()) == 3


@SETTINGS
@given(widths=widths, data=st.data(), seed=st.integers(0, 2**32), levels=st.integers(1, 6))
def test_granet_updates_reach_the_exact_scheduled_count(widths, data, seed, levels):
    torch.manual_seed(seed)
    model = _model(widths)
    weights = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    sparsity = data.draw(st.floats(0.0, 0.95))
    init = data.draw(st.sampled_from([0.0, min(0.5, sparsity), sparsity / 3]))
    delta_t = data.draw(st.integers(1, 4))
    total = data.draw(st.integers(4 * delta_t, 40))
    config = GraNetConfig(sparsity=sparsity, init_sparsity=init, delta_t=delta_t, dense_first=False,
                          distribution="uniform", prune_end=data.draw(st.floats(0.3, 0.9)))
    # GraNet refuses to keep nothing, or a pruning window without an update in it
    assume(round((1 - sparsity) * weights) >= 1 and config.prune_end * total >= 2 * delta_t)
    granet = GraNet(config)
    state = _state(model, total)
    generator = _filled_weights(model, seed + 1, levels)
    granet.on_fit_start(state)
    for step in range(total):
        before = {n: int(t.sum()) for n, t in granet.mask.items()}
        _step(granet, state, step, generator, levels)
        after = {n: int(t.sum()) for n, t in granet.mask.items()}
        t = step + 1
        if not granet.should_update(step):
            assert after == before, step
        elif granet.first_iter <= t // delta_t <= granet.final_iter:
            target = round((1 - cubic_sparsity(t, t0=granet.first_iter * delta_t,
                                               n=granet.final_iter - granet.first_iter, delta_t=delta_t,
                                               s_i=init, s_f=sparsity)) * weights)
            assert sum(after.values()) == min(sum(before.values()), target), step
        else:
            assert after == before, step  # regeneration alone moves no count
        _check_enforced(granet, state)


# ----------------------------------------------------------------------------- the recorder
@st.composite
def presentation_scripts(draw):
    n = draw(st.integers(1, 12))
    classes = draw(st.integers(2, 5))
    labels = draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    epochs = []
    for _ in range(draw(st.integers(1, 6))):
        ids = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n))
        batch = draw(st.integers(1, max(1, len(ids))))
        rows = []
        for i in ids:  # whole-number logits plus a distinct 1/64 per class: no ties, exact float32 margins
            base = draw(st.lists(st.integers(-8, 8), min_size=classes, max_size=classes))
            loss = draw(st.floats(0, 50, width=32))
            rows.append((i, [b + c / 64 for c, b in enumerate(base)], loss))
        epochs.append([rows[k:k + batch] for k in range(0, len(rows), batch)])
    return n, classes, labels, epochs


def reference_counts(n: int, labels: list[int], epochs) -> dict[str, list]:
    """Toneva et al.'s counts, plainly."""
    last = [None] * n
    forgetting, presentations, correct_count = [0] * n, [0] * n, [0] * n
    first, margin, loss = [-1] * n, [math.nan] * n, [math.nan] * n
    history = []
    for epoch, batches in enumerate(epochs):
        row = [-1] * n
        for batch in batches:
            for i, logits, batch_loss in batch:
                prediction = max(range(len(logits)), key=lambda c: logits[c])
                correct = prediction == labels[i]
                if last[i] is True and not correct:
                    forgetting[i] += 1
                last[i] = correct
                presentations[i] += 1
                correct_count[i] += correct
                if correct and first[i] < 0:
                    first[i] = epoch
                true = np.float32(logits[labels[i]])
                margin[i] = float(true - max(np.float32(v) for c, v in enumerate(logits) if c != labels[i]))
                loss[i] = batch_loss
                row[i] = int(correct)
        history.append(row)
    return {"forgetting_events": forgetting, "presentations": presentations, "times_correct": correct_count,
            "first_learned_epoch": first,
            "never_learned": [p > 0 and c == 0 for p, c in zip(presentations, correct_count)],
            "last_correct": [x is True for x in last], "margin": margin, "last_loss": loss, "history": history}


def _tensors(batch, labels):
    index = torch.tensor([i for i, _, _ in batch])
    logits = torch.tensor([row for _, row, _ in batch], dtype=torch.float32)
    losses = torch.tensor([loss for _, _, loss in batch], dtype=torch.float32)
    return index, torch.tensor(labels)[index], logits, losses


def _compare(stats, expected: dict) -> None:
    for name in ("forgetting_events", "presentations", "times_correct", "first_learned_epoch", "never_learned",
                 "last_correct"):
        assert getattr(stats, name).tolist() == expected[name], name
    for name in ("margin", "last_loss"):
        np.testing.assert_array_equal(getattr(stats, name), np.array(expected[name], dtype=np.float32), err_msg=name)
    assert stats.correctness_history().tolist() == expected["history"]


@SETTINGS
@given(presentation_scripts())
def test_recorder_update_equals_the_reference(script):
    n, classes, labels, epochs = script
    recorder = ExampleRecorder(n, keep_history=True)
    for epoch, batches in enumerate(epochs):
        for batch in batches:
            index, y, logits, losses = _tensors(batch, labels)
            recorder.update(index, y, logits, losses, epoch)
        recorder.end_epoch()
    _compare(recorder.statistics(), reference_counts(n, labels, epochs))


@SETTINGS
@given(presentation_scripts(), st.booleans())
def test_recorder_hooks_equal_the_reference(script, stash):
    """The Trainer's path: on_batch_end per step, on_epoch_end per epoch, stashing logits or not."""
    n, classes, labels, epochs = script
    recorder = ExampleRecorder(n, keep_history=True)
    if not stash:
        recorder.STASH_LOGITS_BYTES = 0  # observe every step instead of once per epoch
    step = 0
    for epoch, batches in enumerate(epochs):
        recorder.on_epoch_start(None)
        for batch in batches:
            index, y, logits, losses = _tensors(batch, labels)
            recorder.on_batch_end(None, StepOutput(index, y, logits, losses, step, epoch))
            step += 1
        recorder.on_epoch_end(None, {})
    recorder.on_fit_end(None)
    _compare(recorder.statistics(), reference_counts(n, labels, epochs))
