"""Layer-wise density distributions (uniform, ERK) and random masks with exact per-layer counts.

These follow the official RigL code (google-research/rigl, ``sparse_utils.py``):

* ``density`` is the fraction of weights kept over the layers that take part
  in the budget. Layers kept dense *by choice* (``dense_first``,
  ``dense_layers``) get density 1 and stand **outside** the budget, as the
  official code treats its ``custom_sparsity_map`` / ``first_layer_sparsity=0``
  layers (they are not masked at all there). Layers that ERK pushes to density
  1 stay **inside** the budget: the other layers become sparser to pay for them.
* ``dense_first`` keeps the first layer (the first key of ``shapes``) dense,
  for ``uniform`` as well as ``erk``: the official ImageNet code leaves the
  first convolution unmasked whatever the distribution (its
  ``first_layer_sparsity`` flag defaults to 0), and the RigL paper's
  "uniform" keeps the first layer dense too.

A density is turned into a count by :func:`random_mask` as
``round(density * numel)`` (Python's round, half to even). The official code
keeps ``numel - floor(sparsity * numel)``; the two differ by at most one
weight per layer, and ours does not depend on the float error of
``1 - density``.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.registry import Registry

log = logging.getLogger(__name__)

Shapes = Mapping[str, tuple[int, ...]]


def _check(shapes: Shapes, density: float, dense_first: bool, dense_layers: Iterable[str]) -> set[str]:
    if not shapes:
        raise ConfigError("a density distribution needs at least one layer")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must lie in (0, 1], got {density}")
    dense = set(dense_layers)
    unknown = sorted(dense - set(shapes))
    if unknown:
        raise ConfigError(f"layers to keep dense are not among the layers: {', '.join(unknown)}; "
                          f"layers: {', '.join(shapes)}")
    if dense_first:
        dense.add(next(iter(shapes)))
    if len(dense) == len(shapes) and density < 1.0:
        raise ConfigError("every layer is kept dense: no layer is left to make sparse")
    return dense


def uniform_densities(shapes: Shapes, density: float, *, dense_first: bool = True,
                      dense_layers: Iterable[str] = ()) -> dict[str, float]:
    """The same ``density`` for every layer, except the layers kept dense (density 1).

    Args:
        shapes: layer name -> weight shape, in the model's order.
        density: fraction of weights kept in each sparse layer.
        dense_first: keep the first layer dense (the RigL paper's and code's default).
        dense_layers: further layers to keep dense.
    """
    dense = _check(shapes, density, dense_first, dense_layers)
    return {name: 1.0 if name in dense else float(density) for name in shapes}


def erk_densities(shapes: Shapes, density: float, *, dense_first: bool = True,
                  dense_layers: Iterable[str] = (), power: float = 1.0) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities, solved as in the official RigL code.

    Each sparse layer ``l`` gets density ``eps * raw_l`` with
    ``raw_l = (sum(shape_l) / prod(shape_l)) ** power`` (kernel dimensions
    included for convolutions), and ``eps`` solves::

        sum_{l sparse} eps * raw_l * n_l + sum_{l pushed dense} n_l = density * sum_{l in budget} n_l

    Whenever the largest ``eps * raw_l`` exceeds 1, the layers with the
    largest ``raw_l`` are made dense (they stay in the budget) and ``eps`` is
    solved again. Layers kept dense by choice (``dense_first``,
    ``dense_layers``) get density 1 and are outside the budget.
    ``power < 1`` softens the distribution (0 gives uniform).
    """
    chosen_dense = _check(shapes, density, dense_first, dense_layers)
    budget = {name: shape for name, shape in shapes.items() if name not in chosen_dense}
    numel = {name: math.prod(shape) for name, shape in budget.items()}
    raw = {name: (sum(shape) / math.prod(shape)) ** power for name, shape in budget.items()}
    total = sum(numel.values())
    pushed: set[str] = set()
    eps = 0.0
    while True:
        free = [n for n in budget if n not in pushed]
        if not free:  # only possible at density 1
            break
        rhs = density * total - sum(numel[n] for n in pushed)
        divisor = sum(raw[n] * numel[n] for n in free)
        eps = rhs / divisor
        max_raw = max(raw[n] for n in free)
        if eps * max_raw > 1.0:
            newly = [n for n in free if raw[n] == max_raw]
            log.debug("ERK: %s pushed to density 1", ", ".join(newly))
            pushed.update(newly)
        else:
            break
    if eps <= 0.0 and len(pushed) < len(budget):
        raise ConfigError(f"ERK cannot reach density {density}: the layers pushed dense already exceed it")
    out = {}
    for name in shapes:
        if name in chosen_dense or name in pushed:
            out[name] = 1.0
        else:
            out[name] = min(1.0, eps * raw[name])
    return out


def layer_shapes(model: nn.Module, names: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the named parameters of ``model``, in the order of ``names``."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ConfigError(f"not parameters of the model: {', '.join(missing)}")
    return {n: tuple(params[n].shape) for n in names}


def kept_count(density: float, numel: int) -> int:
    """The number of weights a layer of ``numel`` weights keeps at ``density``: ``round(density * numel)``."""
    return min(numel, max(0, round(density * numel)))


def random_mask(model_or_shapes: nn.Module | Shapes, densities: Mapping[str, float],
                generator: torch.Generator | None = None, *, device: torch.device | str = "cpu") -> Mask:
    """A uniformly random mask keeping exactly ``round(density * numel)`` weights per layer.

    Args:
        model_or_shapes: a model (the shapes of the parameters named in
            ``densities`` are used) or a mapping name -> shape.
        densities: name -> density; the mask covers exactly these layers, in this order.
        generator: a CPU ``torch.Generator`` (seed it for a reproducible mask);
            the global one when omitted.
        device: where the mask tensors are put.

    The positions are drawn on the CPU (``torch.randperm``), so the same seed
    gives the same mask on every device.
    """
    if isinstance(model_or_shapes, nn.Module):
        shapes = layer_shapes(model_or_shapes, densities)
    else:
        unknown = [n for n in densities if n not in model_or_shapes]
        if unknown:
            raise ConfigError(f"densities name layers without a shape: {', '.join(unknown)}")
        shapes = {n: tuple(model_or_shapes[n]) for n in densities}
    tensors = {}
    for name, density in densities.items():
        if not 0.0 <= density <= 1.0:
            raise ConfigError(f"density of {name} must lie in [0, 1], got {density}")
        shape = shapes[name]
        numel = math.prod(shape)
        keep = torch.zeros(numel, dtype=torch.bool)
        keep[torch.randperm(numel, generator=generator)[:kept_count(density, numel)]] = True
        tensors[name] = keep.view(shape).to(device)
    return Mask(tensors)


Distribution = Callable[..., dict[str, float]]

#: Layer-wise density distributions by name; each is called as
#: ``fn(shapes, density, dense_first=..., dense_layers=...)``.
DISTRIBUTIONS: Registry[Distribution] = Registry("density distribution", {
    "uniform": uniform_densities,
    "erk": erk_densities,
})

__all__ = ["DISTRIBUTIONS", "erk_densities", "kept_count", "layer_shapes", "random_mask", "uniform_densities"]
