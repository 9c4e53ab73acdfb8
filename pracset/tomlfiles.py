"""Reading settings files (``--config``, a pipeline) as files from a stranger: TOML, bounded before parsing.

Python's TOML parser recurses once per nesting level and needs memory growing with the square of a dotted
key's length, so a small file can crash it (a RecursionError) or take tens of gigabytes; a file's size and
nesting are therefore checked cheaply, without parsing, first (:func:`toml_depth`).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

from pracset.errors import ConfigError
from pracset.fileio import require_regular_file

#: A settings file larger than this is refused before it is read (a pipeline file is a few kilobytes).
MAX_TOML_BYTES = 1 << 20
#: The deepest nesting a settings file may have: arrays and inline tables inside one another, or the parts of
#: one dotted key (``a.b.c``). Python's TOML parser recurses per level (a RecursionError past ~1,000) and its
#: memory grows with the square of a dotted key's length (a 100,000-part key takes tens of gigabytes).
MAX_TOML_DEPTH = 64
# What the depth scan skips: strings (multi-line ones first) and comments; what is left is structure.
_TOML_SKIPPED = re.compile(r'''"""(?:\\[\s\S]|[^\\])*?"""(?:"{1,2}(?!"))?|\'\'\'[\s\S]*?\'\'\'(?:\'{1,2}(?!\'))?'''
                           r'''|"(?:\\.|[^"\\\n])*"|\'[^\'\n]*\'|#[^\n]*''')
_TOML_BRACKETS = re.compile(r"[\[\]{}]")
_TOML_WORDS = re.compile(r"[^\s,=\[\]{}]+")
_TOML_DOTS = re.compile(r"[ \t]*\.[ \t]*")


def toml_depth(text: str) -> int:
    """How deep ``text`` nests, cheaply and without parsing it: the most arrays and inline tables open at once,
    or the most parts of one dotted key, whichever is larger (strings and comments ignored)."""
    bare = _TOML_DOTS.sub(".", _TOML_SKIPPED.sub("s", text))
    depth = deepest = 0
    for match in _TOML_BRACKETS.finditer(bare):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    parts = max((word.count(".") + 1 for word in _TOML_WORDS.findall(bare)), default=0)
    return max(deepest, parts)


def parse_toml(text: str, where: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, refusing (one :class:`ConfigError` starting with ``where``) a document nested
    deeper than :data:`MAX_TOML_DEPTH` before it is parsed, and any other way the parser can fail."""
    depth = toml_depth(text)
    if depth > MAX_TOML_DEPTH:
        raise ConfigError(f"{where} nests {depth} levels deep; settings may nest at most {MAX_TOML_DEPTH}")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:  # a nesting the scan above did not see: still one line
        raise ConfigError(f"{where} nests too deeply; settings may nest at most {MAX_TOML_DEPTH} levels") from None


def load_toml(path: str | Path, what: str = "settings file") -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable, invalid, too large or too deeply nested file is one line."""
    path = Path(path)
    try:
        require_regular_file(path, what)  # a FIFO or a device would block or read forever
        with open(path, "rb") as handle:
            data = handle.read(MAX_TOML_BYTES + 1)
        text = data.decode()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    if len(data) > MAX_TOML_BYTES:
        raise ConfigError(f"{what} {path} is larger than {MAX_TOML_BYTES} bytes; a settings file is a few kilobytes")
    return parse_toml(text, str(path))


__all__ = ["MAX_TOML_BYTES", "MAX_TOML_DEPTH", "load_toml", "parse_toml", "toml_depth"]
