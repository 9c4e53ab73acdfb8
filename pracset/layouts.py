"""The layout of a run directory: the one place that spells the name of every file a run writes.

:class:`StageFiles` holds one stage's files; :class:`TicketLayout` (``pracset
train`` and ``pracset ticket``), :class:`PipelineLayout` (``pracset run``) and
:class:`BuildLayout` (``pracset build``) name the rest. The directory's identity,
lock and life cycle are :class:`pracset.runs.RunDirectory`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from pracset.errors import ConfigError, RunFileError
from pracset.fileio import make_directory
from pracset.ledger import IterationLedger
from pracset.runfiles import is_count, is_number, kind, read_json, shown

#: Numbers of an epoch's metrics (``final`` and every ``history`` row) that the run reads back.
_EPOCH_NUMBERS = ("lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds", "mask_distance")
#: Counts of a stage's metrics (``None`` allowed where a stage has none, e.g. no Early-Bird stop).
_STAGE_COUNTS = ("epochs", "epochs_run", "examples", "set_size", "next_set", "cep", "early_bird_epoch", "packed_with")


def check_metrics(value: Any, path: Path) -> dict:
    """``value`` if it has the structure :meth:`pracset.runs.RunDirectory.complete_stage` writes to
    ``metrics.json``, else a one-line :class:`~pracset.errors.RunFileError` naming ``path`` and what is wrong.

    An object with ``final`` (the last epoch's metrics: an object) and ``history`` (a list of such objects),
    whose epoch and step are non-negative integers and whose losses, accuracies, learning rate and seconds
    are numbers; the stage's counts are non-negative integers (or null) and its ``ledger`` row is one
    :meth:`~pracset.ledger.IterationLedger.from_dict` accepts. Other keys are kept as they are.
    """
    where = f"stage metrics {path}"
    if not isinstance(value, dict):
        raise RunFileError(f"{where} must be a JSON object, got {kind(value)}")
    history = value.get("history", [])
    if not isinstance(history, list):
        raise RunFileError(f"{where}: 'history' must be a list of epochs, got {kind(history)}")
    for label, epoch in [("final", value.get("final")), *((f"history[{i}]", h) for i, h in enumerate(history))]:
        if not isinstance(epoch, dict):
            raise RunFileError(f"{where}: '{label}' must be an object of an epoch's metrics, got {kind(epoch)}")
        for key in ("epoch", "step"):
            if key in epoch and not is_count(epoch[key]):
                raise RunFileError(f"{where}: {label}.{key} must be a non-negative integer, got {shown(epoch[key])}")
        for key in _EPOCH_NUMBERS:
            if epoch.get(key) is not None and not is_number(epoch[key]):
                raise RunFileError(f"{where}: {label}.{key} must be a number, got {shown(epoch[key])}")
    for key in _STAGE_COUNTS:
        if value.get(key) is not None and not is_count(value[key]):
            raise RunFileError(f"{where}: {key} must be a non-negative integer, got {shown(value[key])}")
    if "ledger" in value:
        IterationLedger.from_dict({"stages": {"this stage": value["ledger"]}}, where=where)
    return value


@dataclass(frozen=True)
class StageMetrics:
    """A finished stage's metrics: what its ``metrics.json`` holds, typed.

    Written by one constructor (:meth:`of_training`) whichever way the stage
    trained (eagerly or packed with others); :meth:`to_dict` is the file's
    JSON, :meth:`from_dict` reads one back (a checked one:
    :func:`check_metrics`). ``extra`` holds what a stage adds to its
    training's metrics (an IMP round's ``set_size``, ``next_set``, ``cep``,
    ``early_bird_epoch``); unknown keys of a file are kept there too.
    """

    stage: str
    final: dict
    history: list = field(default_factory=list)
    epochs: int | None = None
    epochs_run: int | None = None
    examples: int | None = None
    #: this stage's row of the run's ledger (``train_iterations``, ...)
    ledger: dict = field(default_factory=dict)
    #: the model count of the packed job it trained in (``None``: trained alone)
    packed_with: int | None = None
    extra: dict = field(default_factory=dict)

    _KEYS = ("stage", "final", "history", "epochs", "epochs_run", "examples", "ledger")

    @classmethod
    def of_training(cls, stage: str, history: list[dict], *, epochs: int, examples: int, ledger: IterationLedger,
                    packed_with: int | None = None, final: dict | None = None) -> "StageMetrics":
        """The metrics of a stage just trained: its per-epoch ``history``, the recipe's ``epochs``, the examples
        it trained on and its cost (the ``ledger`` row booked under ``stage``)."""
        last = dict(final if final is not None else (history[-1] if history else {}))
        return cls(stage, last, list(history), epochs, history[-1]["epoch"] if history else 0, examples,
                   ledger.to_dict()["stages"].get(stage, {}), packed_with)

    @classmethod
    def from_dict(cls, value: dict) -> "StageMetrics":
        """A ``metrics.json`` object (see :func:`check_metrics`) as a :class:`StageMetrics`."""
        rest = {k: v for k, v in value.items() if k not in cls._KEYS and k not in ("packed", "packed_with")}
        return cls(value.get("stage", ""), dict(value.get("final") or {}), list(value.get("history") or []),
                   value.get("epochs"), value.get("epochs_run"), value.get("examples"), dict(value.get("ledger") or {}),
                   value.get("packed_with"), rest)

    def to_dict(self) -> dict:
        """The JSON object written to ``metrics.json``."""
        out = {"stage": self.stage, "final": self.final, "history": self.history, "epochs": self.epochs,
               "epochs_run": self.epochs_run, "examples": self.examples}
        if self.packed_with is not None:
            out.update(packed=True, packed_with=self.packed_with)
        return {**out, "ledger": self.ledger, **self.extra}

    def with_extra(self, **values) -> "StageMetrics":
        """These metrics with what the stage adds (``set_size=...``, ...)."""
        return replace(self, extra={**self.extra, **values})

    def get(self, key: str, default=None):
        """A value the stage added (``extra``), e.g. ``early_bird_epoch``."""
        return self.extra.get(key, default)

    @property
    def test_accuracy(self) -> float | None:
        return self.final.get("test_accuracy")

    @property
    def train_iterations(self) -> int | None:
        return self.ledger.get("train_iterations")


@dataclass(frozen=True)
class StageFiles:
    """The files of one stage of a run (a training, an IMP round, a control): all in one directory."""

    name: str
    directory: Path

    @property
    def metrics(self) -> Path:
        """Written last: its presence marks the stage done."""
        return self.directory / "metrics.json"

    @property
    def metrics_log(self) -> Path:
        """One JSON line per epoch, written as the stage trains (``tail -f`` it to watch)."""
        return self.directory / "metrics.jsonl"

    @property
    def model(self) -> Path:
        return self.directory / "model.pt"

    @property
    def mask(self) -> Path:
        return self.directory / "mask.pt"

    @property
    def checkpoint(self) -> Path:
        return self.directory / "checkpoint.pt"

    @property
    def packed_checkpoint(self) -> Path:
        """This stage's slice of a packed job's checkpoint (:func:`pracset.train.packed.fit_packed`)."""
        return self.directory / "packed-checkpoint.pt"

    @property
    def ids(self) -> Path:
        """The example ids this stage trained on, when it trained on a subset (absent: the whole split)."""
        return self.directory / "ids.npy"

    @property
    def next_ids(self) -> Path:
        """PrAC-IMP: the set this round selected for the next one."""
        return self.directory / "next_ids.npy"

    @property
    def prac_set(self) -> Path:
        """PrAC-IMP: the set this round selected, as a manifest."""
        return self.directory / "prac-set.parquet"

    @property
    def forgetting(self) -> Path:
        return self.directory / "forgetting.npy"

    def create(self) -> Path:
        """Make the stage's directory: every stage directory is made here, never through a symbolic link
        (:func:`~pracset.fileio.make_directory`)."""
        return make_directory(self.directory)

    def read_metrics(self) -> dict | None:
        """The stage's metrics, or ``None`` while it is not done; one of another structure than the one
        :meth:`RunDirectory.complete_stage` writes is a one-line error naming it (:func:`check_metrics`)."""
        if not self.metrics.exists():
            return None
        return check_metrics(read_json(self.metrics, "run file"), self.metrics)


class TicketLayout:
    """The files of a ticket run (``pracset ticket``); a dense run (``pracset train``) is its ``dense`` stage.

    ::

        run.json                 what was asked (compared on resume)
        pracset.log              every log line while the run was open (:attr:`RunDirectory.log_path`)
        rewind.pt                the whole state (BN statistics included) at the rewind step
        round-RR/                IMP round RR (00 = dense): mask.pt, model.pt, metrics.json, [ids.npy, next_ids.npy]
        STAGE/ids.npy            the example ids a stage trained on, when it trained on a subset
        ticket-RR/               PrAC-IMP: round RR's mask trained on the full split
        control-STAGE-KIND/      a sanity-check control of STAGE's ticket
        dense-reference/         the full-data dense network tickets are judged against, when round 0 is not one
        STAGE/mask.pt, mask.json a stage's mask and its readable sparsity report (written by Mask.save)
        sparse/                  RigL / GraNet
        ledger.json              every training iteration and forward pass, per stage
        tickets.json             the summary; its presence marks the run finished
    """

    _ROUND = re.compile(r"round-(\d{2,})$")

    def __init__(self, root: str | Path):
        self.root = Path(root)

    rewind = property(lambda self: self.root / "rewind.pt")
    summary = property(lambda self: self.root / "tickets.json")
    tensorboard = property(lambda self: self.root / "tensorboard", doc="TensorBoard scalars, one folder per stage")

    @property
    def dense(self) -> StageFiles:
        """``pracset train``'s single stage: its files lie in the run's root."""
        return StageFiles("dense", self.root)

    def stage(self, name: str) -> StageFiles:
        """The stage called ``name`` (a directory below the root)."""
        return StageFiles(name, self.root / name)

    def round(self, r: int) -> StageFiles:
        return self.stage(f"round-{r:02d}")

    def ticket(self, r: int) -> StageFiles:
        return self.stage(f"ticket-{r:02d}")

    def control(self, of: StageFiles, kind: str) -> StageFiles:
        return self.stage(f"control-{of.name}-{kind}")

    @property
    def sparse(self) -> StageFiles:
        return self.stage("sparse")

    @property
    def pretrain(self) -> StageFiles:
        """IMP with ``manifest_use = "pretrain"`` (the Data-Diet protocol): the training up to the rewind point, on
        the manifest's set."""
        return self.stage("pretrain")

    @property
    def dense_reference(self) -> StageFiles:
        """A full-data, full-budget dense training to judge tickets against (when round 0 is not one)."""
        return self.stage("dense-reference")

    def probe_stage(self, r: int) -> str:
        """The ledger stage of round ``r``'s pruning probe."""
        return f"probe-{r:02d}"

    def rounds(self) -> Iterator[tuple[int, StageFiles]]:
        """The finished IMP rounds in this directory, in order."""
        found = []
        for path in self.root.iterdir() if self.root.is_dir() else ():
            match = self._ROUND.fullmatch(path.name)
            if match and (path / "metrics.json").exists():
                found.append(int(match.group(1)))
        return ((r, self.round(r)) for r in sorted(found))


class PipelineLayout:
    """The files of a pipeline run (``pracset run``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    record = property(lambda self: self.root / "pipeline.json")
    manifest = property(lambda self: self.root / "manifest.parquet")
    random_manifest = property(lambda self: self.root / "manifest-random.parquet")
    report_json = property(lambda self: self.root / "report.json")
    report_md = property(lambda self: self.root / "report.md")

    def ticket_run(self, arch: str, label: str, seed: int) -> TicketLayout:
        """Where one ticket method's run on ``arch`` with ``seed`` lives."""
        return TicketLayout(self.root / arch / f"{label}-s{seed}")

    def plot(self, name: str) -> Path:
        return self.root / f"{name}.png"


class BuildLayout:
    """The files of ``pracset build --out NAME.parquet``: the manifest, its statistics, and a work directory."""

    def __init__(self, manifest: str | Path):
        self.manifest = Path(manifest)
        if self.manifest.suffix != ".parquet":
            raise ConfigError(f"the manifest path must end in .parquet, got {self.manifest}")

    @property
    def statistics(self) -> Path:
        return self.manifest.with_name(self.manifest.name.removesuffix(".parquet") + ".stats.npz")

    @property
    def tensorboard(self) -> Path:
        """TensorBoard scalars of the build's training (``NAME.tensorboard/``), with ``--tensorboard``."""
        return self.manifest.with_name(self.manifest.name.removesuffix(".parquet") + ".tensorboard")

    @property
    def dense_model(self) -> Path:
        """The trained dense model's weights (``NAME.dense.pt``), kept for the probe and later analyses."""
        return self.manifest.with_name(self.manifest.name.removesuffix(".parquet") + ".dense.pt")

    @property
    def work(self) -> Path:
        """Holds the training checkpoint while the build runs; removed when the manifest is written."""
        return self.manifest.with_name(self.manifest.name + ".partial")

    @property
    def dense(self) -> StageFiles:
        """The dense training's files (its checkpoint) in the work directory."""
        return StageFiles("dense", self.work)
