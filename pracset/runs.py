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
  files is refused; temporaries of killed writes (pracset's names only) are
  removed; a symbolic link to a folder anywhere in it is refused;
* a stage is done once its ``metrics.json`` exists; its cost is booked in the
  run's ledger *before* that file is written, so a kill in between never
  loses or double-counts work.

The layout classes (:class:`StageFiles`, :class:`TicketLayout`,
:class:`PipelineLayout`, :class:`BuildLayout`, in :mod:`pracset.layouts`,
re-exported here) name every file a run writes; no other module spells a
run's file names.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from pracset.config import upgrade_keys
from pracset.device import environment
from pracset.distributed import is_main
from pracset.errors import ConfigError, DataError
from pracset.fileio import (DirectoryLock, atomic_write_json, check_output_directory, find_linked_folder,
                            holds_only_temporaries, linked_folder_message, locked_output_directory,
                            remove_temporaries, remove_temporaries_of, require_regular_file)
from pracset import runfiles
from pracset.layouts import BuildLayout, PipelineLayout, StageFiles, StageMetrics, TicketLayout  # noqa: F401  (re-exported)
from pracset.ledger import IterationLedger

_ABSENT = object()
_OPEN_RUNS: list["RunDirectory"] = []  # the run directories this process has open, outermost first
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


# ----------------------------------------------------------------------------- run files

def read_json(path: Path, what: str = "run file") -> Any:
    """A JSON file of a run (:func:`pracset.runfiles.read_json`): any read error is one line naming the file."""
    return runfiles.read_json(path, what)


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
    directory this call created is removed again. A run that fails (an
    exception: a diverged stage, a full disk) after claiming a directory it
    found empty but before any result (no stage finished, no output recorded,
    in it or in a run inside it) removes what it wrote, so the same command
    with corrected settings is accepted; an interrupted one (Ctrl-C, a kill)
    keeps its checkpoint for ``--resume``. Nothing in the directory is read
    or written through a symbolic link to a folder: one is refused on opening
    (:func:`~pracset.fileio.find_linked_folder`) and on every write
    (:func:`~pracset.fileio.make_directory`).
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
        self.holds_results = False  # a stage of it (or of a run inside it) finished, or it wrote outputs
        self._fresh = False  # this process wrote the identity record into a directory that held nothing
        self._previous: dict = {}  # the identity record found on opening
        self._locked = None
        self._log_handler: logging.Handler | None = None

    def __enter__(self) -> "RunDirectory":
        self._locked = locked_output_directory(self.root)
        self._locked.__enter__()
        try:
            if self.check_on_enter:
                self.check()
        except BaseException as exc:
            self._locked.__exit__(type(exc), exc, exc.__traceback__)
            raise
        _OPEN_RUNS.append(self)
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        _OPEN_RUNS.remove(self)
        self._close_log()
        try:
            # A failure (not an interruption: Ctrl-C keeps the checkpoint for --resume) before any result
            if exc_type is not None and issubclass(exc_type, Exception) and self._fresh and not self.holds_results:
                self._roll_back()
        finally:
            self._locked.__exit__(exc_type, exc, traceback)

    @property
    def log_path(self) -> Path:
        """``pracset.log``: every log line of pracset (per-epoch lines too) from :meth:`claim` until the run
        closes, appended (runs open together, as seeds in lockstep, each get every line)."""
        return self.root / "pracset.log"

    def _open_log(self) -> None:
        """Copy pracset's log into :attr:`log_path` (rank 0; runs, not a build's work directory): every level
        the ``pracset`` logger lets through (the command line lets everything through, per-epoch lines too,
        and shows its console only its own level). The file is opened without following a link: a stranger's
        ``pracset.log`` that is a link is refused, never appended to."""
        if self._log_handler is not None or self.finished is None or not is_main():
            return
        try:
            # O_NONBLOCK: a FIFO there fails at once (ENXIO) instead of waiting for a reader forever
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ConfigError(f"{self.log_path} is a symbolic link; pracset never writes through one") from None
            if exc.errno == errno.ENXIO:
                raise ConfigError(f"{self.log_path} is a FIFO, not a regular file; pracset writes its log only to "
                                  "one") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{self.log_path} is not a regular file; pracset writes its log only to one")
        os.set_blocking(fd, True)
        handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("pracset").addHandler(handler)
        self._log_handler = handler

    def _close_log(self) -> None:
        if self._log_handler is None:
            return
        logging.getLogger("pracset").removeHandler(self._log_handler)
        self._log_handler.close()
        self._log_handler = None

    def _roll_back(self) -> None:
        """Remove what this run wrote into the directory it found empty, as it failed before any result (a
        diverged first stage, a full disk): the same command with corrected settings then finds no other run.

        The directory held nothing but temporaries when it was claimed and the lock kept other pracset runs
        out, so everything in it is this run's; the lock itself goes with the directory on exit.
        """
        try:
            entries = list(self.root.iterdir()) if is_main() else []  # rank 0 wrote everything (torch.distributed)
        except OSError:  # the failure being reported matters more than a clean-up
            entries = []
        for entry in entries:
            try:
                if entry.name == DirectoryLock.NAME:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            except OSError:  # the failure being reported matters more than an incomplete clean-up
                pass

    def _hold_results(self) -> None:
        """Mark this run and the open runs it lies in (a pipeline's) as holding results: never rolled back."""
        here = Path(os.path.abspath(self.root))
        for run in _OPEN_RUNS:
            there = Path(os.path.abspath(run.root))
            if there == here or there in here.parents:
                run.holds_results = True

    def check(self) -> None:
        """Compare the identity record and set :attr:`status` (entering does it unless ``check_on_enter=False``)."""
        link = find_linked_folder(self.root)  # before anything in it is read, written or removed
        if link is not None:
            raise ConfigError(linked_folder_message(link))
        if self.record.exists():
            require_regular_file(self.record, "run record")  # before it is opened: a FIFO would block forever
            try:
                previous = json.loads(self.record.read_bytes())
            except (OSError, ValueError):
                raise ConfigError(f"{self.record} is unreadable; choose another --out") from None
            if not isinstance(previous, dict) or "identity" not in previous:
                raise ConfigError(f"{self.root} holds a run written by an older pracset; choose another --out")
            self._previous = previous
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
            self._previous = {"identity": self.identity, "environment": environment(),
                              **({"data_check": check} if check else {}), **(extra_record or {})}
            atomic_write_json(self.record, self._previous)
            self._fresh = True
        elif check:
            require_regular_file(self.record, "run record")
            try:
                previous = json.loads(self.record.read_bytes()).get("data_check")
            except (OSError, ValueError, AttributeError):
                previous = None
            if previous and previous != check:
                changes = "; ".join(describe_changes(previous, check))
                raise DataError(f"the data changed since {self.root} started ({changes}); restore it, or choose "
                                "another --out")
        self._open_log()  # after the record: a directory never holds a log without the run it belongs to

    def check_outputs(self, paths: Sequence[Path]) -> None:
        """Refuse, naming it, a file among ``paths`` (this run's outputs outside its directory, e.g. a build's
        statistics beside its manifest) that exists but that this run's record does not say it wrote: it is
        someone else's, and pracset overwrites only its own. Temporaries a killed write of them left are removed."""
        mine = set(self._previous.get("outputs") or ())
        for path in paths:
            if (path.exists() or path.is_symlink()) and path.name not in mine:
                raise ConfigError(f"{path} exists and pracset did not write it (no unfinished build here records "
                                  "it); move it away or choose another --out")
            remove_temporaries_of(path)

    def record_outputs(self, paths: Sequence[Path]) -> None:
        """Record (in the identity record) that this run writes ``paths`` now, before writing them: a resumed run
        may then overwrite them (:meth:`check_outputs`), and the run is never rolled back once they may exist."""
        self._hold_results()
        names = sorted(set(self._previous.get("outputs") or ()) | {Path(p).name for p in paths})
        if names != self._previous.get("outputs"):
            self._previous = {**self._previous, "outputs": names}
            atomic_write_json(self.record, self._previous)

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.json"

    def finished_stage_metrics(self, stage: StageFiles) -> StageMetrics | None:
        """The metrics of a finished stage, else ``None``; removes the checkpoint a kill after it left behind."""
        metrics = stage.read_metrics()
        if metrics is None:
            return None
        stage.checkpoint.unlink(missing_ok=True)  # checkpoints left by a kill after the stage finished
        stage.packed_checkpoint.unlink(missing_ok=True)
        return StageMetrics.from_dict(metrics)

    def book_and_save_ledger(self, ledger: IterationLedger) -> None:
        """Book ``ledger``'s stages into the run's (replacing any earlier entry of a stage) and write ``ledger.json``.

        Replacing, not adding, is what makes a repeated stage (after a kill) count once.
        """
        self.ledger.stages.update(ledger.stages)
        self.ledger.save(self.ledger_path)

    def complete_stage(self, stage: StageFiles, metrics: StageMetrics, ledger: IterationLedger) -> StageMetrics:
        """Book the stage's cost, then write its ``metrics.json`` (which marks it done) and drop its checkpoint."""
        self.book_and_save_ledger(ledger)
        atomic_write_json(stage.metrics, metrics.to_dict())
        self._hold_results()
        stage.checkpoint.unlink(missing_ok=True)
        stage.packed_checkpoint.unlink(missing_ok=True)
        return metrics


def check_output_parent(path: str | Path) -> None:
    """Refuse an output file whose folder is, or lies below, something other than a directory."""
    check_output_directory(Path(path).parent)


__all__ = ["BuildLayout", "PipelineLayout", "RunDirectory", "StageFiles", "StageMetrics", "TicketLayout", "check_output_parent",
           "describe_changes", "refuse_changed"]
