"""A pipeline's ``[compare]`` table: data-selection rules compared by the tickets found on their sets.

From the build's one dense run (its statistics, and the EL2N / GraNd scores it
computed with ``[build] scores``), each rule of ``rules`` selects a set at
every fraction of ``fractions`` (``compare/RULE-fF.parquet``). On every
architecture of the pipeline (``arch`` and ``transfer``), every seed runs
PrAC-IMP on each set as a fixed set: its rounds train on the set, every
round's ticket on the full split, the procedure of the transfer runs. The
report (:mod:`pracset.report.compare`) sets each beside full-data IMP on the same architecture: the final
ticket's accuracy (mean and standard deviation over seeds), and its cost in
training iterations, charged in full: the set's (the dense run the statistics
came from, and the extra runs of its score; a random set needs none) plus the
search's (the rounds that found the final mask).

A rule is ``random``, ``topk-forgetting``, or ``highest`` / ``lowest`` /
``ccs`` with a score (``highest:el2n``, ``ccs:aum``; see
:mod:`pracset.selection.by_score`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from pracset.config import ConfigBase, option, require
from pracset.manifest.assemble import write_selected_manifest
from pracset.selection import SCORES, SelectionConfig
from pracset.stats.scores import EXTRA_SCORES  # their cost is charged to the sets that rank by them

#: The rules a comparison can size (PrAC's own set is the pipeline's ``prac-imp`` and transfer runs).
COMPARE_RULES = ("random", "topk-forgetting", "highest", "lowest", "ccs")


def parse_rule(spec: str) -> tuple[str, str | None]:
    """``"highest:el2n"`` -> ``("highest", "el2n")``; ``"random"`` -> ``("random", None)``."""
    rule, _, score = spec.partition(":")
    return rule, score or None


@dataclass(frozen=True)
class CompareConfig(ConfigBase):
    """Which selection rules a pipeline compares, at which set sizes."""

    rules: tuple[str, ...] = option(("random", "highest:forgetting", "lowest:forgetting", "ccs:forgetting"),
                                    "the rules compared: random, topk-forgetting, or highest, lowest, ccs with a "
                                    "score (highest:el2n, ccs:aum; el2n and grand need [build] scores)")
    fractions: tuple[float, ...] = option((0.1, 0.3), "the set sizes, as fractions of the training split")
    ccs_cutoff: float = option(0.0, "ccs: the fraction of the hardest examples dropped first")
    ccs_strata: int = option(50, "ccs: the number of equal-width score strata")

    def __post_init__(self) -> None:
        require(len(self.rules) > 0 and len(self.fractions) > 0, "compare needs at least one rule and one fraction")
        for spec in self.rules:
            rule, score = parse_rule(spec)
            require(rule in COMPARE_RULES, f"compare rule {spec!r}: the rule must be one of {', '.join(COMPARE_RULES)}")
            scored = rule in ("highest", "lowest", "ccs")
            require(scored == (score is not None), f"compare rule {spec!r}: highest, lowest and ccs take a score "
                                                   "(RULE:SCORE), the others none")
            require(score is None or score in SCORES, f"compare rule {spec!r}: unknown score; valid: "
                                                      f"{', '.join(SCORES)}")
        require(all(0 < f < 1 for f in self.fractions), f"fractions must lie in (0, 1), got {list(self.fractions)}")
        require(len(set(self.rules)) == len(self.rules) and len(set(self.fractions)) == len(self.fractions),
                "compare rules and fractions must not repeat")

    def needed_scores(self) -> set[str]:
        """The extra scores (EL2N, GraNd) the rules rank by: the build must compute them."""
        return {score for _, score in map(parse_rule, self.rules) if score in EXTRA_SCORES}

    def sets(self, base: SelectionConfig) -> dict[str, SelectionConfig]:
        """Every set of the comparison: its label (``RULE[-SCORE]-fF``) and its selection."""
        out = {}
        for fraction in self.fractions:
            for spec in self.rules:
                rule, score = parse_rule(spec)
                label = f"{rule}{'-' + score if score else ''}-f{fraction:g}"
                out[label] = replace(base, rule=rule, score=score or "forgetting", fraction=fraction, size=None,
                                     class_balance=False, ccs_cutoff=self.ccs_cutoff, ccs_strata=self.ccs_strata)
        return out


def write_sets(config: CompareConfig, manifest: Path, folder: Path, base: SelectionConfig) -> dict[str, Path]:
    """Each set of the comparison selected again from ``manifest``'s statistics, written once into ``folder``."""
    paths = {}
    for label, selection in config.sets(base).items():
        path = folder / f"{label}.parquet"
        if not path.exists():
            write_selected_manifest(manifest, path, selection)
        paths[label] = path
    return paths


def _score_run(stage: str) -> str | None:
    """The score whose extra run a build's ledger stage is (``el2n-run-0`` -> ``el2n``), or ``None``."""
    return next((score for score in EXTRA_SCORES if stage.startswith(f"{score}-run-")), None)


def statistics_iterations(build_stages: dict) -> int:
    """The training iterations of the runs a build's statistics came from: its ``dense`` stage, or with ``--cep
    trained`` every PrAC-IMP round it ran (``round-RR``); the extra runs of EL2N and GraNd are not among them."""
    return int(sum(cost.get("train_iterations", 0) for name, cost in build_stages.items() if _score_run(name) is None))


def probe_passes(build_stages: dict, batch_size: int) -> int:
    """The build's pruning-probe forward passes (not the scoring passes of EL2N / GraNd), charged as
    ``ceil(examples / batch_size)`` training iterations per stage, as the report charges every probe."""
    return int(sum(math.ceil(cost.get("probe_examples", 0) / batch_size) for name, cost in build_stages.items()
                   if _score_run(name) is None))


def set_iterations(selection: SelectionConfig, build_stages: dict) -> int:
    """The training iterations a set cost: the runs its statistics came from (:func:`statistics_iterations`),
    and the extra runs of the score it ranks by (EL2N, GraNd); a random set costs none."""
    if selection.rule == "random":
        return 0
    extra = sum(cost.get("train_iterations", 0) for name, cost in build_stages.items()
                if _score_run(name) == selection.score)
    return statistics_iterations(build_stages) + int(extra)


__all__ = ["COMPARE_RULES", "CompareConfig", "parse_rule", "probe_passes", "set_iterations", "statistics_iterations",
           "write_sets"]
