"""A packed job's checkpoints: each model's slice of the job after every epoch, in its stage's folder.

Each file holds one model's weights and buffers, its slice of every optimizer
state tensor shaped like its parameter (the others, such as a step count,
are the job's), the shared schedule, its history, ledger and snapshot, and
the job's signature (the resolved paths of all its files, in order). A job
resumes only when every file holds this same job at the same epoch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol, Sequence

import torch

from pracset.errors import RunFileError
from pracset.fileio import atomic_torch_save
from pracset.train.checkpoints import check_state_dict

log = logging.getLogger(__name__)


class StackedModels(Protocol):
    """What the checkpoints read and write of a packed job's models (``pracset.train.packed``'s stacked models,
    which build on this module): the stacked tensors and one model's slice of them."""

    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]

    def state_of(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's whole state (weights and buffers) as a host copy."""


#: The ``format`` of a packed job's per-model checkpoint file.
CHECKPOINT_FORMAT = "pracset-packed-checkpoint"
_KEYS = ("state", "optimizer", "scheduler", "epoch", "step", "history", "ledger", "snapshot")


def save_checkpoints(paths: Sequence[Path], packed: StackedModels, optimizer, scheduler, *, epoch: int, step: int,
                     histories, ledgers, snapshots) -> None:
    """Model k's slice of the job's state into ``paths[k]`` (the schedule and the job's signature in each)."""
    full = optimizer.state_dict()
    shapes = [p.shape for p in packed.params.values()]  # the optimizer's parameter order
    signature = [str(Path(p).resolve()) for p in paths]
    for k, path in enumerate(paths):
        state, sliced = {}, {}
        for index, values in full["state"].items():
            keys = [key for key, v in values.items() if isinstance(v, torch.Tensor) and v.shape == shapes[index]]
            state[index] = {key: (v[k].clone() if key in keys else v) for key, v in values.items()}
            sliced[index] = keys
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "signature": signature, "model": k, "epoch": epoch,
                           "step": step, "state": packed.state_of(k),
                           "optimizer": {"state": state, "sliced": sliced, "param_groups": full["param_groups"]},
                           "scheduler": scheduler.state_dict(), "history": histories[k],
                           "ledger": ledgers[k].to_dict(), "snapshot": snapshots[k] if snapshots else None}, path)


def load_checkpoints(paths: Sequence[Path], device: torch.device) -> list[dict] | None:
    """Every model's checkpoint of this same job at the same epoch, else ``None`` (the job starts again)."""
    if not all(Path(p).is_file() for p in paths):
        return None
    signature = [str(Path(p).resolve()) for p in paths]
    saved = []
    for k, path in enumerate(paths):
        try:  # weights_only: a file in a directory someone else made must not be able to run code here
            one = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:  # torch raises many kinds for a damaged file
            log.warning("%s cannot be read (%s): the packed job starts again", path, type(exc).__name__)
            return None
        if not isinstance(one, dict) or one.get("format") != CHECKPOINT_FORMAT or one.get("signature") != signature \
                or one.get("model") != k or (saved and one.get("step") != saved[0]["step"]):
            log.info("%s belongs to another packed job or epoch: the job starts again", path)
            return None
        one["path"] = str(path)  # named in the errors of restore_checkpoints
        saved.append(one)
    return saved


@torch.no_grad()
def restore_checkpoints(saved: list[dict], packed: StackedModels, optimizer, scheduler) -> None:
    """Put the checkpoints' slices back into the stacked weights, buffers and optimizer state, and the schedule.

    A run directory may come from anyone: each file's weights are checked against one model's slice (names
    and shapes, :func:`~pracset.train.checkpoints.check_state_dict`) and any other structure it lacks is a
    one-line :class:`~pracset.errors.RunFileError` naming the file, before the optimizer is touched.
    """
    stacked = {**packed.params, **packed.buffers}
    one_model = {name: tensor[0] for name, tensor in stacked.items()}
    for one in saved:
        where = f"packed checkpoint {one['path']}"
        missing = [key for key in _KEYS if key not in one]
        if missing:
            raise RunFileError(f"{where} lacks {', '.join(map(repr, missing))}; remove it to train this stage again")
        for key in ("epoch", "step"):
            if isinstance(one[key], bool) or not isinstance(one[key], int) or one[key] < 0:
                raise RunFileError(f"{where}: {key} must be a non-negative integer")
        if not isinstance(one["history"], list) or not isinstance(one["ledger"], dict):
            raise RunFileError(f"{where}: its history must be a list and its ledger a dict")
        check_state_dict(one["state"], one_model, f"{where}: its model")
    try:
        first = saved[0]["optimizer"]
        state = {index: {key: (torch.stack([one["optimizer"]["state"][index][key] for one in saved])
                               if key in first["sliced"][index] else value) for key, value in values.items()}
                 for index, values in first["state"].items()}
        optimizer.load_state_dict({"state": state, "param_groups": first["param_groups"]})
        scheduler.load_state_dict(saved[0]["scheduler"])
    except (KeyError, TypeError, IndexError, ValueError, RuntimeError, AttributeError) as exc:
        raise RunFileError(f"packed checkpoint {saved[0]['path']} does not hold this job's optimizer and schedule "
                           f"({type(exc).__name__}); remove it to train this stage again") from None
    for name, tensor in stacked.items():
        tensor.copy_(torch.stack([one["state"][name] for one in saved]))


__all__ = ["CHECKPOINT_FORMAT", "load_checkpoints", "restore_checkpoints", "save_checkpoints"]
