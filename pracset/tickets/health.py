"""Degenerate training, said and never silent: a network near chance, or a round with too small a budget.

Two rules, each working for any number of classes:

- **Near chance.** A network *near chance* closes less than a tenth of the gap
  between always guessing the test split's majority class and a perfect score:
  ``accuracy <= m + (1 - m) / 10``, with ``m`` the majority-class rate of the
  test split (10 balanced classes: 0.19; 3 balanced classes: 0.4; 2 balanced
  classes: 0.55). A dense network near chance has *collapsed*: it is no
  reference, and no ticket is said to match it. An IMP round near chance is
  *degenerate*: the masks pruned from it come from an untrained network.
- **Budget floor.** A round whose planned training is below
  :data:`MIN_ROUND_EPOCHS` epochs or :data:`MIN_ROUND_STEPS` optimizer steps is
  degenerate even when it happens to score well: the official budget
  (epochs x |P|/N, rounded down) gives a short recipe's rounds a single epoch.
  Early-Bird stopping does not count against the floor: it is the rule
  working, not a budget too small to learn.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from pracset.data import num_batches
from pracset.errors import DegenerateTrainingWarning
from pracset.train.config import TrainConfig
from pracset.layouts import StageMetrics

log = logging.getLogger(__name__)

#: A round planned for fewer epochs than this is degenerate.
MIN_ROUND_EPOCHS = 2
#: A round planned for fewer optimizer steps than this is degenerate.
MIN_ROUND_STEPS = 50
#: The share of the gap between the majority-class rate and a perfect score a network must close not to be
#: near chance.
CHANCE_GAP_SHARE = 0.1


def majority_rate(labels) -> float:
    """The accuracy of always guessing the most common class of ``labels`` (the test split's)."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size == 0:
        return 0.0
    return float(np.bincount(labels).max() / labels.size)


def chance_threshold(majority: float) -> float:
    """The accuracy at or below which a network is near chance, given the majority-class rate ``majority``."""
    return majority + CHANCE_GAP_SHARE * (1.0 - majority)


def near_chance(accuracy: float, majority: float) -> bool:
    """Whether ``accuracy`` closes less than :data:`CHANCE_GAP_SHARE` of the gap from ``majority`` to 1."""
    return accuracy <= chance_threshold(majority) + 1e-12


def round_problems(metrics: dict, *, batch_size: int, drop_last: bool, start_step: int, majority: float) -> list[str]:
    """Why a trained round is degenerate (empty: it is not), from its ``metrics.json``.

    The planned budget is the recipe's epochs over the examples it trained
    on, less the steps before ``start_step`` (a rewound round continues the
    schedule from there).
    """
    problems = []
    epochs, examples = int(metrics.get("epochs", 0)), int(metrics.get("examples", 0))
    planned = num_batches(examples, batch_size, drop_last) * epochs - start_step
    short = ([f"{epochs} epoch(s), below the floor of {MIN_ROUND_EPOCHS}"] if epochs < MIN_ROUND_EPOCHS else []) + \
            ([f"{planned} steps, below the floor of {MIN_ROUND_STEPS}"] if planned < MIN_ROUND_STEPS else [])
    if short:
        problems.append(f"its budget is too small to learn from ({'; '.join(short)})")
    accuracy = (metrics.get("final") or {}).get("test_accuracy")
    if accuracy is not None and near_chance(accuracy, majority):
        problems.append(f"it ended near chance (test accuracy {accuracy:.4f}, at most "
                        f"{chance_threshold(majority):.4f} with the majority class at {majority:.4f})")
    return problems


def warn(message: str) -> None:
    """Say ``message`` in the log and through Python's :mod:`warnings` (a :class:`DegenerateTrainingWarning`)."""
    log.warning(message)
    warnings.warn(message, DegenerateTrainingWarning, stacklevel=3)


def dense_collapsed(accuracy: float, majority: float) -> bool:
    """A dense network near chance (:func:`near_chance`, against the test split's majority-class rate
    ``majority``) has collapsed, e.g. diverged at too high a learning rate."""
    return near_chance(accuracy, majority)


class RoundHealth:
    """Flags degenerate rounds (:mod:`pracset.tickets.health`) in their rows, and the masks pruned from them.

    A row gets ``degenerate`` (why the round's own training is degenerate)
    and ``mask_from_degenerate_round`` (the first degenerate round its mask
    descends from); each is said once through the log and :mod:`warnings`.
    """

    def __init__(self, layout, train: TrainConfig, start_step: int, num_rounds: int, majority: float,
                 dense_start_step: int = 0):
        """``start_step``: where a pruned round's schedule starts (``dense_start_step``: round 0's); ``majority``:
        the test split's majority rate."""
        self.layout, self.train, self.start_step, self.dense_start_step = layout, train, start_step, dense_start_step
        self.num_rounds, self.majority = num_rounds, majority
        self.first_degenerate: int | None = None

    def assess(self, r: int, metrics: StageMetrics | None, row: dict) -> None:
        """Flag ``row`` (round ``r``'s), given the round's own ``metrics`` (``None``: the round did not train)."""
        if self.first_degenerate is not None:
            row["mask_from_degenerate_round"] = self.first_degenerate
        if metrics is None:
            return
        problems = round_problems(metrics.to_dict(), batch_size=self.train.batch_size, drop_last=self.train.drop_last,
                                  start_step=self.dense_start_step if r == 0 else self.start_step, majority=self.majority)
        if not problems:
            return
        row["degenerate"] = problems
        if self.first_degenerate is None:
            self.first_degenerate = r
        later = (f"; every mask pruned after it (rounds {r + 1} on) descends from a network that may not have "
                 f"learned" if r < self.num_rounds else "")
        warn(f"{self.layout.round(r).name} is degenerate: {'; '.join(problems)}{later}")


def run_warnings(rows: list[dict]) -> list[str]:
    """The summary's ``warnings``: one sentence per degenerate round and per collapsed dense reference."""
    out = []
    for row in rows:
        for problem in row.get("degenerate", []):
            out.append(f"round {row['round']} is degenerate: {problem}")
        if row.get("round") == 0 and row.get("dense_collapsed"):
            out.append(f"the dense reference collapsed (test accuracy {row['dense_accuracy']:.4f}): no ticket is "
                       "said to match it")
    masked = [row["round"] for row in rows if "mask_from_degenerate_round" in row]
    if masked:
        out.append(f"the masks of rounds {', '.join(map(str, masked))} were pruned from a degenerate round")
    return out
