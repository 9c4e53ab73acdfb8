"""A validated mask type: one boolean keep-tensor per prunable weight, saved apart from the weights.

A small foundation: training, packed jobs, the sparse methods and the tickets use it, and it imports none
of them (only the errors and the file writing). Re-exported by :mod:`pracset.sparse`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from pracset.errors import ConfigError, PracsetError, RunFileError
from pracset.fileio import atomic_torch_save, atomic_write_json, require_regular_file

MASK_FORMAT = "pracset-mask"
MASK_VERSION = 1

#: Which weights may be pruned (the ``prunable`` choice): ``all`` = every
#: convolution and linear weight (open_lth's choice, and the only one that
#: makes sense for MLPs); ``conv`` = convolution weights only (the official
#: PrAC-LTH code). How the weights are *ranked* for pruning is another choice,
#: :data:`~pracset.sparse.pruning.RANKING_CHOICES`.
PRUNABLE_CHOICES = ("all", "conv")


def check_prunable(prunable: str) -> None:
    """Raise :class:`ConfigError` unless ``prunable`` is one of :data:`PRUNABLE_CHOICES`."""
    if prunable not in PRUNABLE_CHOICES:
        raise ConfigError(f"unknown prunable choice {prunable!r}; valid: {', '.join(PRUNABLE_CHOICES)}")


def prunable_names(model: nn.Module, prunable: str = "all", dense: Iterable[str] = ()) -> list[str]:
    """Names of the prunable weight tensors of ``model``, in ``named_parameters`` order.

    ``prunable`` is one of :data:`PRUNABLE_CHOICES`. Biases and normalisation
    parameters are never prunable. ``dense`` lists layers to leave dense: a
    module name (``fc``) or a parameter name (``fc.weight``).
    """
    check_prunable(prunable)
    kinds = (nn.Conv1d, nn.Conv2d, nn.Conv3d) if prunable == "conv" else (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    dense = set(dense)
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, kinds) and getattr(module, "weight", None) is not None:
            name = f"{module_name}.weight" if module_name else "weight"
            if module_name not in dense and name not in dense:
                names.append(name)
    known = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    unknown = sorted(dense - known)
    if unknown:
        raise ConfigError(f"layers to keep dense not found in the model: {', '.join(unknown)}")
    if not names:
        raise ConfigError(f"the model has no prunable weights for prunable={prunable!r}")
    return names


class Mask(Mapping[str, torch.Tensor]):
    """Boolean keep-masks (True = weight kept) for named weight tensors.

    A mask is a read-only mapping from parameter name to a ``torch.bool``
    tensor; operations return new masks. It is validated on construction
    (boolean, non-empty) and against a model with :meth:`check_model`.
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]):
        if not tensors:
            raise ConfigError("a mask needs at least one tensor")
        checked = {}
        for name, tensor in tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise ConfigError(f"mask entry {name!r} is not a tensor")
            if tensor.dtype != torch.bool:
                raise ConfigError(f"mask entry {name!r} is {tensor.dtype}, expected torch.bool")
            checked[name] = tensor
        self._tensors = checked

    # -- construction
    @classmethod
    def ones(cls, model: nn.Module, prunable: str = "all", dense: Iterable[str] = ()) -> "Mask":
        """A mask keeping every prunable weight of ``model`` (see :func:`prunable_names`)."""
        params = dict(model.named_parameters())
        return cls({n: torch.ones_like(params[n], dtype=torch.bool) for n in prunable_names(model, prunable, dense)})

    # -- mapping protocol
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    # -- counts
    @property
    def num_weights(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    def num_kept(self) -> int:
        """Kept weights (one host sync)."""
        return int(sum(t.sum() for t in self._tensors.values()))

    def sparsity(self) -> float:
        """Fraction of the masked weights that are pruned."""
        return 1.0 - self.num_kept() / self.num_weights

    def layer_sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(t.sum()) / t.numel() for n, t in self._tensors.items()}

    def report(self) -> dict:
        """JSON-ready sparsity report: overall and per layer."""
        layers = {n: {"shape": list(t.shape), "weights": t.numel(), "kept": int(t.sum()),
                      "sparsity": round(1.0 - float(t.sum()) / t.numel(), 6)} for n, t in self._tensors.items()}
        kept = sum(v["kept"] for v in layers.values())
        return {"format": MASK_FORMAT, "version": MASK_VERSION, "weights": self.num_weights, "kept": kept,
                "sparsity": round(1.0 - kept / self.num_weights, 6), "layers": layers}

    # -- use with a model
    def check_model(self, model: nn.Module) -> None:
        """Raise :class:`ConfigError` unless every entry names a parameter of the same shape."""
        params = dict(model.named_parameters())
        for name, tensor in self._tensors.items():
            if name not in params:
                raise ConfigError(f"mask entry {name!r} is not a parameter of the model")
            if tuple(params[name].shape) != tuple(tensor.shape):
                raise ConfigError(f"mask entry {name!r} has shape {tuple(tensor.shape)}, "
                                  f"the model's parameter has {tuple(params[name].shape)}")

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> nn.Module:
        """Zero the pruned weights of ``model`` in place."""
        params = dict(model.named_parameters())
        for name, keep in self._tensors.items():
            param = params[name]
            param.mul_(keep.to(param.device))
        return model

    def to(self, device: torch.device | str) -> "Mask":
        return Mask({n: t.to(device) for n, t in self._tensors.items()})

    def changed_fraction(self, other: "Mask") -> float:
        """Fraction of entries whose bit differs from ``other`` (Early-Bird's mask distance)."""
        if set(self) != set(other):
            raise ConfigError("masks cover different tensors")
        changed = sum((self[n] != other[n].to(self[n].device)).sum() for n in self)
        return float(changed) / self.num_weights

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask) or set(self) != set(other):
            return False
        return all(torch.equal(self[n].cpu(), other[n].cpu()) for n in self)

    def __repr__(self) -> str:
        return f"Mask({len(self)} tensors, {self.num_weights} weights)"

    # -- files
    def save(self, path: str | Path) -> Path:
        """Write the mask (``torch.save`` of boolean CPU tensors) and a JSON report beside it."""
        path = Path(path)
        atomic_torch_save({"format": MASK_FORMAT, "version": MASK_VERSION,
                           "masks": {n: t.cpu() for n, t in self._tensors.items()}}, path)
        atomic_write_json(path.with_suffix(".json"), self.report())
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", model: nn.Module | None = None) -> "Mask":
        """Read a mask written by :meth:`save`, validating its structure (a dict of parameter names to boolean
        tensors) and, given ``model``, its names and shapes against the model's parameters; a file of another
        structure is one :class:`~pracset.errors.RunFileError` naming it."""
        path = Path(path)
        if path.exists():  # (a missing one is answered below) a FIFO or a device would block or never end
            require_regular_file(path, "mask file", error=RunFileError)
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
        except FileNotFoundError:
            raise PracsetError(f"mask file {path} does not exist") from None
        except Exception as exc:  # torch raises many kinds for a damaged file
            raise PracsetError(f"cannot read mask file {path}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if not isinstance(saved, dict) or saved.get("format") != MASK_FORMAT:
            raise PracsetError(f"{path} is not a pracset mask file")
        version = saved.get("version", 0)
        if isinstance(version, bool) or not isinstance(version, int):
            raise RunFileError(f"mask file {path}: 'version' must be an integer, got {type(version).__name__}")
        if version > MASK_VERSION:
            raise PracsetError(f"{path} is mask format version {saved['version']}; this pracset reads up to {MASK_VERSION}")
        masks = saved.get("masks")
        if not isinstance(masks, dict) or not masks:
            raise RunFileError(f"mask file {path}: 'masks' must be a non-empty dict of parameter name to boolean "
                               f"tensor, got {type(masks).__name__}")
        for name, tensor in masks.items():
            if not isinstance(name, str):
                raise RunFileError(f"mask file {path}: a mask entry's name is a {type(name).__name__}, not a string")
            if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.bool:
                what = tensor.dtype if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise RunFileError(f"mask file {path}: entry {name[:60]!r} is {what}, expected a torch.bool tensor")
        mask = cls(masks)
        if model is not None:
            try:
                mask.check_model(model)
            except ConfigError as exc:
                raise RunFileError(f"mask file {path} does not fit the model: {exc}") from None
        return mask


def optimizer_state_like(optimizer: torch.optim.Optimizer | None, param: torch.Tensor) -> list[torch.Tensor]:
    """``param``'s optimizer state tensors of its own shape (momentum, Adam's moments): what a mask must zero too."""
    state = optimizer.state.get(param) if optimizer is not None else None
    if not state:
        return []
    return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]


@torch.no_grad()
def zero_masked(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], optimizer: torch.optim.Optimizer | None) -> None:
    """For every ``(weights, keep)`` pair, multiply the weights and their optimizer state by ``keep``: the masked
    weights and their momentum become zero, in one fused multiply and without a host sync. One model's layers,
    or K models' stacked layers (``keep`` stacked alike) in a packed job."""
    tensors, factors = [], []
    for weights, keep in pairs:
        for tensor in (weights, *optimizer_state_like(optimizer, weights)):
            tensors.append(tensor)
            factors.append(keep)
    if tensors:
        torch._foreach_mul_(tensors, factors)


__all__ = ["MASK_FORMAT", "MASK_VERSION", "PRUNABLE_CHOICES", "Mask", "check_prunable", "optimizer_state_like",
           "prunable_names", "zero_masked"]
