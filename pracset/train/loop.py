"""One training loop; everything else (recorders, pruning, reports) hangs off its callbacks."""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pracset import distributed as ddp
from pracset.data.loader import DeviceLoader
from pracset.data.torch_data import as_batch_loader
from pracset.errors import ConfigError, RunFileError, TrainingDiverged
from pracset.fileio import atomic_torch_save, atomic_write_bytes, naming, require_regular_file
from pracset.ledger import IterationLedger
from pracset.models import has_convolutions
from pracset.train.config import TrainConfig
from pracset.train.checkpoints import check_checkpoint, check_state_dict  # noqa: F401  (re-exported)
from pracset.train.graphs import CapturedStep
from pracset.train.optim import make_optimizer, make_scheduler, start_schedule_at
from pracset.train.step import (Callback, StepOutput, TrainState, callback_keys, per_example_losses,  # noqa: F401
                                forward_losses, has_state)

log = logging.getLogger(__name__)


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (the CPU for a model without parameters)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def use_bf16_for(precision: str, device: torch.device) -> bool:
    """Whether ``precision`` means bf16 autocast on ``device`` (``auto``: on CUDA only)."""
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    """Whether ``config``'s precision means bf16 autocast on ``device``."""
    return use_bf16_for(config.precision, device)


@torch.no_grad()
def evaluation_sums(forward: Callable[[torch.Tensor], torch.Tensor], loader, *, precision: str,
                    shape: tuple[int, ...] = (),
                    on_batch: Callable[[int, object], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and correct predictions over ``loader`` of ``forward``'s logits, on the device (no
    host sync): of one model (``shape`` ``()``), or of K packed models (logits ``(K, B, classes)``, ``shape``
    ``(K,)``). ``on_batch(position, batch)`` is called after each batch (the ledger's count)."""
    device = loader.device
    bf16 = use_bf16_for(precision, device)
    loss_sum = torch.zeros(shape, device=device)
    correct = torch.zeros(shape, device=device, dtype=torch.int64)
    for position, batch in enumerate(loader):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = forward(batch.x)
        loss_sum += per_example_losses(logits, batch.y).sum(-1)
        correct += (logits.argmax(-1) == batch.y).sum(-1)
        if on_batch is not None:
            on_batch(position, batch)
    return loss_sum, correct


def evaluate(model: nn.Module, loader: DeviceLoader, *, precision: str = "auto",
             ledger: IterationLedger | None = None, stage: str = "eval", kind: str = "eval") -> dict:
    """Mean loss and accuracy of ``model`` over ``loader`` (one host sync at the end).

    ``loader`` is a pracset loader or a torch ``DataLoader`` (batches go to the model's device).
    """
    loader = as_batch_loader(loader, model_device(model))
    was_training = model.training
    model.eval()
    sharded = ddp.is_sharded(loader)  # under torch.distributed each rank evaluates its slices; sums all-reduced

    def count(position: int, batch) -> None:
        ledger.add(stage, kind, examples=ddp.global_batch_len(loader, position) if sharded else len(batch.index))

    loss_sum, correct = evaluation_sums(model, loader, precision=precision,
                                        on_batch=count if ledger is not None else None)
    model.train(was_training)
    if sharded:
        loss_sum, correct = ddp.all_reduce_sum(loss_sum, correct)
    n = loader.num_examples
    return {"loss": float(loss_sum) / n, "accuracy": int(correct) / n, "examples": n}


def check_finite_loss(loss: float, stage: str, epoch: int) -> None:
    """Refuse to go on from an epoch whose mean training loss is not finite (NaN or infinite weights follow).

    Called once per epoch with the loss the loop already copied to the host,
    before anything of that epoch (checkpoint, metrics) is written.
    """
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training diverged: the loss is not finite at epoch {epoch} of {stage}; lower --lr")


def raise_if_overflow(exc: RuntimeError, stage: str, epoch: int, lr: float) -> None:
    """Raise :class:`TrainingDiverged` for torch's overflow of a learning rate too large for the weights' dtype
    (from the optimizer step; the caller re-raises any other error). The step's ``try`` costs nothing."""
    if "without overflow" in str(exc):
        raise TrainingDiverged(f"training diverged: the learning rate {lr:g} overflows the weight update at epoch "
                               f"{epoch} of {stage}; lower --lr") from None


def _callback_states(callbacks: Sequence[Callback], saved: dict | list, where: str) -> list[tuple[Callback, dict]]:
    """Pair each callback with its saved state, by name (:func:`callback_keys`).

    A callback that keeps state (:func:`has_state`) but has none saved is refused in one line: it would
    continue from a fresh state as if it had seen the epochs before. A saved state no callback claims (a
    callback dropped since, such as ``--tensorboard``'s logger) is left unused, with a log line. A checkpoint
    written before states were saved by name holds a list: paired by position, as it was written then.
    """
    if isinstance(saved, list):
        return list(zip(callbacks, saved))
    keys = callback_keys(callbacks)
    pairs = []
    for key, callback in zip(keys, callbacks):
        if key in saved:
            pairs.append((callback, saved[key]))
        elif has_state(callback):
            raise RunFileError(f"{where} holds no state for the callback {key} (it holds "
                               f"{', '.join(saved) or 'none'}); remove it to train this stage again")
    unused = sorted(set(saved) - set(keys))
    if unused:
        log.info("%s: the saved state of %s has no callback in this run and is left unused", where, ", ".join(unused))
    return pairs


class Trainer:
    """Trains a model with :class:`TrainConfig`, calling callbacks at every step.

    Args:
        config: the hyperparameters.
        ledger: where the run's iterations and forward passes are counted.
        stage: the ledger stage this run's work is booked under.
        metrics_log: a JSON-lines file with one line per finished epoch, rewritten (atomically) after every
            epoch, to watch a run live (``tail -F``).
        checkpoint: a file written (atomically) at the end of every epoch;
            with ``resume=True`` an existing one is loaded and training
            continues from it, giving the same result as an uninterrupted run.
        progress: show a progress bar over epochs.
    """

    def __init__(self, config: TrainConfig, *, ledger: IterationLedger | None = None, stage: str = "train",
                 checkpoint: str | Path | None = None, resume: bool = False, progress: bool = False,
                 metrics_log: str | Path | None = None):
        self.config = config
        self.metrics_log = Path(metrics_log) if metrics_log is not None else None
        self.ledger = ledger if ledger is not None else IterationLedger()
        self.stage = stage
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = resume
        self.progress = progress

    def fit(self, model: nn.Module, train_loader: DeviceLoader, eval_loader: DeviceLoader | None = None,
            callbacks: Sequence[Callback] = (), *, start_step: int = 0) -> TrainState:
        """Train ``model`` in place for ``config.epochs`` epochs (fewer if a callback stops it).

        The loaders are pracset loaders (the data already on the device) or
        torch ``DataLoader`` objects yielding ``(x, y)`` or ``(x, y, index)``
        (:mod:`pracset.data.torch_data`), whose batches are moved to the
        model's device.

        ``start_step`` continues a schedule from that global step (rewinding in
        IMP): the learning rate starts where it was at that step and training
        runs the remaining ``epochs * len(train_loader) - start_step`` steps.
        """
        train_loader = as_batch_loader(train_loader, model_device(model))
        if eval_loader is not None:
            eval_loader = as_batch_loader(eval_loader, train_loader.device)
        config, device = self.config, train_loader.device
        model.to(device)
        if device.type == "cuda" and has_convolutions(model):
            model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        # Under torch.distributed, DDP all-reduces the gradients; callbacks keep seeing the bare ``model``.
        sharded = ddp.is_sharded(train_loader)
        forward = ddp.wrap_ddp(model, device, sync_batchnorm=config.sync_batchnorm) if sharded else model
        world = ddp.world_size() if sharded else 1
        optimizer = make_optimizer(model, config)
        steps_per_epoch = len(train_loader)
        total_steps = steps_per_epoch * config.epochs
        scheduler = make_scheduler(optimizer, total_steps, steps_per_epoch, config)
        state = TrainState(model, optimizer, scheduler, config, steps_per_epoch, total_steps)
        if start_step:
            if not 0 <= start_step < total_steps:
                raise ConfigError(f"start step {start_step} is outside the run's {total_steps} steps")
            state.step, state.epoch = start_step, start_step // steps_per_epoch
            start_schedule_at(optimizer, scheduler, start_step)
        if self.resume and self.checkpoint is not None and self.checkpoint.exists():
            self._load_checkpoint(state, callbacks)
            log.info("resumed %s from %s at epoch %d", self.stage, self.checkpoint, state.epoch)
        if self.metrics_log is not None:  # the epochs so far (none, or the checkpoint's): no line twice on resume
            self._write_metrics_log(state.history)
        bf16 = use_bf16(config, device)
        for callback in callbacks:
            callback.on_fit_start(state)
        graph = None
        if config.cuda_graphs:
            graph = CapturedStep.for_fit(model, optimizer, config, device, batch_size=train_loader.batch_size,
                                         bf16=bf16, sharded=sharded)
        bar = tqdm(total=config.epochs, initial=state.epoch, desc=self.stage, unit="epoch",
                   disable=not self.progress or not ddp.is_main(), leave=False)
        model.train()
        while state.epoch < config.epochs and not state.stop_requested:
            started = time.perf_counter()
            train_loader.set_epoch(state.epoch)
            for callback in callbacks:
                callback.on_epoch_start(state)
            loss_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            first_step, seen = state.epoch * steps_per_epoch, 0
            epoch_lr, lr_sum, lr_steps = optimizer.param_groups[0]["lr"], 0.0, 0
            for position, batch in enumerate(train_loader):
                if first_step + position < state.step:  # a run that starts mid-epoch (rewinding to step k)
                    continue
                replayed = graph.replay(batch, state, callbacks) if graph is not None else None
                if replayed is not None:  # forward, loss, backward, update and the callbacks' graph_work: one graph
                    out = StepOutput(batch.index, batch.y, *replayed, state.step, state.epoch)
                    epoch_lr = optimizer.param_groups[0]["lr"]
                    lr_sum, lr_steps = lr_sum + epoch_lr, lr_steps + 1
                    scheduler.step()
                else:
                    logits, losses = forward_losses(forward, batch.x, batch.y, bf16=bf16,
                                                    label_smoothing=config.label_smoothing)
                    optimizer.zero_grad(set_to_none=True)
                    if world > 1:  # distributed: DDP's mean over ranks of these is the global batch's mean loss
                        global_len = ddp.global_batch_len(train_loader, position)
                        (losses.sum() * (world / global_len)).backward()
                    else:
                        losses.mean().backward()
                    out = StepOutput(batch.index, batch.y, logits.detach(), losses.detach(), state.step, state.epoch)
                    for callback in callbacks:
                        callback.before_optimizer_step(state, out)
                    epoch_lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (a host float: no sync)
                    lr_sum, lr_steps = lr_sum + epoch_lr, lr_steps + 1
                    if not state.skip_step:  # a callback may skip this update (RigL's mask-update steps)
                        try:
                            optimizer.step()
                        except RuntimeError as exc:
                            raise_if_overflow(exc, self.stage, state.epoch + 1, epoch_lr)
                            raise
                        scheduler.step()
                    else:  # the rate is a function of the global step, skipped updates included
                        with warnings.catch_warnings():  # torch warns when the scheduler steps without the optimizer
                            warnings.simplefilter("ignore", UserWarning)
                            scheduler.step()
                    state.skip_step = False
                    for callback in callbacks:
                        callback.after_optimizer_step(state, out)
                state.step += 1
                self.ledger.add(self.stage, "train", examples=global_len if world > 1 else len(batch.index))
                seen += len(batch.index)
                for callback in callbacks:
                    callback.on_batch_end(state, out)
                loss_sum += out.losses.sum()
                correct += (out.logits.argmax(1) == batch.y).sum()
            state.epoch += 1
            if world > 1:  # distributed: the job's totals; rank 0's BatchNorm statistics everywhere
                loss_sum, correct, seen = ddp.all_reduce_sum(loss_sum, correct, torch.tensor(seen, device=device))
                seen = int(seen)
                ddp.sync_buffers(model)
            n = max(seen, 1)
            # lr: the mean of the rates the epoch's steps trained with (the rate itself, unless it moves per step:
            # warm-up, cosine), never the one the scheduler has moved on to after the last step
            metrics = {"epoch": state.epoch, "step": state.step, "lr": lr_sum / lr_steps if lr_steps else epoch_lr,
                       "train_loss": float(loss_sum) / n, "train_accuracy": int(correct) / n}
            check_finite_loss(metrics["train_loss"], self.stage, state.epoch)  # the sync above: no extra one
            last = state.epoch == config.epochs
            if eval_loader is not None and (state.epoch % config.eval_every == 0 or last):
                result = evaluate(model, eval_loader, precision=config.precision, ledger=self.ledger, stage=self.stage)
                metrics.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
            metrics["seconds"] = round(time.perf_counter() - started, 4)
            for callback in callbacks:
                callback.on_epoch_end(state, metrics)
            state.history.append(metrics)
            if self.metrics_log is not None:  # one more line per epoch as it goes; rewritten whole, so never torn
                self._write_metrics_log(state.history)
            # one line per epoch: shown with -v (the stage's summary line is INFO); metrics.jsonl keeps every one
            log.debug("%s epoch %d/%d: %s", self.stage, state.epoch, config.epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k not in ("epoch", "step")))
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in metrics.items() if "accuracy" in k})
            if self.checkpoint is not None:
                self._save_checkpoint(state, callbacks)
        bar.close()
        for callback in callbacks:
            callback.on_fit_end(state)
        return state

    def _write_metrics_log(self, history: list[dict]) -> None:
        atomic_write_bytes(self.metrics_log, "".join(json.dumps(h) + "\n" for h in history).encode())

    def _save_checkpoint(self, state: TrainState, callbacks: Sequence[Callback]) -> None:
        atomic_torch_save({
            "model": state.model.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scheduler": state.scheduler.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "stop_requested": state.stop_requested,
            "history": state.history,
            "callbacks": {key: cb.state_dict() for key, cb in zip(callback_keys(callbacks), callbacks)
                          if has_state(cb)},
            "ledger": self.ledger.to_dict(),
        }, self.checkpoint)

    def _load_checkpoint(self, state: TrainState, callbacks: Sequence[Callback]) -> None:
        # weights_only: a checkpoint in a directory someone else made must not be able to run code here
        require_regular_file(self.checkpoint, "checkpoint", error=RunFileError)  # a FIFO would block forever
        try:
            with naming(self.checkpoint):  # an OSError of read() names no file
                saved = torch.load(self.checkpoint, map_location=next(state.model.parameters()).device,
                                   weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{self.checkpoint} is not a checkpoint pracset can load safely ({first}); "
                              "remove it to train this stage again") from None
        where = f"checkpoint {self.checkpoint}"
        check_checkpoint(saved, state, where)
        restored = IterationLedger.from_dict(saved["ledger"], where=f"{where}: its ledger")
        try:
            state.model.load_state_dict(saved["model"])
            state.optimizer.load_state_dict(saved["optimizer"])
            state.scheduler.load_state_dict(saved["scheduler"])
            for callback, cb_state in _callback_states(callbacks, saved["callbacks"], where):
                callback.load_state_dict(cb_state)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise RunFileError(f"{where} does not fit this stage ({first}); remove it to train this stage "
                               "again") from None
        state.epoch, state.step = saved["epoch"], saved["step"]
        state.stop_requested = saved.get("stop_requested", False)
        state.history = list(saved["history"])
        self.ledger.stages.clear()
        self.ledger.stages.update(restored.stages)

