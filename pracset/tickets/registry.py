"""The ticket methods by name, and the settings tables they bring: the one list the CLI, the TOML pipelines,
run identities and :func:`~pracset.tickets.find_tickets` are generated from.

A method is a :class:`~pracset.tickets.methods.TicketMethod`. One with settings
of its own declares ``section`` (its TOML table, its ``--SECTION-...`` flags,
its ``find_tickets`` keyword) and ``config_class`` (a frozen
:class:`~pracset.config.ConfigBase` dataclass); every method also reads the
shared tables of :data:`SHARED_SECTIONS`. Adding a method is a module with its
class (and its test) and one line below.
"""

from __future__ import annotations

from pracset.registry import Registry
from pracset.selection import SelectionConfig
from pracset.sparse.early_bird import EarlyBirdConfig
from pracset.tickets.config import IMPConfig
from pracset.tickets.methods import IMP, GraNetMethod, PracIMP, RigLMethod, TicketMethod, TicketSettings
from pracset.tickets.snip import SNIP

#: Ticket methods by name; the CLI's ``--method`` choices and the pipelines' ``methods`` come from here.
TICKET_METHODS: Registry[TicketMethod] = Registry("ticket method", {
    m.name: m for m in (IMP(), PracIMP(), RigLMethod(), GraNetMethod(), SNIP())})

#: The settings tables every ticket method may read, by section name (in TOML files and as keywords).
SHARED_SECTIONS = {"selection": SelectionConfig, "imp": IMPConfig, "early_bird": EarlyBirdConfig}

#: Each method's own settings table: section name -> the method.
METHOD_SECTIONS: dict[str, TicketMethod] = {m.section: m for _, m in TICKET_METHODS.items() if m.section}


def ticket_settings(imp: IMPConfig = IMPConfig(), early_bird: EarlyBirdConfig = EarlyBirdConfig(),
                    selection: SelectionConfig = SelectionConfig(), **own) -> TicketSettings:
    """:class:`TicketSettings` from the shared tables and methods' own (``rigl=RigLConfig(...)``, ...); a name
    that is no method's section, or a value of another class, is a TypeError listing the valid ones."""
    for section, value in own.items():
        if section not in METHOD_SECTIONS:
            raise TypeError(f"unknown ticket method settings {section!r}; valid: {', '.join(sorted(METHOD_SECTIONS))}")
        expected = METHOD_SECTIONS[section].config_class
        if value is not None and not isinstance(value, expected):
            raise TypeError(f"{section} must be a {expected.__name__}, got {type(value).__name__}")
    return TicketSettings(imp=imp, early_bird=early_bird, selection=selection,
                          own={k: v for k, v in own.items() if v is not None})


__all__ = ["METHOD_SECTIONS", "SHARED_SECTIONS", "TICKET_METHODS", "ticket_settings"]
