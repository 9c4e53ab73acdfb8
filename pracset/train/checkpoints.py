"""Checks of the files a training stage reads back from its run directory: a checkpoint, a model's state dict.

A run directory may come from anyone (``--resume`` of a copied folder): what it holds is checked against
the structure :meth:`~pracset.train.loop.Trainer` writes, and against this stage's model and optimizer,
before any of it is loaded; a mismatch is one :class:`~pracset.errors.RunFileError` naming the file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pracset.errors import RunFileError
from pracset.runfiles import shown

if TYPE_CHECKING:
    from pracset.train.step import TrainState


def check_state_dict(saved, expected: dict, where: str) -> None:
    """Raise a one-line :class:`~pracset.errors.RunFileError` (starting with ``where``) unless ``saved`` is a
    dict with exactly ``expected``'s keys (a model's ``state_dict()``), each a tensor of the same shape."""
    if not isinstance(saved, dict):
        raise RunFileError(f"{where} must hold a model's state dict, got {type(saved).__name__}")
    missing = [k for k in expected if k not in saved]
    if missing:
        raise RunFileError(f"{where} lacks {len(missing)} of the model's tensors (first: {missing[0]!r})")
    extra = [k for k in saved if k not in expected]
    if extra:
        raise RunFileError(f"{where} holds {len(extra)} tensor(s) the model does not have (first: {shown(extra[0])})")
    for key, tensor in expected.items():
        value = saved[key]
        if not isinstance(value, torch.Tensor):
            raise RunFileError(f"{where}: {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(tensor.shape):
            raise RunFileError(f"{where}: {key!r} has shape {tuple(value.shape)}, the model's has "
                               f"{tuple(tensor.shape)}")


def check_checkpoint(saved, state: "TrainState", where: str) -> None:
    """Raise a one-line :class:`~pracset.errors.RunFileError` unless ``saved`` has the structure
    :meth:`~pracset.train.loop.Trainer._save_checkpoint` writes for this stage's model, optimizer and callbacks.

    Every key; the model's tensors (names and shapes, :func:`check_state_dict`); the optimizer's groups and
    the shapes of its per-parameter state; the scheduler's keys and counts; epoch and step counts; a list of
    history rows; callback states by name (their contents are checked as they are restored).
    """
    if not isinstance(saved, dict):
        raise RunFileError(f"{where} must hold a dict, got {type(saved).__name__}")
    missing = [k for k in _CHECKPOINT_KEYS if k not in saved]
    if missing:
        raise RunFileError(f"{where} lacks {', '.join(repr(k) for k in missing)}; remove it to train this stage again")
    check_state_dict(saved["model"], state.model.state_dict(), f"{where}: its model")
    for key in ("epoch", "step"):
        value = saved[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise RunFileError(f"{where}: {key} must be a non-negative integer, got {shown(value)}")
    if not isinstance(saved.get("stop_requested", False), bool):
        raise RunFileError(f"{where}: stop_requested must be true or false")
    if not isinstance(saved["history"], list) or not all(isinstance(row, dict) for row in saved["history"]):
        raise RunFileError(f"{where}: history must be a list of per-epoch metrics")
    # One state per callback, by name (a list, paired by position, in checkpoints written before names were
    # saved); which callback each belongs to is decided, and its contents checked, as it is restored.
    states = saved["callbacks"]
    if isinstance(states, dict):
        if not all(isinstance(k, str) and isinstance(v, dict) for k, v in states.items()):
            raise RunFileError(f"{where}: callbacks must map callback names to their states")
    elif not isinstance(states, list) or not all(isinstance(s, dict) for s in states):
        raise RunFileError(f"{where}: callbacks must map callback names to their states")
    _check_optimizer_state(saved["optimizer"], state.optimizer, f"{where}: its optimizer state")
    scheduler, expected = saved["scheduler"], state.scheduler.state_dict()
    if not isinstance(scheduler, dict) or set(scheduler) - set(expected):
        odd = (sorted(map(str, set(scheduler) - set(expected))) if isinstance(scheduler, dict)
               else [type(scheduler).__name__])
        raise RunFileError(f"{where}: its scheduler state is not this stage's (unexpected {shown(odd[0])})")
    for key in ("last_epoch", "_step_count"):
        if key in scheduler and (isinstance(scheduler[key], bool) or not isinstance(scheduler[key], int)):
            raise RunFileError(f"{where}: scheduler {key} must be an integer, got {shown(scheduler[key])}")
    if any(fn is not None for fn in scheduler.get("lr_lambdas") or ()):
        raise RunFileError(f"{where}: its scheduler state holds learning-rate functions pracset never saves")


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "history", "callbacks", "ledger")


def _check_optimizer_state(saved, optimizer: torch.optim.Optimizer, where: str) -> None:
    """Groups of the same sizes as ``optimizer``'s, and per-parameter tensors of their parameter's shape."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise RunFileError(f"{where} must be a dict with 'state' and 'param_groups'")
    groups = saved["param_groups"]
    if len(groups) != len(optimizer.param_groups) or not all(
            isinstance(g, dict) and isinstance(g.get("params"), list) and len(g["params"]) == len(ours["params"])
            for g, ours in zip(groups, optimizer.param_groups)):
        raise RunFileError(f"{where} has parameter groups of other sizes than this stage's optimizer")
    params = {}
    for group, ours in zip(groups, optimizer.param_groups):
        params.update(zip(group["params"], ours["params"]))
    for key, entry in saved["state"].items():
        if key not in params or not isinstance(entry, dict):
            raise RunFileError(f"{where} holds state for a parameter the optimizer does not have ({shown(key)})")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[key].shape:
                raise RunFileError(f"{where}: {name} of parameter {key} has shape {tuple(value.shape)}, the "
                                   f"parameter has {tuple(params[key].shape)}")


__all__ = ["check_checkpoint", "check_state_dict"]
