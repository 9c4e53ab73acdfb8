"""Masks, layer-wise densities, magnitude pruning and the sparse training methods.

The mask type and which weights are prunable (:class:`Mask`,
:data:`PRUNABLE_CHOICES`) live below this package, in :mod:`pracset.mask`
(training, packed jobs and the TensorBoard writer use them too), and are
re-exported here and from ``pracset.sparse.mask``. The package's modules, from
the bottom up:

* :mod:`~pracset.sparse.distributions`: layer-wise densities (uniform, ERK)
  and random masks with exact per-layer counts;
* :mod:`~pracset.sparse.pruning`: magnitude pruning, with the weights ranked
  globally or per layer (:data:`RANKING_CHOICES`);
* :mod:`~pracset.sparse.schedules`: the step schedules of RigL and GraNet;
* :mod:`~pracset.sparse.base`: the :class:`SparseMethod` training callback,
  :class:`StaticMask`, and what RigL and GraNet share;
* :mod:`~pracset.sparse.rigl` and :mod:`~pracset.sparse.granet`: the two
  dynamic sparse training methods;
* :mod:`~pracset.sparse.stepper`: :class:`SparseStepper`, any method in your
  own training loop.
"""

from pracset.mask import PRUNABLE_CHOICES, Mask, check_prunable, prunable_names
from pracset.registry import Registry
from pracset.sparse.base import DynamicSparseConfig, DynamicSparseMethod, SparseMethod, StaticMask, drop_and_grow
from pracset.sparse.distributions import (DISTRIBUTIONS, erk_densities, kept_count, layer_shapes, random_mask,
                                          uniform_densities)
from pracset.sparse.granet import GraNet, GraNetConfig
from pracset.sparse.pruning import RANKING_CHOICES, check_ranking, magnitude_prune, prune_to_sparsity, smallest_k
from pracset.sparse.rigl import RigL, RigLConfig
from pracset.sparse.stepper import SparseStepper
from pracset.sparse.schedules import cosine_regrow_fraction, cubic_sparsity, rigl_drop_fraction, step_at_fraction

#: Sparse training methods by name. ``static`` takes a mask; ``rigl`` and
#: ``granet`` take their ``config_class`` (and optionally a starting mask).
SPARSE_METHODS: Registry[type[SparseMethod]] = Registry("sparse training method", {
    "static": StaticMask,
    "rigl": RigL,
    "granet": GraNet,
})

__all__ = ["DISTRIBUTIONS", "DynamicSparseConfig", "DynamicSparseMethod", "GraNet", "GraNetConfig", "Mask",
           "PRUNABLE_CHOICES", "RANKING_CHOICES", "RigL", "RigLConfig", "SPARSE_METHODS", "SparseMethod", "SparseStepper",
           "StaticMask",
           "check_prunable", "check_ranking", "cosine_regrow_fraction", "cubic_sparsity", "drop_and_grow",
           "erk_densities", "kept_count", "layer_shapes", "magnitude_prune", "prunable_names", "prune_to_sparsity",
           "random_mask", "rigl_drop_fraction", "smallest_k", "step_at_fraction", "uniform_densities"]
