"""Reading back the JSON files pracset writes into a run directory, as files from a stranger.

A run directory may come from anyone (``--resume`` of a copied folder, a
pipeline's output): :func:`read_json` turns every way such a file can be
unreadable (missing, too large, truncated, not JSON, nested without end) into
one :class:`~pracset.errors.RunFileError` naming the file. What the parsed
value must look like is checked next to the code that writes each kind of
file (:meth:`pracset.ledger.IterationLedger.from_dict`, :func:`pracset.layouts.check_metrics` for a stage's
``metrics.json``), with the small helpers below. This module sits below both: it imports no part of pracset
but the errors and the file checks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pracset.errors import RunFileError
from pracset.fileio import require_regular_file

#: The largest JSON file of a run directory that is read (a stage's metrics, the ledger, a summary are
#: kilobytes to a few megabytes); a larger one is refused before it is read.
MAX_JSON_BYTES = 64 << 20


def read_json(path: str | os.PathLike, what: str) -> Any:
    """The parsed JSON of ``path`` (``what`` names the kind of file in messages), or one-line RunFileError."""
    path = Path(path)
    try:
        require_regular_file(path, what, error=RunFileError)  # a FIFO or a device would block or never end
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_JSON_BYTES:
                raise RunFileError(f"{what} {path} is {size} bytes, more than the {MAX_JSON_BYTES} bytes pracset "
                                   "ever writes there")
            text = handle.read(MAX_JSON_BYTES + 1)
        return json.loads(text)
    except FileNotFoundError:
        raise RunFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise RunFileError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except RecursionError:
        raise RunFileError(f"{what} {path} is nested too deeply to be a file pracset wrote") from None
    except ValueError as exc:  # json.JSONDecodeError, UnicodeDecodeError, an integer of too many digits
        raise RunFileError(f"{what} {path} is damaged or truncated (not valid JSON: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def is_count(value: Any) -> bool:
    """A non-negative integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value: Any) -> bool:
    """An int or float (not a bool); NaN and infinities included, as a diverged stage records them."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def kind(value: Any) -> str:
    """The JSON name of ``value``'s type, for messages."""
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a hostile value must not make a message of megabytes."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


__all__ = ["MAX_JSON_BYTES", "is_count", "is_number", "kind", "read_json", "shown"]
