"""IMP's masks: round 0's (every weight kept) and each next round's, pruned from the previous round's weights."""

from __future__ import annotations

from pracset.mask import Mask
from pracset.runs import StageFiles
from pracset.sparse.pruning import magnitude_prune
from pracset.tickets.config import IMPConfig, check_layers_kept
from pracset.tickets.context import TicketContext


def dense_mask(ctx: TicketContext, config: IMPConfig) -> Mask:
    """Round 0's mask: every weight kept, over the tensors IMP may prune (``prunable``, less ``dense_layers``)."""
    return Mask.ones(ctx.model(), prunable=config.prunable, dense=config.dense_layers)


def imp_prune(model, mask: Mask, config: IMPConfig) -> Mask:
    """One IMP prune: ``prune_fraction`` of ``mask``'s weights by magnitude (``ranking``, per-layer rates)."""
    # The last prunable tensor is the output layer; the LTH paper prunes it at half the rate.
    rates = {} if config.output_rate is None else {list(mask)[-1]: config.output_rate}
    return magnitude_prune(model, mask, config.prune_fraction, ranking=config.ranking, layer_rates=rates)


def prune_next(ctx: TicketContext, previous: StageFiles, config: IMPConfig) -> Mask:
    """The next round's mask: one IMP prune of the previous round's mask, by its trained weights."""
    model = ctx.load_model(previous)
    mask = imp_prune(model, Mask.load(previous.mask, model=model).to(ctx.device), config).to("cpu")
    check_layers_kept(mask, previous.name)
    return mask


__all__ = ["dense_mask", "imp_prune", "prune_next"]
