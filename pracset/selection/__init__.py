"""Which training examples to keep: PrAC and the baselines it is compared against.

Every rule reads the same inputs (:class:`SelectionInputs`: the recorder's
statistics, the pruning probe's disagreement counts, the labels) and returns a
:class:`Selection`: the kept ids, a per-example score (higher = more critical,
kept first) and a per-example reason. An empty selection is an error that
says why; it never silently falls back to "everything" (the official PrAC
code does).

Rules (``SELECTION_RULES``):

``prac``
    CET union CEP (Zhang et al. 2021). CET = presented examples whose
    forgetting score exceeds ``forgetting_threshold`` (E_F); CEP = examples
    on which a pruned model disagreed with the dense one. Reason ``cet``,
    ``cep`` or ``both``. Score = forgetting score + number of disagreeing
    probe sparsities.
``cet``, ``cep``
    One half of PrAC alone (score: the forgetting score, resp. disagreements).
``random``
    A seeded uniform sample of ``size`` examples (default: the size PrAC
    selects from the same inputs); score = the random draw.
``topk-forgetting``
    The ``size`` examples with the highest forgetting score (ties: smaller
    margin, i.e. harder, first, then lower id).
``highest``, ``lowest``, ``ccs``
    Over any per-example ``score`` (forgetting, AUM, confidence, variability,
    margin, EL2N, GraNd): the ``size`` highest, the ``size`` lowest, or
    coverage-centric stratified sampling (Zheng et al. 2023);
    :mod:`pracset.selection.by_score`.

Never-learned examples (presented, never correct) get the forgetting score
the ``never_learned`` policy says: ``keep`` = +inf (PrAC's code: always
critical), ``count-presentations`` = the number of presentations (Toneva et
al.'s reference code, #epochs), ``drop`` = 0 (DeepCore: removed first).

``class_balance`` makes the per-class counts proportional to the classes'
frequencies in the training split (largest-remainder rounding) at the same
total size: within each class the highest-scored examples are kept, classes
short of critical examples are filled with their next-highest-scored ones
(reason ``balance``), and classes with a surplus keep only their quota.
``ccs`` instead draws each class's quota by coverage-centric sampling over
that class's own examples (:func:`~pracset.selection.by_score.select_ccs`).
"""

from __future__ import annotations

from typing import Callable

from pracset.registry import Registry
from pracset.selection.by_score import score_values, select_ccs, select_highest, select_lowest
from pracset.selection.core import (NEVER_LEARNED_POLICIES, REASONS, SCORES, SIZED_RULES, EmptySelectionError, Selection,
                                    reads_cep,
                                    SelectionConfig, SelectionInputs, check_size, forgetting_scores, select_cep,
                                    select_cet, select_prac, select_random, select_topk_forgetting)

SELECTION_RULES: Registry[Callable[[SelectionInputs, SelectionConfig], Selection]] = Registry("selection rule", {
    "prac": select_prac,
    "cet": select_cet,
    "cep": select_cep,
    "random": select_random,
    "topk-forgetting": select_topk_forgetting,
    "highest": select_highest,
    "lowest": select_lowest,
    "ccs": select_ccs,
})


def select(inputs: SelectionInputs, config: SelectionConfig) -> Selection:
    """Apply ``config.rule`` to ``inputs``."""
    return SELECTION_RULES.get(config.rule)(inputs, config)


__all__ = ["reads_cep", "EmptySelectionError", "NEVER_LEARNED_POLICIES", "REASONS", "SCORES", "SELECTION_RULES", "SIZED_RULES",
           "Selection", "SelectionConfig", "SelectionInputs", "check_size", "forgetting_scores", "score_values",
           "select"]
