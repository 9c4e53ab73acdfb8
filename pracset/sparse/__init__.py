"""Masks, layer-wise densities, magnitude pruning and the sparse training methods."""

from pracset.sparse.distributions import DISTRIBUTIONS, erk_densities, random_mask, uniform_densities
from pracset.sparse.mask import PRUNING_SCOPES, Mask, prunable_names
from pracset.sparse.methods import (SPARSE_METHODS, GraNet, GraNetConfig, RigL, RigLConfig, SparseMethod, StaticMask,
                                    cubic_sparsity)
from pracset.sparse.pruning import magnitude_prune, prune_to_sparsity

__all__ = ["DISTRIBUTIONS", "GraNet", "GraNetConfig", "Mask", "PRUNING_SCOPES", "RigL", "RigLConfig", "SPARSE_METHODS",
           "SparseMethod", "StaticMask", "cubic_sparsity", "erk_densities", "magnitude_prune", "prunable_names",
           "prune_to_sparsity", "random_mask", "uniform_densities"]
