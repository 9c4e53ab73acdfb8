"""A dense training run written to an output directory (``pracset train``)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from pracset.config import to_dict
from pracset.data import DataConfig, DeviceLoader, ImageDataset, load_dataset
from pracset.errors import ConfigError
from pracset.fileio import atomic_torch_save, atomic_write_json, holds_only_temporaries
from pracset.models import InputSpec, build_model, check_model_name, has_convolutions
from pracset.train.config import TrainConfig
from pracset.train.ledger import IterationLedger
from pracset.train.loop import Callback, Trainer
from pracset.train.optim import check_names

log = logging.getLogger(__name__)


def make_loaders(dataset: ImageDataset, config: TrainConfig, device: torch.device, *,
                 ids=None, conv_net: bool = False) -> tuple[DeviceLoader, DeviceLoader]:
    """The training loader (shuffled, augmented, optionally a subset) and the test loader."""
    mean, std = dataset.normalization
    channels_last = conv_net and device.type == "cuda"
    crop = dataset.default_crop_padding if config.crop_padding is None else config.crop_padding
    flip = dataset.default_flip if config.flip is None else config.flip
    train = DeviceLoader(dataset.train.to(device), config.batch_size, mean, std, ids=ids, shuffle=True,
                         crop_padding=crop, flip=flip, drop_last=config.drop_last, seed=config.seed,
                         channels_last=channels_last)
    test = DeviceLoader(dataset.test.to(device), max(config.batch_size, 512), mean, std,
                        channels_last=channels_last)
    return train, test


def input_spec(dataset: ImageDataset) -> InputSpec:
    height, width = dataset.image_size
    return InputSpec(dataset.channels, height, width, dataset.num_classes)


@dataclass
class RunResult:
    out_dir: Path
    metrics: dict
    history: list[dict]
    ledger: IterationLedger
    skipped: bool = False


def _check_out_dir(out_dir: Path, identity: dict, resume: bool) -> str:
    """``new``, ``done`` or ``resume``; refuses a directory that holds another run."""
    config_path = out_dir / "run.json"
    if not config_path.exists():
        if out_dir.exists() and not holds_only_temporaries(out_dir):
            raise ConfigError(f"{out_dir} is not empty and holds no pracset run; choose another --out")
        return "new"
    try:
        previous = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ConfigError(f"{config_path} is unreadable; choose another --out") from None
    if previous.get("identity") != identity:
        changed = sorted(k for k in set(identity) | set(previous.get("identity", {}))
                         if identity.get(k) != previous.get("identity", {}).get(k))
        raise ConfigError(f"{out_dir} holds another run (different {', '.join(changed)}); choose another --out")
    if (out_dir / "metrics.json").exists() and (out_dir / "model.pt").exists():
        return "done"
    if not resume:
        raise ConfigError(f"{out_dir} holds an unfinished run; pass --resume to continue it or choose another --out")
    return "resume"


def train_dense(data: DataConfig, arch: str, config: TrainConfig, out_dir: str | Path, *,
                device: torch.device, resume: bool = False, progress: bool = False,
                callbacks: list[Callback] | None = None, dataset: ImageDataset | None = None) -> RunResult:
    """Train ``arch`` densely on ``data`` and write the run to ``out_dir``.

    Writes ``run.json`` (what was asked), ``checkpoint.pt`` (each epoch),
    ``model.pt`` (final weights), ``metrics.json`` (per-epoch history and the
    final test accuracy) and ``ledger.json``. A finished run is not redone.
    """
    out_dir = Path(out_dir)
    check_names(config)
    check_model_name(arch)
    identity = {"data": to_dict(data), "arch": arch, "train": to_dict(config)}
    status = _check_out_dir(out_dir, identity, resume)
    if status == "done":
        log.info("%s already holds this finished run; not training again", out_dir)
        saved = json.loads((out_dir / "metrics.json").read_text())
        return RunResult(out_dir, saved["final"], saved["history"], IterationLedger.load(out_dir / "ledger.json"), True)
    dataset = dataset or load_dataset(data)
    model = build_model(arch, input_spec(dataset), seed=config.seed)
    train_loader, test_loader = make_loaders(dataset, config, device, conv_net=has_convolutions(model))
    atomic_write_json(out_dir / "run.json", {"identity": identity, "dataset": dataset.describe(),
                                             "fingerprint": dataset.fingerprint, "device": str(device),
                                             "torch": torch.__version__})
    ledger = IterationLedger()
    trainer = Trainer(config, ledger=ledger, stage="dense", checkpoint=out_dir / "checkpoint.pt",
                      resume=status == "resume", progress=progress)
    state = trainer.fit(model, train_loader, test_loader, callbacks or [])
    final = dict(state.history[-1])
    atomic_torch_save(model.state_dict(), out_dir / "model.pt")
    ledger.save(out_dir / "ledger.json")
    atomic_write_json(out_dir / "metrics.json", {"final": final, "history": state.history,
                                                 "ledger": ledger.to_dict()})
    return RunResult(out_dir, final, state.history, ledger)
