"""TOML pipelines: build a manifest, find tickets with several methods, transfer the set, report.

A pipeline file holds the same typed configurations as the command line::

    name = "mnist-lenet300"
    arch = "lenet300"                 # the architecture that builds the manifest
    methods = ["imp", "prac-imp"]     # ticket methods on that architecture
    transfer = ["lenet5"]             # architectures the sets are reused on
    seeds = [0, 1, 2]                 # seeds of initialisation and data order
    transfer_seeds = [0]              # the seeds the transfer runs use (default: all)
    transfer_sets = ["random-subset"] # which sets the transfer trains on (default: all three)
    controls_on = ["imp"]             # methods whose tickets get the controls (default: all; [imp] switches them on)

    [data]       # DataConfig: name, data_dir, ...
    [train]      # TrainConfig: the recipe of every training stage
    [build]      # BuildConfig of the manifest
    [selection]  # SelectionConfig
    [imp]        # IMPConfig: rounds, rewinding, controls, PrAC budget, Early-Bird on/off
    [early_bird] # EarlyBirdConfig: eps, queue_length, wait_for_change (shared by [build] and [imp])
    [rigl]       # RigLConfig (sparsity from [imp] unless given)
    [granet]     # GraNetConfig
                 # (and each ticket method's own table: pracset.tickets.METHOD_SECTIONS)
    [compare]    # CompareConfig: selection rules compared by their tickets (pracset.compare)
    [ablate]     # AblateConfig: PrAC-IMP with one part changed at a time (pracset.ablate)
    [report]     # tolerance

Stages (each skipped when its output exists; the pipeline's output directory
remembers its configuration and refuses to mix results of another one):

1. ``manifest.parquet``: ``pracset build`` on ``arch`` (one-shot CEP);
2. for each seed and each method on ``arch``: ``ARCH/METHOD-sSEED/``
   (``rigl-prac`` and ``granet-prac`` train on the build's set); every
   PrAC-IMP round writes the set it selected as ``round-RR/prac-set.parquet``
   (the paper's CEP: dense vs. that round's trained sparse model);
3. ``manifest-random.parquet``: a seeded random subset as large as the
   paper's set (PrAC-IMP's last set, first seed), drawn from the same
   statistics: the control a PrAC set must beat;
4. for each transfer seed and architecture: full-data IMP, and PrAC-IMP on
   each fixed set: the paper's set, the build's set, the random subset
   (without the sanity-check controls, which run on ``arch`` only);
5. with ``[compare]``: each rule's set at each fraction, PrAC-IMP on it on every architecture
   (``ARCH/compare-SET-sSEED``); with ``[ablate]``: each variant of PrAC-IMP on ``arch``
   (``ARCH/ablate-VARIANT-sSEED``);
6. ``report.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from pracset.build import build_manifest
from pracset.compare import write_sets
from pracset.data import ImageDataset, load_dataset
from pracset.manifest import read_manifest
from pracset.manifest.assemble import write_random_manifest
from pracset.mask import Mask
from pracset.models import build_model
from pracset.pipeline_config import (PIPELINE_METHODS, TRANSFER_SETS, Pipeline, ReportConfig,  # noqa: F401  (re-exported)
                                     apply_override, load_pipeline, pipeline_from_dict)
from pracset.report import write_report
from pracset.runs import PipelineLayout, RunDirectory
from pracset.selection import EmptySelectionError, SelectionConfig, check_size
from pracset.tickets import TICKET_METHODS, IMPConfig, find_tickets, train_imp_seeds_packed
from pracset.tomlfiles import load_toml  # noqa: F401  (the CLI's)
from pracset.train.run import check_loader_settings, input_spec
from pracset.train.tensorboard import require_tensorboard

log = logging.getLogger(__name__)

def run_pipeline(pipeline: Pipeline, out: str | Path, *, device: torch.device, resume: bool = False,
                 progress: bool = False, tensorboard: bool = False) -> dict:
    """Run every stage of ``pipeline`` into ``out`` and write the report; returns the report.

    With ``tensorboard`` (or the pipeline's ``tensorboard = true``) every
    training stage writes its per-epoch scalars (the build's beside its
    manifest, the ticket runs' under ``out/tensorboard/``):
    ``tensorboard --logdir out`` shows them all.
    """
    if tensorboard or pipeline.tensorboard:
        require_tensorboard()
        pipeline = replace(pipeline, tensorboard=True)
    layout = PipelineLayout(out)
    with RunDirectory(layout.root, pipeline.to_dict(), resume=resume, finished=layout.report_json.name,
                      record=layout.record.name, kind="pipeline run") as run:
        dataset = load_dataset(pipeline.data)  # before anything is written: missing data leaves no trace
        imp, uses_imp = pipeline.imp, bool({"imp", "prac-imp"} & set(pipeline.methods))
        for arch in (pipeline.arch, *pipeline.transfer):  # every architecture must fit the data
            model = build_model(arch, input_spec(dataset))
            if uses_imp or arch in pipeline.transfer:  # its IMP rounds must leave weights in every layer they prune
                full = Mask.ones(model, prunable=imp.prunable, dense=imp.dense_layers)
                imp.check_rounds_fit(full.num_weights, {name: full[name].numel() for name in full})
        _check_settings(pipeline, len(dataset.train))
        check_loader_settings(dataset, pipeline.train, device)
        run.claim(data=dataset)
        results = _run_stages(pipeline, layout, dataset, device=device, progress=progress)
        return write_report(pipeline, layout, results)


def _check_settings(pipeline: Pipeline, num_examples: int) -> None:
    """Settings checked against the data's size before anything is written (not after hours of training)."""
    check_size(pipeline.selection, num_examples)
    methods = {m for m in pipeline.methods if not m.endswith("-prac")} | ({"imp"} if pipeline.transfer else set())
    for method in sorted(methods):
        # Runs on the PrAC set (its size is not known yet) are checked by find_tickets once it is.
        TICKET_METHODS.get(method).check(pipeline.ticket_settings, pipeline.train, num_examples, None)
    for variant in pipeline.ablation_runs:
        settings = replace(pipeline.ticket_settings, imp=variant.imp, selection=variant.selection)
        TICKET_METHODS.get("prac-imp").check(settings, pipeline.train, num_examples, None)


class StageProgress:
    """Logs which ticket run of how many is running, and an estimate of the time left from those done so far."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.done = name, total, 0
        self.seconds: list[float] = []
        self._started, self._current, self._prepaid = 0.0, "", {}

    def prepay(self, runs: Sequence[str], seconds: float) -> None:
        """``seconds`` spent ahead on ``runs`` (trained together, each summarised later): a share counts in each."""
        self._prepaid.update({what: seconds / len(runs) for what in runs})

    def start(self, what: str) -> None:
        left = ""
        if self.seconds:
            remaining = (self.total - self.done) * sum(self.seconds) / len(self.seconds)
            left = f"; about {remaining / 60:.0f} min left"
        log.info("pipeline %s: run %d of %d: %s%s", self.name, self.done + 1, self.total, what, left)
        self._started, self._current = time.perf_counter(), what

    def finish(self, skipped: bool) -> None:
        self.done += 1
        if not skipped:  # a run found finished says nothing about how long one takes
            self.seconds.append(time.perf_counter() - self._started + self._prepaid.pop(self._current, 0.0))


def _ticket_imp(imp: IMPConfig, controls: bool) -> IMPConfig:
    """The IMP settings of a ticket run: the report's curves need every round's ticket trained on the full split."""
    return replace(imp, controls=imp.controls and controls, evaluate="every-round")


def _run_stages(pipeline: Pipeline, layout: PipelineLayout, dataset: ImageDataset, *, device: torch.device,
                progress: bool) -> dict:
    manifest = layout.manifest
    board = layout.root / "tensorboard" if pipeline.tensorboard else None
    build_manifest(pipeline.data, pipeline.arch, manifest, train=pipeline.train, build=pipeline.build,
                   selection=pipeline.selection, early_bird=pipeline.early_bird, device=device, resume=True,
                   progress=progress, dataset=dataset, tensorboard=pipeline.tensorboard)
    results: dict[str, Any] = {"manifest": str(manifest), "runs": []}
    compared = pipeline.compare.sets(pipeline.selection) if pipeline.compare is not None else {}
    progress_log = StageProgress(pipeline.name, len(pipeline.seeds) * len(pipeline.methods)
                                 + len(pipeline.transfer_seed_list) * len(pipeline.transfer)
                                 * (1 + len(pipeline.transfer_set_names))
                                 + sum(map(len, _compare_runs(pipeline).values())) * len(compared)
                                 + len(pipeline.seeds) * len(pipeline.ablation_runs))

    def ticket(arch: str, method: str, seed: int, *, manifest_path: Path | None = None, label: str | None = None,
               controls: bool = True, imp: IMPConfig | None = None, selection: SelectionConfig | None = None) -> dict:
        label = label or method
        directory = layout.ticket_run(arch, label, seed).root
        base = method.removesuffix("-prac")
        train = replace(pipeline.train, seed=seed)
        progress_log.start(f"{arch} {label} seed {seed}")
        imp = _ticket_imp(imp or pipeline.imp, controls)
        summary = find_tickets(base, pipeline.data, arch, directory, train=train, imp=imp,
                               early_bird=pipeline.early_bird, **pipeline.method_settings,
                               selection=selection or pipeline.selection, manifest=manifest_path, device=device,
                               resume=True, progress=progress, dataset=dataset,
                               tensorboard=board / directory.relative_to(layout.root) if board else False)
        results["runs"].append({"arch": arch, "method": label, "seed": seed, "dir": str(directory),
                                "summary": {k: v for k, v in summary.items() if k != "skipped"}})
        progress_log.finish(skipped=bool(summary.get("skipped")))
        return summary

    def imp_seeds_in_lockstep(arch: str, seeds: Sequence[int], controls: bool) -> None:
        """Full-data IMP of several seeds in one round loop (each round of every seed together, packed where the
        executor rule packs); the ticket runs below then find their stages done."""
        if len(seeds) < 2:
            return
        log.info("pipeline %s: full-data IMP on %s, seeds %s, in lockstep", pipeline.name, arch,
                 ", ".join(map(str, seeds)))
        began = time.perf_counter()
        roots = [layout.ticket_run(arch, "imp", s).root for s in seeds]
        train_imp_seeds_packed(pipeline.data, arch, [(root, replace(pipeline.train, seed=s))
                                                     for root, s in zip(roots, seeds)],
                               imp=_ticket_imp(pipeline.imp, controls), device=device, dataset=dataset,
                               pack=pipeline.imp.pack_controls,
                               tensorboard=[board / root.relative_to(layout.root) if board else None
                                            for root in roots])
        progress_log.prepay([f"{arch} imp seed {s}" for s in seeds], time.perf_counter() - began)

    if "imp" in pipeline.methods:
        imp_seeds_in_lockstep(pipeline.arch, pipeline.seeds,
                              controls=pipeline.controls_on is None or "imp" in pipeline.controls_on)
    for seed in pipeline.seeds:
        for method in pipeline.methods:
            prac_set = manifest if method.endswith("-prac") else None
            controls = pipeline.controls_on is None or method in pipeline.controls_on
            ticket(pipeline.arch, method, seed, manifest_path=prac_set, controls=controls)
    if pipeline.transfer:
        _transfer_stages(pipeline, layout, manifest, results, ticket, imp_seeds_in_lockstep)
    if compared:  # every rule's set, on every architecture, beside full-data IMP there (trained above)
        paths = write_sets(pipeline.compare, manifest, layout.root / "compare", pipeline.selection)
        results["compare_sets"] = {label: str(path) for label, path in paths.items()}
        for arch, seeds in _compare_runs(pipeline).items():
            for seed in seeds:
                for label, path in paths.items():
                    ticket(arch, "prac-imp", seed, manifest_path=path, label=f"compare-{label}", controls=False)
    for variant in pipeline.ablation_runs:  # PrAC-IMP with one part changed, on the building architecture
        for seed in pipeline.seeds:
            try:
                ticket(pipeline.arch, "prac-imp", seed, manifest_path=manifest if variant.fixed_set else None,
                       label=variant.label, controls=False, imp=variant.imp, selection=variant.selection)
            except EmptySelectionError as exc:
                # A variant whose rule selects nothing (CET alone once no example is forgotten) cannot go on: that is
                # its result, reported as such, and the other variants still run.
                log.warning("pipeline %s: %s seed %s stopped: %s", pipeline.name, variant.label, seed, exc)
                progress_log.finish(skipped=True)
                results.setdefault("ablation_stopped", []).append({"variant": variant.name, "seed": seed,
                                                                   "reason": str(exc)})
    return results


def _compare_runs(pipeline: Pipeline) -> dict[str, tuple[int, ...]]:
    """The architectures the compared sets are tried on, with the seeds full-data IMP ran there."""
    return {arch: pipeline.seeds if arch == pipeline.arch else pipeline.transfer_seed_list
            for arch in dict.fromkeys((pipeline.arch, *pipeline.transfer))}


def _transfer_stages(pipeline: Pipeline, layout: PipelineLayout, manifest: Path, results: dict, ticket,
                     imp_seeds_in_lockstep) -> None:
    """Stages 3 and 4: the sets reused on the ``transfer`` architectures (see the module)."""
    # The sets reused on other architectures: PrAC-IMP's own last set (the paper's CEP, first seed), build's
    # set (one-shot CEP), and a random subset as large as the first of them.
    sets = {"one-shot-set-transfer": manifest}
    if "prac-imp" in pipeline.methods:
        prac_run = layout.ticket_run(pipeline.arch, "prac-imp", pipeline.seeds[0])
        # the set selected after the last trained round (PrAC-IMP does not train its last round on a subset)
        sets = {"paper-set-transfer": prac_run.round(pipeline.imp.num_rounds - 1).prac_set, **sets}
    first = next(iter(sets.values()))
    random_manifest = layout.random_manifest
    if not random_manifest.exists():
        write_random_manifest(manifest, random_manifest, seed=pipeline.selection.random_seed,
                         size=read_manifest(first).num_selected)
    chosen = {label: path for label, path in {**sets, "random-subset": random_manifest}.items()
              if label in pipeline.transfer_set_names}
    results["sets"] = {label: str(path) for label, path in chosen.items()}
    for arch in pipeline.transfer:
        reused = arch == pipeline.arch and "imp" in pipeline.methods
        imp_seeds_in_lockstep(arch, [s for s in pipeline.transfer_seed_list if not (reused and s in pipeline.seeds)],
                              controls=False)
    for seed in pipeline.transfer_seed_list:
        for arch in pipeline.transfer:
            # The sanity-check controls run on the building architecture only (they double the cost). On the
            # building architecture itself (a random subset on it), its full-data IMP run is the one above.
            if not (arch == pipeline.arch and "imp" in pipeline.methods and seed in pipeline.seeds):
                ticket(arch, "imp", seed, controls=False)
            for label, path in chosen.items():
                ticket(arch, "prac-imp", seed, manifest_path=path, label=label, controls=False)
