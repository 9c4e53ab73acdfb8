"""Several models of one architecture trained as one job: the sanity-check controls of a ticket.

A ResNet-20 at batch 128 uses a small part of a large GPU: its step is bound
by kernel launches, not by arithmetic. :func:`fit_packed` trains K models
that share a recipe and a step count (the controls of a ticket, each with its
own initialisation and fixed mask; the seeds of full-data IMP, each with its
own data order) as one network: their parameters and buffers are stacked with
``torch.func.stack_module_state`` and one ``vmap``-ed forward and backward
computes all K per step, so K models cost about the launches of one.

Each model trains as it would alone: the loss is the sum of the K per-model
batch means (so model k's gradient is its own mean's), the optimizer (SGD,
AdamW) acts element-wise on the stacked tensors, the mask multiply zeroes
each model's masked weights and their optimizer state after every step, and
BatchNorm keeps per-model running statistics (the stacked buffers). The
results equal separate training up to float rounding (batched kernels sum in
another order), which ``tests/test_packed.py`` checks against the Trainer.

Models may read different data orders (the seeds of full-data IMP, each
with its own shuffling and augmentation): give one loader per model, over
the same number of examples. Models that share a loader object share its
batches, read once.

With ``TrainConfig.cuda_graphs`` (on CUDA) the packed step is captured as
one CUDA graph and replayed for each full batch, as the Trainer captures one
model's step (:mod:`pracset.train.graphs`).

Given one checkpoint path per model, the job writes after every epoch each
model's slice of its state (weights, buffers, optimizer state, history,
ledger, snapshot) with the job's shared schedule; a job killed and started
again with the same paths continues from the last epoch all of them hold.

Not supported here (the Trainer handles them): callbacks, mask changes during
training (RigL, GraNet), torch.distributed.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from pracset.errors import ConfigError
from pracset.fileio import atomic_write_bytes
from pracset.ledger import IterationLedger
from pracset.mask import Mask, zero_masked
from pracset.train.config import TrainConfig
from pracset.data.loader import Batch
from pracset.train.graphs import CapturedStep, unsupported_reason
from pracset.train.packed_checkpoints import load_checkpoints, restore_checkpoints, save_checkpoints
from pracset.train.loop import check_finite_loss, evaluation_sums, raise_if_overflow, use_bf16
from pracset.train.step import forward_losses
from pracset.train.optim import OPTIMIZERS, make_scheduler, start_schedule_at

log = logging.getLogger(__name__)


class _Packed:
    """K models as stacked parameters and buffers, with a functional forward over all of them."""

    def __init__(self, models: Sequence[nn.Module], device: torch.device):
        self.base = copy.deepcopy(models[0]).to("meta")
        params, buffers = stack_module_state([m.to(device) for m in models])
        self.params: dict[str, torch.Tensor] = params
        self.buffers: dict[str, torch.Tensor] = buffers
        self.count = len(models)

    def forward(self, x: torch.Tensor, *, training: bool, per_model: bool = False) -> torch.Tensor:
        """Logits (K, B, classes) of every model on the shared batch ``x`` (``per_model``: ``x[k]`` is model k's)."""
        self.base.train(training)

        def one(params, buffers, inputs):
            return functional_call(self.base, (params, buffers), (inputs,))

        in_dims = (0, 0, 0 if per_model else None)
        return vmap(one, in_dims=in_dims, randomness="different")(self.params, self.buffers, x)

    @torch.no_grad()
    def state_of(self, k: int) -> dict[str, torch.Tensor]:
        """Model k's whole state (weights and buffers) as a host copy, in its ``state_dict`` order."""
        stacked = {**self.params, **self.buffers}
        return {name: stacked[name][k].detach().cpu().clone() for name in self.base.state_dict()}

    @torch.no_grad()
    def write_back(self, models: Sequence[nn.Module]) -> None:
        """Copy model k's slice of every stacked tensor into ``models[k]``."""
        for k, model in enumerate(models):
            model.load_state_dict({**{n: t[k] for n, t in self.params.items()},
                                   **{n: t[k] for n, t in self.buffers.items()}})


def _packed_losses(packed: _Packed, x: torch.Tensor, y: torch.Tensor, *, bf16: bool, label_smoothing: float,
                   per_model: bool, autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every model's logits (K, B, classes) and per-example training losses (K, B): the training step's
    :func:`~pracset.train.step.forward_losses` with the packed forward."""
    return forward_losses(partial(packed.forward, training=True, per_model=per_model), x, y, bf16=bf16,
                          label_smoothing=label_smoothing, autocast_cache=autocast_cache)


def _stacked_keep(packed: _Packed, masks: Sequence[Mask]) -> dict[str, torch.Tensor]:
    names = set(masks[0])
    if any(set(m) != names for m in masks):
        raise ConfigError("packed models must mask the same tensors")
    keep = {}
    for name in names:
        if name not in packed.params:
            raise ConfigError(f"the mask names {name!r}, which the model does not have")
        param = packed.params[name]
        keep[name] = torch.stack([m[name].to(param.device) for m in masks]).to(param.dtype)
    return keep


def _enforce(packed: _Packed, keep: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Zero every model's masked weights and their optimizer state (:func:`~pracset.mask.zero_masked`)."""
    zero_masked(((packed.params[name], factor) for name, factor in keep.items()), optimizer)


def _evaluate(packed: _Packed, loader, precision: str, ledgers, stages) -> list[dict]:
    """Every model's mean loss and accuracy over ``loader`` (:func:`~pracset.train.loop.evaluation_sums`)."""
    def count(position: int, batch) -> None:
        for ledger, stage in zip(ledgers, stages):
            ledger.add(stage, "eval", examples=len(batch.index))

    loss_sum, correct = evaluation_sums(partial(packed.forward, training=False), loader, precision=precision,
                                        shape=(packed.count,), on_batch=count)
    n = loader.num_examples
    return [{"loss": loss / n, "accuracy": right / n} for loss, right in zip(loss_sum.tolist(), correct.tolist())]


@dataclass
class PackedRun:
    """What :func:`fit_packed` returns, one entry per model."""

    histories: list[list[dict]]    # the Trainer's per-epoch metrics
    ledgers: list[IterationLedger]  # the model's cost, booked under its stage name
    snapshots: list[dict] | None    # the whole state at ``snapshot_step`` (host copies), if one was asked for


class _Batches:
    """The batches of one step for every model: the distinct loaders are read once each, in lockstep."""

    def __init__(self, loaders: Sequence):
        distinct: list = []
        for loader in loaders:
            if not any(loader is seen for seen in distinct):
                distinct.append(loader)
        self.loaders = distinct
        self.shared = len(distinct) == 1
        self.device = distinct[0].device
        sizes = {(len(loader), loader.num_examples) for loader in distinct}
        if len(sizes) > 1:
            raise ConfigError("packed models must read the same number of examples in the same number of steps")
        if any(getattr(loader, "sharded", False) for loader in distinct):
            raise ConfigError("packed training does not run under torch.distributed; train the models one by one")
        # model k reads distinct[which[k]] (host integers: choosing batches needs no device work)
        self.which = [next(i for i, seen in enumerate(distinct) if seen is loader) for loader in loaders]

    def __len__(self) -> int:
        return len(self.loaders[0])

    def set_epoch(self, epoch: int) -> None:
        for loader in self.loaders:
            loader.set_epoch(epoch)

    def __iter__(self):
        """One step's batch of every distinct loader (combine them with :meth:`combine`)."""
        return zip(*self.loaders)

    def combine(self, batches) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(x, y, size)``: the shared batch, or ``x`` (K, B, ...) and ``y`` (K, B) with model k's in row k
        (one copy, which keeps the batches' memory format)."""
        if self.shared:
            return batches[0].x, batches[0].y, len(batches[0].index)
        x = torch.stack([batches[i].x for i in self.which])
        y = torch.stack([batches[i].y for i in self.which])
        return x, y, len(batches[0].index)


def _packed_update(packed: _Packed, keep: dict[str, torch.Tensor], optimizer, x: torch.Tensor, y: torch.Tensor, *,
                   bf16: bool, label_smoothing: float, per_model: bool,
                   autocast_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One training step of every model (the eager step, and what the CUDA graph records): forward, losses,
    backward, the update and the mask multiply; returns the logits and losses, detached."""
    logits, losses = _packed_losses(packed, x, y, bf16=bf16, label_smoothing=label_smoothing, per_model=per_model,
                                    autocast_cache=autocast_cache)
    optimizer.zero_grad(set_to_none=True)  # in a capture: backward allocates the graph's own gradients
    losses.mean(1).sum().backward()  # model k's gradient is that of its own batch mean
    optimizer.step()
    _enforce(packed, keep, optimizer)
    return logits.detach(), losses.detach()


class _AtStep:
    """What a captured step reads of the training state: the step (packed jobs have no callbacks)."""

    def __init__(self, step: int):
        self.step = step


class _CapturedPackedStep(CapturedStep):
    """The packed step as one CUDA graph (``TrainConfig.cuda_graphs``): every model's forward and backward, the
    update and the mask multiply, replayed for each full batch as :class:`~pracset.train.graphs.CapturedStep`
    replays one model's (static buffers, warm-up, the rate read from the device). Not yet run on a GPU:
    ``pipelines/benchmarks/capture_equality.py`` compares it with the eager packed step there."""

    def __init__(self, packed: _Packed, keep: dict[str, torch.Tensor], optimizer, *, batch_size: int, bf16: bool,
                 label_smoothing: float, per_model: bool):
        super().__init__(packed.base, optimizer, batch_size=batch_size, bf16=bf16, label_smoothing=label_smoothing)
        self.packed, self.keep, self.per_model = packed, keep, per_model

    @classmethod
    def for_job(cls, packed: _Packed, keep, optimizer, config: TrainConfig, device: torch.device, *,
                batch_size: int, bf16: bool, per_model: bool) -> "_CapturedPackedStep | None":
        """The captured step of a packed job, or None (with one warning) where capture is not supported."""
        reason = unsupported_reason(config, device, sharded=False)
        if reason is not None:
            log.warning("cuda_graphs: %s; the packed job trains without capture", reason)
            return None
        return cls(packed, keep, optimizer, batch_size=batch_size, bf16=bf16,
                   label_smoothing=config.label_smoothing, per_model=per_model)

    def _full(self, batch) -> bool:
        return batch.y.shape[-1] == self.batch_size  # (B,) shared, or (K, B)

    def _parameters(self) -> list[torch.Tensor]:
        return list(self.packed.params.values())

    def _buffers(self) -> list[torch.Tensor]:
        return list(self.packed.buffers.values())

    def _step(self, state, callbacks) -> tuple[torch.Tensor, torch.Tensor]:
        return _packed_update(self.packed, self.keep, self.optimizer, self.x, self.y, bf16=self.bf16,
                              label_smoothing=self.label_smoothing, per_model=self.per_model, autocast_cache=False)


def fit_packed(models: Sequence[nn.Module], masks: Sequence[Mask], train_loader, eval_loader, config: TrainConfig, *,
               stages: Sequence[str], start_step: int = 0, metrics_logs: Sequence[Path | None] | None = None,
               snapshot_step: int | None = None, checkpoints: Sequence[Path] | None = None,
               progress: bool = False) -> PackedRun:
    """Train ``models`` (in place) together, model k under ``masks[k]``.

    ``train_loader`` is one loader all models read, or a sequence of one
    loader per model (its own data order, e.g. its own seed). Returns each
    model's per-epoch history (the Trainer's metrics) and its ledger, booked
    under ``stages[k]``; with ``snapshot_step``, each model's whole state
    after that many steps (what IMP rewinds to; ``start_step`` itself: the
    state before training). ``start_step`` continues the schedule from that
    step (rewinding), as :meth:`pracset.train.Trainer.fit` does.
    ``checkpoints`` (one path per model) are written after every epoch and,
    when all of them hold this job at one epoch, resumed from. ``progress``:
    one progress bar over the job's epochs (the Trainer's, for K stages).
    """
    if not models or len(models) != len(masks) or len(models) != len(stages):
        raise ConfigError("fit_packed needs one mask and one stage name per model")
    loaders = list(train_loader) if isinstance(train_loader, (list, tuple)) else [train_loader] * len(models)
    if len(loaders) != len(models):
        raise ConfigError("fit_packed needs one training loader, or one per model")
    batches = _Batches(loaders)
    device = batches.device
    packed = _Packed(models, device)
    keep = _stacked_keep(packed, masks)
    optimizer = OPTIMIZERS.get(config.optimizer)(list(packed.params.values()), config)
    steps_per_epoch = len(batches)
    total_steps = steps_per_epoch * config.epochs
    scheduler = make_scheduler(optimizer, total_steps, steps_per_epoch, config)
    if not 0 <= start_step < total_steps:
        raise ConfigError(f"start step {start_step} is outside the run's {total_steps} steps")
    if snapshot_step is not None and not start_step <= snapshot_step <= total_steps:
        raise ConfigError(f"snapshot step {snapshot_step} is outside the run's steps {start_step}..{total_steps}")
    if start_step:
        start_schedule_at(optimizer, scheduler, start_step)
    _enforce(packed, keep, optimizer)
    ledgers = [IterationLedger() for _ in models]
    histories: list[list[dict]] = [[] for _ in models]
    bf16 = use_bf16(config, device)
    count = packed.count
    step, epoch = start_step, start_step // steps_per_epoch
    snapshots = [packed.state_of(k) for k in range(count)] if snapshot_step == start_step else None
    if checkpoints is not None and len(checkpoints) != count:
        raise ConfigError("fit_packed needs one checkpoint path per model")
    saved = load_checkpoints(checkpoints, device) if checkpoints is not None else None
    if saved is not None:
        restore_checkpoints(saved, packed, optimizer, scheduler)
        step, epoch = saved[0]["step"], saved[0]["epoch"]
        histories = [list(one["history"]) for one in saved]
        ledgers = [IterationLedger.from_dict(one["ledger"]) for one in saved]
        snapshots = [one["snapshot"] for one in saved] if saved[0]["snapshot"] is not None else snapshots
        log.info("packed %s resumed at epoch %d", "+".join(stages), epoch)
    graph = _CapturedPackedStep.for_job(packed, keep, optimizer, config, device, batch_size=loaders[0].batch_size,
                                        bf16=bf16, per_model=not batches.shared) if config.cuda_graphs else None
    bar = tqdm(total=config.epochs, initial=epoch, desc=f"{stages[0]} (+{count - 1} packed)", unit="epoch",
               disable=not progress, leave=False)
    while epoch < config.epochs:
        started = time.perf_counter()
        batches.set_epoch(epoch)
        loss_sum = torch.zeros(count, device=device)
        correct = torch.zeros(count, device=device, dtype=torch.int64)
        seen, epoch_lr, lr_sum, lr_steps = 0, optimizer.param_groups[0]["lr"], 0.0, 0
        for position, step_batches in enumerate(batches):
            if epoch * steps_per_epoch + position < step:  # a run that starts mid-epoch (rewinding to step k)
                continue
            x, y, size = batches.combine(step_batches)
            epoch_lr = optimizer.param_groups[0]["lr"]  # the rate this step trains with
            lr_sum, lr_steps = lr_sum + epoch_lr, lr_steps + 1
            replayed = graph.replay(Batch(x, y, None), _AtStep(step), ()) if graph is not None else None
            # forward, losses, backward, update and mask multiply: the graph's replay, or the same work eagerly
            try:
                logits, losses = replayed if replayed is not None else _packed_update(
                    packed, keep, optimizer, x, y, bf16=bf16, label_smoothing=config.label_smoothing,
                    per_model=not batches.shared)
            except RuntimeError as exc:
                raise_if_overflow(exc, "+".join(stages), epoch + 1, epoch_lr)
                raise
            scheduler.step()
            step += 1
            if step == snapshot_step:
                snapshots = [packed.state_of(k) for k in range(count)]
            seen += size
            for ledger, stage in zip(ledgers, stages):
                ledger.add(stage, "train", examples=size)
            with torch.no_grad():
                loss_sum += losses.detach().sum(1)
                correct += (logits.detach().argmax(2) == y).sum(1)  # y: (B,) broadcast, or (K, B)
        epoch += 1
        last = epoch == config.epochs
        results = (_evaluate(packed, eval_loader, config.precision, ledgers, stages)
                   if eval_loader is not None and (epoch % config.eval_every == 0 or last) else None)
        seconds = round(time.perf_counter() - started, 4)
        losses_host, correct_host = loss_sum.tolist(), correct.tolist()  # one copy to the host per epoch
        for stage, total in zip(stages, losses_host):  # before anything of this epoch is written
            check_finite_loss(total, stage, epoch)
        for i in range(count):
            metrics = {"epoch": epoch, "step": step, "lr": lr_sum / lr_steps if lr_steps else epoch_lr,
                       "train_loss": losses_host[i] / max(seen, 1),
                       "train_accuracy": correct_host[i] / max(seen, 1)}
            if results is not None:
                metrics.update(test_loss=results[i]["loss"], test_accuracy=results[i]["accuracy"])
            metrics["seconds"] = seconds
            histories[i].append(metrics)
            if metrics_logs is not None and metrics_logs[i] is not None:
                atomic_write_bytes(metrics_logs[i], "".join(json.dumps(h) + "\n" for h in histories[i]).encode())
        log.debug("packed %s epoch %d/%d: test accuracy %s", "+".join(stages), epoch, config.epochs,
                 ", ".join(f"{h[-1].get('test_accuracy', float('nan')):.4f}" for h in histories))
        if checkpoints is not None:
            save_checkpoints(checkpoints, packed, optimizer, scheduler, epoch=epoch, step=step,
                              histories=histories, ledgers=ledgers, snapshots=snapshots)
        bar.update(1)
    bar.close()
    if graph is not None and graph.graph is None and not graph.failed:  # (a failed capture said so itself)
        log.warning("cuda_graphs: no step of this packed job could be captured (every batch partial, or the "
                    "optimizer's state never complete); it trained without capture")
    packed.write_back(models)
    return PackedRun(histories, ledgers, snapshots)


__all__ = ["PackedRun", "fit_packed"]
