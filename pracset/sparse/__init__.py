"""Masks and pruning."""

from pracset.sparse.mask import PRUNING_SCOPES, Mask, prunable_names
from pracset.sparse.pruning import magnitude_prune, prune_to_sparsity

__all__ = ["Mask", "PRUNING_SCOPES", "magnitude_prune", "prunable_names", "prune_to_sparsity"]
