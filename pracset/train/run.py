"""Training written to a run directory: one stage (``train_stage``) and a whole dense run (``pracset train``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from pracset.config import to_dict
from pracset.data import DataConfig, DeviceLoader, ImageDataset, load_dataset
from pracset.distributed import check_sync_batchnorm, is_main
from pracset.data.stream_loader import StreamingLoader
from pracset.data.streaming import StreamingSplits, make_streaming_loaders
from pracset.data.torch_data import as_dataset
from pracset.errors import ConfigError
from pracset.fileio import atomic_torch_save
from pracset.ledger import IterationLedger
from pracset.models import InputSpec, has_convolutions
from pracset.models.custom import Architecture, ArchitectureLike, resolve_architecture
from pracset.runs import RunDirectory, StageFiles, StageMetrics, TicketLayout
from pracset.train.config import TrainConfig
from pracset.train.loop import Callback, Trainer, evaluate
from pracset.train.optim import check_names
from pracset.train.tensorboard import TensorBoardLogger, require_tensorboard

log = logging.getLogger(__name__)


def is_streamed(dataset) -> bool:
    """Whether ``dataset`` is decoded batch by batch (``DataConfig.stream``) rather than held in memory."""
    return isinstance(dataset, StreamingSplits)


def split_labels(split) -> np.ndarray:
    """A split's labels as a host int64 array (a device tensor in memory, a NumPy array when streamed)."""
    labels = split.labels
    return labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels, dtype=np.int64)


def check_loader_settings(dataset, config: TrainConfig, device: torch.device | None = None) -> None:
    """Refuse a recipe the data's loader (or, given ``device``, the device) cannot follow, before anything is
    written."""
    if config.sync_batchnorm and device is not None:
        check_sync_batchnorm(device)
    if config.random_resized_crop and not is_streamed(dataset):
        raise ConfigError("random_resized_crop is drawn by the streaming loader's workers: turn on --stream "
                          "(or [data] stream = true) for it")


def make_loaders(dataset: ImageDataset, config: TrainConfig, device: torch.device, *,
                 ids=None, conv_net: bool = False) -> tuple[DeviceLoader, DeviceLoader]:
    """The training loader (shuffled, augmented, optionally a subset) and the test loader.

    In memory: :class:`DeviceLoader` over the split on ``device``; streamed:
    :class:`~pracset.data.stream_loader.StreamingLoader` decoding in workers.
    """
    check_loader_settings(dataset, config)
    if is_streamed(dataset):
        return make_streaming_loaders(dataset, config, device, ids=ids, conv_net=conv_net)
    mean, std = dataset.normalization
    channels_last = conv_net and device.type == "cuda" and dataset.train.images.dim() == 4
    crop = dataset.default_crop_padding if config.crop_padding is None else config.crop_padding
    flip = dataset.default_flip if config.flip is None else config.flip
    train = DeviceLoader(dataset.train.to(device), config.batch_size, mean, std, ids=ids, shuffle=True,
                         crop_padding=crop, flip=flip, drop_last=config.drop_last, seed=config.seed,
                         channels_last=channels_last)
    test = DeviceLoader(dataset.test.to(device), max(config.batch_size, 512), mean, std,
                        channels_last=channels_last)
    return train, test


def input_spec(dataset: ImageDataset) -> InputSpec:
    """The input shape and class count a model for ``dataset`` is built with."""
    height, width = dataset.image_size
    return InputSpec(dataset.channels, height, width, dataset.num_classes)


def unaugmented_train_loader(dataset, device: torch.device, batch_size: int = 512, *,
                              channels_last: bool = False):
    """The whole training split in id order without augmentation (the pruning probe), in memory or streamed."""
    if is_streamed(dataset):
        return StreamingLoader(dataset.train, batch_size, *dataset.normalization, device=device,
                               channels_last=channels_last, workers=dataset.workers)
    return DeviceLoader(dataset.train.to(device), batch_size, *dataset.normalization, channels_last=channels_last)


def input_shape(dataset) -> tuple[int, ...]:
    """The shape of one input of ``dataset`` (as the loader gives it, without the batch dimension)."""
    images = getattr(dataset.train, "images", None)
    if images is not None:
        return tuple(images.shape[1:])
    return (dataset.channels, *dataset.image_size)


def new_model(architecture: Architecture, dataset, seed: int | None = None, *, pretrained: bool = True) -> nn.Module:
    """A fresh model of ``architecture`` for ``dataset`` (seeded when ``seed`` is given), on the CPU.

    ``pretrained=False``: random weights even where the architecture has pretrained ones.
    """
    sample = torch.zeros(2, *input_shape(dataset)) if architecture.python else None
    return architecture.build(input_spec(dataset), seed, sample, pretrained=pretrained)


def resolve_data(data, dataset=None) -> tuple[DataConfig | None, object | None, dict]:
    """``(config, data set already in memory, identity)`` of what a run trains on.

    ``data`` is a :class:`DataConfig` (loaded later, so a finished run is
    found without loading it), a pracset data set, or a ``(train, test)``
    pair of torch tensors / Datasets / DataLoaders
    (:func:`pracset.data.torch_data.from_torch`). A data set given in Python
    is identified by its name and fingerprint.
    """
    if isinstance(data, DataConfig):
        return data, dataset, data.identity()
    given = as_dataset(data) if data is not None else dataset
    if given is None:
        raise ConfigError("data must be a DataConfig, a pracset data set or a (train, test) pair of torch "
                          f"tensors, Datasets or DataLoaders; got {type(data).__name__}")
    return None, given, {"name": given.name, "fingerprint": given.fingerprint, "test_examples": len(given.test),
                         "crop_padding": given.default_crop_padding, "flip": given.default_flip}


@dataclass
class StageResult:
    """A trained stage, not marked done yet.

    ``metrics`` is what :meth:`RunDirectory.complete_stage` will write;
    ``ledger`` the stage's cost, to be booked before that.
    """

    metrics: StageMetrics
    history: list[dict]
    ledger: IterationLedger


def train_stage(stage: StageFiles, model: nn.Module, train_loader, test_loader, config: TrainConfig, *,
                callbacks: Sequence[Callback] = (), start_step: int = 0, progress: bool = False,
                tensorboard: Path | None = None) -> StageResult:
    """Train ``model`` as ``stage``, continuing from its checkpoint if one exists.

    Writes only the stage's checkpoint (after every epoch). The test split is
    evaluated once more if the last epoch did not (a run stopped early between
    evaluations). Nothing is booked or marked done here: the caller writes
    what the stage adds (its ``model.pt``, ...), then calls
    :meth:`RunDirectory.complete_stage`.
    """
    stage.create()
    if tensorboard is not None and is_main():  # the stage's scalars under TENSORBOARD/STAGE; rank 0 writes them
        callbacks = [*callbacks, TensorBoardLogger(Path(tensorboard) / stage.name, train_loader.num_examples)]
    ledger = IterationLedger()
    trainer = Trainer(config, ledger=ledger, stage=stage.name, checkpoint=stage.checkpoint, resume=True,
                      progress=progress, metrics_log=stage.metrics_log)
    state = trainer.fit(model, train_loader, test_loader, callbacks, start_step=start_step)
    final = dict(state.history[-1]) if state.history else {}
    if "test_accuracy" not in final:
        result = evaluate(model, test_loader, precision=config.precision, ledger=ledger, stage=stage.name)
        final.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
        if state.history:
            state.history[-1].update(test_loss=result["loss"], test_accuracy=result["accuracy"])
    metrics = StageMetrics.of_training(stage.name, state.history, epochs=config.epochs,
                                       examples=train_loader.num_examples, ledger=ledger, final=final)
    log.info("%s: test accuracy %.4f", stage.name, final.get("test_accuracy", float("nan")))
    return StageResult(metrics, state.history, ledger)


@dataclass
class RunResult:
    """What ``train_dense`` returns: the run's directory, its final metrics, history and ledger."""

    out_dir: Path
    metrics: dict
    history: list[dict]
    ledger: IterationLedger
    skipped: bool = False


def train_dense(data: DataConfig, arch: ArchitectureLike, config: TrainConfig, out_dir: str | Path, *,
                device: torch.device, resume: bool = False, progress: bool = False,
                callbacks: list[Callback] | None = None, dataset: ImageDataset | None = None,
                tensorboard: bool = False, weights: str | None = None) -> RunResult:
    """Train ``arch`` densely on ``data`` and write the run to ``out_dir`` (locked while it runs).

    Writes ``run.json`` (what was asked), ``checkpoint.pt`` (each epoch,
    removed at the end), ``model.pt`` (final weights), ``metrics.json``
    (per-epoch history, the final test accuracy and this stage's cost) and
    ``ledger.json``. A finished run is not redone (nor its data loaded).
    """
    check_names(config)
    if tensorboard:
        require_tensorboard()
    architecture = resolve_architecture(arch, weights)
    data, dataset, data_identity = resolve_data(data, dataset)
    layout = TicketLayout(out_dir)
    identity = {"data": data_identity, "arch": architecture.name, "train": to_dict(config)}
    with RunDirectory(layout.root, identity, resume=resume, finished=layout.dense.metrics.name) as run:
        if run.status == "done":
            log.info("%s already holds this finished run; not training again", layout.root)
            saved = layout.dense.read_metrics()
            return RunResult(layout.root, saved["final"], saved["history"], run.ledger, True)
        # The data and the model are checked before anything is written.
        dataset = dataset or load_dataset(data)
        check_loader_settings(dataset, config, device)
        model = new_model(architecture, dataset, seed=config.seed)
        run.claim({"dataset": dataset.describe(), "fingerprint": dataset.fingerprint, "device": str(device),
                   "torch": torch.__version__}, data=dataset)
        train_loader, test_loader = make_loaders(dataset, config, device, conv_net=has_convolutions(model))
        result = train_stage(layout.dense, model, train_loader, test_loader, config, callbacks=callbacks or [],
                             progress=progress, tensorboard=layout.tensorboard if tensorboard else None)
        atomic_torch_save(model.state_dict(), layout.dense.model)
        run.complete_stage(layout.dense, result.metrics, result.ledger)
        return RunResult(layout.root, result.metrics.final, result.history, run.ledger)
