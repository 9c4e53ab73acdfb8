"""pracset.lightning.PracsetCallback in a real Lightning Trainer on the CPU (skipped without the extra).

The statistics are checked against a plain loop over the same model, data and order whose expected values
are counted by hand (NumPy, from each presentation's logits), not by the recorder; the sparse methods by
their masks and the weights; the manifest by reading it back and by the rule's definition.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest

pl = pytest.importorskip("lightning.pytorch", reason="the optional extra: pip install 'pracset[lightning]'")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import pracset  # noqa: E402
import pracset.lightning as pracset_lightning  # noqa: E402
from pracset.errors import ConfigError  # noqa: E402
from pracset.lightning import PracsetCallback  # noqa: E402
from pracset.selection import SelectionConfig, SelectionInputs, select  # noqa: E402
from pracset.sparse import GraNetConfig, Mask, RigLConfig  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:.*does not have many workers", "ignore:.*log_every_n_steps",
                                        "ignore:.*LeafSpec", "ignore:`training_step` returned `None`")  # Lightning's advice

README = Path(__file__).resolve().parents[1] / "README.md"
N, FEATURES, CLASSES, BATCH, LR = 240, 8, 4, 32, 0.3


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian blobs: hard enough that examples are learned and forgotten."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(99))
    y = torch.randint(0, CLASSES, (n,), generator=gen)
    return centres[y] + 1.5 * torch.randn(n, FEATURES, generator=gen), y


TRAIN, TEST = blobs(N, 0), blobs(60, 1)


def loader(shuffle: bool = True) -> DataLoader:
    data = TensorDataset(*TRAIN, torch.arange(N))
    return DataLoader(data, batch_size=BATCH, shuffle=shuffle, generator=torch.Generator().manual_seed(3))


class Classifier(pl.LightningModule):
    """A user's module: its training_step returns the loss, the logits and the per-example losses."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                                 nn.Linear(32, CLASSES))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        return {"loss": losses.mean(), "logits": logits, "losses": losses}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


def fit(module, callbacks, epochs: int, train_loader=None, **kwargs) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **kwargs)
    trainer.fit(module, train_loader or loader())
    return trainer


def by_hand(module: Classifier, epochs: int) -> dict[str, np.ndarray]:
    """A plain loop over the same batches; the statistics counted by hand from each presentation's logits."""
    optimizer = torch.optim.SGD(module.parameters(), lr=LR, momentum=0.9)
    seen: list[list[tuple[int, bool, float, float]]] = [[] for _ in range(N)]  # (epoch, correct, margin, loss)
    batches = loader()  # one loader over the epochs, as the Trainer has: its generator moves on each epoch
    for epoch in range(epochs):
        for x, y, index in batches:
            logits = module(x)
            losses = F.cross_entropy(logits, y, reduction="none")
            optimizer.zero_grad()
            losses.mean().backward()
            optimizer.step()
            for i, row, label, loss in zip(index.tolist(), logits.detach().numpy(), y.tolist(), losses.tolist()):
                others = np.delete(row, label)
                seen[i].append((epoch, bool(row.argmax() == label), float(row[label] - others.max()), loss))
    out = {k: np.zeros(N, dtype=np.int64) for k in ("forgetting_events", "presentations", "times_correct")}
    out["first_learned_epoch"] = np.full(N, -1)
    out["margin"], out["last_loss"] = np.zeros(N), np.zeros(N)
    for i, presentations in enumerate(seen):
        correct = [c for _, c, _, _ in presentations]
        out["presentations"][i] = len(correct)
        out["times_correct"][i] = sum(correct)
        out["forgetting_events"][i] = sum(a and not b for a, b in zip(correct, correct[1:]))
        out["first_learned_epoch"][i] = next((e for e, c, _, _ in presentations if c), -1)
        out["margin"][i], out["last_loss"][i] = presentations[-1][2], presentations[-1][3]
    return out


def test_statistics_match_a_plain_loop_counted_by_hand():
    module = Classifier()
    reference = by_hand(copy.deepcopy(module), epochs=4)
    callback = PracsetCallback(N)
    fit(module, [callback], epochs=4)
    stats = callback.statistics()
    assert reference["forgetting_events"].sum() > 0  # the check means something: examples were forgotten
    for name in ("forgetting_events", "presentations", "times_correct", "first_learned_epoch"):
        np.testing.assert_array_equal(getattr(stats, name), reference[name], err_msg=name)
    np.testing.assert_array_equal(stats.never_learned, reference["times_correct"] == 0)
    np.testing.assert_allclose(stats.margin, reference["margin"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.last_loss, reference["last_loss"], rtol=1e-5, atol=1e-5)
    assert (stats.presentations == 4).all()


def test_ids_and_labels_from_the_outputs_and_gradient_accumulation():
    """A batch of (x, y) with ids and labels in the outputs; the sparse method steps once per optimizer step."""
    class Ids(Classifier):
        def training_step(self, batch, batch_idx):
            x, y, ids = batch
            logits = self(x)
            return {"loss": F.cross_entropy(logits, y), "logits": logits, "ids": ids, "labels": y}

    callback = PracsetCallback(N, sparse=RigLConfig(sparsity=0.5, delta_t=1000))
    trainer = fit(Ids(), [callback], epochs=2, accumulate_grad_batches=2)
    stats = callback.statistics()
    assert (stats.presentations == 2).all() and np.isnan(stats.last_loss).all()  # no per-example losses given
    assert callback.stepper.steps == trainer.global_step == 2 * 4  # 8 batches an epoch, every second one steps


def test_a_batch_the_module_skips_is_not_presented():
    class SkipsFirst(Classifier):
        def training_step(self, batch, batch_idx):
            return None if batch_idx == 0 else super().training_step(batch, batch_idx)

    callback = PracsetCallback(N)
    fit(SkipsFirst(), [callback], epochs=2, train_loader=loader(shuffle=False))
    presentations = callback.statistics().presentations
    assert (presentations[:BATCH] == 0).all() and (presentations[BATCH:] == 2).all()


def test_a_static_mask_keeps_the_pruned_weights_at_zero():
    module = Classifier()
    gen = torch.Generator().manual_seed(5)
    mask = Mask({name: torch.rand(keep.shape, generator=gen) > 0.7 for name, keep in Mask.ones(module).items()})
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    callback = PracsetCallback(N, sparse=mask)
    fit(module, [callback], epochs=2)
    params = dict(module.named_parameters())
    for name, keep in mask.items():
        assert (params[name][~keep] == 0).all(), name
        assert not torch.equal(params[name][keep], before[name][keep]), f"{name} did not train"
    assert callback.method.mask == mask


class _FirstMask(pl.Callback):
    """Keeps the sparse method's mask as training starts (after PracsetCallback.on_fit_start drew it)."""

    def __init__(self, callback: PracsetCallback):
        self.callback, self.mask = callback, None

    def on_train_start(self, trainer, pl_module):
        self.mask = Mask({n: t.clone() for n, t in self.callback.method.mask.items()})


def test_rigl_changes_the_mask_and_keeps_the_sparsity_exact():
    module = Classifier()
    callback = PracsetCallback(N, sparse=RigLConfig(sparsity=0.8, delta_t=2), seed=1)
    first = _FirstMask(callback)
    fit(module, [callback, first], epochs=3)
    final = callback.method.mask
    assert first.mask.changed_fraction(final) > 0
    assert {n: int(t.sum()) for n, t in final.items()} == {n: int(t.sum()) for n, t in first.mask.items()}
    assert final.sparsity() == pytest.approx(first.mask.sparsity())
    assert "net.0.weight" not in final  # RigL's default: the first layer dense
    params = dict(module.named_parameters())
    for name, keep in final.items():
        assert (params[name][~keep] == 0).all(), name
        assert int((params[name] != 0).sum()) <= int(keep.sum())


def test_granet_prunes_to_its_final_sparsity():
    callback = PracsetCallback(N, sparse=GraNetConfig(sparsity=0.9, init_sparsity=0.5, delta_t=4, prune_end=0.5))
    fit(Classifier(), [callback], epochs=4)
    assert callback.method.mask.sparsity() == pytest.approx(0.9, abs=2e-3)


def test_the_manifest_is_written_and_holds_the_rules_selection(tmp_path: Path):
    data = pracset.from_torch(TRAIN, TEST, name="blobs")
    path = tmp_path / "blobs.parquet"
    callback = PracsetCallback(data=data, manifest=path)  # the default rule: prac (CET alone, no probe)
    fit(Classifier(), [callback], epochs=4)
    manifest = pracset.read_manifest(path, fingerprint=data.fingerprint)
    stats = callback.statistics()
    assert manifest.size == N
    np.testing.assert_array_equal(manifest.column("example_id"), np.arange(N))
    np.testing.assert_array_equal(manifest.column("label"), TRAIN[1].numpy())
    np.testing.assert_array_equal(manifest.column("forgetting_events"), stats.forgetting_events)
    np.testing.assert_array_equal(manifest.column("content_hash"), data.train_hashes)
    # CET with E_F = 0 and never-learned examples kept: forgotten at least once, or never learned
    by_rule = (stats.forgetting_events > 0) | stats.never_learned
    assert 0 < by_rule.sum() < N
    np.testing.assert_array_equal(manifest.column("selected"), by_rule)
    assert set(manifest.column("reason")[by_rule]) == {"cet"}
    assert manifest.metadata["selection"]["rule"] == "prac"
    assert manifest.provenance["command"] == "lightning" and manifest.provenance["epochs_run"] == 4
    # another rule from the same statistics, without training again
    other = callback.write_manifest(tmp_path / "top.parquet", SelectionConfig(rule="topk-forgetting", fraction=0.25))
    expected = select(SelectionInputs.from_statistics(TRAIN[1].numpy(), stats),
                      SelectionConfig(rule="topk-forgetting", fraction=0.25))
    np.testing.assert_array_equal(pracset.read_manifest(other).column("selected"), expected.selected)
    assert expected.size == 60


def test_resuming_from_a_checkpoint_continues_the_statistics_and_the_mask(tmp_path: Path):
    def callback():
        return PracsetCallback(N, sparse=RigLConfig(sparsity=0.7, delta_t=3), total_steps=4 * 8)  # the whole run's

    whole = callback()
    fit(Classifier(), [whole], epochs=4, train_loader=loader(shuffle=False))
    trainer = fit(Classifier(), [callback()], epochs=2, train_loader=loader(shuffle=False))
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = callback()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=4, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[resumed])
    trainer.fit(Classifier(seed=7), loader(shuffle=False), ckpt_path=tmp_path / "half.ckpt")
    expected, got = whole.statistics(), resumed.statistics()
    assert expected.forgetting_events.sum() > 0
    for name, value in vars(expected).items():
        if value is not None:
            np.testing.assert_allclose(getattr(got, name), value, rtol=1e-5, err_msg=name)
    assert resumed.method.mask == whole.method.mask
    assert resumed.stepper.steps == whole.stepper.steps == 4 * 8


def test_outputs_without_logits_are_refused_in_one_line():
    class LossOnly(Classifier):
        def training_step(self, batch, batch_idx):
            x, y, _ = batch
            return F.cross_entropy(self(x), y)

    with pytest.raises(ConfigError, match="training_step must return a dict with 'loss', 'logits'"):
        fit(LossOnly(), [PracsetCallback(N)], epochs=1)


def test_settings_refused_before_training(tmp_path: Path, monkeypatch):
    with pytest.raises(ConfigError, match="num_examples"):
        PracsetCallback()
    with pytest.raises(ConfigError, match="needs data="):
        PracsetCallback(N, manifest=tmp_path / "m.parquet")
    data = pracset.from_torch(TRAIN, TEST)
    with pytest.raises(ConfigError, match="pruning probe"):
        PracsetCallback(data=data, manifest=tmp_path / "m.parquet", selection=SelectionConfig(rule="cep"))
    with pytest.raises(ConfigError, match="num_examples is 10"):
        PracsetCallback(10, data=data)
    with pytest.raises(ConfigError, match="sparse must be"):
        PracsetCallback(N, sparse="rigl")
    monkeypatch.setattr(pracset_lightning, "pl", None)
    with pytest.raises(ConfigError, match=re.escape("pip install 'pracset[lightning]'")):
        PracsetCallback(N)


def _readme_block() -> str:
    text = README.read_text()
    section = text[text.index("<!-- lightning-example -->"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_lightning_example_runs(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_readme_block(), "README.md (Lightning)", "exec"), {"__name__": "readme_lightning"})
    printed = capsys.readouterr().out
    assert re.search(r"PrAC set \(CET\): \d+ of 600 examples", printed)
    assert re.search(r"sparsity 0\.80\n", printed)
    assert (tmp_path / "blobs-lightning.parquet").exists()
