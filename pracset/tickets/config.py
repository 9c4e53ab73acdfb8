"""Configuration of IMP with rewinding and of PrAC-IMP's additions."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Mapping

from pracset.config import ConfigBase, option, require
from pracset.data.loader import num_batches
from pracset.errors import ConfigError
from pracset.mask import PRUNABLE_CHOICES, Mask
from pracset.sparse.pruning import RANKING_CHOICES
from pracset.train.config import TrainConfig

#: How a PrAC-IMP round on a subset P of N examples is budgeted.
BUDGET_RULES = ("official", "linear", "full")
#: A rewind point: a count of training iterations (``it``) or epochs (``ep``), open_lth's convention.
REWIND_UNITS = {"it": "iterations", "ep": "epochs"}


def parse_rewind(point: str) -> tuple[int, str]:
    """``"500it"`` -> ``(500, "it")``, ``"3ep"`` -> ``(3, "ep")``; anything else is refused with one line."""
    match = re.fullmatch(r"\s*(\d+)\s*(it|ep)\s*", str(point))
    if match is None:
        raise ConfigError(f"rewind must be a count of iterations or epochs such as 500it or 3ep "
                          f"(0it = the initialisation), got {point!r}")
    return int(match.group(1)), match.group(2)


#: When the sanity-check controls of a ticket train together as one packed job.
PACK_CHOICES = ("auto", "on", "off")

#: Which PrAC-IMP masks are trained on the full split as tickets.
EVALUATE_CHOICES = ("final", "every-round", "none")

#: The smallest fraction of the weights IMP's compound pruning may keep: after r rounds of ``prune_fraction``
#: p a mask keeps (1 - p)^r of them, and rounds past the one where that falls below this are refused before
#: anything trains (the mask would be empty for any model under a million weights; the model's own count is
#: checked too, :meth:`IMPConfig.check_rounds_fit`).
MIN_KEPT_FRACTION = 1e-6


def max_rounds(prune_fraction: float) -> int:
    """The most IMP rounds of ``prune_fraction`` each whose compound pruning keeps at least
    :data:`MIN_KEPT_FRACTION` of the weights (61 at the default 0.2)."""
    return max(1, math.floor(math.log(MIN_KEPT_FRACTION) / math.log(1 - prune_fraction) + 1e-9))


def kept_fraction(prune_fraction: float, rounds: int) -> float:
    """``(1 - prune_fraction) ** rounds``, the fraction of the weights ``rounds`` IMP prunes keep (0.0 where that
    underflows, never an OverflowError for an absurd count)."""
    return (1 - prune_fraction) ** rounds if rounds < 1 << 20 else 0.0


#: How IMP uses a manifest's set (``IMPConfig.manifest_use``).
MANIFEST_USES = ("rounds", "pretrain")


@dataclass(frozen=True)
class IMPConfig(ConfigBase):
    """Iterative magnitude pruning with rewinding (and PrAC-IMP's additions).

    Early-Bird's own settings (eps, queue length, ...) are an
    :class:`~pracset.sparse.early_bird.EarlyBirdConfig`, shared with
    ``pracset build``; here is only whether PrAC-IMP's rounds use it.
    """

    sparsity: float = option(0.9, "target sparsity: IMP runs enough rounds to reach it (unless --rounds)")
    rounds: int | None = option(None, "pruning rounds (default: enough to reach --sparsity)")
    prune_fraction: float = option(0.2, "fraction of the remaining weights pruned per round")
    ranking: str = option("global", "how weights are ranked for pruning: all masked tensors together (global) "
                                    "or each on its own (layerwise)", choices=RANKING_CHOICES)
    prunable: str = option("all", "which weights may be pruned: all conv+linear, or conv only (official PrAC code)",
                           choices=PRUNABLE_CHOICES)
    dense_layers: tuple[str, ...] = option((), "layers left dense (module or parameter names)")
    output_rate: float | None = option(None, "prune the output layer at this fraction per round instead "
                                             "(the LTH paper: half the rate)")
    rewind: str = option("0it", "the rewind point: Nit (after N training iterations) or Nep (after N epochs), "
                                "open_lth's convention; 0it = the initialisation", metavar="POINT")
    controls: bool = option(False, "also train the sanity-check controls of every ticket (random re-init, random mask)")
    tolerance: float = option(0.005, "a ticket matches dense when its accuracy is at most this much lower")
    budget: str = option("official", "PrAC-IMP round budget on a subset P: official = epochs x |P|/N "
                                     "(iterations fall as (|P|/N)^2), linear = the full epochs (iterations "
                                     "fall as |P|/N), full = epochs x N/|P| (about a full-data round's "
                                     "iterations: no saving, a control for the set alone; Early-Bird, which "
                                     "counts epochs, may stop it first)", choices=BUDGET_RULES)
    early_bird: bool = option(True, "PrAC-IMP: stop every round early once its mask settles (settings: --early-bird-*)")
    pack_controls: str = option("auto", "train models that share a recipe and a step count as one packed job (one "
                                        "vmap-ed network; equal to one by one up to float rounding): a ticket with "
                                        "its controls, and in a pipeline full-data IMP's seeds; auto = on one CUDA "
                                        "process, for registered models of at most 2M parameters (launch-bound), "
                                        "without TensorBoard", choices=PACK_CHOICES, added_later=True)
    manifest_use: str = option("rounds", "how imp uses --manifest: rounds (every round, ticket and control trains "
                                         "on its set: IMP on a subset) or pretrain (the Data-Diet protocol, Paul et "
                                         "al. 2022: only the training up to the rewind point, given in epochs, runs "
                                         "on the set; IMP continues on the full split from there)",
                               choices=MANIFEST_USES, added_later=True)
    evaluate: str = option("final", "PrAC-IMP: train on the full split (and evaluate) only the final ticket, the "
                                    "ticket of every round (for an accuracy-against-sparsity curve), or none "
                                    "(only the sets and masks)",
                           choices=EVALUATE_CHOICES)

    def __post_init__(self) -> None:
        require(0 < self.sparsity < 1, f"sparsity must lie in (0, 1), got {self.sparsity}")
        require(self.rounds is None or self.rounds > 0, f"rounds must be a positive integer, got {self.rounds}")
        require(0 < self.prune_fraction < 1, f"prune_fraction must lie in (0, 1), got {self.prune_fraction}")
        limit, rounds = max_rounds(self.prune_fraction), self.num_rounds
        if rounds > limit:
            raise ConfigError(f"{rounds} IMP rounds at prune_fraction {self.prune_fraction:g} would keep "
                              f"{kept_fraction(self.prune_fraction, rounds):.3g} of the weights; from round "
                              f"{limit + 1} on the mask keeps under {MIN_KEPT_FRACTION:g} of them (empty for a model "
                              f"under a million weights): at most {limit} rounds at this prune_fraction"
                              + ("" if self.rounds is not None else " (lower --sparsity)"))
        require(self.output_rate is None or 0 <= self.output_rate < 1,
                f"output_rate must lie in [0, 1), got {self.output_rate}")
        amount, unit = parse_rewind(self.rewind)
        object.__setattr__(self, "rewind", f"{amount}{unit}")  # one spelling per point: " 03ep" is "3ep"

    def rewind_step_on(self, examples: int, total: int, train: TrainConfig) -> int:
        """The iteration of round 0 that later rounds rewind to, when it trains on ``examples`` of ``total``.

        ``Nep`` is N epochs of round 0's own data; ``Nit`` on a subset is scaled
        by ``examples / total``, so it falls at the same point of training in
        epochs as on the full split (a subset's round 0 is shorter).
        """
        amount, unit = parse_rewind(self.rewind)
        if unit == "ep":
            return amount * num_batches(examples, train.batch_size, train.drop_last)
        return amount if examples == total else round(amount * examples / total)

    @property
    def num_rounds(self) -> int:
        """Rounds whose compound pruning first reaches ``sparsity``."""
        if self.rounds is not None:
            return self.rounds
        return max(1, math.ceil(math.log(1 - self.sparsity) / math.log(1 - self.prune_fraction) - 1e-9))

    def check_rounds_fit(self, num_weights: int, layers: Mapping[str, int] | None = None) -> None:
        """Refuse, before anything trains, rounds whose pruning would leave the mask (or one of its layers) empty.

        ``num_weights`` prunable weights: after round r the mask keeps ``num_weights * (1 - p)^r`` of them.
        ``layers`` (name: weight count, in the mask's order) adds the layers pruned on their own, whose counts
        are known exactly in advance: the output layer with ``output_rate`` and, with ``ranking="layerwise"``,
        every layer; each round prunes ``round(rate * kept)`` of a layer, as :func:`magnitude_prune` does.
        Under global ranking how a layer fares depends on its weights: :func:`check_layers_kept` catches it
        when it happens.
        """
        for r in range(1, self.num_rounds + 1):
            kept = num_weights * kept_fraction(self.prune_fraction, r)
            if kept < 1:
                raise ConfigError(f"IMP round {r} of {self.num_rounds} would leave the mask empty: pruning "
                                  f"{self.prune_fraction:g} per round keeps {kept:.3g} of the model's {num_weights} "
                                  f"prunable weights; at most {r - 1} rounds for this model"
                                  + ("" if self.rounds is not None else " (lower --sparsity)"))
        names = list(layers or {})
        alone = {name: self.prune_fraction for name in names} if self.ranking == "layerwise" else {}
        if self.output_rate is not None and names:
            alone[names[-1]] = self.output_rate  # the last prunable tensor is the output layer
        for name, rate in alone.items():
            kept = layers[name]
            for r in range(1, self.num_rounds + 1):
                kept -= round(rate * kept)
                if kept < 1:
                    raise ConfigError(f"IMP round {r} of {self.num_rounds} would leave layer {name} empty: pruning "
                                      f"{rate:g} of it per round keeps none of its {layers[name]} weights; at most "
                                      f"{r - 1} rounds for this model")


def check_layers_kept(mask: Mask, pruned_from: str) -> None:
    """Stop the rounds, in one line, when pruning has emptied a layer (global ranking can): a network with a
    layer of no weights computes the same output for every input and cannot learn. The rounds before stay on
    disk, but the run cannot be finished with these settings (its summary is not written)."""
    empty = [name for name in mask if not bool(mask[name].any())]  # one host sync per layer, once a round
    if empty:
        raise ConfigError(f"the mask pruned from {pruned_from} keeps no weight of layer {empty[0]}"
                          + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
                          + ": the network could not learn, so the rounds stop; the rounds so far stay on disk, but "
                          "this run cannot be continued with these settings: run again in another --out with fewer "
                          "rounds, a lower prune_fraction or ranking = \"layerwise\" (which keeps every layer)")


def round_budget(train: TrainConfig, fraction: float, rule: str) -> TrainConfig:
    """The recipe of a PrAC-IMP round on a subset holding ``fraction`` of the training split.

    ``official`` scales the epochs by the fraction (the official code; with
    fewer iterations per epoch too, iterations fall as the fraction squared),
    ``linear`` keeps the epochs (iterations fall as the fraction), ``full``
    scales them by ``1 / fraction``, halves rounded up (about as many
    iterations as a round on the full split: an ablation control that shows
    what the smaller set costs in accuracy when it saves nothing); it
    evaluates on the test split as often as the recipe does in full-data
    epochs (``eval_every`` scaled alike), not after every short epoch.
    """
    if rule == "linear":
        return train
    if rule == "full":
        scale = 1 / fraction
        return replace(train, epochs=max(1, math.floor(train.epochs * scale + 0.5)),
                       eval_every=max(1, math.floor(train.eval_every * scale + 0.5)))
    return replace(train, epochs=max(1, int(train.epochs * fraction)))
