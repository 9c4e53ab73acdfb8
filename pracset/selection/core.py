"""The selection's types and the PrAC rules: what every rule reads (:class:`SelectionInputs`), what it returns
(:class:`Selection`), its settings (:class:`SelectionConfig`), and PrAC, CET, CEP, random and top-k forgetting
(see :mod:`pracset.selection`)."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from pracset.config import ConfigBase, option, require, require_seed
from pracset.errors import ConfigError

NEVER_LEARNED_POLICIES = ("keep", "count-presentations", "drop")
REASONS = ("", "cet", "cep", "both", "random", "topk", "balance")
SIZED_RULES = ("random", "topk-forgetting", "highest", "lowest", "ccs")  # the rules that keep ``size`` examples
#: The per-example scores the ranked rules (highest, lowest, ccs) read, with the end that is *hard*: CCS drops
#: the hardest ``ccs_cutoff`` first. forgetting: the forgetting score (by ``never_learned``); aum, confidence,
#: variability: the recorder's (Pleiss et al. 2020; Swayamdipta et al. 2020); margin: the last margin; el2n,
#: grand: ``pracset build --scores`` (Paul et al. 2021).
SCORES = {"forgetting": "high", "aum": "low", "confidence": "low", "variability": "high", "margin": "low",
          "el2n": "high", "grand": "high"}


def reads_cep(config: "SelectionConfig") -> bool:
    """Whether the rule reads the pruning probe's disagreements: ``prac`` and ``cep``, and a sized rule given no size
    (it keeps PrAC's number of examples, which counts CEP). PrAC-IMP runs its probes only then."""
    return config.rule in ("prac", "cep") or (config.rule in SIZED_RULES and config.size_for(1) is None)


class EmptySelectionError(ConfigError):
    """A rule selected no example."""


@dataclass(frozen=True)
class SelectionConfig(ConfigBase):
    """How the kept subset is chosen."""

    rule: str = option("prac", "selection rule (prac, cet, cep, random, topk-forgetting, highest, lowest, ccs)",
                       metavar="RULE")
    forgetting_threshold: int = option(0, "E_F: CET keeps examples forgotten more than this many times")
    never_learned: str = option("keep", "forgetting score of never-learned examples: keep (infinite, PrAC), "
                                        "count-presentations (Toneva et al.), drop (zero, DeepCore)",
                                choices=NEVER_LEARNED_POLICIES)
    class_balance: bool = option(False, "make per-class counts proportional to the class frequencies")
    size: int | None = option(None, "random / topk-forgetting: examples to keep (default: the PrAC set's size)")
    random_seed: int = option(0, "seed of the random rule")
    fraction: float | None = option(None, "random / topk-forgetting: the fraction of the training split to keep "
                                          "(rounded; instead of --size)")
    score: str = option("forgetting", "highest / lowest / ccs: the per-example score they rank by (forgetting, "
                                      "aum, confidence, variability, margin, el2n, grand)", choices=tuple(SCORES),
                        added_later=True)
    ccs_cutoff: float = option(0.0, "ccs: the fraction of the hardest examples dropped before stratifying (beta, "
                                    "Zheng et al. 2023: 0 at low pruning rates, larger at high ones)",
                               added_later=True)
    ccs_strata: int = option(50, "ccs: the number of equal-width score strata (Zheng et al. 2023: 50)",
                             added_later=True)

    def __post_init__(self) -> None:
        require_seed(self.random_seed, "random_seed")
        require(self.forgetting_threshold >= 0, f"forgetting_threshold must not be negative, got {self.forgetting_threshold}")
        require(self.size is None or self.size > 0, f"size must be a positive integer, got {self.size}")
        require(self.fraction is None or 0 < self.fraction <= 1, f"fraction must lie in (0, 1], got {self.fraction}")
        require(self.size is None or self.fraction is None, "give size or fraction, not both")
        require(0.0 <= self.ccs_cutoff < 1.0, f"ccs_cutoff must lie in [0, 1), got {self.ccs_cutoff}")
        require(isinstance(self.ccs_strata, int) and self.ccs_strata >= 1,
                f"ccs_strata must be a positive integer, got {self.ccs_strata}")

    def size_for(self, num_examples: int) -> int | None:
        """The number of examples a sized rule keeps of ``num_examples`` (``None``: the PrAC set's size)."""
        if self.fraction is not None:
            return max(1, round(self.fraction * num_examples))
        return self.size


@dataclass(frozen=True)
class SelectionInputs:
    """What the rules read, one entry per example id of the training split."""

    labels: np.ndarray                           # int64
    forgetting_events: np.ndarray                # int
    presentations: np.ndarray                    # int
    never_learned: np.ndarray                    # bool
    margin: np.ndarray | None = None             # float: lower = harder (tie-break)
    cep_disagreements: np.ndarray | None = None  # int, None = no probe was run
    #: further per-example scores by name (aum, confidence, variability, el2n, grand), where they were computed
    scores: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.labels)
        named = [(f"score {k!r}", v) for k, v in self.scores.items()]
        for name, value in [*((k, getattr(self, k)) for k in ("forgetting_events", "presentations", "never_learned",
                                                               "margin", "cep_disagreements")), *named]:
            if value is not None and len(value) != n:
                raise ConfigError(f"{name} has {len(value)} entries, labels {n}")

    @classmethod
    def from_statistics(cls, labels: np.ndarray, statistics, cep_disagreements: np.ndarray | None = None,
                        scores: Mapping[str, np.ndarray] | None = None) -> "SelectionInputs":
        """From an :class:`~pracset.stats.ExampleStatistics` (its AUM and data-map columns where it has them) and
        further ``scores`` by name (EL2N, GraNd)."""
        recorded = {name: np.asarray(getattr(statistics, name)) for name in ("aum", "confidence", "variability")
                    if getattr(statistics, name, None) is not None}
        return cls(labels=np.asarray(labels), forgetting_events=np.asarray(statistics.forgetting_events),
                   presentations=np.asarray(statistics.presentations), never_learned=np.asarray(statistics.never_learned),
                   margin=np.asarray(statistics.margin), cep_disagreements=cep_disagreements,
                   scores={**recorded, **(scores or {})})

    @classmethod
    def from_manifest(cls, manifest) -> "SelectionInputs":
        """From a manifest (a :class:`~pracset.manifest.Manifest`, as :func:`pracset.read_manifest` gives):
        select again with another rule.

        The manifest package builds on this one (a manifest records a selection), so this takes a manifest
        already read, never its path.
        """
        if not callable(getattr(manifest, "column", None)):
            raise ConfigError(f"SelectionInputs.from_manifest takes a Manifest, got {type(manifest).__name__}; "
                              "read a manifest file with pracset.read_manifest(path)")
        cep = manifest.column("cep_disagreements")
        names = [name for name, end in SCORES.items() if name not in ("forgetting", "margin")]
        present = set(manifest.table.column_names) if hasattr(manifest, "table") else set()
        return cls(labels=manifest.column("label"), forgetting_events=manifest.column("forgetting_events"),
                   presentations=manifest.column("presentations"), never_learned=manifest.column("never_learned"),
                   margin=manifest.column("margin"),
                   cep_disagreements=None if np.isnan(np.asarray(cep, dtype=float)).all() else cep,
                   scores={name: np.asarray(manifest.column(name), dtype=np.float64) for name in names
                           if name in present})

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Selection:
    """The outcome of a rule."""

    rule: str
    params: dict
    selected: np.ndarray   # bool (N,)
    scores: np.ndarray     # float64 (N,), higher = more critical
    reasons: np.ndarray    # str (N,), "" where not selected
    counts: dict = field(default_factory=dict)

    @property
    def ids(self) -> np.ndarray:
        """Kept example ids, ascending."""
        return np.flatnonzero(self.selected).astype(np.int64)

    @property
    def size(self) -> int:
        return int(self.selected.sum())

    def describe(self) -> dict:
        reasons, counts = np.unique(self.reasons[self.selected], return_counts=True)
        return {"rule": self.rule, "params": self.params, "selected": self.size, "total": len(self.selected),
                "fraction": round(self.size / len(self.selected), 6),
                "reasons": {str(r): int(c) for r, c in zip(reasons, counts)}, **self.counts}


def forgetting_scores(inputs: SelectionInputs, never_learned: str) -> np.ndarray:
    """Forgetting events as float, never-learned examples scored by the policy."""
    scores = inputs.forgetting_events.astype(np.float64)
    nl = inputs.never_learned.astype(bool)
    if never_learned == "keep":
        scores[nl] = np.inf
    elif never_learned == "count-presentations":
        scores[nl] = inputs.presentations[nl]
    elif never_learned == "drop":
        scores[nl] = 0.0
    else:
        raise ConfigError(f"unknown never_learned policy {never_learned!r}; valid: {', '.join(NEVER_LEARNED_POLICIES)}")
    return scores


def _cet(inputs: SelectionInputs, config: SelectionConfig) -> tuple[np.ndarray, np.ndarray]:
    scores = forgetting_scores(inputs, config.never_learned)
    return (inputs.presentations > 0) & (scores > config.forgetting_threshold), scores


def _cep(inputs: SelectionInputs) -> np.ndarray:
    if inputs.cep_disagreements is None:
        raise ConfigError("this rule needs the pruning probe's results (CEP); run the probe at one or more sparsities")
    return np.asarray(inputs.cep_disagreements)


def _empty(rule: str, why: str) -> EmptySelectionError:
    return EmptySelectionError(f"the {rule} rule selected no examples: {why}")


def _rank(scores: np.ndarray, inputs: SelectionInputs, candidates: np.ndarray) -> np.ndarray:
    """Candidate ids ordered most-critical first: score desc, then margin asc, then id."""
    margin = inputs.margin if inputs.margin is not None else np.zeros(len(inputs))
    margin = np.where(np.isnan(margin), np.inf, margin)
    ids = np.flatnonzero(candidates)
    order = np.lexsort((ids, margin[ids], -scores[ids]))
    return ids[order]


def _quotas(labels: np.ndarray, total: int) -> dict[int, int]:
    """Per-class counts proportional to the class frequencies, summing to ``total`` (largest remainder)."""
    classes, freq = np.unique(labels, return_counts=True)
    exact = freq * total / len(labels)
    base = np.floor(exact).astype(int)
    short = total - base.sum()
    order = np.lexsort((classes, -(exact - base)))  # biggest remainder first, then lower class
    base[order[:short]] += 1
    return {int(c): int(q) for c, q in zip(classes, base)}


def _balance(selected: np.ndarray, scores: np.ndarray, reasons: np.ndarray, inputs: SelectionInputs) -> tuple[np.ndarray, np.ndarray]:
    quotas = _quotas(inputs.labels, int(selected.sum()))
    new_selected = np.zeros_like(selected)
    new_reasons = np.full(len(selected), "", dtype=object)
    for cls, quota in quotas.items():
        in_class = inputs.labels == cls
        # Selected examples of the class first (in score order), then the rest by score.
        first = _rank(scores, inputs, in_class & selected)
        rest = _rank(scores, inputs, in_class & ~selected)
        keep = np.concatenate([first, rest])[:quota]
        new_selected[keep] = True
        new_reasons[keep] = np.where(selected[keep], reasons[keep], "balance")
    return new_selected, new_reasons


def _finish(rule: str, config: SelectionConfig, inputs: SelectionInputs, selected: np.ndarray,
            scores: np.ndarray, reasons: np.ndarray, counts: dict) -> Selection:
    if config.class_balance:
        selected, reasons = _balance(selected, scores, reasons, inputs)
    reasons = np.where(selected, reasons, "").astype(object)
    params = {k: v for k, v in vars(config).items() if k != "rule"}
    return Selection(rule, params, selected, scores.astype(np.float64), reasons.astype(str), counts)


def select_prac(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """PrAC: CET (forgotten more than the threshold) union CEP (a pruned model disagrees with the dense one)."""
    cet, fscores = _cet(inputs, config)
    cep = _cep(inputs) > 0 if inputs.cep_disagreements is not None else np.zeros(len(inputs), dtype=bool)
    selected = cet | cep
    if not selected.any():
        raise _empty("prac", f"no example was forgotten more than E_F={config.forgetting_threshold} times "
                             "(never-learned included per the policy) and the pruned models agreed with the dense "
                             "model everywhere; train longer, lower the threshold or probe higher sparsities")
    reasons = np.select([cet & cep, cet, cep], ["both", "cet", "cep"], "").astype(object)
    disagreements = inputs.cep_disagreements if inputs.cep_disagreements is not None else 0
    scores = np.where(np.isinf(fscores), np.inf, fscores + disagreements)
    return _finish("prac", config, inputs, selected, scores, reasons,
                   {"cet": int(cet.sum()), "cep": int(cep.sum()), "both": int((cet & cep).sum())})


def select_cet(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """CET only: examples forgotten more than the threshold (never-learned ones by the policy)."""
    cet, scores = _cet(inputs, config)
    if not cet.any():
        raise _empty("cet", f"no example was forgotten more than E_F={config.forgetting_threshold} times")
    return _finish("cet", config, inputs, cet, scores, np.where(cet, "cet", "").astype(object), {"cet": int(cet.sum())})


def select_cep(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """CEP only: examples on which a pruned model's prediction differs from the dense model's."""
    disagreements = _cep(inputs)
    cep = disagreements > 0
    if not cep.any():
        raise _empty("cep", "the pruned models agreed with the dense model on every example; probe higher sparsities")
    return _finish("cep", config, inputs, cep, disagreements.astype(np.float64),
                   np.where(cep, "cep", "").astype(object), {"cep": int(cep.sum())})


def check_size(config: SelectionConfig, num_examples: int) -> None:
    """Refuse a ``size`` larger than the training split (callers check it before training, not after).

    Only the rules that keep a given number of examples read ``size``.
    """
    if config.rule in SIZED_RULES and config.size is not None and config.size > num_examples:
        raise ConfigError(f"size {config.size} exceeds the {num_examples} training examples")


def _budget(inputs: SelectionInputs, config: SelectionConfig) -> int:
    size = config.size_for(len(inputs))
    if size is not None:
        check_size(config, len(inputs))
        return size
    return select_prac(inputs, SelectionConfig(forgetting_threshold=config.forgetting_threshold,
                                               never_learned=config.never_learned)).size


def select_random(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """A seeded uniform random subset (PrAC's size unless ``size`` is given): the control a PrAC set must beat."""
    k = _budget(inputs, config)
    draw = np.random.default_rng(config.random_seed).random(len(inputs))
    selected = np.zeros(len(inputs), dtype=bool)
    selected[np.argsort(-draw, kind="stable")[:k]] = True  # with class_balance, _finish re-picks by draw per class
    return _finish("random", config, inputs, selected, draw, np.where(selected, "random", "").astype(object), {})


def select_topk_forgetting(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """The ``size`` examples with the most forgetting events (ties: smaller margin first, then lower id)."""
    k = _budget(inputs, config)
    scores = forgetting_scores(inputs, config.never_learned)
    selected = np.zeros(len(inputs), dtype=bool)
    selected[_rank(scores, inputs, np.ones(len(inputs), dtype=bool))[:k]] = True
    return _finish("topk-forgetting", config, inputs, selected, scores,
                   np.where(selected, "topk", "").astype(object), {})
