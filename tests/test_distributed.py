"""torch.distributed: two gloo ranks on the CPU against one process.

One spawn of two ranks runs every distributed scenario (process start-up is the
expensive part) and each rank saves what it saw; the tests compare the ranks
with each other and with a one-process run over the same presentations.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pracset import distributed as ddp
from pracset.data import DataConfig, DeviceLoader, load_dataset
from pracset.errors import ConfigError
from pracset.stats import ExampleRecorder
from pracset.train.config import TrainConfig
from pracset.train.loop import Callback, Trainer

WORLD = 2
SUBSET = 257          # 8 global batches of 32 and one of a single example: rank 1's last slice is empty
BATCH = 32
EPOCHS = 3
ARCH = "mlp"


def _subset_ids() -> np.ndarray:
    return np.random.default_rng(7).choice(1438, size=SUBSET, replace=False)


def _train_config(**changes) -> TrainConfig:
    base = dict(epochs=EPOCHS, batch_size=BATCH, lr=0.05, schedule="constant", seed=3, crop_padding=1, flip=True,
                precision="fp32")
    return TrainConfig(**{**base, **changes})


def _loader(dataset, config: TrainConfig, ids) -> DeviceLoader:
    mean, std = dataset.normalization
    return DeviceLoader(dataset.train, config.batch_size, mean, std, ids=ids, shuffle=True,
                        crop_padding=config.crop_padding, flip=config.flip, seed=config.seed)


class Tap(Callback):
    """Keeps every presentation a rank makes (host copies)."""

    def __init__(self):
        self.steps = []

    def on_batch_end(self, state, out):
        self.steps.append({k: getattr(out, k).clone() for k in ("index", "labels", "logits", "losses")}
                          | {"epoch": out.epoch, "step": out.step})


class MaskTap(Callback):
    """Keeps a sparse method's mask after every step where it changed, and the gradients it grew by."""

    def __init__(self, method):
        self.method = method
        self.masks, self.grads, self.last = [], [], None

    def before_optimizer_step(self, state, out):
        if self.method.should_update(out.step):
            self.grads.append({n: p.grad.clone() for n, p in self.method._params.items()})

    def after_optimizer_step(self, state, out):
        current = {n: t.clone() for n, t in self.method.mask.items()}
        if self.last is None or any(not torch.equal(current[n], self.last[n]) for n in current):
            self.masks.append((out.step, current))
        self.last = current


def _worker(rank: int, tmp: str) -> None:
    """One rank: every scenario; saves its observations to ``tmp/rank{rank}.pt``."""
    from pracset.build import BuildConfig, build_manifest
    from pracset.models import build_model
    from pracset.selection import SelectionConfig
    from pracset.sparse.mask import Mask
    from pracset.sparse import GraNet, GraNetConfig, RigL, RigLConfig
    from pracset.sparse.pruning import magnitude_prune
    from pracset.tickets import IMPConfig, find_tickets
    from pracset.train.run import input_spec

    torch.set_num_threads(1)
    tmp = Path(tmp)
    device = torch.device("cpu")
    dataset = load_dataset(DataConfig("digits"))
    saved: dict = {"rank": rank, "tmp": str(tmp)}

    # -- helpers
    ok = torch.tensor([rank, rank * 2 + 1])
    saved["gather"] = ddp.all_gather_cat(torch.arange(rank * 3)).tolist()  # lengths 0 and 3
    saved["gather_bool"] = ddp.all_gather_cat(torch.tensor([True, False] * (rank + 1))).tolist()
    try:
        ddp.check_same(ok, "the probe value")
        saved["check_same_raised"] = False
    except RuntimeError:
        saved["check_same_raised"] = True
    saved["broadcast_mask"] = ddp.broadcast_mask({"w": torch.tensor([rank == 0, rank == 1])})["w"].tolist()

    def failing():
        raise ValueError("disk full")

    try:
        ddp.run_on_main(failing, "write a file")
        saved["run_on_main_raised"] = None
    except (ValueError, OSError) as exc:
        saved["run_on_main_raised"] = type(exc).__name__

    # -- output locks: rank 0 takes it for the job; a directory another process holds stops every rank
    from pracset.fileio import DirectoryLock
    import fcntl

    for name in ("free", "held"):
        (tmp / name).mkdir(exist_ok=True)
    ddp.barrier()
    if rank == 0:  # an open file description of its own: to flock, it is another holder
        holder = os.open(tmp / "held" / ".lock", os.O_CREAT | os.O_RDWR)
        fcntl.flock(holder, fcntl.LOCK_EX)
    with DirectoryLock(tmp / "free"):
        saved["free_lock_held"] = (tmp / "free" / ".lock").exists()
        ddp.barrier()  # rank 0 removes the file when it leaves the block
    try:
        with DirectoryLock(tmp / "held"):
            saved["held_lock"] = "taken"
    except ConfigError as exc:
        saved["held_lock"] = str(exc)
    if rank == 0:
        os.close(holder)

    # -- training on a subset: presentations, recorder, gradients, ledger
    config = _train_config()
    ids = _subset_ids()
    loader = _loader(dataset, config, ids)
    assert loader.sharded
    loader.set_epoch(0)
    saved["epoch0_batches"] = [(b.index.clone(), b.x.clone()) for b in loader]
    model = build_model(ARCH, input_spec(dataset), seed=config.seed)
    recorder = ExampleRecorder(len(dataset.train), device, keep_history=True)
    tap = Tap()
    trainer = Trainer(config, stage="dense")
    state = trainer.fit(model, loader, None, [recorder, tap])
    saved["statistics"] = recorder.statistics()
    saved["taps"] = tap.steps
    saved["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
    saved["history"] = state.history
    saved["ledger"] = trainer.ledger.to_dict()
    # the same model fitted again: the first fit's DDP wrapper must not linger
    again = Trainer(_train_config(epochs=1), stage="again").fit(model, loader, None, [])
    saved["again_history"] = again.history
    saved["weights_again"] = ddp.parameters_checksum(model)

    # -- RigL and GraNet: masks after every update
    full = _train_config(epochs=2, batch_size=128, crop_padding=0, flip=False)
    for name, method in (("rigl", RigL(RigLConfig(sparsity=0.8, delta_t=3, end_fraction=0.9, dense_first=False))),
                         ("granet", GraNet(GraNetConfig(sparsity=0.9, init_sparsity=0.5, delta_t=3, prune_end=0.8)))):
        model = build_model(ARCH, input_spec(dataset), seed=full.seed)
        masks = MaskTap(method)
        Trainer(full, stage=name).fit(model, _loader(dataset, full, None), None, [method, masks])
        saved[name] = {"masks": masks.masks, "grads": masks.grads,
                       "zeros": {n: (p == 0) for n, p in model.named_parameters() if n in method.mask}}

    # -- IMP through find_tickets into a shared directory; each rank's own pruning of round 0
    replaced = []
    real_replace = os.replace

    def counting_replace(src, dst):
        replaced.append(str(dst))
        return real_replace(src, dst)

    os.replace = counting_replace
    try:
        imp_config = IMPConfig(rounds=1, prune_fraction=0.5)
        summary = find_tickets("imp", DataConfig("digits"), ARCH, tmp / "imp", train=full, imp=imp_config,
                               device=device, dataset=dataset)
        saved["imp_summary"] = summary
        round0 = build_model(ARCH, input_spec(dataset), seed=full.seed)
        round0.load_state_dict(torch.load(tmp / "imp" / "round-00" / "model.pt", weights_only=True))
        own = magnitude_prune(round0, Mask.ones(round0), 0.5)
        saved["imp_own_mask"] = {n: t.clone() for n, t in own.items()}
        saved["imp_replaced"] = list(replaced)
        replaced.clear()
        # -- a PrAC manifest built by both ranks into one path
        result = build_manifest(DataConfig("digits"), ARCH, tmp / "digits.parquet", train=full,
                                build=BuildConfig(probe_sparsities=(0.5, 0.9)), selection=SelectionConfig(),
                                device=device, dataset=dataset)
        saved["build_summary"] = result.summary
        saved["build_replaced"] = list(replaced)
    finally:
        os.replace = real_replace
    # -- the streaming loader under DDP: the same run as the device loader's
    from pracset.data.streaming import StreamingLoader, image_folder_splits
    from pracset.stats import pruning_probe

    images = load_dataset(DataConfig("imagefolder", data_dir=str(tmp / "tree")))
    streamed = image_folder_splits(tmp / "tree")
    mean, std = images.normalization
    small = _train_config(epochs=2, batch_size=4, crop_padding=0, flip=False)
    for kind in ("device", "stream"):
        if kind == "device":
            train = DeviceLoader(images.train, 4, mean, std, shuffle=True, seed=small.seed)
            probe_loader = DeviceLoader(images.train, 8, mean, std)
        else:
            train = StreamingLoader(streamed.train, 4, mean, std, shuffle=True, seed=small.seed, workers=0)
            probe_loader = train.unaugmented(8)
        model = build_model(ARCH, input_spec(images), seed=0)
        recorder = ExampleRecorder(len(images.train))
        Trainer(small, stage=kind).fit(model, train, None, [recorder])
        probe = pruning_probe(model, probe_loader, [0.5], num_examples=len(images.train))
        saved[kind] = {"statistics": recorder.statistics(), "probe": probe.disagreements,
                       "weights": {k: v.clone() for k, v in model.state_dict().items()}}
    torch.save(saved, tmp / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    from test_streaming import _write_tree

    tmp = tmp_path_factory.mktemp("ddp")
    _write_tree(tmp / "tree")
    ddp.spawn(_worker, WORLD, str(tmp), backend="gloo", timeout_minutes=3)
    return tmp, [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _assert_statistics_equal(a, b):
    for name, column in a.columns().items():
        assert np.array_equal(column, b.columns()[name], equal_nan=column.dtype.kind == "f"), name
    assert np.array_equal(a.correctness_history(), b.correctness_history())


# ----------------------------------------------------------------------------- helpers
def test_collectives_are_identities_in_one_process():
    assert not ddp.is_distributed() and ddp.rank() == 0 and ddp.world_size() == 1 and ddp.is_main()
    t = torch.arange(5)
    assert ddp.all_gather_cat(t) is t
    ddp.check_same(t)
    ddp.check_same_mask({"w": torch.ones(3, dtype=torch.bool)})
    assert ddp.run_on_main(lambda: 42) == 42
    assert ddp.init_from_env() is False  # no WORLD_SIZE: nothing to join
    assert [ddp.shard_bounds(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [ddp.shard_bounds(1, r, 3) for r in range(3)] == [(0, 1), (1, 1), (1, 1)]


@pytest.mark.slow
def test_collectives_across_ranks(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        assert r["gather"] == [0, 1, 2]
        assert r["gather_bool"] == [True, False, True, False, True, False]
        assert r["check_same_raised"] is True
        assert r["broadcast_mask"] == [True, False]  # rank 0's
    assert r0["run_on_main_raised"] == "ValueError" and r1["run_on_main_raised"] == "OSError"
    assert r0["free_lock_held"] and r1["free_lock_held"]
    assert r0["held_lock"] == r1["held_lock"] == (f"{r0['tmp']}/held is in use by another pracset run (process ?); "
                                                  "wait for it to finish or choose another --out")


# ----------------------------------------------------------------------------- data and statistics
@pytest.mark.slow
def test_ranks_split_each_one_process_batch_bitwise(ranks):
    """Step k's slices of both ranks, joined, are one process's batch k: ids and augmented pixels."""
    _, (r0, r1) = ranks
    dataset = load_dataset(DataConfig("digits"))
    loader = _loader(dataset, _train_config(), _subset_ids())
    loader.set_epoch(0)
    single = list(loader)
    assert len(r0["epoch0_batches"]) == len(r1["epoch0_batches"]) == len(single) == 9
    for (i0, x0), (i1, x1), batch in zip(r0["epoch0_batches"], r1["epoch0_batches"], single):
        assert torch.equal(torch.cat([i0, i1]), batch.index)
        assert torch.equal(torch.cat([x0, x1]), batch.x)
    assert len(r1["epoch0_batches"][-1][0]) == 0  # the last global batch holds one example


@pytest.mark.slow
def test_recorder_equals_one_process_over_the_same_presentations(ranks):
    _, (r0, r1) = ranks
    _assert_statistics_equal(r0["statistics"], r1["statistics"])
    reference = ExampleRecorder(1438, keep_history=True)
    taps = r0["taps"] + r1["taps"]
    for epoch in range(EPOCHS):
        steps = [t for t in taps if t["epoch"] == epoch]
        index = torch.cat([t["index"] for t in steps])
        assert sorted(index.tolist()) == sorted(_subset_ids().tolist())  # each example once per epoch
        for t in steps:
            reference.update(t["index"], t["labels"], t["logits"], t["losses"], epoch)
        reference.end_epoch()
    _assert_statistics_equal(r0["statistics"], reference.statistics())
    assert r0["statistics"].presentations.sum() == EPOCHS * SUBSET


@pytest.mark.slow
def test_gradients_are_the_global_batch_mean(ranks):
    """Both ranks end with the weights of one process trained on the same batches (no BatchNorm in the MLP)."""
    from pracset.models import build_model
    from pracset.train.run import input_spec

    _, (r0, r1) = ranks
    for name, value in r0["weights"].items():
        assert torch.equal(value, r1["weights"][name]), name
    dataset = load_dataset(DataConfig("digits"))
    config = _train_config()
    model = build_model(ARCH, input_spec(dataset), seed=config.seed)
    state = Trainer(config, stage="dense").fit(model, _loader(dataset, config, _subset_ids()), None, [])
    for name, value in model.state_dict().items():
        torch.testing.assert_close(r0["weights"][name], value, rtol=1e-4, atol=1e-5)
    for mine, theirs in zip(r0["history"], state.history):
        assert mine["train_accuracy"] == pytest.approx(theirs["train_accuracy"], abs=2 / SUBSET)
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-3)
    assert torch.equal(r0["weights_again"], r1["weights_again"])


@pytest.mark.slow
def test_ledger_counts_the_whole_job(ranks):
    _, (r0, r1) = ranks
    assert r0["ledger"] == r1["ledger"]
    dense = r0["ledger"]["stages"]["dense"]
    assert dense["train_iterations"] == EPOCHS * 9
    assert dense["train_examples"] == EPOCHS * SUBSET


# ----------------------------------------------------------------------------- masks
@pytest.mark.slow
@pytest.mark.parametrize("method", ["rigl", "granet"])
def test_dynamic_masks_agree_on_both_ranks(ranks, method):
    _, (r0, r1) = ranks
    a, b = r0[method], r1[method]
    assert len(a["masks"]) >= 3  # the initial mask and at least two updates
    assert [s for s, _ in a["masks"]] == [s for s, _ in b["masks"]]
    for (_, m0), (_, m1) in zip(a["masks"], b["masks"]):
        assert all(torch.equal(m0[n], m1[n]) for n in m0)
    # the growth scores: DDP already averaged param.grad over the ranks
    assert len(a["grads"]) == len(b["grads"]) > 0
    for g0, g1 in zip(a["grads"], b["grads"]):
        assert all(torch.equal(g0[n], g1[n]) for n in g0)
    final = a["masks"][-1][1]
    for name, zero in a["zeros"].items():
        assert torch.equal(zero, b["zeros"][name])
        assert zero[~final[name]].all()  # masked weights are held at zero on both ranks


@pytest.mark.slow
def test_imp_masks_agree_and_one_rank_writes(ranks):
    from pracset.sparse.mask import Mask

    tmp, (r0, r1) = ranks
    written = Mask.load(tmp / "imp" / "round-01" / "mask.pt")
    for r in (r0, r1):
        assert all(torch.equal(r["imp_own_mask"][n], written[n]) for n in written)
    assert r0["imp_summary"]["tickets"] == r1["imp_summary"]["tickets"]
    assert r0["imp_summary"]["final"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert r1["imp_replaced"] == [] and len(r0["imp_replaced"]) > 5
    assert (tmp / "imp" / "tickets.json").exists()


@pytest.mark.slow
def test_one_manifest_is_written_and_valid(ranks):
    from pracset.manifest import read_manifest

    tmp, (r0, r1) = ranks
    files = sorted(p.name for p in tmp.iterdir() if p.name.startswith("digits") or p.name.startswith(".digits"))
    assert files == ["digits.dense.pt", "digits.parquet", "digits.stats.npz"]
    manifest = read_manifest(tmp / "digits.parquet")
    assert manifest.size == 1438 and 0 < manifest.num_selected < 1438
    assert r0["build_summary"] == r1["build_summary"] == manifest.summary()
    assert r1["build_replaced"] == []
    # rank 0 wrote the work directory's identity record (at the claim, and again when it records the outputs it
    # is about to write beside the manifest, so that only those are ever overwritten), the live log (at the
    # start and after each of the 2 epochs), the checkpoint after each epoch, the statistics and the dense model
    # by renames; the manifest is linked into place (never over one that appeared)
    assert sorted(Path(p).name for p in r0["build_replaced"]) == [
        "checkpoint.pt", "checkpoint.pt", "digits.dense.pt", "digits.stats.npz", "metrics.jsonl", "metrics.jsonl",
        "metrics.jsonl", "run.json", "run.json"]
    provenance = manifest.provenance
    assert provenance["iterations"] == 2 * 12  # the whole job's steps, counted once
    assert provenance["ledger"]["stages"]["probe"]["probe_examples"] == 3 * 1438


@pytest.mark.slow
def test_streaming_loader_under_ddp_matches_the_device_loader(ranks):
    _, (r0, r1) = ranks
    for r in (r0, r1):
        device, stream = r["device"], r["stream"]
        _assert_statistics_equal_columns(device["statistics"], stream["statistics"])
        assert np.array_equal(device["probe"], stream["probe"])
        assert all(torch.equal(device["weights"][k], stream["weights"][k]) for k in device["weights"])
    _assert_statistics_equal_columns(r0["stream"]["statistics"], r1["stream"]["statistics"])
    assert r0["stream"]["statistics"].presentations.sum() == 2 * 21


def _assert_statistics_equal_columns(a, b):
    for name, column in a.columns().items():
        assert np.array_equal(column, b.columns()[name], equal_nan=column.dtype.kind == "f"), name


# ----------------------------------------------------------------------------- SyncBatchNorm (TrainConfig.sync_batchnorm)
def _bn_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.BatchNorm1d(16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 10))


def _sync_batchnorm_worker(rank: int, tmp: str) -> None:
    """One rank: what sync_batchnorm does on the CPU under two gloo ranks; saves to ``tmp/syncbn{rank}.pt``."""
    torch.set_num_threads(1)
    cpu, seen = torch.device("cpu"), {}
    dataset = load_dataset(DataConfig("digits"))
    config = _train_config(epochs=1, sync_batchnorm=True)
    model = _bn_mlp()
    before = ddp.parameters_checksum(model)
    for what, call in (("wrap_ddp", lambda: ddp.wrap_ddp(model, cpu, sync_batchnorm=True)),
                       ("fit", lambda: Trainer(config).fit(model, _loader(dataset, config, _subset_ids())))):
        try:
            call()
            seen[what] = None
        except ConfigError as exc:
            seen[what] = str(exc)
    seen["untouched"] = torch.equal(before, ddp.parameters_checksum(model)) and isinstance(model[2], torch.nn.BatchNorm1d)
    seen["plain_ddp"] = type(ddp.wrap_ddp(_bn_mlp(), cpu)).__name__
    converted = ddp.convert_sync_batchnorm(_bn_mlp()).train()  # why it is refused: torch has no CPU kernels for it
    try:
        converted(dataset.train.images[:8].float())
        seen["torch_on_cpu"] = None
    except ValueError as exc:
        seen["torch_on_cpu"] = str(exc)
    torch.save(seen, Path(tmp) / f"syncbn{rank}.pt")


@pytest.mark.slow
def test_sync_batchnorm_is_refused_on_cpu_ranks_before_any_step(tmp_path):
    ddp.spawn(_sync_batchnorm_worker, WORLD, str(tmp_path), backend="gloo", timeout_minutes=2)
    message = ("sync_batchnorm needs CUDA devices under torch.distributed (torch's SyncBatchNorm has no cpu "
               "kernels); turn it off on cpu")
    for rank in range(WORLD):
        seen = torch.load(tmp_path / f"syncbn{rank}.pt", weights_only=False)
        assert seen["wrap_ddp"] == seen["fit"] == message
        assert seen["untouched"]  # refused before converting or training anything
        assert seen["plain_ddp"] == "DistributedDataParallel"
        # if this starts passing, torch learned SyncBatchNorm on the CPU and the refusal can go
        assert seen["torch_on_cpu"] is not None and "SyncBatchNorm expected input tensor to be on GPU" in seen["torch_on_cpu"]


def test_sync_batchnorm_keeps_parameter_names_and_tensors():
    """Masks, optimizers and checkpoints hold the model's own tensors by name: the conversion keeps both."""
    import copy

    from pracset.models import InputSpec, build_model

    model = build_model("resnet20", InputSpec(3, 16, 16, 10), seed=0)
    reference = copy.deepcopy(model)
    parameters, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    layers = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert ddp.convert_sync_batchnorm(model) is model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules()) == layers == 21
    assert list(dict(model.named_parameters())) == list(parameters)
    assert all(p is parameters[name] for name, p in model.named_parameters())
    assert all(b is buffers[name] for name, b in model.named_buffers())
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(4, 3, 16, 16)  # without a process group SyncBatchNorm is BatchNorm
    assert torch.allclose(model.train()(x), reference.train()(x), atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), reference.buffers()))


def test_sync_batchnorm_changes_nothing_in_one_process():
    dataset = load_dataset(DataConfig("digits"))
    weights = []
    for sync in (False, True):
        config = _train_config(epochs=1, sync_batchnorm=sync)
        model = _bn_mlp()
        Trainer(config).fit(model, _loader(dataset, config, _subset_ids()[:256]))  # no batch of one for BatchNorm
        assert type(model[2]) is torch.nn.BatchNorm1d
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
