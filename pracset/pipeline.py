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
5. ``report.json``, ``report.md`` and the plots.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from pracset.build import BuildConfig, build_manifest
from pracset.config import ConfigBase, from_dict, option, require, to_dict
from pracset.data import DataConfig, ImageDataset, load_dataset
from pracset.errors import ConfigError
from pracset.manifest import read_manifest
from pracset.manifest.assemble import write_random_manifest
from pracset.mask import Mask
from pracset.models import build_model, check_model_name
from pracset.report import write_report
from pracset.runs import PipelineLayout, RunDirectory
from pracset.selection import SelectionConfig, check_size
from pracset.sparse.early_bird import EarlyBirdConfig
from pracset.tickets import (METHOD_SECTIONS, TICKET_METHODS, IMPConfig, TicketSettings, find_tickets, ticket_settings,
                             train_imp_seeds_packed)
from pracset.tickets.registry import SHARED_SECTIONS
from pracset.tickets.methods import DynamicSparse
from pracset.tomlfiles import MAX_TOML_DEPTH, load_toml, parse_toml, toml_depth  # noqa: F401  (load_toml: the CLI's)
from pracset.train.config import TrainConfig
from pracset.train.run import check_loader_settings, input_spec
from pracset.train.tensorboard import require_tensorboard

log = logging.getLogger(__name__)

#: The ticket methods, and the dynamic sparse ones again as METHOD-prac: trained on the PrAC set.
PIPELINE_METHODS = (*TICKET_METHODS.names(),
                    *(f"{name}-prac" for name, m in TICKET_METHODS.items() if isinstance(m, DynamicSparse)))


@dataclass(frozen=True)
class ReportConfig(ConfigBase):
    """How the report judges tickets."""

    tolerance: float = option(0.003, "with one seed, a PrAC ticket 'matches' the full-data ticket within this "
                                     "accuracy (with several seeds: within one standard deviation)")
    plots: bool = option(True, "draw the PNG plots")
    sparsity_axis: str = option("auto", "the plots' sparsity axis: linear (percent of weights pruned), log (percent "
                                        "of weights remaining on a log axis, as lottery-ticket papers plot it), or "
                                        "auto (log once a run goes past 90% sparsity)",
                                choices=("auto", "linear", "log"), added_later=True)


#: The sets the transfer runs train on (besides full data): PrAC-IMP's own, the build's, a random one.
TRANSFER_SETS = ("paper-set-transfer", "one-shot-set-transfer", "random-subset")


@dataclass(frozen=True)
class Pipeline:
    """A whole experiment, as read from a TOML file."""

    name: str
    arch: str
    data: DataConfig
    train: TrainConfig = TrainConfig()
    build: BuildConfig = BuildConfig()
    selection: SelectionConfig = SelectionConfig()
    imp: IMPConfig = IMPConfig()
    early_bird: EarlyBirdConfig = EarlyBirdConfig()
    #: each ticket method's own table (``rigl``, ``granet``, ...: :data:`~pracset.tickets.METHOD_SECTIONS`) given
    method_settings: Mapping[str, Any] = field(default_factory=dict)
    report: ReportConfig = ReportConfig()
    methods: tuple[str, ...] = ("imp", "prac-imp")
    transfer: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0,)
    transfer_seeds: tuple[int, ...] | None = None
    transfer_sets: tuple[str, ...] | None = None  # None: every set of TRANSFER_SETS
    controls_on: tuple[str, ...] | None = None
    description: str = ""
    tensorboard: bool = False  # an output option, not part of the run's identity (to_dict leaves it out)

    def __post_init__(self) -> None:
        # The name becomes the default output folder (runs/NAME): it must not reach outside it.
        require(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name) is not None,
                f"name must be a plain name (letters, digits, '.', '_', '-'; no '/'), got {self.name!r}")
        unknown = [m for m in self.methods if m not in PIPELINE_METHODS]
        require(not unknown, f"unknown method {unknown[0] if unknown else ''!r} in methods; valid names: "
                             f"{', '.join(PIPELINE_METHODS)}")
        require(len(self.seeds) > 0, "seeds must name at least one seed")
        require(self.transfer_seeds is None or set(self.transfer_seeds) <= set(self.seeds),
                "transfer_seeds must be some of the seeds")
        odd_sets = [s for s in (self.transfer_sets or ()) if s not in TRANSFER_SETS]
        require(not odd_sets, f"unknown transfer set {odd_sets[0] if odd_sets else ''!r}; valid names: "
                              f"{', '.join(TRANSFER_SETS)}")
        require(self.transfer_sets is None or len(self.transfer_sets) > 0, "transfer_sets must name at least one set")
        require("paper-set-transfer" not in (self.transfer_sets or ()) or "prac-imp" in self.methods,
                "transfer_sets names paper-set-transfer, the set of PrAC-IMP's last round: add prac-imp to methods")
        odd = [m for m in (self.controls_on or ()) if m not in self.methods]
        require(not odd, f"controls_on names {odd[0] if odd else ''!r}, which is not in methods")
        check_model_name(self.arch)
        for arch in self.transfer:
            check_model_name(arch)

    @property
    def transfer_set_names(self) -> tuple[str, ...]:
        """The sets the transfer runs train on: ``transfer_sets``, else all of them (PrAC-IMP's own only with it)."""
        available = [s for s in TRANSFER_SETS if s != "paper-set-transfer" or "prac-imp" in self.methods]
        return tuple(s for s in available if self.transfer_sets is None or s in self.transfer_sets)

    @property
    def transfer_seed_list(self) -> tuple[int, ...]:
        """The seeds the transfer runs use (all seeds unless ``transfer_seeds`` names fewer)."""
        return self.seeds if self.transfer_seeds is None else self.transfer_seeds

    def to_dict(self) -> dict:
        out = {"name": self.name, "arch": self.arch, "methods": list(self.methods), "transfer": list(self.transfer),
               "seeds": list(self.seeds), "description": self.description,
               "transfer_seeds": None if self.transfer_seeds is None else list(self.transfer_seeds),
               "controls_on": None if self.controls_on is None else list(self.controls_on)}
        if self.transfer_sets is not None:  # recorded only when given: older runs keep their identity
            out["transfer_sets"] = list(self.transfer_sets)
        for key in _SECTIONS:
            if key in METHOD_SECTIONS:
                value = self.method_settings.get(key)
                if value is None and METHOD_SECTIONS[key].recorded_when_given:
                    continue  # a table added later: recorded only when given, so older runs keep their identity
            else:
                value = getattr(self, key)
            out[key] = to_dict(value) if value is not None else None
        out["data"] = self.data.identity()  # the decoding workers are not part of what the run is
        return out

    @property
    def ticket_settings(self) -> TicketSettings:
        """The settings every ticket method of this pipeline runs with."""
        return ticket_settings(imp=self.imp, early_bird=self.early_bird, selection=self.selection,
                               **self.method_settings)


#: The tables of a pipeline file: the run's, the shared ticket settings, each ticket method's own (from the
#: registry), the report's.
_SECTIONS = {"data": DataConfig, "train": TrainConfig, "build": BuildConfig, **SHARED_SECTIONS,
             **{section: method.config_class for section, method in METHOD_SECTIONS.items()},
             "report": ReportConfig}
_TOP = {"name": str, "arch": str, "methods": list, "transfer": list, "seeds": list, "transfer_seeds": list,
        "transfer_sets": list,
        "description": str, "controls_on": list, "tensorboard": bool}


def load_pipeline(path: str | Path, *, data_dir: str | None = None, overrides: Sequence[str] = ()) -> Pipeline:
    """Read and validate a pipeline file; ``data_dir`` overrides ``[data] data_dir``.

    ``overrides`` are ``KEY=VALUE`` strings (``train.lr=0.05``, ``seeds=[0, 1]``): the value is read as a
    TOML value (a bare word that is not one is a string), and checked like the file's own values.
    """
    raw = load_toml(path, what="pipeline file")
    for item in overrides:
        apply_override(raw, item)
    return pipeline_from_dict(raw, where=str(path), data_dir=data_dir)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``SECTION.KEY=VALUE`` (or a top-level ``KEY=VALUE``) in a parsed pipeline table."""
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts) or len(parts) > 2:
        raise ConfigError(f"--set takes KEY=VALUE or SECTION.KEY=VALUE, got {item!r}")
    try:
        value = parse_toml(f"v = {text.strip()}", f"--set {key.strip()}")["v"]
    except ConfigError:
        if toml_depth(f"v = {text.strip()}") > MAX_TOML_DEPTH:
            raise
        value = text.strip()  # a bare word: a string (e.g. train.optimizer=adamw)
    table = raw
    if len(parts) == 2:
        table = raw.setdefault(parts[0], {})
        if not isinstance(table, dict):
            raise ConfigError(f"--set {item}: {parts[0]} is not a table")
    table[parts[-1]] = value


def pipeline_from_dict(raw: dict[str, Any], *, where: str = "pipeline", data_dir: str | None = None) -> Pipeline:
    """Validate a parsed pipeline table (``where`` names it in errors); ``data_dir`` overrides ``[data] data_dir``."""
    unknown = sorted(set(raw) - set(_SECTIONS) - set(_TOP))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join([*_TOP, *_SECTIONS])}")
    for key, kind in _TOP.items():
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{where}: {key} must be a {kind.__name__}, got {raw[key]!r}")
    for key in ("name", "arch", "data"):
        if key not in raw:
            raise ConfigError(f"{where}: missing key {key!r}")
    sections = {}
    for key, cls in _SECTIONS.items():
        if key in raw:
            if not isinstance(raw[key], dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            values = dict(raw[key])
            if key == "data" and data_dir is not None:
                values["data_dir"] = data_dir
            try:
                sections[key] = from_dict(cls, values, where=key)
            except ConfigError as exc:  # name the file, and the table where the message does not
                text = str(exc)
                raise ConfigError(f"{where}: {text}" if f"{key}." in text else f"{where}: [{key}] {text}") from None
    if data_dir is not None and "data" in sections and sections["data"].data_dir != data_dir:
        sections["data"] = replace(sections["data"], data_dir=data_dir)
    for key in ("seeds", "transfer_seeds"):
        if key in raw and not all(isinstance(s, int) and not isinstance(s, bool) for s in raw[key]):
            raise ConfigError(f"{where}: seeds must be integers, got {raw[key]!r}")
    for key in ("methods", "transfer", "controls_on", "transfer_sets"):
        if key in raw and not all(isinstance(s, str) for s in raw[key]):
            raise ConfigError(f"{where}: {key} must be a list of names, got {raw[key]!r}")
    try:
        return Pipeline(name=raw["name"], arch=raw["arch"], methods=tuple(raw.get("methods", ("imp", "prac-imp"))),
                        transfer=tuple(raw.get("transfer", ())), seeds=tuple(raw.get("seeds", (0,))),
                        transfer_seeds=tuple(raw["transfer_seeds"]) if "transfer_seeds" in raw else None,
                        transfer_sets=tuple(raw["transfer_sets"]) if "transfer_sets" in raw else None,
                        controls_on=tuple(raw["controls_on"]) if "controls_on" in raw else None,
                        description=raw.get("description", ""), tensorboard=raw.get("tensorboard", False),
                        method_settings={k: v for k, v in sections.items() if k in METHOD_SECTIONS},
                        **{k: v for k, v in sections.items() if k not in METHOD_SECTIONS})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


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


def _ticket_imp(pipeline: Pipeline, controls: bool) -> IMPConfig:
    """The IMP settings of a ticket run: the report's curves need every round's ticket trained on the full split."""
    return replace(pipeline.imp, controls=pipeline.imp.controls and controls, evaluate="every-round")


def _run_stages(pipeline: Pipeline, layout: PipelineLayout, dataset: ImageDataset, *, device: torch.device,
                progress: bool) -> dict:
    manifest = layout.manifest
    board = layout.root / "tensorboard" if pipeline.tensorboard else None
    build_manifest(pipeline.data, pipeline.arch, manifest, train=pipeline.train, build=pipeline.build,
                   selection=pipeline.selection, early_bird=pipeline.early_bird, device=device, resume=True,
                   progress=progress, dataset=dataset, tensorboard=pipeline.tensorboard)
    results: dict[str, Any] = {"manifest": str(manifest), "runs": []}
    progress_log = StageProgress(pipeline.name, len(pipeline.seeds) * len(pipeline.methods)
                                 + len(pipeline.transfer_seed_list) * len(pipeline.transfer)
                                 * (1 + len(pipeline.transfer_set_names)))

    def ticket(arch: str, method: str, seed: int, *, manifest_path: Path | None = None, label: str | None = None,
               controls: bool = True) -> dict:
        label = label or method
        directory = layout.ticket_run(arch, label, seed).root
        base = method.removesuffix("-prac")
        train = replace(pipeline.train, seed=seed)
        progress_log.start(f"{arch} {label} seed {seed}")
        imp = _ticket_imp(pipeline, controls)
        summary = find_tickets(base, pipeline.data, arch, directory, train=train, imp=imp,
                               early_bird=pipeline.early_bird, **pipeline.method_settings,
                               selection=pipeline.selection, manifest=manifest_path, device=device,
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
                               imp=_ticket_imp(pipeline, controls), device=device, dataset=dataset,
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
    if not pipeline.transfer:
        return results
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
    return results
