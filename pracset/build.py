"""``pracset build``: dense training with the recorder, a pruning probe, a selection, a manifest.

Outputs, for ``--out NAME.parquet``:

- ``NAME.parquet``: the manifest (one row per training example, see
  ``manifests/README.md``);
- ``NAME.stats.npz``: the full statistics (every manifest column, the probe's
  per-sparsity results, the per-epoch correctness history when kept, the
  training history) for users who want to study them;
- ``NAME.dense.pt``: the trained dense model's weights (a ``state_dict``), for
  probing again or other analyses (not written by ``--rule random`` with a
  size, which trains nothing);
- while running, ``NAME.parquet.partial/`` holds the training checkpoint so
  that ``--resume`` continues an interrupted build; it is removed at the end.

A manifest that already exists is never overwritten: if it was built with the
same settings the build is skipped, otherwise the build refuses.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from pracset import __version__
from pracset.config import ConfigBase, option, require, to_dict
from pracset.data import DataConfig, ImageDataset, load_dataset
from pracset.device import environment
from pracset.errors import ConfigError
from pracset.fileio import atomic_torch_save, atomic_write_bytes, naming, require_regular_file
from pracset.ledger import IterationLedger
from pracset.manifest import ManifestError, read_manifest, write_manifest
from pracset.manifest.assemble import dataset_metadata, manifest_columns
from pracset.mask import PRUNABLE_CHOICES, Mask
from pracset.models import has_convolutions
from pracset.models.custom import ArchitectureLike, resolve_architecture
from pracset.runs import BuildLayout, RunDirectory, TicketLayout, check_output_parent, refuse_changed
from pracset.selection import SELECTION_RULES, SelectionConfig, SelectionInputs, check_size, select
from pracset.sparse.early_bird import EarlyBirdConfig, EarlyBirdStop
from pracset.sparse.pruning import RANKING_CHOICES
from pracset.stats import ExampleRecorder, pruning_probe
from pracset.stats.scores import EXTRA_SCORES, extra_scores
from pracset.tickets import IMPConfig, find_tickets
from pracset.tickets.config import MIN_KEPT_FRACTION, kept_fraction, max_rounds
from pracset.tickets.health import chance_threshold, majority_rate, near_chance, warn
from pracset.train.config import TrainConfig
from pracset.train.optim import check_names
from pracset.train.run import (check_loader_settings, make_loaders, new_model, resolve_data, split_labels, train_stage,
                               unaugmented_train_loader)
from pracset.train.tensorboard import require_tensorboard

log = logging.getLogger(__name__)


#: How ``pracset build`` finds the critical examples for pruning (see BuildConfig.cep).
CEP_CHOICES = ("one-shot", "trained")


@dataclass(frozen=True)
class BuildConfig(ConfigBase):
    """What ``pracset build`` adds to dense training (Early-Bird's own settings: ``EarlyBirdConfig``)."""

    probe_sparsities: tuple[float, ...] = option(
        (0.5, 0.8, 0.9), "sparsities of the one-shot magnitude-pruned models (no fine-tuning) the probe compares "
        "with the dense one; an empty list skips the probe", flag="--probe-sparsity")
    probe_ranking: str = option("global", "how the probe ranks weights for pruning: all tensors together (global) "
                                          "or each on its own (layerwise)", choices=RANKING_CHOICES)
    prunable: str = option("all", "which weights may be pruned: all conv+linear weights, or conv only "
                                  "(official PrAC code)", choices=PRUNABLE_CHOICES)
    early_bird: bool = option(False, "stop dense training early once the pruning mask settles "
                                     "(settings: --early-bird-*)")
    keep_history: bool = option(False, "also store the per-epoch correctness history (bit-packed) in the statistics")
    cep: str = option("one-shot", "how CEP is found: one-shot (the trained dense model against one-shot pruned "
                                  "copies of it, no retraining: cheap) or trained (the paper's: run PrAC-IMP's "
                                  "rounds and keep the set its last trained round selects)", choices=CEP_CHOICES)
    cep_rounds: int = option(1, "--cep trained: how many pruning rounds to run (20% each by default)")
    keep_collapsed_probes: bool = option(False, "keep the disagreements of a probe sparsity whose pruned model "
                                                "collapsed (training accuracy over 25 points below dense: it marks "
                                                "whole classes, not critical examples); by default they are left "
                                                "out of the set", added_later=True)
    scores: tuple[str, ...] = option((), "extra per-example scores for the rules over a score (--rule highest, "
                                         "lowest, ccs --score NAME): el2n, grand (Paul et al. 2021); each trains "
                                         "score_runs extra networks, whose cost the ledger counts",
                                     choices=EXTRA_SCORES, added_later=True)
    score_runs: int = option(1, "el2n, grand: independent networks averaged (K; Paul et al.: 10)", added_later=True)
    el2n_epoch: int = option(1, "el2n: epochs of the recipe each network trains before it scores (Paul et al.: "
                                "20 of CIFAR-10's 200)", added_later=True)
    grand_epoch: int = option(0, "grand: epochs of training before it scores (0: at initialisation, as Paul et al.)",
                              added_later=True)

    def __post_init__(self) -> None:
        require(self.cep_rounds >= 1, f"cep_rounds must be a positive integer, got {self.cep_rounds}")
        # --cep trained runs IMPConfig(rounds=cep_rounds + 1) at its default prune_fraction: bounded as IMP's rounds
        fraction = IMPConfig.__dataclass_fields__["prune_fraction"].default
        limit = max_rounds(fraction) - 1
        if self.cep_rounds > limit:
            raise ConfigError(f"cep_rounds must be at most {limit}: {self.cep_rounds} rounds of {fraction:g} pruning "
                              "(and one more for the selected set) would keep "
                              f"{kept_fraction(fraction, self.cep_rounds + 1):.3g} of the weights, under "
                              f"{MIN_KEPT_FRACTION:g}")
        require(all(0 < s < 1 for s in self.probe_sparsities),
                f"probe sparsities must lie in (0, 1), got {list(self.probe_sparsities)}")
        require(self.score_runs >= 1, f"score_runs must be a positive integer, got {self.score_runs}")
        require(self.el2n_epoch >= 0 and self.grand_epoch >= 0, "el2n_epoch and grand_epoch must not be negative")


@dataclass
class BuildResult:
    """What ``build_manifest`` returns: the manifest's path, its summary, and whether it already existed."""

    manifest_path: Path
    summary: dict
    skipped: bool = False


def stats_path(manifest_path: Path) -> Path:
    """Where the full statistics of the manifest at ``manifest_path`` are written."""
    return BuildLayout(manifest_path).statistics


def build_identity(data: DataConfig | dict, arch: str, train: TrainConfig, build: BuildConfig,
                   selection: SelectionConfig, early_bird: EarlyBirdConfig) -> dict:
    """What makes two builds the same build (recorded in the manifest and compared before building again)."""
    return {"data": data if isinstance(data, dict) else data.identity(), "arch": arch, "train": to_dict(train),
            "build": to_dict(build),
            "selection": to_dict(selection), "early_bird": to_dict(early_bird) if build.early_bird else None}


def build_manifest(data, arch: ArchitectureLike, out: str | Path, *, train: TrainConfig = TrainConfig(),
                   build: BuildConfig = BuildConfig(), selection: SelectionConfig = SelectionConfig(),
                   early_bird: EarlyBirdConfig = EarlyBirdConfig(), device: torch.device = torch.device("cpu"),
                   resume: bool = False, progress: bool = False, dataset: ImageDataset | None = None,
                   tensorboard: bool = False, weights: str | None = None) -> BuildResult:
    """Build a PrAC (or baseline) manifest of ``data``'s training split on ``arch``.

    ``data`` is a :class:`DataConfig`, a pracset data set, or a ``(train,
    test)`` pair of your own tensors / torch Datasets / DataLoaders;
    ``arch`` a registered name, an ``nn.Module`` or a function that makes one
    (:func:`pracset.models.custom.resolve_architecture`). Every other setting
    has a default.

    Trains densely with the per-example recorder (stopped by Early-Bird when
    ``build.early_bird``), probes pruned copies of the trained network,
    selects with ``selection`` and writes the manifest ``out`` and its
    statistics. ``tensorboard`` writes the training's per-epoch scalars
    into ``NAME.tensorboard/`` (needs the optional ``tensorboard`` package). A manifest that exists is never overwritten: the same build is
    skipped, another one refused with the settings that differ.
    """
    layout = BuildLayout(out)
    check_output_parent(layout.manifest)
    check_names(train)
    architecture = resolve_architecture(arch, weights)
    arch = architecture.name
    data, dataset, data_identity = resolve_data(data, dataset)
    SELECTION_RULES.get(selection.rule)
    if tensorboard:
        require_tensorboard()
    board = layout.tensorboard if tensorboard else None
    if selection.rule == "cep" and not build.probe_sparsities:
        raise ConfigError("the cep rule needs the pruning probe's results; give --probe-sparsity values")
    identity = build_identity(data_identity, arch, train, build, selection, early_bird)
    started = time.time()
    # The lock comes before the "manifest exists" check: two builds of one manifest are serialised, and the
    # second sees the first one's manifest (and is skipped or refused) instead of replacing it.
    with RunDirectory(layout.work, identity, resume=resume, finished=None, kind="build",
                      check_on_enter=False) as run:
        if layout.manifest.exists():  # a finished build: its work directory, if a kill left one, is stale
            return _existing_build(layout, identity)
        run.check()
        outputs = _outputs(layout, selection)
        run.check_outputs(outputs)  # a user's NAME.dense.pt or NAME.stats.npz is refused, not overwritten
        # Data and model are checked before anything is written, so a refused build leaves nothing behind.
        dataset = dataset or load_dataset(data)
        check_loader_settings(dataset, train, device)
        check_size(selection, len(dataset.train))
        _check_scores(build, selection, train)
        model = new_model(architecture, dataset, seed=train.seed)
        mask = Mask.ones(model, prunable=build.prunable)
        run.claim(data=dataset)
        if selection.rule == "random" and selection.size_for(len(dataset.train)) is not None:
            return _build_random(layout, dataset, arch, train, selection, identity, device=device, started=started,
                                 run=run)
        if build.cep == "trained":
            return _build_from_prac_imp(layout, data or dataset, architecture, train, build, selection, early_bird, identity,
                                        dataset=dataset, device=device, progress=progress, started=started,
                                        tensorboard=board, run=run)
        train_loader, test_loader = make_loaders(dataset, train, device, conv_net=has_convolutions(model))
        recorder = ExampleRecorder(len(dataset.train), device, keep_history=build.keep_history)
        callbacks = [recorder]
        bird = None
        if build.early_bird:
            bird = EarlyBirdStop(early_bird, mask, warmup_epochs=int(train.warmup_epochs))
            callbacks.append(bird)
        trained = train_stage(layout.dense, model, train_loader, test_loader, train, callbacks=callbacks,
                              progress=progress, tensorboard=board)
        ledger = trained.ledger
        statistics = recorder.statistics()
        probe_result = None
        if build.probe_sparsities:
            probe_loader = unaugmented_train_loader(dataset, device, max(train.batch_size, 512),
                                                    channels_last=train_loader.channels_last)
            probe_result = pruning_probe(model, probe_loader, build.probe_sparsities, num_examples=len(dataset.train),
                                         mask=mask, ranking=build.probe_ranking, precision=train.precision,
                                         ledger=ledger, stage="probe", drop_collapsed=not build.keep_collapsed_probes)
        extra = extra_scores(build.scores, runs=build.score_runs, el2n_epoch=build.el2n_epoch,
                             grand_epoch=build.grand_epoch, base_seed=train.seed,
                             new_model=lambda seed: new_model(architecture, dataset, seed=seed),
                             train_loader=lambda seed: make_loaders(dataset, replace(train, seed=seed), device,
                                                                    conv_net=has_convolutions(model))[0],
                             score_loader=unaugmented_train_loader(dataset, device), config=train, device=device,
                             ledger=ledger) if build.scores else {}  # (no loader of the split made for nothing)
        labels = split_labels(dataset.train)
        disagreements = probe_result.disagreements if probe_result else None
        chosen = select(SelectionInputs.from_statistics(labels, statistics, disagreements, scores=extra), selection)
        columns = {**manifest_columns(dataset, statistics, disagreements, chosen), **extra}
        n = len(labels)
        history = trained.history
        final = trained.metrics.final
        warnings_said = _dense_warnings(final.get("test_accuracy"), dataset)
        metadata = {
            "dataset": dataset_metadata(dataset),
            "selection": chosen.describe(),
            "provenance": {
                "command": "build",
                "cep": "one-shot-probe" if probe_result is not None else "none",
                "arch": arch,
                "seed": train.seed,
                "train": to_dict(train),
                "epochs_run": trained.metrics.epochs_run,
                "early_bird": None if bird is None else {**to_dict(bird.config), "stopped_epoch": bird.stopped_epoch,
                                                          "distances": [round(d, 6) for d in bird.distances]},
                "probe": None if probe_result is None else {
                    "sparsities": list(build.probe_sparsities), "ranking": build.probe_ranking,
                    "prunable": build.prunable,
                    "disagreed_at": {str(k): v for k, v in probe_result.disagreed_at.items()},
                    "pruned_train_accuracy": {str(k): v for k, v in probe_result.pruned_accuracy.items()},
                    "dense_train_accuracy": probe_result.dense_accuracy,
                    "collapsed": list(probe_result.collapsed),
                    "collapsed_kept": bool(probe_result.collapsed) and not probe_result.collapsed_dropped},
                # the probe sparsities whose disagreements were left out of the set (collapsed pruned models)
                "probe_collapsed": list(probe_result.collapsed) if probe_result and probe_result.collapsed_dropped
                else [],
                "dense_test_accuracy": final.get("test_accuracy"),
                "scores": {name: {"runs": build.score_runs, "epoch": getattr(build, f"{name}_epoch")}
                           for name in build.scores},
                "warnings": warnings_said,
                "history": history,
                "ledger": ledger.to_dict(),
                "iterations": ledger.total().train_iterations,
                **_build_record(identity, device, started),
            },
        }
        run.record_outputs(outputs)  # before they exist: a resumed build may replace them, a user's never
        _write_statistics(layout.statistics, columns, statistics, probe_result, history)
        atomic_torch_save(model.state_dict(), layout.dense_model)
        _write_new_manifest(layout, columns, metadata)
        shutil.rmtree(layout.work, ignore_errors=True)
    manifest = read_manifest(layout.manifest)
    log.info("wrote %s: %d of %d examples selected (%s)", layout.manifest, manifest.num_selected, n, selection.rule)
    return BuildResult(layout.manifest, manifest.summary())


def _check_scores(build: BuildConfig, selection: SelectionConfig, train: TrainConfig) -> None:
    """A rule over EL2N or GraNd needs that score computed, and a score's epoch must lie in the recipe."""
    if selection.rule in ("highest", "lowest", "ccs") and selection.score in EXTRA_SCORES \
            and selection.score not in build.scores:
        raise ConfigError(f"--rule {selection.rule} --score {selection.score} needs the score: add --scores "
                          f"{selection.score}")
    for name in build.scores:
        epoch = getattr(build, f"{name}_epoch")
        if epoch > train.epochs:
            raise ConfigError(f"{name}_epoch {epoch} lies beyond the recipe's {train.epochs} epochs")


def _outputs(layout: BuildLayout, selection: SelectionConfig) -> list[Path]:
    """The files a build writes beside its manifest: the statistics and, unless it trains nothing (the random
    rule with a size), the dense model."""
    trains = not (selection.rule == "random" and selection.size_for(1) is not None)
    return [layout.statistics, layout.dense_model] if trains else [layout.statistics]


def _dense_warnings(accuracy: float | None, dataset) -> list[str]:
    """A dense network near chance learned nothing: its forgetting statistics and probe say nothing either."""
    majority = majority_rate(split_labels(dataset.test))
    if accuracy is None or not near_chance(accuracy, majority):
        return []
    message = (f"the dense network ended near chance (test accuracy {accuracy:.4f}, at most "
               f"{chance_threshold(majority):.4f} with the majority class at {majority:.4f}): the manifest's "
               "statistics and set come from a network that did not learn")
    warn(message)
    return [message]


def _build_from_prac_imp(layout: BuildLayout, data, arch, train, build, selection, early_bird, identity, *,
                         dataset, device, progress, started, tensorboard, run: RunDirectory) -> BuildResult:
    """``--cep trained``: run PrAC-IMP's rounds in the work directory and write the set its last round selected.

    ``cep_rounds`` = k runs rounds 0..k (dense, then k prunes of 20% by global
    magnitude, rewinding to the initialisation, Early-Bird as ``build.early_bird``)
    and no full-data ticket; the set is round k's CET union CEP, the CEP of
    the paper (the dense model against round k's *trained* sparse model).
    """
    imp = IMPConfig(rounds=build.cep_rounds + 1, prunable=build.prunable, early_bird=build.early_bird,
                    evaluate="none")
    ticket_dir = TicketLayout(layout.work / "prac-imp")
    summary = find_tickets("prac-imp", data, arch, ticket_dir.root, train=train, imp=imp, early_bird=early_bird,
                           selection=selection, device=device, resume=True, progress=progress, dataset=dataset,
                           tensorboard=tensorboard if tensorboard is not None else False)
    chosen_set = read_manifest(ticket_dir.round(build.cep_rounds).prac_set)
    columns = {name: chosen_set.column(name) for name in chosen_set.table.column_names}
    dense = ticket_dir.round(0).read_metrics()
    metadata = dict(chosen_set.metadata)
    metadata["provenance"] = {
        **chosen_set.provenance, "command": "build", "cep": "trained-round", "arch": arch.name, "seed": train.seed,
        "train": to_dict(train), "imp": to_dict(imp), "epochs_run": dense.get("epochs_run"),
        "dense_test_accuracy": dense["final"].get("test_accuracy"), "history": dense.get("history"),
        "ledger": summary["ledger"], "iterations": summary["ledger"]["total"]["train_iterations"],
        **_build_record(identity, device, started)}
    run.record_outputs([layout.statistics, layout.dense_model])
    _write_statistics(layout.statistics, columns, None, None, dense.get("history") or [])
    with naming(ticket_dir.round(0).model):  # an OSError of read() names no file
        dense_weights = require_regular_file(ticket_dir.round(0).model, "model weights").read_bytes()
    atomic_write_bytes(layout.dense_model, dense_weights)
    _write_new_manifest(layout, columns, metadata)
    shutil.rmtree(layout.work, ignore_errors=True)
    manifest = read_manifest(layout.manifest)
    log.info("wrote %s: %d of %d examples selected (PrAC-IMP round %d)", layout.manifest, manifest.num_selected,
             manifest.size, build.cep_rounds)
    return BuildResult(layout.manifest, manifest.summary())


def _build_record(identity: dict, device: torch.device, started: float) -> dict:
    """What every manifest's provenance records of the build itself: its identity, versions, threads, time."""
    env = environment()
    return {"build_identity": identity, "pracset_version": __version__, "torch_version": env["torch"],
            "python_version": env["python"], "cpu_threads": env["cpu_threads"], "device": str(device),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 2)}


def _build_random(layout: BuildLayout, dataset, arch: str, train: TrainConfig, selection: SelectionConfig,
                  identity: dict, *, device, started: float, run: RunDirectory) -> BuildResult:
    """``--rule random`` with a size: a seeded draw needs no statistics, so nothing is trained.

    The statistics columns hold "never presented" (0 presentations, NaN loss
    and margin); without a size, the random rule takes the PrAC set's size
    and the build trains as usual.
    """
    n = len(dataset.train)
    statistics = ExampleRecorder(n, "cpu").statistics()
    labels = split_labels(dataset.train)
    chosen = select(SelectionInputs.from_statistics(labels, statistics, None), selection)
    columns = manifest_columns(dataset, statistics, None, chosen)
    metadata = {"dataset": dataset_metadata(dataset), "selection": chosen.describe(), "provenance": {
        "command": "build", "cep": "none", "arch": arch, "seed": train.seed, "train": to_dict(train),
        "epochs_run": 0, "history": [], "ledger": IterationLedger().to_dict(), "iterations": 0,
        **_build_record(identity, device, started)}}
    run.record_outputs([layout.statistics])
    _write_statistics(layout.statistics, columns, None, None, [])
    _write_new_manifest(layout, columns, metadata)
    shutil.rmtree(layout.work, ignore_errors=True)
    log.info("wrote %s: %d of %d examples drawn at random (nothing trained)", layout.manifest, chosen.size, n)
    return BuildResult(layout.manifest, read_manifest(layout.manifest).summary())


def _write_new_manifest(layout: BuildLayout, columns: dict, metadata: dict) -> None:
    """Write the manifest, never over one that appeared while this build ran (say, written by hand)."""
    try:
        write_manifest(layout.manifest, columns, metadata, overwrite=False)
    except FileExistsError:
        raise ConfigError(f"{layout.manifest} appeared while this build ran; it was left as it is and this build's "
                          "result not written: choose another --out") from None


def _existing_build(layout: BuildLayout, identity: dict) -> BuildResult:
    """Skip a build whose manifest exists with the same settings (removing a work directory a kill left behind);
    refuse one with other settings, naming them."""
    try:
        existing = read_manifest(layout.manifest)
    except ManifestError as exc:
        raise ConfigError(f"{layout.manifest} exists and is not a readable manifest ({exc}); "
                          "choose another --out") from None
    refuse_changed(f"{layout.manifest} exists and was built with other settings",
                   existing.provenance.get("build_identity") or {}, identity, "choose another --out or remove it")
    log.info("%s already holds this build; not building again", layout.manifest)
    shutil.rmtree(layout.work, ignore_errors=True)  # a kill after the manifest was written
    return BuildResult(layout.manifest, existing.summary(), skipped=True)


def _write_statistics(path: Path, columns: dict, statistics, probe_result, history: list[dict]) -> None:
    arrays = {k: np.asarray(v) for k, v in columns.items() if k not in ("content_hash", "reason")}
    arrays["content_hash"] = np.asarray(columns["content_hash"]).astype("U16")
    arrays["reason"] = np.asarray(columns["reason"]).astype("U8")
    if statistics is not None and statistics.history is not None:
        arrays["history_bits"] = statistics.history
        arrays["presented_bits"] = statistics.presented_history
    if probe_result is not None:
        arrays["probe_sparsities"] = np.array(list(probe_result.disagreed_at), dtype=np.float64)
        arrays["probe_disagreed"] = np.array(list(probe_result.disagreed_at.values()), dtype=np.int64)
    arrays["train_accuracy_per_epoch"] = np.array([h.get("train_accuracy", np.nan) for h in history])
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
