"""Atomic file writes: a file is either complete or absent, never half-written.

The writes of a run: under torch.distributed only rank 0 writes (:func:`atomic_write`), ``torch.save`` and
``np.save`` through it, and the lock of an output directory. They build on :mod:`pracset.files` (the writes,
temporaries and file checks of one process, without torch), whose names are re-exported here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np
import torch

from pracset.distributed import is_distributed, run_on_main
from pracset.errors import ConfigError
from pracset.files import (TEMPORARY_SUFFIX, atomic_write_in_process, check_not_linked,  # (re-exported)
                           check_output_directory, find_linked_folder, holding, holds_only_temporaries, is_temporary,
                           linked_folder_message, make_directory, naming, remove_temporaries, remove_temporaries_of,
                           require_regular_file)


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
            return run_on_main(lambda: atomic_write_in_process(path, write, overwrite=overwrite), f"write {path}")
    return atomic_write_in_process(path, write, overwrite=overwrite)


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
        with DirectoryLock(path), holding(path):
            yield path
    except BaseException:
        if created and path.is_dir() and not any(path.iterdir()):
            try:
                path.rmdir()
            except OSError:  # under torch.distributed another rank may have removed it (or added to it) first
                pass
        raise


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


__all__ = ["TEMPORARY_SUFFIX", "DirectoryLock", "atomic_np_save", "atomic_torch_save", "atomic_write",
           "atomic_write_bytes", "atomic_write_in_process", "atomic_write_json", "check_not_linked",
           "check_output_directory", "find_linked_folder", "holding", "holds_only_temporaries", "is_temporary",
           "linked_folder_message", "locked_output_directory", "make_directory", "naming", "remove_temporaries",
           "remove_temporaries_of", "require_regular_file"]
