"""The public API: what ``pracset`` exports, docstrings on public code, registries feeding the CLI, module sizes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import pracset

PACKAGE = Path(pracset.__file__).parent


def _modules():
    for info in pkgutil.walk_packages(pracset.__path__, "pracset."):
        if not info.name.endswith("__main__"):
            yield importlib.import_module(info.name)


def test_every_exported_name_resolves_and_is_documented():
    assert pracset.__all__[0] == "__version__" and len(set(pracset.__all__)) == len(pracset.__all__)
    for name in pracset.__all__[1:]:
        value = getattr(pracset, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"pracset.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        pracset.not_a_name  # noqa: B018


def test_every_public_function_and_class_has_a_docstring():
    missing = []
    for module in _modules():
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if (inspect.isfunction(value) or inspect.isclass(value)) and not value.__doc__:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, missing


def test_no_module_is_much_longer_than_400_lines():
    lengths = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {k: v for k, v in lengths.items() if v > 420} == {}


def test_the_command_line_and_pipelines_take_their_method_choices_from_the_registry():
    from pracset.cli import build_parser
    from pracset.pipeline import PIPELINE_METHODS
    from pracset.tickets import TICKET_METHODS

    ticket = build_parser()._subparsers._group_actions[0].choices["ticket"]
    method = next(a for a in ticket._actions if a.dest == "method")
    assert list(method.choices) == TICKET_METHODS.names()
    assert {"granet", "imp", "prac-imp", "rigl"} <= set(TICKET_METHODS.names())
    assert set(PIPELINE_METHODS) == {*TICKET_METHODS.names(), "rigl-prac", "granet-prac"}


def test_the_controls_are_registered_variants():
    from pracset.tickets import CONTROLS
    from pracset.tickets.controls import RandomMask, RandomReinit

    assert CONTROLS.names() == ["random-mask", "reinit"]
    assert isinstance(CONTROLS.get("reinit"), RandomReinit) and isinstance(CONTROLS.get("random-mask"), RandomMask)
    with pytest.raises(KeyError, match="valid names: random-mask, reinit"):
        CONTROLS.get("shuffle")
