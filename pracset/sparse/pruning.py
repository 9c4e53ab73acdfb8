"""Magnitude pruning: global or layer-wise, with exact counts and per-layer rate overrides."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn

from pracset.errors import ConfigError
from pracset.mask import Mask

#: How magnitude pruning ranks the weights (the ``ranking`` choice): ``global``
#: ranks all masked tensors together (the LTH papers' and PrAC's choice);
#: ``layerwise`` ranks, and prunes the same fraction of, each tensor on its own.
#: Which weights may be pruned at all is another choice,
#: :data:`~pracset.mask.PRUNABLE_CHOICES`.
RANKING_CHOICES = ("global", "layerwise")


def check_ranking(ranking: str) -> None:
    """Raise :class:`ConfigError` unless ``ranking`` is one of :data:`RANKING_CHOICES`."""
    if ranking not in RANKING_CHOICES:
        raise ConfigError(f"unknown ranking choice {ranking!r}; valid: {', '.join(RANKING_CHOICES)}")


def _check_fraction(fraction: float, what: str = "prune fraction") -> None:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{what} must lie in [0, 1), got {fraction}")


def smallest_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` smallest entries of a 1-D tensor, ties to the lowest index.

    The same set a stable ``argsort(scores)[:k]`` gives, in O(n) with
    ``kthvalue`` instead of a full sort, and without a host sync. Entries that
    must not be chosen should score ``+inf`` (and ``k`` not exceed the others).
    """
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k <= 0:
        return mask
    if k >= scores.numel():
        return ~mask
    threshold = scores.kthvalue(k).values
    below = scores < threshold
    ties = scores == threshold
    needed = k - below.sum()
    return below | (ties & (torch.cumsum(ties.to(torch.int64), 0) <= needed))


def _prune_smallest(scores: torch.Tensor, keep: torch.Tensor, count: int) -> torch.Tensor:
    """Drop the ``count`` lowest-scored kept entries (ties: lowest flat index first)."""
    if count <= 0:
        return keep.clone()
    # A NaN score (a diverged weight) ranks as 0, pruned first: NaN sorts above +inf, so left as is it would
    # make kthvalue pick already-pruned (+inf) entries and the kept count would be off.
    scores = torch.nan_to_num(scores.flatten().float(), nan=0.0)
    flat = torch.where(keep.flatten(), scores, torch.tensor(float("inf"), device=scores.device))
    return (keep.flatten() & ~smallest_k(flat, count)).view_as(keep)


@torch.no_grad()
def magnitude_prune(model: nn.Module, mask: Mask, fraction: float, *, ranking: str = "global",
                    layer_rates: Mapping[str, float] | None = None) -> Mask:
    """Prune ``fraction`` of the weights ``mask`` still keeps, smallest ``|w|`` first.

    ``ranking="global"`` ranks all masked tensors together (the LTH papers'
    and PrAC's choice); ``"layerwise"`` prunes ``fraction`` of each layer. The
    number pruned is exactly ``round(fraction * remaining)`` (per layer for
    layer-wise). ``layer_rates`` overrides the fraction of named layers, which
    are then pruned on their own (e.g. ``{"fc.weight": 0.1}`` for an output
    layer at half of a 20% rate); the other layers follow ``ranking``.
    """
    _check_fraction(fraction)
    check_ranking(ranking)
    layer_rates = dict(layer_rates or {})
    unknown = sorted(set(layer_rates) - set(mask))
    if unknown:
        raise ConfigError(f"layer rate overrides name layers the mask does not cover: {', '.join(unknown)}; "
                          f"masked layers: {', '.join(mask)}")
    for name, rate in layer_rates.items():
        _check_fraction(rate, f"prune fraction of {name}")
    mask.check_model(model)
    params = dict(model.named_parameters())
    result: dict[str, torch.Tensor] = {}
    shared = [n for n in mask if n not in layer_rates]
    for name, rate in layer_rates.items():
        keep = mask[name].to(params[name].device)
        result[name] = _prune_smallest(params[name].abs(), keep, round(rate * int(keep.sum())))
    if ranking == "layerwise":
        for name in shared:
            keep = mask[name].to(params[name].device)
            result[name] = _prune_smallest(params[name].abs(), keep, round(fraction * int(keep.sum())))
    elif shared:
        scores = torch.cat([params[n].abs().flatten().float() for n in shared])
        keep = torch.cat([mask[n].to(params[n].device).flatten() for n in shared])
        pruned = _prune_smallest(scores, keep, round(fraction * int(keep.sum())))
        offset = 0
        for name in shared:
            size = params[name].numel()
            result[name] = pruned[offset:offset + size].view_as(params[name])
            offset += size
    return Mask({n: result[n] for n in mask})


def prune_to_sparsity(model: nn.Module, mask: Mask, sparsity: float, *, ranking: str = "global") -> Mask:
    """Magnitude-prune, in one shot, to ``sparsity`` of the masked weights pruned.

    Exact overall for ``ranking="global"``; ``"layerwise"`` prunes every layer
    by the same fraction of what it keeps, which reaches ``sparsity`` up to
    rounding.
    """
    _check_fraction(sparsity, "sparsity")
    kept_now = mask.num_kept()
    target_kept = round((1.0 - sparsity) * mask.num_weights)
    if target_kept > kept_now:
        raise ConfigError(f"the mask is already at sparsity {mask.sparsity():.4f} > {sparsity}")
    # round(fraction * kept_now) == kept_now - target_kept: the exact count for global pruning.
    fraction = (kept_now - target_kept) / kept_now if kept_now else 0.0
    return magnitude_prune(model, mask, fraction, ranking=ranking)


__all__ = ["RANKING_CHOICES", "check_ranking", "magnitude_prune", "prune_to_sparsity", "smallest_k"]
