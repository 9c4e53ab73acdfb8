"""Frozen, typed configuration shared by the command line and TOML pipelines.

Each configuration is a frozen dataclass whose fields carry a ``help`` text in
their metadata. :func:`add_arguments` turns the fields into ``--flags`` and
:func:`from_dict` builds an instance from a plain mapping (a parsed TOML table
or the flags that were given), rejecting unknown keys and wrong types with a
:class:`~pracset.errors.ConfigError` that names the key.

Every configuration derives from :class:`ConfigBase`: whenever one is
constructed (from the command line, a TOML file, ``--set`` or Python), a field
declared with ``option(..., choices=...)`` holding anything else is refused by
:func:`check_choices`, in this one place, before its own range checks run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from typing import Any, Mapping, TypeVar

from pracset.errors import ConfigError

C = TypeVar("C")


def option(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by ``--help``).

    ``choices=(...)`` lists the values the field allows: argparse offers them,
    and :func:`check_choices` refuses any other value when the configuration
    is constructed.
    """
    return dataclasses.field(default=default, metadata={"help": help, **kwargs})


def check_choices(config: Any) -> None:
    """Refuse a value outside its field's ``choices`` (a tuple field: every element), with one line naming it."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        if choices is None:
            continue
        value = getattr(config, f.name)
        if value is None and f.default is None:  # an optional field left unset
            continue
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if item not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(map(str, choices))}, got {item!r}")


class ConfigBase:
    """The base of every configuration dataclass: its ``choices`` are checked at construction.

    :func:`check_choices` runs first in ``__post_init__``, before a class's own
    checks (which then need not repeat them), exactly once however the
    subclasses' ``__post_init__`` methods call each other: a subclass that
    defines its own ``__post_init__`` gets it wrapped when the class is made.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        if own is None or getattr(own, "checks_choices", False):
            return

        @functools.wraps(own)
        def __post_init__(self) -> None:
            if type(self).__post_init__ is __post_init__:  # the outermost one: not again through super()
                check_choices(self)
            own(self)

        __post_init__.checks_choices = True  # type: ignore[attr-defined]
        cls.__post_init__ = __post_init__  # type: ignore[method-assign]

    def __post_init__(self) -> None:
        if type(self).__post_init__ is ConfigBase.__post_init__:  # a subclass without checks of its own
            check_choices(self)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, key: str) -> Any:
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key} must not be empty")
    origin = typing.get_origin(inner)
    if origin is tuple:
        (elem, *rest) = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, elem, key) for v in value)
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # TOML and the command line both accept inf and nan
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if inner is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    raise TypeError(f"unsupported configuration type {tp!r} for {key}")


#: Settings renamed since they were first released: old key -> (new key, how the old value reads as the new).
#: Files and recorded run identities that use the old key keep working (:func:`upgrade_keys`).
RENAMED_KEYS: dict[str, tuple[str, Any]] = {
    "rewind_step": ("rewind", lambda step: f"{step}it"),  # an iteration count became "500it" / "3ep"
}


def upgrade_keys(values: Any) -> Any:
    """``values`` (nested dicts) with every renamed key replaced by its new key and value."""
    if not isinstance(values, Mapping):
        return values
    out = {}
    for key, value in values.items():
        if key in RENAMED_KEYS and RENAMED_KEYS[key][0] not in values:
            new, convert = RENAMED_KEYS[key]
            out[new] = convert(value)
        else:
            out[key] = upgrade_keys(value)
    return out


def from_dict(cls: type[C], values: Mapping[str, Any], where: str = "") -> C:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types (renamed keys are read as their new
    names)."""
    types_ = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {k: v for k, v in upgrade_keys(dict(values)).items()}
    prefix = f"{where}." if where else ""
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]}; valid keys: {', '.join(names)}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in values.items()}
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON/TOML-friendly dict of a configuration (tuples become lists).

    A field declared with ``option(..., added_later=True)`` is left out while
    it holds its default: run identities recorded before the field existed
    then still match, and a run resumed across the upgrade is not refused.
    """
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("added_later") and value == f.default:
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (), prefix: str = "") -> None:
    """Add one ``--flag`` per field of ``cls``; unset flags stay ``None``.

    ``prefix`` (e.g. ``"rigl"``) names the flags ``--rigl-FIELD`` (destination
    ``rigl_FIELD``), for configurations whose field names would clash.
    """
    types_ = _field_types(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        inner, _ = _unwrap_optional(types_[f.name])
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        if prefix:
            flag = f"--{prefix}-{f.name.replace('_', '-')}"
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if default is not None:
            shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
            help_text += f" (default: {shown})"
        # argparse formats help texts with %: a literal one ("20% each") must be doubled
        kwargs: dict[str, Any] = {"dest": f"{prefix.replace('-', '_')}_{f.name}" if prefix else f.name,
                                  "default": None, "help": help_text.replace("%", "%%")}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if inner is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif typing.get_origin(inner) is tuple:
            group.add_argument(flag, nargs="*", type=typing.get_args(inner)[0], metavar="X", **kwargs)
        else:
            group.add_argument(flag, type=inner, metavar=f.metadata.get("metavar", inner.__name__.upper()), **kwargs)


def from_args(cls: type[C], namespace: argparse.Namespace, prefix: str = "", **overrides: Any) -> C:
    """Build ``cls`` from the flags that were given on the command line (see ``add_arguments``' prefix)."""
    dest = (lambda name: f"{prefix.replace('-', '_')}_{name}") if prefix else (lambda name: name)
    values = {
        f.name: getattr(namespace, dest(f.name))
        for f in dataclasses.fields(cls)
        if f.init and getattr(namespace, dest(f.name), None) is not None
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(cls, values)


#: Seeds reach numpy (legacy seeding) and torch: both accept 0 <= seed < 2**32.
SEED_RANGE = (0, 2**32 - 1)


def require_seed(seed: int, name: str = "seed") -> None:
    """Refuse a seed that numpy or torch would reject, before any work starts."""
    require(isinstance(seed, int) and SEED_RANGE[0] <= seed <= SEED_RANGE[1],
            f"{name} must be an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}, got {seed}")


def require_finite(config, *names: str) -> None:
    """Refuse a configuration whose named float fields are infinite or NaN."""
    for name in names:
        value = getattr(config, name)
        require(value is None or math.isfinite(value), f"{name} must be a finite number, got {value}")


def require(condition: bool, message: str) -> None:
    """Raise a ConfigError with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message)
