"""Files in one process, without torch: atomic writes, temporaries, links to folders, regular files.

The foundation of every file pracset writes or reads: :func:`atomic_write_in_process` (a file is complete or
absent, never half-written), the names of its temporaries and their removal, the refusal of a symbolic link
to a folder inside a run directory, and :func:`require_regular_file` before any file is opened. It imports
nothing of pracset but the errors, and no torch, so that reading a manifest or a cache stays light;
:mod:`pracset.fileio` builds the run's writes on it (rank 0 only under torch.distributed, ``torch.save``,
``np.save``, the directory lock) and re-exports these names.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

from pracset.errors import ConfigError, PracsetError


def atomic_write_in_process(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *,
                            overwrite: bool = True) -> Path:
    """Write ``path`` through ``write(file)`` into a temporary file beside it, fsync it, then rename it into
    place: a file is either complete or absent, never half-written. On any error the temporary is removed and
    the previous content of ``path``, if any, is untouched; with ``overwrite=False`` a ``path`` that exists by
    then is left alone and ``FileExistsError`` raised.

    This process writes, whatever its rank: :func:`pracset.fileio.atomic_write` is the run's write (rank 0
    only under torch.distributed); a per-process cache writes with this.
    """
    path = Path(path)
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
    """Whether ``path`` is named as the temporary file of an :func:`atomic_write_in_process` (``.NAME.XXXXXXXX.tmp``), of
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
    """Delete the temporaries a killed :func:`atomic_write_in_process` of ``path`` left beside it; returns how many.

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


@contextlib.contextmanager
def holding(root: str | os.PathLike) -> Iterator[None]:
    """Within the block, ``root`` is a run directory this process holds: :func:`make_directory` refuses a
    symbolic link to a folder below it (:func:`check_not_linked`)."""
    _HELD_ROOTS.append(_absolute(root))
    try:
        yield
    finally:
        _HELD_ROOTS.remove(_absolute(root))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


__all__ = ["TEMPORARY_SUFFIX", "atomic_write_in_process", "check_not_linked", "check_output_directory",
           "find_linked_folder", "holding", "holds_only_temporaries", "is_temporary", "linked_folder_message",
           "make_directory", "naming", "remove_temporaries", "remove_temporaries_of", "require_regular_file"]
