"""Interoperability: pracset's results in the forms other tools read.

* a :class:`~pracset.sparse.Mask` as ``torch.nn.utils.prune``'s reparametrisation: :func:`to_torch_prune`,
  :func:`from_torch_prune`, :func:`make_permanent`;
* a ticket run's weights and mask loaded into a user's model in one call: :func:`load_ticket`;
* a manifest's subset as a Hugging Face ``datasets`` folder with a dataset card: :func:`save_hf_dataset`, and
  (on request, online) :func:`push_to_hub`, from :mod:`pracset.hf`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import prune

from pracset.errors import ConfigError
from pracset.hf import dataset_card, push_to_hub, save_hf_dataset  # noqa: F401  (re-exported)
from pracset.mask import Mask
from pracset.runs import TicketLayout

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for a one-line error."""
    return str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__


# ----------------------------------------------------------------------------- torch.nn.utils.prune

def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding tensor ``name`` (``"net.1.weight"`` -> module ``net.1``, ``"weight"``)."""
    module_name, _, attr = name.rpartition(".")
    try:
        return model.get_submodule(module_name), attr
    except AttributeError:
        raise ConfigError(f"mask entry {name!r} names no module of the model") from None


def to_torch_prune(model: nn.Module, mask: "Mask | LoadedTicket") -> nn.Module:
    """Apply ``mask`` (a :class:`Mask`, or the :class:`LoadedTicket` :func:`load_ticket` returns) to ``model``
    with ``torch.nn.utils.prune.custom_from_mask``; returns ``model``.

    Every masked weight becomes PyTorch's standard pruning reparametrisation:
    the module gets a ``weight_orig`` parameter and a ``weight_mask`` buffer,
    and ``weight`` is recomputed as their product before each forward pass, so
    training keeps the pruned weights at zero. Every entry is checked (it must
    name a parameter of the same shape) before anything is changed. A weight
    that is already pruned follows torch's rule: the masks are combined, and a
    weight survives only where both keep it. Undo with ``prune.remove`` or
    :func:`make_permanent`; read back with :func:`from_torch_prune`.
    """
    if isinstance(mask, LoadedTicket):
        mask = mask.mask
    if not isinstance(mask, Mask):
        raise ConfigError(f"to_torch_prune takes a Mask or the LoadedTicket of load_ticket, got {type(mask).__name__}")
    targets = []
    for name, keep in mask.items():
        module, attr = _owner(model, name)
        current = getattr(module, attr, None)
        if not (isinstance(current, nn.Parameter) or isinstance(getattr(module, f"{attr}_orig", None), nn.Parameter)):
            raise ConfigError(f"mask entry {name!r} is not a parameter of the model")
        if tuple(current.shape) != tuple(keep.shape):
            raise ConfigError(f"mask entry {name!r} has shape {tuple(keep.shape)}, "
                              f"the model's parameter has {tuple(current.shape)}")
        targets.append((module, attr, keep.to(current.device)))
    for module, attr, keep in targets:
        prune.custom_from_mask(module, attr, keep)
    log.info("applied a mask of %d tensors (sparsity %.4f) with torch.nn.utils.prune", len(mask), mask.sparsity())
    return model


def _pruned_tensors(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """``(full name, module, tensor name)`` of every tensor pruned by ``torch.nn.utils.prune``."""
    for module_name, module in model.named_modules():
        for buffer_name, _ in module.named_buffers(recurse=False):
            tensor_name = buffer_name.removesuffix("_mask")
            if tensor_name != buffer_name and isinstance(getattr(module, f"{tensor_name}_orig", None), nn.Parameter):
                yield (f"{module_name}.{tensor_name}" if module_name else tensor_name), module, tensor_name


def from_torch_prune(model: nn.Module) -> Mask:
    """The :class:`Mask` held in ``model``'s ``torch.nn.utils.prune`` buffers (``*_mask``; nonzero = kept).

    Entries are named as the pruned weights (``net.1.weight``), so the mask
    fits the model after :func:`make_permanent` and can be saved with
    :meth:`Mask.save`. Raises :class:`ConfigError` when nothing is pruned.
    """
    found = {name: getattr(module, f"{tensor}_mask").detach() != 0 for name, module, tensor in _pruned_tensors(model)}
    if not found:
        raise ConfigError("the model holds no torch.nn.utils.prune masks (no *_orig parameter with a *_mask buffer)")
    return Mask(found)


def make_permanent(model: nn.Module) -> nn.Module:
    """Make every ``torch.nn.utils.prune`` reparametrisation permanent (``prune.remove``); returns ``model``.

    Each pruned weight becomes a plain parameter again, holding zeros where
    its mask pruned; the ``*_orig`` parameters and ``*_mask`` buffers go.
    Read the mask first (:func:`from_torch_prune`) if it is still needed.
    """
    pruned = list(_pruned_tensors(model))
    for _, module, tensor in pruned:
        prune.remove(module, tensor)
    log.info("made %d pruned tensors permanent", len(pruned))
    return model


# ----------------------------------------------------------------------------- ticket runs

@dataclass(frozen=True)
class LoadedTicket:
    """A ticket :func:`load_ticket` loaded: mask, sparsity, stage, and the test accuracy ``tickets.json`` reports."""

    mask: Mask
    sparsity: float
    test_accuracy: float | None
    stage: str


def _inside(root: Path, shown: Path, relative: str | os.PathLike, what: str) -> Path:
    """``root / relative`` resolved (links followed), refused unless it stays inside ``root`` and exists."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ConfigError(f"{shown}: the {what} {os.fspath(relative)!r} leads outside the run directory; "
                          "refusing to follow it")
    if not path.is_file():
        raise ConfigError(f"{shown}: the {what} {os.fspath(relative)} does not exist")
    return path


def _read_rows(root: Path, shown: Path) -> list[dict]:
    """The validated ticket rows of ``tickets.json``."""
    path = _inside(root, shown, TicketLayout("").summary, "ticket summary")
    try:
        summary = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{shown}: cannot read tickets.json ({_reason(exc)})") from None
    rows = summary.get("tickets") if isinstance(summary, dict) else None
    if not (isinstance(rows, list) and rows and all(
            isinstance(r, dict) and isinstance(r.get("stage"), str) and isinstance(r.get("sparsity"), (int, float))
            for r in rows)):
        raise ConfigError(f"{shown}: tickets.json is not a pracset ticket summary (no list of tickets with "
                          "a stage and a sparsity)")
    return rows


def _ticket_files(row: dict) -> tuple[str | Path, str | Path | None]:
    """The mask and weights of a row, relative to the run directory (weights ``None``: not evaluated).

    A row's own ``mask``/``weights`` keys win; without them the files are
    where :func:`~pracset.tickets.find_tickets` writes them (the top-level
    ``mask``/``weights`` of the final ticket name the same files, but relative
    to the directory the run was started from, so they are not read).
    """
    layout, stage_round = TicketLayout(""), row.get("round")
    mask, weights = row.get("mask"), row.get("weights")
    if not (isinstance(mask, (str, type(None))) and isinstance(weights, (str, type(None)))
            and (stage_round is None or type(stage_round) is int and stage_round >= 0)):
        raise ConfigError(f"tickets.json: the row of {row['stage']} has a malformed round, mask or weights entry")
    if mask is None:
        mask = (layout.round(stage_round) if stage_round is not None else layout.sparse).mask
    if "weights" not in row and row.get("evaluated", True):
        weights = layout.stage(row["stage"]).model
    return mask, weights


def _check_fits(model: nn.Module, saved: Mapping[str, torch.Tensor], shown: Path) -> None:
    """Raise a one-line :class:`ConfigError` naming the first tensor where ``model`` and ``saved`` differ."""
    own = model.state_dict()
    shape = lambda t: tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__  # noqa: E731
    problem = next((f"the model's {n} is not in the ticket" if n not in saved else
                    f"{n} is {shape(t)} in the model, {shape(saved[n])} in the ticket"
                    for n, t in own.items() if n not in saved or shape(saved[n]) != shape(t)), None)
    problem = problem or next((f"the ticket's {n} is not in the model" for n in saved if n not in own), None)
    if problem:
        raise ConfigError(f"the model does not fit the ticket in {shown}: {problem}")


@dataclass(frozen=True)
class TicketFiles:
    """A ticket of a run read from disk (:func:`read_ticket`): its row, mask, trained weights and rewind point."""

    run_dir: Path
    row: dict
    mask: Mask
    trained: dict[str, torch.Tensor]
    rewind: dict[str, torch.Tensor] | None  # the whole state at the rewind step; None for RigL / GraNet runs


def _load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        raise ConfigError(f"cannot read {what} {path}: {_reason(exc)}") from None
    if not isinstance(saved, Mapping) or not all(isinstance(v, torch.Tensor) for v in saved.values()):
        raise ConfigError(f"{path} holds no state dict")
    return dict(saved)


def read_ticket(run_dir: str | os.PathLike, sparsity: float | None = None) -> TicketFiles:
    """Read the ticket of the run in ``run_dir`` whose sparsity is closest to ``sparsity`` (default: the final
    one), without a model: its ``tickets.json`` row, mask, trained weights and (IMP, PrAC-IMP) the rewind point.

    The files are read with ``torch.load(..., weights_only=True)``; a path or link that leads outside
    ``run_dir`` is refused, never followed; a ticket not trained on the full split (no weights) is refused;
    the mask must name tensors of the weights, of the same shapes. Every refusal is one :class:`ConfigError`.
    """
    shown = Path(run_dir)
    if not shown.is_dir():
        raise ConfigError(f"{shown} is not a ticket run directory (not a directory)")
    root = shown.resolve()
    rows = _read_rows(root, shown)
    if sparsity is None:
        row = rows[-1]
    else:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity <= 1:
            raise ConfigError(f"sparsity must be a number from 0 to 1, got {sparsity!r}")
        row = min(rows, key=lambda r: abs(r["sparsity"] - sparsity))
    mask_file, weights_file = _ticket_files(row)
    if weights_file is None:
        evaluated = [r["sparsity"] for r in rows if _ticket_files(r)[1] is not None]
        raise ConfigError(f"{shown}: the ticket at sparsity {row['sparsity']} ({row['stage']}) was not trained on "
                          f"the full split, so it has no weights; tickets with weights: "
                          f"{', '.join(map(str, evaluated)) or 'none'}")
    trained = _load_state(_inside(root, shown, weights_file, "weights file"), "weights file")
    mask = Mask.load(_inside(root, shown, mask_file, "mask file"))
    for name in mask:
        if name not in trained or tuple(trained[name].shape) != tuple(mask[name].shape):
            raise ConfigError(f"{shown}: the mask's {name} is not a tensor of the ticket's weights of its shape")
    rewind_path = root / TicketLayout("").rewind.name
    rewind = None
    if rewind_path.exists() or rewind_path.is_symlink():
        rewind = _load_state(_inside(root, shown, rewind_path.name, "rewind point"), "rewind point")
        if set(rewind) != set(trained) or any(rewind[k].shape != trained[k].shape for k in trained):
            raise ConfigError(f"{shown}: its rewind point {rewind_path.name} is not a state of the ticket's model")
    return TicketFiles(shown, row, mask, trained, rewind)


def load_ticket(model: nn.Module, run_dir: str | os.PathLike, sparsity: float | None = None, *,
                weights: str = "trained") -> LoadedTicket:
    """Load a ticket of the run in ``run_dir`` into ``model``, with the pruned weights zero.

    ``run_dir`` is a directory :func:`~pracset.tickets.find_tickets` (``pracset
    ticket``) wrote; its ``tickets.json`` lists the tickets. The one whose
    sparsity is closest to ``sparsity`` is loaded (default: the final ticket).
    ``weights="trained"`` loads its trained weights; ``"rewind"`` the weights it
    started from (the run's rewind point, masked: the ticket itself, to train
    again; IMP and PrAC-IMP runs). ``model`` must have the same tensors (names
    and shapes) as the ticket's weights, e.g. ``build_model(arch, spec)``;
    otherwise a one-line :class:`ConfigError` names the first difference,
    before ``model`` is changed. Files are read as :func:`read_ticket` reads
    them. Returns a :class:`LoadedTicket`: the mask (apply it with
    :func:`to_torch_prune`, which takes the ticket itself, to keep the pruned
    weights at zero while training), sparsity, stage and reported accuracy.
    """
    if weights not in ("trained", "rewind"):
        raise ConfigError(f"weights must be one of trained, rewind, got {weights!r}")
    ticket = read_ticket(run_dir, sparsity)
    state = ticket.trained if weights == "trained" else ticket.rewind
    if state is None:
        raise ConfigError(f"{ticket.run_dir}: the run has no rewind point (RigL and GraNet runs have none: their masks change as they train); "
                          "load its trained weights")
    _check_fits(model, state, ticket.run_dir)
    ticket.mask.check_model(model)
    model.load_state_dict(state)
    ticket.mask.apply_(model)
    row = ticket.row
    log.info("loaded ticket %s of %s (%s weights): sparsity %.4f", row["stage"], ticket.run_dir, weights,
             row["sparsity"])
    return LoadedTicket(mask=ticket.mask, sparsity=float(row["sparsity"]), test_accuracy=row.get("test_accuracy"),
                        stage=row["stage"])


# ----------------------------------------------------------------------------- Hugging Face datasets
# in pracset/hf.py; named here too, where the README and older code import them from


__all__ = ["LoadedTicket", "TicketFiles", "dataset_card", "from_torch_prune", "load_ticket", "make_permanent",
           "push_to_hub", "read_ticket", "save_hf_dataset", "to_torch_prune"]
