"""Atomic file writes: a file is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
import torch

from pracset.distributed import is_distributed, run_on_main
from pracset.errors import ConfigError, PracsetError


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, overwrite: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file, then rename it.

    The temporary file lives in the same directory (so the rename is atomic on
    POSIX) and is fsynced before the rename; on any error it is removed and the
    previous content of ``path``, if any, is untouched. With ``overwrite=False``
    a ``path`` that exists by then is left alone and ``FileExistsError`` raised.

    Under torch.distributed only rank 0 writes; every rank calls this and
    returns once the file is in place (see :func:`pracset.distributed.run_on_main`).
    """
    path = Path(path)
    # Under torch.distributed rank 0 writes and the others wait; nothing changes in one process.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if is_distributed():
            return run_on_main(lambda: _atomic_write(path, write, overwrite), f"write {path}")
    return _atomic_write(path, write, overwrite)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None], overwrite: bool = True) -> Path:
    make_directory(path.parent)
    with naming(path):  # a full disk (write, fsync) raises an OSError that names no file
        return _write_and_rename(path, write, overwrite)


def _write_and_rename(path: Path, write: Callable[[IO[bytes]], None], overwrite: bool) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:  # a hard link fails if ``path`` appeared meanwhile: never replace what another process wrote
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


TEMPORARY_SUFFIX = ".tmp"
# What tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") names a temporary: 8 characters of its alphabet (a-z, 0-9, _)
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def is_temporary(path: Path, of: str | None = None) -> bool:
    """Whether ``path`` is named as the temporary file of an :func:`atomic_write` (``.NAME.XXXXXXXX.tmp``), of
    the file called ``of`` if given.

    Only that exact pattern counts, so a user's ``.draft.tmp`` is never taken
    for pracset's (nor deleted, nor counted as nothing).
    """
    match = _TEMPORARY.fullmatch(path.name)
    return match is not None and (of is None or match.group("target") == of)


def remove_temporaries(directory: str | os.PathLike) -> int:
    """Delete the temporaries that killed writers left under ``directory`` (pracset's names only, never
    through a linked folder); returns how many."""
    removed = 0
    for path in Path(directory).rglob(".*.tmp"):
        if is_temporary(path) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_temporaries_of(path: str | os.PathLike) -> int:
    """Delete the temporaries a killed :func:`atomic_write` of ``path`` left beside it; returns how many.

    For outputs that lie in a user's folder (a build's ``NAME.stats.npz``):
    only temporaries of that one file are touched.
    """
    path = Path(path)
    removed = 0
    for candidate in path.parent.glob(f".*{TEMPORARY_SUFFIX}") if path.parent.is_dir() else ():
        if is_temporary(candidate, of=path.name) and candidate.is_file() and not candidate.is_symlink():
            candidate.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def naming(path: str | os.PathLike) -> Iterator[None]:
    """Name ``path`` in an :class:`OSError` raised inside the block that names no file.

    ``read()``, ``write()`` and ``fsync()`` on an open file raise errors
    (EIO, EINVAL, ENOSPC) without a file name; the command line would say
    ``error: Invalid argument`` without saying which file.
    """
    try:
        yield
    except OSError as exc:
        if not exc.filename:
            if exc.strerror is None:  # OSError("message"): keep the message, which str() drops once a file is named
                exc.strerror = str(exc)
            exc.filename = os.fspath(path)
        raise


# The run directories this process holds (locked_output_directory), as absolute paths: nothing below one is
# written through a symbolic link to a folder.
_HELD_ROOTS: list[Path] = []


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(path))


def linked_folder_message(link: Path) -> str:
    """The one-line refusal for ``link``, a symbolic link to a folder met inside a run directory."""
    return (f"{link} is a symbolic link to a folder; pracset never reads or writes a run through a link: "
            "remove the link or choose another --out")


def check_not_linked(path: str | os.PathLike) -> None:
    """Refuse ``path`` when a folder between a run directory this process holds and it (itself included) is a
    symbolic link, so that no write follows a link out of the run."""
    absolute = _absolute(path)
    for root in _HELD_ROOTS:
        if absolute != root and root not in absolute.parents:
            continue
        current = root
        for part in absolute.relative_to(root).parts:
            current = current / part
            if current.is_symlink():  # shown as the caller spelled it (relative paths stay relative)
                up, given = len(absolute.relative_to(current).parts), Path(path)
                shown = given if up == 0 else given.parents[up - 1] if up <= len(given.parents) else current
                raise ConfigError(linked_folder_message(shown))
            if not current.exists():
                break


def make_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` and its missing parents; inside a run directory this process holds, a folder on the
    way that is a symbolic link is refused (:func:`check_not_linked`) instead of followed."""
    path = Path(directory)
    check_not_linked(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_linked_folder(root: str | os.PathLike) -> Path | None:
    """The first symbolic link to a folder below ``root`` (sorted walk, never following a link), else ``None``."""
    for folder, subfolders, _ in os.walk(root):
        subfolders.sort()
        for name in subfolders:
            if os.path.islink(os.path.join(folder, name)):
                return Path(folder, name)
    return None


def holds_only_temporaries(directory: Path, also: tuple[str, ...] = ()) -> bool:
    """True when ``directory`` holds nothing but atomic-write temporaries (and names in ``also``)."""
    return all(is_temporary(p) or p.name in also for p in directory.iterdir())


def check_output_directory(directory: str | os.PathLike) -> None:
    """Refuse an output directory that is, or lies below, something other than a directory.

    Raises :class:`ConfigError` naming the first such path, so the user sees
    one line instead of the ``NotADirectoryError`` of a later ``mkdir``.
    """
    path = Path(directory)
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            if not candidate.is_dir():
                raise ConfigError(f"{candidate} is not a directory; choose another --out")
            return


class DirectoryLock:
    """An exclusive lock on an output directory: a second pracset process on it refuses to start.

    The lock is an ``flock`` on ``DIR/.lock`` holding the holder's pid: the
    kernel releases it when its holder exits or is killed, so a crashed run
    never leaves a stale lock; the file is removed on a normal exit. Under
    torch.distributed only rank 0 locks (the ranks of one run share the
    directory by design) and tells the others whether it got the lock.
    """

    NAME = ".lock"

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / self.NAME
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "DirectoryLock":
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            if is_distributed():  # rank 0 locks; a refusal is raised on every rank (run_on_main)
                run_on_main(self._acquire, f"lock {self.path.parent}")
                return self
        self._acquire()
        return self

    def _acquire(self) -> None:
        import fcntl  # POSIX only: imported where the lock is taken, so the rest of the module loads anywhere

        # Never follow a link (a .lock pointing at a user's file would get that file written), and never
        # truncate or delete a lock file this process did not create.
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o644)
            created = True
        except FileExistsError:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:  # ELOOP: a symbolic link (or something else that cannot be opened for the lock)
                raise ConfigError(f"{self.path} is a link or cannot be opened; pracset locks only a regular file it "
                                  "may write: remove it or choose another --out") from None
            created = False
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{self.path} is not a regular file; remove it or choose another --out")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another pracset run (process {pid}); "
                              "wait for it to finish or choose another --out") from None
        if created:
            os.write(fd, str(os.getpid()).encode())
        self._fd, self._created = fd, created

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            if self._created:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


@contextlib.contextmanager
def locked_output_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Create (if needed) and lock an output directory for one pracset run.

    Refuses a path that is or lies below a file, and a directory another
    process holds (:class:`DirectoryLock`). If the run fails or is refused
    before writing anything, a directory this call created is removed again,
    so a refused command leaves no trace.
    """
    path = Path(directory)
    if path.is_symlink():  # its lock and every file would land in the folder it points to
        raise ConfigError(linked_folder_message(path))
    check_output_directory(path)
    created = not path.exists()
    make_directory(path)  # a run inside another (a pipeline's) is checked against links below that one
    try:
        with DirectoryLock(path):
            _HELD_ROOTS.append(_absolute(path))
            try:
                yield path
            finally:
                _HELD_ROOTS.remove(_absolute(path))
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            try:
                path.rmdir()
            except OSError:  # under torch.distributed another rank may have removed it (or added to it) first
                pass
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` of ``obj`` to ``path`` through :func:`atomic_write`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_np_save(path: str | os.PathLike, array: Any) -> Path:
    """``np.save`` through :func:`atomic_write` (rank 0 only under torch.distributed)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return atomic_write_bytes(path, buffer.getvalue())


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def require_regular_file(path: str | os.PathLike, what: str = "file", *, error: type[PracsetError] = ConfigError,
                         follow_symlinks: bool = True) -> Path:
    """Return ``path`` as a :class:`Path` when it is a regular file; refuse anything else BEFORE it is opened.

    Every file pracset reads (a manifest, a TOML file, a run's files, a data
    file, an image a Hugging Face row names) goes through this first: opening
    a FIFO blocks until a writer comes (forever), a device such as
    ``/dev/zero`` reads without end, a directory cannot be read. Each is
    refused as ``error`` (a :class:`PracsetError`, so one line on the command
    line) that names ``what`` and ``path``. A link is followed (the file it
    points to must be regular) unless ``follow_symlinks=False``, which refuses
    the link itself. A missing or unreadable path raises the ``OSError`` of
    ``os.stat`` unchanged (``FileNotFoundError``...), so callers keep their
    own wording for a file that is absent.
    """
    path = Path(path)
    mode = os.stat(path, follow_symlinks=follow_symlinks).st_mode
    if not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else _file_kind(mode)
        raise error(f"{what} {path} is {kind}, not a regular file; pracset reads only regular files")
    return path
