"""A pipeline's ``[ablate]`` table: PrAC-IMP with one part changed at a time, to see which part costs accuracy.

PrAC-IMP is several choices at once: Early-Bird stops every round early; a
round on a set P of N examples runs a scaled budget; the set is selected again
every round; it is CET (examples forgotten in training) union CEP (examples
a pruned model predicts differently). Each variant of :data:`ABLATIONS`
changes one of them against the pipeline's own ``[imp]``, ``[early_bird]`` and
``[selection]`` and runs on the pipeline's architecture with every seed, as
``ARCH/ablate-VARIANT-sSEED``. The report (:mod:`pracset.report.ablate`) sets
each variant, and the pipeline's own PrAC-IMP, beside full-data IMP at every
sparsity: the accuracy gap and the search cost as a share of IMP's, so a user
can pick the trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from pracset.config import ConfigBase, option, require
from pracset.registry import Registry
from pracset.selection import SelectionConfig
from pracset.tickets.config import IMPConfig


@dataclass(frozen=True)
class Ablation:
    """One part of PrAC-IMP changed: settings replaced in ``[imp]`` and ``[selection]``, or (``fixed_set``) every
    round trains on the build's set, selected once from one dense run, instead of a set selected every round."""

    changes: str
    imp: Mapping[str, Any] = field(default_factory=dict)
    selection: Mapping[str, Any] = field(default_factory=dict)
    fixed_set: bool = False


#: The variants an ``[ablate]`` table can name.
ABLATIONS: Registry[Ablation] = Registry("ablation", {
    "early-bird-off": Ablation("no Early-Bird stop: every round runs its whole budget", imp={"early_bird": False}),
    "budget-official": Ablation("a round on P runs epochs x |P|/N (the official code: iterations fall as (|P|/N)^2)",
                                imp={"budget": "official"}),
    "budget-linear": Ablation("a round on P runs all the epochs (iterations fall as |P|/N)", imp={"budget": "linear"}),
    # Early-Bird counts epochs: left on, it would stop these rounds after about as many (short) epochs as the
    # linear budget's, so the variant would test a stretched learning-rate schedule, not the full-data budget.
    "budget-full": Ablation("a round on P runs as many iterations as a full-data IMP round: epochs x N/|P|, without "
                            "Early-Bird (full-data IMP has none)", imp={"budget": "full", "early_bird": False}),
    "fixed-set": Ablation("one set for every round: the build's (CET of its dense run union its CEP), selected once, "
                          "not re-selected; the build's runs and probe are charged", fixed_set=True),
    "cet-only": Ablation("each round's set is CET alone (examples forgotten more than E_F times that round)",
                         selection={"rule": "cet"}),
    "cep-only": Ablation("each round's set is CEP alone (examples the round's sparse model predicts unlike the dense "
                         "one); round 1 trains on the full split, as there is no sparse model before it",
                         selection={"rule": "cep"}),
})


@dataclass(frozen=True)
class AblationRun:
    """The settings one variant runs with."""

    name: str
    changes: str
    imp: IMPConfig
    selection: SelectionConfig
    fixed_set: bool

    @property
    def label(self) -> str:
        """Its runs' label (``ARCH/LABEL-sSEED``)."""
        return f"ablate-{self.name}"


@dataclass(frozen=True)
class AblateConfig(ConfigBase):
    """Which parts of PrAC-IMP a pipeline ablates (see :mod:`pracset.ablate`)."""

    variants: tuple[str, ...] | None = option(None, "the variants: " + ", ".join(ABLATIONS.names()) + " (default: "
                                                    "every one that differs from the pipeline's PrAC-IMP)")

    def __post_init__(self) -> None:
        if self.variants is not None:
            require(len(self.variants) > 0, "ablate variants must name at least one variant (or be left out: all)")
            for name in self.variants:
                require(name in ABLATIONS, f"unknown ablation {name!r}; valid names: {', '.join(ABLATIONS.names())}")
            require(len(set(self.variants)) == len(self.variants), "ablate variants must not repeat")

    def runs(self, imp: IMPConfig, selection: SelectionConfig) -> list[AblationRun]:
        """Every variant's settings against the pipeline's ``imp`` and ``selection``. A variant named that changes
        nothing (``budget-linear`` when the budget is linear) is refused; by default it is left out."""
        out = []
        for name in self.variants or ABLATIONS.names():
            ablation = ABLATIONS.get(name)
            changed = replace(imp, **ablation.imp), replace(selection, **ablation.selection)
            if not ablation.fixed_set and changed == (imp, selection):
                require(self.variants is None, f"ablate variant {name!r} changes nothing: the pipeline's PrAC-IMP "
                                               "already runs so; drop it")
                continue
            out.append(AblationRun(name, ablation.changes, *changed, ablation.fixed_set))
        return out


__all__ = ["ABLATIONS", "AblateConfig", "Ablation", "AblationRun"]
