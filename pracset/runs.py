"""Run directories: one owner for an output directory's identity, lock, stages, temporaries and file names.

Every command that writes a run (``train``, ``build``, ``ticket``, ``run``)
opens its output through :class:`RunDirectory`, so they all behave alike:

* the directory is locked first (:class:`~pracset.fileio.DirectoryLock`), so a
  second process is told about the lock, not about anything else, and a
  finished run is found before any data is loaded;
* the identity record (``run.json``: what was asked) is compared with the
  new request, and a difference is refused with every changed setting and
  both values named (``train.lr: 0.1 -> 0.05``);
* an unfinished run continues only with ``resume``; a directory of other
  files is refused; temporaries of killed writes are removed;
* a stage is done once its ``metrics.json`` exists; its cost is booked in the
  run's ledger *before* that file is written, so a kill in between never
  loses or double-counts work.

The layout classes (:class:`StageFiles`, :class:`TicketLayout`,
:class:`PipelineLayout`, :class:`BuildLayout`) name every file a run writes;
no other module spells a run's file names.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from pracset.config import upgrade_keys
from pracset.errors import ConfigError, DataError
from pracset.fileio import (DirectoryLock, atomic_write_json, check_output_directory, holds_only_temporaries,
                            locked_output_directory, remove_temporaries)
from pracset.train.ledger import IterationLedger

_ABSENT = object()
_MAX_SHOWN = 8  # changed settings named in one refusal (the message stays one readable line)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key, inner in value.items():
            out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def describe_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Every setting that differs, as ``"train.lr: 0.1 -> 0.05"`` (nested tables flattened, sorted by name).

    A setting present on one side only shows ``(absent)`` on the other.
    """
    old, new = _flatten(before), _flatten(after)
    changes = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if a != b:
            show = lambda v: "(absent)" if v is _ABSENT else json.dumps(v, default=str)  # noqa: E731
            changes.append(f"{key}: {show(a)} -> {show(b)}")
    return changes


def refuse_changed(what: str, before: Mapping[str, Any], after: Mapping[str, Any], advice: str) -> None:
    """Raise a one-line :class:`ConfigError` naming every changed setting, unless nothing changed."""
    changes = describe_changes(before, after)
    if changes:
        shown = changes[:_MAX_SHOWN] + ([f"and {len(changes) - _MAX_SHOWN} more"] if len(changes) > _MAX_SHOWN else [])
        raise ConfigError(f"{what} (changed {'; '.join(shown)}); {advice}")


# ----------------------------------------------------------------------------- file names

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

    def read_metrics(self) -> dict | None:
        """The stage's metrics, or ``None`` while it is not done."""
        if not self.metrics.exists():
            return None
        return json.loads(self.metrics.read_text())


class TicketLayout:
    """The files of a ticket run (``pracset ticket``); a dense run (``pracset train``) is its ``dense`` stage.

    ::

        run.json                 what was asked (compared on resume)
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


def data_check(dataset: Any) -> dict | None:
    """What identifies a loaded data set's training files cheaply: its size and, when streamed, its listing digest."""
    train = getattr(dataset, "train", None)
    if train is None:
        return None
    # names, sizes and labels, not modification times: a run resumed on a copy of the same files continues
    key = train.cache_key(times=False) if callable(getattr(train, "cache_key", None)) else None
    return {"train_examples": len(train), "listing": key}


# ----------------------------------------------------------------------------- the directory itself

class RunDirectory:
    """An output directory owned by one run; use it as a context manager, then :meth:`claim` it.

    ``identity`` is what makes two requests the same run (compared on every
    open); ``finished`` is the file whose presence marks the run finished
    (relative to the root; ``None`` for a work directory that is removed
    instead); ``record`` the identity record's name.

    Entering creates and locks the directory, then checks it (see the module
    docstring) without writing anything: :attr:`status` is ``"new"``,
    ``"resume"`` or ``"done"``. A command can then return at once on
    ``"done"``, or load its data, and calls :meth:`claim` before its first
    write. A refusal, or a failure before :meth:`claim`, leaves no trace: a
    directory this call created is removed again.
    """

    def __init__(self, root: str | Path, identity: Mapping[str, Any], *, resume: bool, finished: str | None,
                 record: str = "run.json", kind: str = "run", check_on_enter: bool = True):
        self.root = Path(root)
        self.check_on_enter = check_on_enter
        self.identity = dict(identity)
        self.resume = resume
        self.finished = None if finished is None else self.root / finished
        self.record = self.root / record
        self.kind = kind
        self.status = "new"
        self.ledger = IterationLedger()
        self._locked = None

    def __enter__(self) -> "RunDirectory":
        self._locked = locked_output_directory(self.root)
        self._locked.__enter__()
        try:
            if self.check_on_enter:
                self.check()
        except BaseException as exc:
            self._locked.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._locked.__exit__(*exc)

    def check(self) -> None:
        """Compare the identity record and set :attr:`status` (entering does it unless ``check_on_enter=False``)."""
        if self.record.exists():
            try:
                previous = json.loads(self.record.read_text())
            except (OSError, json.JSONDecodeError):
                raise ConfigError(f"{self.record} is unreadable; choose another --out") from None
            if not isinstance(previous, dict) or "identity" not in previous:
                raise ConfigError(f"{self.root} holds a run written by an older pracset; choose another --out")
            # a run recorded before a setting was renamed is compared under the new name
            refuse_changed(f"{self.root} holds another run", upgrade_keys(previous["identity"]), self.identity,
                           "choose another --out")
            if self.finished is not None and self.finished.exists():
                self.status = "done"
            elif not self.resume:
                raise ConfigError(f"{self.root} holds an unfinished {self.kind}; pass --resume to continue it "
                                  "or choose another --out")
            else:
                self.status = "resume"
        elif not holds_only_temporaries(self.root, also=(DirectoryLock.NAME,)):
            raise ConfigError(f"{self.root} is not empty and holds no pracset {self.kind}; choose another --out")
        remove_temporaries(self.root)  # left by a killed run; the lock makes this directory ours
        self.ledger = IterationLedger.load(self.ledger_path) if self.ledger_path.exists() else IterationLedger()

    def claim(self, extra_record: Mapping[str, Any] | None = None, *, data: Any = None) -> None:
        """Write the identity record (with ``extra_record``) of a new run: from here on the directory is this run's.

        With ``data`` (the loaded data set), the record keeps what identifies
        its files (:func:`data_check`) and a resumed run refuses data that
        changed since it started: a streamed folder with files added or
        removed would otherwise continue with statistics of another size.
        """
        check = data_check(data) if data is not None else None
        if self.status == "new" and not self.record.exists():
            from pracset.device import environment  # here: runs.py stays free of torch at import

            atomic_write_json(self.record, {"identity": self.identity, "environment": environment(),
                                            **({"data_check": check} if check else {}), **(extra_record or {})})
        elif check:
            try:
                previous = json.loads(self.record.read_text()).get("data_check")
            except (OSError, json.JSONDecodeError, AttributeError):
                previous = None
            if previous and previous != check:
                changes = "; ".join(describe_changes(previous, check))
                raise DataError(f"the data changed since {self.root} started ({changes}); restore it, or choose "
                                "another --out")

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.json"

    def finished_stage_metrics(self, stage: StageFiles) -> dict | None:
        """The metrics of a finished stage, else ``None``; removes the checkpoint a kill after it left behind."""
        metrics = stage.read_metrics()
        if metrics is not None:  # checkpoints left by a kill after the stage finished
            stage.checkpoint.unlink(missing_ok=True)
            stage.packed_checkpoint.unlink(missing_ok=True)
        return metrics

    def book_and_save_ledger(self, ledger: IterationLedger) -> None:
        """Book ``ledger``'s stages into the run's (replacing any earlier entry of a stage) and write ``ledger.json``.

        Replacing, not adding, is what makes a repeated stage (after a kill) count once.
        """
        self.ledger.stages.update(ledger.stages)
        self.ledger.save(self.ledger_path)

    def complete_stage(self, stage: StageFiles, metrics: dict, ledger: IterationLedger) -> dict:
        """Book the stage's cost, then write its ``metrics.json`` (which marks it done) and drop its checkpoint."""
        self.book_and_save_ledger(ledger)
        atomic_write_json(stage.metrics, metrics)
        stage.checkpoint.unlink(missing_ok=True)
        stage.packed_checkpoint.unlink(missing_ok=True)
        return metrics


def check_output_parent(path: str | Path) -> None:
    """Refuse an output file whose folder is, or lies below, something other than a directory."""
    check_output_directory(Path(path).parent)


__all__ = ["BuildLayout", "PipelineLayout", "RunDirectory", "StageFiles", "TicketLayout", "check_output_parent",
           "describe_changes", "refuse_changed"]
