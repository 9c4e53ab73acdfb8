"""A cache of the per-example content hashes (and pixel statistics) of streamed data sets.

Hashing a streamed training split decodes every image once (in the loader's
workers); a second build on the same files should not pay that again. The
cache key is a digest of what the hashes depend on: the split's listing (each
file's name, size and modification time; a tar's size, modification time and
member offsets; a Hugging Face split's own fingerprint), the labels, the colour
mode and the resize. Files added, removed, rewritten or relabelled give
another key, so a stale entry is never read.

Entries live in ``$PRACSET_CACHE_DIR`` (default ``$XDG_CACHE_HOME/pracset``,
else ``~/.cache/pracset``) as ``hashes-KEY.npy`` (read with
``allow_pickle=False``, checked for length and type; anything else is
ignored and recomputed) and ``normalization-KEY.json``. Writes are atomic;
a cache that cannot be written is logged and skipped, never an error.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Callable

import numpy as np

from pracset.files import atomic_write_in_process

log = logging.getLogger(__name__)

CACHE_ENV = "PRACSET_CACHE_DIR"


def cache_dir() -> Path:
    """Where cached hashes live: ``$PRACSET_CACHE_DIR``, else ``$XDG_CACHE_HOME/pracset``, else ``~/.cache/pracset``."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".cache") / "pracset"


def _write(path: Path, payload: bytes) -> None:
    # Each process writes for itself (a temporary file renamed into place), with no collective: under torchrun
    # the ranks may each find or miss the entry (a cache folder per node), and must not wait for one another.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_in_process(path, lambda handle: handle.write(payload))
    except OSError as exc:  # a read-only home, a full disk: the cache is an optimisation only
        log.warning("could not cache %s (%s); it will be computed again next time", path.name, exc.strerror or exc)


def _npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """The shape and dtype a ``.npy`` file's header claims, read without reading (or allocating) its data."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    return shape, dtype


def cached_hashes(key: str, count: int, compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The ``count`` content hashes cached under ``key``, else ``compute()`` them and cache them."""
    path = cache_dir() / f"hashes-{key}.npy"
    if path.is_file() and not path.is_symlink():
        try:
            shape, dtype = _npy_header(path)
            if dtype != np.dtype("<U16") or shape != (count,):  # checked before np.load allocates what it claims
                log.warning("ignoring the cache entry %s: it holds %s %s, not the %d hashes of this split",
                            path, shape, dtype, count)
            else:
                hashes = np.load(path, allow_pickle=False)
                if hashes.dtype == np.dtype("<U16") and hashes.shape == (count,):
                    log.info("content hashes of %d examples read from the cache (%s)", count, path)
                    return hashes
        except (OSError, ValueError, SyntaxError, TypeError) as exc:
            log.warning("ignoring the unreadable cache entry %s (%s)", path, exc)
    hashes = np.asarray(compute()).astype("<U16")
    buffer = io.BytesIO()
    np.save(buffer, hashes, allow_pickle=False)
    _write(path, buffer.getvalue())
    return hashes


def cached_normalization(key: str, compute: Callable[[], tuple]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel (mean, std) cached under ``key``, else ``compute()`` and cache them."""
    path = cache_dir() / f"normalization-{key}.json"
    if path.is_file() and not path.is_symlink():
        try:
            if path.stat().st_size > 4096:  # a few numbers: a larger file is no entry pracset wrote
                raise ValueError("larger than an entry pracset writes")
            mean, std = json.loads(path.read_text())
            if (all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in [*mean, *std])
                    and len(mean) == len(std) and len(mean) in (1, 3)):  # one value per channel: grey or RGB
                return tuple(float(m) for m in mean), tuple(float(s) for s in std)
            log.warning("ignoring the cache entry %s: it is not one mean and std per channel", path)
        except (OSError, ValueError, TypeError, RecursionError) as exc:
            log.warning("ignoring the unreadable cache entry %s (%s)", path, exc)
    mean, std = compute()
    _write(path, json.dumps([list(mean), list(std)]).encode())
    return mean, std


__all__ = ["CACHE_ENV", "cache_dir", "cached_hashes", "cached_normalization"]
