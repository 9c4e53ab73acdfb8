"""Every setting's allowed values are enforced in one place, when its configuration is constructed.

The configurations are found by walking pracset's modules (every dataclass
with a field made by :func:`pracset.config.option`), so a configuration or a
``choices=`` field added later is covered without editing this file; a few
known names are also listed by hand, so the walk cannot silently find nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import typing

import pytest

import pracset
from pracset.config import ConfigBase, add_arguments, from_dict
from pracset.errors import ConfigError

BAD = "not-a-choice"


def _config_classes() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(pracset.__path__, "pracset."):
        if info.name == "pracset.__main__":  # running it is the command line
            continue
        for obj in vars(importlib.import_module(info.name)).values():
            if (inspect.isclass(obj) and dataclasses.is_dataclass(obj) and obj.__module__.startswith("pracset.")
                    and any("help" in f.metadata for f in dataclasses.fields(obj))):
                found[obj.__qualname__] = obj
    return dict(sorted(found.items()))


CONFIGS = _config_classes()
CHOICE_FIELDS = [(name, f) for name, cls in CONFIGS.items() for f in dataclasses.fields(cls)
                 if "choices" in f.metadata]


def _bad_value(cls: type, field: dataclasses.Field):
    inner = typing.get_type_hints(cls)[field.name]
    return (BAD,) if typing.get_origin(inner) is tuple else BAD


def test_the_walk_finds_the_known_configurations_and_choices():
    assert {"DataConfig", "TrainConfig", "BuildConfig", "SelectionConfig", "IMPConfig", "EarlyBirdConfig",
            "DynamicSparseConfig", "RigLConfig", "GraNetConfig", "ReportConfig"} <= set(CONFIGS)
    names = {f"{cls}.{f.name}" for cls, f in CHOICE_FIELDS}
    assert {"BuildConfig.probe_ranking", "BuildConfig.prunable", "BuildConfig.cep", "IMPConfig.ranking",
            "IMPConfig.prunable", "IMPConfig.budget", "IMPConfig.pack_controls", "IMPConfig.evaluate",
            "TrainConfig.precision", "SelectionConfig.never_learned", "RigLConfig.prunable",
            "GraNetConfig.prunable"} <= names
    assert len(CHOICE_FIELDS) >= 13


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_configuration_checks_its_choices(name: str):
    """Each configuration derives from ConfigBase: that is where the choices are checked."""
    assert issubclass(CONFIGS[name], ConfigBase), f"{name} does not derive from pracset.config.ConfigBase"


@pytest.mark.parametrize("name, field", [pytest.param(n, f, id=f"{n}.{f.name}") for n, f in CHOICE_FIELDS])
def test_a_value_outside_the_choices_is_refused_at_construction(name: str, field: dataclasses.Field):
    cls = CONFIGS[name]
    choices = ", ".join(map(str, field.metadata["choices"]))
    message = f"{field.name} must be one of {choices}, got '{BAD}'"
    bad = _bad_value(cls, field)
    with pytest.raises(ConfigError) as info:  # Python
        cls(**{field.name: bad})
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:  # a TOML table, --set, --config
        from_dict(cls, {field.name: list(bad) if isinstance(bad, tuple) else bad}, where="section")
    assert str(info.value) == message
    with pytest.raises(ConfigError) as info:  # dataclasses.replace constructs again
        dataclasses.replace(cls(), **{field.name: bad})
    assert str(info.value) == message
    for value in field.metadata["choices"]:  # every listed value is accepted
        ok = (value,) if isinstance(bad, tuple) else value
        assert getattr(cls(**{field.name: ok}), field.name) == ok


@pytest.mark.parametrize("name, field", [pytest.param(n, f, id=f"{n}.{f.name}") for n, f in CHOICE_FIELDS])
def test_the_command_line_offers_the_choices(name: str, field: dataclasses.Field, capsys):
    parser = argparse.ArgumentParser(prog="p")
    add_arguments(parser, CONFIGS[name])
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    assert getattr(parser.parse_args([flag, str(field.metadata["choices"][-1])]), field.name) is not None
    with pytest.raises(SystemExit) as info:
        parser.parse_args([flag, BAD])
    assert info.value.code == 2 and f"invalid choice: '{BAD}'" in capsys.readouterr().err


def test_the_choices_are_checked_first_and_once(monkeypatch):
    """Before a class's own range checks (whose message would hide the misspelling), once however deep."""
    import pracset.config as config
    from pracset.sparse import GraNetConfig, RigLConfig

    with pytest.raises(ConfigError, match="prunable must be one of all, conv, got 'linear'"):
        RigLConfig(prunable="linear", delta_t=0)
    calls = []
    monkeypatch.setattr(config, "check_choices", lambda c: calls.append(type(c).__name__))
    for cls in (RigLConfig, GraNetConfig, CONFIGS["ReportConfig"], CONFIGS["BuildConfig"]):
        cls()
    assert calls == ["RigLConfig", "GraNetConfig", "ReportConfig", "BuildConfig"]
