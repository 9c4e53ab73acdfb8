"""Rules over any per-example score: keep the highest, keep the lowest, or coverage-centric stratified sampling.

``highest`` / ``lowest``
    The ``size`` (or ``fraction``) examples with the highest / lowest
    ``score`` (ties: lower id first); examples the score never measured
    (NaN: never presented) come last. For forgetting, EL2N and GraNd the
    highest are the hardest (Paul et al. 2021 keep them); ``lowest`` keeps the
    easy end (the Data-Diet protocol's easiest examples). For AUM and
    confidence it is the other way round. The manifest's ``score`` column is
    the rule's ranking key, higher kept first (``lowest``: the score negated).
``ccs``
    Coverage-centric coreset selection (Zheng et al., ICLR 2023): drop the
    hardest ``ccs_cutoff`` fraction of the measured examples (the hard end is
    the score's, :data:`~pracset.selection.core.SCORES`), split the rest into
    ``ccs_strata`` strata of equal score width, and fill the budget stratum by
    stratum from the smallest: each takes ``min(its size, budget left //
    strata left)`` examples drawn at random (``random_seed``), so sparse
    regions of the score are covered where top-k would skip them. With
    ``class_balance`` every class runs this over its own examples for its
    share of the budget (proportional to its frequency). Its ``score`` column
    is the score itself; its reason is ``random`` (a stratified draw), so
    older readers accept the manifest.
"""

from __future__ import annotations

import numpy as np

from pracset.errors import ConfigError
from pracset.selection.core import (SCORES, Selection, SelectionConfig, SelectionInputs, _budget, _finish,
                                    _quotas, forgetting_scores)

_HOW_TO_GET = {
    "aum": "the recorder writes aum, confidence and variability: build the manifest (or run the round) again with "
           "this pracset",
    "el2n": "build the manifest with --scores el2n (pracset build), which trains the short runs EL2N needs",
    "grand": "build the manifest with --scores grand (pracset build)",
}


def score_values(inputs: SelectionInputs, name: str, never_learned: str = "keep") -> np.ndarray:
    """The per-example ``name`` score as float64, NaN where it was never measured (never presented)."""
    if name not in SCORES:
        raise ConfigError(f"unknown score {name!r}; valid: {', '.join(SCORES)}")
    if name == "forgetting":
        values = forgetting_scores(inputs, never_learned)
        return np.where(np.asarray(inputs.presentations) > 0, values, np.nan)
    if name == "margin":
        if inputs.margin is None:
            raise ConfigError("these inputs have no margin")
        return np.asarray(inputs.margin, dtype=np.float64)
    if name not in inputs.scores:
        how = _HOW_TO_GET.get(name, _HOW_TO_GET["aum"])
        raise ConfigError(f"the {name} score is not in these statistics; {how}")
    return np.asarray(inputs.scores[name], dtype=np.float64)


def _ordered(values: np.ndarray, *, descending: bool) -> np.ndarray:
    """Every id, the highest (``descending``) or lowest value first, ties by lower id, unmeasured (NaN) last."""
    ids = np.arange(len(values))
    missing = np.isnan(values)
    key = np.where(missing, 0.0, -values if descending else values)
    return ids[np.lexsort((ids, key, missing))]


def _ranked(rule: str, inputs: SelectionInputs, config: SelectionConfig, *, descending: bool) -> Selection:
    values = score_values(inputs, config.score, config.never_learned)
    k = _budget(inputs, config)
    selected = np.zeros(len(inputs), dtype=bool)
    selected[_ordered(values, descending=descending)[:k]] = True
    key = values if descending else -values
    ranking = np.where(np.isnan(values), -np.inf, key)  # higher kept first, as every rule's score column
    return _finish(rule, config, inputs, selected, ranking, np.where(selected, "topk", "").astype(object),
                   {"score": config.score})


def select_highest(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """The ``size`` examples with the highest ``score`` (see the module)."""
    return _ranked("highest", inputs, config, descending=True)


def select_lowest(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """The ``size`` examples with the lowest ``score``: the easy end for forgetting, EL2N and GraNd."""
    return _ranked("lowest", inputs, config, descending=False)


def strata_of(values: np.ndarray, count: int) -> np.ndarray:
    """The stratum (0 .. ``count`` - 1) of each value: ``count`` equal-width bins from its minimum to its maximum
    (the maximum in the last bin; all in stratum 0 when every value is the same)."""
    low, high = float(values.min()), float(values.max())
    if high == low:
        return np.zeros(len(values), dtype=np.int64)
    return np.minimum(np.floor((values - low) / (high - low) * count).astype(np.int64), count - 1)


def _ccs_draw(ids: np.ndarray, values: np.ndarray, k: int, config: SelectionConfig, rng, where: str,
              unmeasured: int) -> tuple[np.ndarray, int, int]:
    """CCS over the measured examples ``ids`` (``unmeasured`` others left out): the hardest ``ccs_cutoff`` of them
    dropped, the rest split into equal-width strata filled from the smallest. Returns the ``k`` ids drawn, the
    count dropped and the number of non-empty strata."""
    hardness = values if SCORES[config.score] == "high" else -values
    hardest_first = ids[np.lexsort((ids, -hardness[ids]))]
    dropped = int(config.ccs_cutoff * len(ids))
    pool = np.sort(hardest_first[dropped:])
    if k > len(pool):
        raise ConfigError(f"ccs keeps {k} examples{where}, but only {len(pool)} remain once the hardest {dropped} "
                          f"(ccs_cutoff {config.ccs_cutoff}) and the {unmeasured} unmeasured ones are left out")
    if k == 0:
        return pool[:0], dropped, 0
    stratum = strata_of(values[pool], config.ccs_strata)
    strata = [pool[stratum == s] for s in range(config.ccs_strata) if (stratum == s).any()]
    chosen, budget = [], k
    while strata:
        smallest = min(range(len(strata)), key=lambda i: (len(strata[i]), i))
        members = strata.pop(smallest)
        take = min(len(members), budget // (len(strata) + 1))
        chosen.append(rng.permutation(members)[:take])
        budget -= take
    return np.concatenate(chosen), dropped, int(len(np.unique(stratum)))


def select_ccs(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """Coverage-centric coreset selection (Zheng et al. 2023) over ``score`` (see the module). With
    ``class_balance`` each class draws its share of the budget (proportional to its frequency) by CCS over its own
    examples: the cutoff and the strata are taken within the class, and a class with too few examples for its
    share is refused (its share is not moved to other classes). The description records ``dropped_hardest``
    (summed over the classes) and ``strata`` (the most non-empty strata of any class)."""
    values = score_values(inputs, config.score, config.never_learned)
    k = _budget(inputs, config)
    measured = ~np.isnan(values)
    rng = np.random.default_rng(config.random_seed)
    if config.class_balance:
        labels = np.asarray(inputs.labels)
        picked = [_ccs_draw(np.flatnonzero(measured & (labels == c)), values, quota, config, rng, f" of class {c}",
                            int((~measured & (labels == c)).sum())) for c, quota in _quotas(labels, k).items()]
    else:
        picked = [_ccs_draw(np.flatnonzero(measured), values, k, config, rng, "", int((~measured).sum()))]
    selected = np.zeros(len(inputs), dtype=bool)
    selected[np.concatenate([ids for ids, _, _ in picked])] = True
    return _finish("ccs", config, inputs, selected, np.where(np.isnan(values), -np.inf, values),
                   np.where(selected, "random", "").astype(object),
                   {"score": config.score, "dropped_hardest": sum(d for _, d, _ in picked),
                    "strata": max(n for _, _, n in picked)})


__all__ = ["score_values", "select_ccs", "select_highest", "select_lowest", "strata_of"]
