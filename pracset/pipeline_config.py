"""What a pipeline file says: :class:`Pipeline`, read and checked from TOML (:func:`load_pipeline`), with
``--set`` overrides; :mod:`pracset.pipeline` runs it (its docstring shows the file's tables)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from pracset.ablate import AblateConfig, AblationRun
from pracset.build import BuildConfig
from pracset.compare import CompareConfig
from pracset.config import ConfigBase, from_dict, option, require, to_dict
from pracset.data import DataConfig
from pracset.errors import ConfigError
from pracset.models import check_model_name
from pracset.selection import SelectionConfig
from pracset.sparse.early_bird import EarlyBirdConfig
from pracset.tickets import METHOD_SECTIONS, TICKET_METHODS, IMPConfig, TicketSettings, ticket_settings
from pracset.tickets.methods import DynamicSparse
from pracset.tickets.registry import SHARED_SECTIONS
from pracset.tomlfiles import MAX_TOML_DEPTH, load_toml, parse_toml, toml_depth
from pracset.train.config import TrainConfig


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
    compare: CompareConfig | None = None  # [compare]: selection rules compared by their tickets (pracset.compare)
    ablate: AblateConfig | None = None  # [ablate]: PrAC-IMP with one part changed at a time (pracset.ablate)
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
        if self.compare is not None:
            require("imp" in self.methods, "compare sets every rule's tickets beside full-data IMP's: add imp to "
                                           "methods")
            missing = sorted(self.compare.needed_scores() - set(self.build.scores))
            require(not missing, f"compare ranks by {', '.join(missing)}: add it to [build] scores")
        if self.ablate is not None:
            require({"imp", "prac-imp"} <= set(self.methods), "ablate sets PrAC-IMP's variants beside PrAC-IMP and "
                                                              "full-data IMP: add imp and prac-imp to methods")
            require(len(self.ablation_runs) > 0, "ablate: every variant equals the pipeline's PrAC-IMP")
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

    @property
    def ablation_runs(self) -> list[AblationRun]:
        """The ``[ablate]`` variants' settings (:meth:`~pracset.ablate.AblateConfig.runs`); none without the table."""
        return self.ablate.runs(self.imp, self.selection) if self.ablate is not None else []

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
                if value is None and key in ("compare", "ablate"):
                    continue  # a table added later: recorded only when given
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
             "report": ReportConfig, "compare": CompareConfig, "ablate": AblateConfig}
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


__all__ = ["PIPELINE_METHODS", "Pipeline", "ReportConfig", "TRANSFER_SETS", "apply_override", "load_pipeline",
           "pipeline_from_dict"]
