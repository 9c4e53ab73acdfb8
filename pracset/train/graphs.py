"""The training step as one CUDA graph: forward, loss, backward, update and mask multiply, replayed per step.

A small network at a small batch (ResNet-20 at 128, LeNet-300-100) is bound
by kernel launches on a large GPU: the GPU waits for Python to queue the few
hundred kernels of each step. With ``TrainConfig.cuda_graphs`` the Trainer
records the whole step once with ``torch.cuda.graph`` and replays it, one
launch per step. :class:`CapturedStep` holds the graph of one fit (a packed
job of several models subclasses it, in :mod:`pracset.train.packed`):

* **Static buffers.** The graph reads its inputs from ``x`` and ``y`` (the
  shape, dtype and memory layout of a full batch) and writes its logits and
  per-example losses to static outputs; a replayed step copies its batch in
  and clones the outputs out, so callbacks (the recorder's stash) keep each
  step's own tensors.
* **When.** The graph is captured at the first step that qualifies: every
  callback's ``capturable(step)`` holds, the batch is full, and the
  optimizer's state exists (SGD makes its momentum buffers at its first step,
  so a fit's first step always runs eagerly). Steps that do not qualify
  (RigL and GraNet mask updates, the last partial batch) run the eager step;
  mask changes reach the graph because ``SparseMethod`` rewrites its mask
  multipliers in place.
* **Warm-up.** As torch's documentation requires, three steps run on a side
  stream before the capture; parameters, buffers, optimizer state and the
  CUDA random state are saved before and restored after, so the warm-up
  leaves no trace in the run.
* **The rate.** SGD's default (foreach) update takes the learning rate as a
  host float, which a graph would freeze. The captured update is torch's
  fused SGD kernel reading the rate from a device tensor, refilled before
  every replay; eager steps keep the configured update. Both compute the same
  formula in fp32 but round differently in the last bit (the fused kernel
  contracts a multiply-add), so runs with capture on and off agree to a float
  tolerance, not bit for bit: ``pipelines/benchmarks/capture_equality.py``
  states the tolerance and checks it on a GPU.

Not supported (one warning, and the fit trains as without the flag): a
device other than CUDA, optimizers other than ``sgd`` and ``nesterov``
(AdamW's step counter would need ``capturable=True``), torch.distributed. A
capture that fails logs a warning and the fit continues eagerly.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn as nn

from pracset.data.loader import Batch
from pracset.train.config import TrainConfig
from pracset.train.step import Callback, TrainState, forward_losses

log = logging.getLogger(__name__)

#: The optimizers whose update a graph can hold: torch's fused SGD kernel reads the rate from the device.
CAPTURABLE_OPTIMIZERS = ("sgd", "nesterov")
#: Eager steps on a side stream before the capture (torch's documentation uses three).
WARMUP_STEPS = 3


def unsupported_reason(config: TrainConfig, device: torch.device, *, sharded: bool) -> str | None:
    """Why a fit with ``config`` on ``device`` cannot capture its step (None when it can)."""
    if device.type != "cuda":
        return f"it needs a CUDA device and the run is on {device.type}"
    if config.optimizer not in CAPTURABLE_OPTIMIZERS:
        return f"it supports the {' and '.join(CAPTURABLE_OPTIMIZERS)} optimizers, not {config.optimizer}"
    if sharded:
        return "it does not run under torch.distributed"
    return None


class CapturedStep:
    """One fit's training step as a CUDA graph (see the module docstring).

    Args:
        model: the network, on a CUDA device, in training mode.
        optimizer: its SGD optimizer.
        batch_size: the size of a full batch: only full batches are captured and replayed.
        bf16: autocast to bf16 in the forward pass (as the eager step).
        label_smoothing: of the training loss (as the eager step).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, batch_size: int | None, bf16: bool,
                 label_smoothing: float = 0.0):
        self.model, self.optimizer = model, optimizer
        self.batch_size, self.bf16, self.label_smoothing = batch_size, bf16, label_smoothing
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed = False
        self.x = self.y = self.logits = self.losses = None
        self._rates: list[torch.Tensor] = []
        self._grads: list[tuple[nn.Parameter, torch.Tensor]] = []

    @classmethod
    def for_fit(cls, model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig, device: torch.device,
                *, batch_size: int | None, bf16: bool, sharded: bool) -> "CapturedStep | None":
        """The captured step of a Trainer's fit, or None (with one warning) where capture is not supported."""
        reason = unsupported_reason(config, device, sharded=sharded)
        if reason is not None:
            log.warning("cuda_graphs: %s; training without capture", reason)
            return None
        return cls(model, optimizer, batch_size=batch_size, bf16=bf16, label_smoothing=config.label_smoothing)

    def replay(self, batch: Batch, state: TrainState, callbacks: Sequence[Callback]) -> tuple | None:
        """Run this step as the graph (capturing it first if need be): ``(logits, losses)``, detached copies.

        None means the step must run eagerly: a callback needs the host at
        this step, the batch is not full, the optimizer has no state yet, or
        capture failed. No host synchronisation.
        """
        if self.failed or not all(callback.capturable(state.step) for callback in callbacks):
            return None
        if self.graph is None:
            if not self._full(batch) or not self._optimizer_state_ready():
                return None
            if not self.capture(batch, state, callbacks):
                return None
        elif batch.x.shape != self.x.shape or batch.x.stride() != self.x.stride() or batch.y.shape != self.y.shape:
            return None
        self.x.copy_(batch.x)
        self.y.copy_(batch.y)
        for rate, group in zip(self._rates, self.optimizer.param_groups):
            rate.fill_(group["lr"])  # a host float written by a kernel: no sync
        self.graph.replay()
        if self._grads and self._grads[0][0].grad is not self._grads[0][1]:  # an eager step made its own
            for param, grad in self._grads:
                param.grad = grad
        return self.logits.clone(), self.losses.clone()

    def capture(self, batch: Batch, state: TrainState, callbacks: Sequence[Callback] = ()) -> bool:
        """Warm up and record the step on ``batch``'s shape; False (with a warning) if capture failed.

        The run's state (weights, buffers, optimizer state, CUDA random
        state) is the same afterwards as before: nothing has trained yet.
        """
        device = batch.x.device
        self.x, self.y = batch.x.clone(), batch.y.clone()  # clone keeps the memory layout (channels-last)
        groups = self.optimizer.param_groups
        host_rates, fused = [group["lr"] for group in groups], [group.get("fused") for group in groups]
        self._rates = [torch.tensor(float(rate), dtype=torch.float32, device=device) for rate in host_rates]
        written = self._written_tensors()
        saved, random_state = [t.detach().clone() for t in written], torch.cuda.get_rng_state(device)
        try:
            for group, rate in zip(groups, self._rates):  # torch's fused SGD kernel reads a tensor rate on the device
                group["lr"], group["fused"] = rate, True
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    self._step(state, callbacks)
            torch.cuda.current_stream(device).wait_stream(side)
            self._restore(written, saved, random_state, device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.logits, self.losses = self._step(state, callbacks)
        except RuntimeError as exc:
            self._restore(written, saved, random_state, device)
            self.failed = True
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("cuda_graphs: capturing the training step failed (%s); this fit trains without capture", first)
            return False
        finally:
            for group, rate, was_fused in zip(groups, host_rates, fused):
                group["lr"], group["fused"] = rate, was_fused
        self.graph = graph
        self._grads = [(p, p.grad) for p in self._parameters() if p.grad is not None]
        log.info("cuda_graphs: captured the training step at step %d (batch %s)", state.step, tuple(self.x.shape))
        return True

    # -- the step itself, and the state it writes
    def _step(self, state: TrainState, callbacks: Sequence[Callback]) -> tuple[torch.Tensor, torch.Tensor]:
        """The eager step's work on the static buffers: what the warm-up runs and the graph records."""
        logits, losses = forward_losses(self.model, self.x, self.y, bf16=self.bf16,
                                        label_smoothing=self.label_smoothing, autocast_cache=False)
        self.optimizer.zero_grad(set_to_none=True)  # in the capture: backward allocates the graph's own gradients
        losses.mean().backward()
        self.optimizer.step()
        for callback in callbacks:
            callback.graph_work(state)
        return logits.detach(), losses.detach()

    def _optimizer_state_ready(self) -> bool:
        """Whether SGD's momentum buffers exist (the graph records the steady-state update, not the first one)."""
        return all(self.optimizer.state.get(p, {}).get("momentum_buffer") is not None
                   for group in self.optimizer.param_groups if group["momentum"] != 0
                   for p in group["params"] if p.requires_grad)

    def _full(self, batch: Batch) -> bool:
        """Whether ``batch`` is a full batch (only those are captured)."""
        return len(batch.y) == self.batch_size

    def _parameters(self) -> list[torch.Tensor]:
        """The tensors the optimizer updates (a subclass that trains other tensors overrides this and
        :meth:`_buffers`, and :meth:`_step`)."""
        return list(self.model.parameters())

    def _buffers(self) -> list[torch.Tensor]:
        return list(self.model.buffers())

    def _written_tensors(self) -> list[torch.Tensor]:
        """What a step writes besides the gradients: parameters, buffers and optimizer state."""
        optimizer_state = [value for per_param in self.optimizer.state.values() for value in per_param.values()
                           if isinstance(value, torch.Tensor)]
        return [*self._parameters(), *self._buffers(), *optimizer_state]

    @torch.no_grad()
    def _restore(self, written: list[torch.Tensor], saved: list[torch.Tensor], random_state: torch.Tensor,
                 device: torch.device) -> None:
        for tensor, copy in zip(written, saved):
            tensor.copy_(copy)  # in place: the graph keeps the addresses it recorded
        torch.cuda.set_rng_state(random_state, device)
        self.optimizer.zero_grad(set_to_none=True)


__all__ = ["CAPTURABLE_OPTIMIZERS", "CapturedStep", "WARMUP_STEPS", "unsupported_reason"]
