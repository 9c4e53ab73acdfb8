"""A ticket that travels: its mask, trained weights and rewind weights written for other tools, and read back.

A lottery ticket is its mask *and* its starting point (open_lth keeps both per
level), so an export holds three things of one ticket of a run
(:func:`~pracset.interop.read_ticket`): the mask, the weights it reached, and
the weights it starts from (the run's rewind point, masked; absent for RigL
and GraNet, which have none). Two formats (:data:`EXPORT_FORMATS`):

* ``torch-prune``: ``trained.pt`` and ``rewind.pt``, state dicts in the form
  ``torch.nn.utils.prune`` gives a model (each masked ``W`` as ``W_orig`` and
  ``W_mask``): ``to_torch_prune(model, mask)`` then ``model.load_state_dict``
  loads either, strictly;
* ``safetensors``: ``mask.safetensors`` (booleans), ``trained.safetensors`` and
  ``rewind.safetensors`` (plain state dicts, the pruned weights zero).

Both write ``ticket.json`` (the run, stage, sparsity, reported accuracy and
the files). The folder is written beside its target and renamed into place,
so a failure leaves nothing half-written; a target that exists and is not an
empty folder is refused. :func:`load_exported` reads either format back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from pracset.errors import ConfigError
from pracset.files import require_regular_file
from pracset.interop import LoadedTicket, _load_state, read_ticket
from pracset.mask import Mask

log = logging.getLogger(__name__)

#: The formats ``pracset export --format`` writes.
EXPORT_FORMATS = ("torch-prune", "safetensors")
#: The most bytes a ticket.json of an export may hold (it is a few hundred).
_MAX_RECORD_BYTES = 1 << 20


def _safetensors():
    try:
        import safetensors.torch  # an optional dependency: only this format needs it
    except ImportError:
        raise ConfigError("--format safetensors needs the safetensors package: "
                          "pip install 'pracset[safetensors]'") from None
    return safetensors.torch


def prune_form(state: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """``state`` as a model pruned with ``torch.nn.utils.prune`` holds it: each masked ``W`` becomes ``W_orig``
    (its values) and ``W_mask`` (the mask, in ``W``'s dtype, as ``prune.custom_from_mask`` stores it)."""
    out = {}
    for name, value in state.items():
        if name in mask:
            out[f"{name}_orig"] = value
            out[f"{name}_mask"] = mask[name].to(value.dtype)
        else:
            out[name] = value
    return out


def _masked(state: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    return {name: value * mask[name].to(value.dtype) if name in mask else value for name, value in state.items()}


def _refuse_nonempty(target: Path) -> None:
    if target.is_symlink() or (target.exists() and not (target.is_dir() and not any(target.iterdir()))):
        raise ConfigError(f"{target} exists and is not an empty directory; choose another --out")


def export_ticket(run_dir: str | os.PathLike, out: str | os.PathLike, *, format: str = "torch-prune",
                  sparsity: float | None = None) -> Path:
    """Write the ticket of ``run_dir`` closest to ``sparsity`` (default: the final one) into the folder ``out``
    in ``format`` (:data:`EXPORT_FORMATS`); returns ``out``. Refusals are one :class:`ConfigError`."""
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    target = Path(out)
    _refuse_nonempty(target)
    writer = _safetensors() if format == "safetensors" else None  # refused before anything is read
    ticket = read_ticket(run_dir, sparsity)
    rewind = _masked(ticket.rewind, ticket.mask) if ticket.rewind is not None else None
    record = {"format": format, "run": str(ticket.run_dir), "stage": ticket.row["stage"],
              "sparsity": ticket.row["sparsity"], "test_accuracy": ticket.row.get("test_accuracy"),
              "masked": sorted(ticket.mask)}
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
    try:
        if writer is None:
            files = {"trained": "trained.pt", "rewind": "rewind.pt" if rewind is not None else None}
            torch.save(prune_form(ticket.trained, ticket.mask), staging / "trained.pt")
            if rewind is not None:
                torch.save(prune_form(rewind, ticket.mask), staging / "rewind.pt")
        else:
            files = {"mask": "mask.safetensors", "trained": "trained.safetensors",
                     "rewind": "rewind.safetensors" if rewind is not None else None}
            writer.save_file({n: ticket.mask[n].contiguous() for n in ticket.mask}, str(staging / files["mask"]))
            writer.save_file({n: v.contiguous() for n, v in _masked(ticket.trained, ticket.mask).items()},
                             str(staging / files["trained"]))
            if rewind is not None:
                writer.save_file({n: v.contiguous() for n, v in rewind.items()}, str(staging / files["rewind"]))
        (staging / "ticket.json").write_text(json.dumps({**record, "files": files}, indent=2) + "\n")
        _refuse_nonempty(target)  # again: something may have appeared meanwhile
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would keep the export from other users
        os.replace(staging, target)
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ConfigError(f"cannot write {target}: {exc.strerror or exc}") from None
        raise
    log.info("exported %s of %s (%s) to %s", record["stage"], ticket.run_dir, format, target)
    return target


def _read_record(folder: Path) -> dict:
    path = folder / "ticket.json"
    try:
        require_regular_file(path, "export record")
        if path.stat().st_size > _MAX_RECORD_BYTES:
            raise ConfigError(f"{path} is larger than an export record")
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{folder} is not a ticket export (no ticket.json)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    if not (isinstance(record, dict) and record.get("format") in EXPORT_FORMATS
            and isinstance(record.get("files"), dict) and isinstance(record.get("masked"), list)
            and isinstance(record.get("stage"), str) and isinstance(record.get("sparsity"), (int, float))
            and not isinstance(record.get("sparsity"), bool) and 0 <= record["sparsity"] <= 1
            and isinstance(record.get("test_accuracy"), (int, float, type(None)))):
        raise ConfigError(f"{path} is not a pracset export record")
    return record


def _file(folder: Path, name: object) -> Path:
    if not isinstance(name, str) or Path(name).name != name:  # a bare file name of the folder, never a path
        raise ConfigError(f"{folder}/ticket.json names a file outside the export: {name!r}")
    return require_regular_file(folder / name, "export file", follow_symlinks=False)


def load_exported(model: nn.Module, folder: str | os.PathLike, *, weights: str = "trained") -> LoadedTicket:
    """Load an export of :func:`export_ticket` into ``model``: its ``trained`` or ``rewind`` weights, with the
    pruned ones zero; returns the :class:`~pracset.interop.LoadedTicket` (mask, sparsity, stage, accuracy)."""
    if weights not in ("trained", "rewind"):
        raise ConfigError(f"weights must be one of trained, rewind, got {weights!r}")
    folder = Path(folder)
    record = _read_record(folder)
    name = record["files"].get(weights)
    if name is None:
        raise ConfigError(f"{folder} holds no {weights} weights (RigL and GraNet tickets have no rewind point)")
    if record["format"] == "safetensors":
        reader = _safetensors()
        mask_path, state_path = _file(folder, record["files"].get("mask")), _file(folder, name)
        try:
            mask, state = Mask(reader.load_file(str(mask_path))), reader.load_file(str(state_path))
        except ConfigError:
            raise
        except Exception as exc:  # safetensors raises its own kinds for a damaged file
            raise ConfigError(f"cannot read the export in {folder}: {str(exc).splitlines()[0] if str(exc) else exc!r}") \
                from None
    else:
        saved = _load_state(_file(folder, name), "export file")  # one line for a damaged file or non-tensors
        masked = [n for n in record["masked"] if isinstance(n, str)]
        try:
            mask = Mask({n: saved[f"{n}_mask"].bool() for n in masked})
            state = {k: v for k, v in saved.items() if not k.endswith("_mask") or k[:-5] not in masked}
            state = {(k[:-5] if k.endswith("_orig") and k[:-5] in masked else k): v for k, v in state.items()}
        except (KeyError, AttributeError):
            raise ConfigError(f"{folder / name} is not in torch.nn.utils.prune's form for its masked tensors") \
                from None
    mask.check_model(model)
    own = model.state_dict()
    if set(own) != set(state) or any(tuple(own[k].shape) != tuple(state[k].shape) for k in own):
        raise ConfigError(f"the model does not fit the ticket exported in {folder}")
    model.load_state_dict(state)
    mask.apply_(model)
    return LoadedTicket(mask=mask, sparsity=float(record["sparsity"]), test_accuracy=record.get("test_accuracy"),
                        stage=str(record["stage"]))


__all__ = ["EXPORT_FORMATS", "export_ticket", "load_exported", "prune_form"]
