"""torch.distributed helpers: torchrun / DistributedDataParallel across GPUs and nodes.

Everything here is a no-op (or the identity) when no process group with more
than one rank is initialised, so the single-process path pays nothing. Under
``torchrun`` every rank runs the same program (SPMD) and the pieces of
pracset that see data or write files cooperate as follows:

* **Batches** (:class:`~pracset.data.loader.DeviceLoader`,
  :class:`~pracset.data.streaming.StreamingLoader`): ``batch_size`` is the
  *global* batch. Every rank draws the same per-(seed, epoch) permutation and
  takes a contiguous slice of each global batch (:func:`shard_bounds`), so
  step ``k`` of a W-rank job trains on exactly the examples step ``k`` of a
  one-process run trains on, the epoch, the step count, the learning-rate
  schedule and the ledger are the same, and every example is presented once
  per epoch. The device loader also draws the augmentation for the global
  batch and slices it: a W-rank job sees bitwise the inputs of one process.
* **Gradients**: the Trainer wraps the model in ``DistributedDataParallel``;
  each rank back-propagates ``sum(losses) * W / global_batch`` so that DDP's
  average over ranks is the mean over the global batch (exact even when the
  last batch does not split evenly, or leaves a rank empty).
* **BatchNorm**: statistics over each rank's slice, as in plain DDP (rank 0's
  running statistics are copied to every rank after each epoch); with
  ``TrainConfig.sync_batchnorm`` (CUDA only) :func:`wrap_ddp` converts the
  layers to ``SyncBatchNorm``, whose statistics cover the global batch.
* **Per-example statistics**: the recorder gathers each epoch's presentations
  from all ranks (:func:`all_gather_cat`) before applying them, so every rank
  holds the statistics of a one-process run over the same presentations.
* **Masks**: computed on every rank from identical weights and identical
  (DDP-averaged) gradients, and verified with :func:`check_same_mask`, which
  raises if the ranks disagree.
* **Files**: :mod:`pracset.fileio` writes on rank 0 only; the other ranks wait
  until the file is complete (the output directory must be on a file system
  every rank sees).
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import socket
import sys
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from pracset.errors import ConfigError, PracsetError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- who am I
def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (torchrun's ``LOCAL_RANK``; 0 without one)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and reports."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a job of more than one process (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(backend: str | None = None, *, timeout_minutes: float = 30.0) -> bool:
    """Join the process group that torchrun's environment describes; return whether one is in use.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (torchrun sets them all). Without ``WORLD_SIZE`` > 1 it
    does nothing and returns False. ``backend`` defaults to ``nccl`` when CUDA
    is available (each rank then uses GPU ``LOCAL_RANK``: ``cuda``/``auto``
    devices mean that GPU) and ``gloo`` otherwise. Calling it again is harmless.
    """
    if dist.is_available() and dist.is_initialized():
        return is_distributed()
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    atexit.register(_destroy)
    log.info("joined process group: rank %d of %d (local rank %d), backend %s",
             rank(), world_size(), local_rank(), backend)
    return is_distributed()


def _destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End a finished torchrun process: a barrier, then ``os._exit(code)`` with the output flushed (no-op in one
    process). Gloo aborted a rank in the group's teardown at exit, after all its work was written ("terminate
    called without an active exception", in half the test-suite runs here): every file is already in place."""
    if is_distributed():
        dist.barrier()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)


def barrier() -> None:
    """Wait for every rank (no-op in one process)."""
    if is_distributed():
        dist.barrier()


# ----------------------------------------------------------------------------- sharding
def shard_bounds(size: int, rank_: int, world: int) -> tuple[int, int]:
    """The contiguous slice ``[lo, hi)`` of a global batch of ``size`` that rank ``rank_`` of ``world`` takes.

    Slices differ in length by at most one, the longer ones first (rank 0 is
    never empty while the batch is not); ranks past ``size`` get an empty one.
    """
    base, extra = divmod(size, world)
    lo = rank_ * base + min(rank_, extra)
    return lo, lo + base + (1 if rank_ < extra else 0)


def global_batch_len(loader: Any, position: int) -> int:
    """Examples in global batch ``position`` of ``loader`` (host arithmetic, no sync)."""
    return min(loader.batch_size, loader.num_examples - position * loader.batch_size)


def is_sharded(loader: Any) -> bool:
    """Whether iterating ``loader`` yields only this rank's slice of every batch."""
    return bool(getattr(loader, "sharded", False))


# ----------------------------------------------------------------------------- collectives
def _comm_device(tensor: torch.Tensor) -> torch.device:
    """Where a collective on ``tensor`` runs: the current GPU for NCCL, the CPU for Gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _to_comm(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as a collective sends it: on the backend's device, bool as uint8, contiguous."""
    tensor = tensor.to(_comm_device(tensor))
    return (tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor).contiguous()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate along dim 0 every rank's ``tensor`` (their lengths may differ), in rank order.

    Gathers the lengths, pads to the longest, gathers, trims. The identity in
    one process. Every rank must call it (a collective).
    """
    return all_gather_cat_many([tensor])[0]


def all_gather_cat_many(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """:func:`all_gather_cat` of several tensors that share their length on each rank (one length exchange).

    ``None`` entries stay ``None`` (they must be ``None`` on every rank).
    """
    if not is_distributed():
        return list(tensors)
    present = [t for t in tensors if t is not None]
    if not present:
        return list(tensors)
    world = world_size()
    length = torch.tensor([len(present[0])], dtype=torch.int64, device=_comm_device(present[0]))
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    sizes = [int(n) for n in torch.cat(lengths).cpu()]
    longest = max(sizes)
    out: list[torch.Tensor | None] = []
    for tensor in tensors:
        if tensor is None:
            out.append(None)
            continue
        if len(tensor) != sizes[rank()]:
            raise ValueError("all_gather_cat_many: the tensors of one rank must share their length")
        sent = _to_comm(tensor)
        if len(sent) < longest:
            pad = sent.new_zeros((longest - len(sent), *sent.shape[1:]))
            sent = torch.cat([sent, pad])
        parts = [torch.empty_like(sent) for _ in range(world)]
        dist.all_gather(parts, sent)
        joined = torch.cat([p[:n] for p, n in zip(parts, sizes)])
        out.append(joined.to(device=tensor.device, dtype=tensor.dtype))
    return out


def gather_in_order(index: torch.Tensor, values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gather every rank's ``(index, values)`` and return the values ordered like ``ids``.

    ``ids`` (unique example ids, the same on every rank) is the order a
    one-process loop would have produced; ``index`` holds the ids of this
    rank's ``values``. The identity in one process.
    """
    if not is_distributed():
        return values
    index, values = all_gather_cat_many([index, values])
    sorted_ids, where = torch.sort(ids)
    position = where[torch.searchsorted(sorted_ids, index)]
    out = torch.empty((len(ids), *values.shape[1:]), dtype=values.dtype, device=values.device)
    out[position] = values
    return out


def all_reduce_sum(*values: torch.Tensor) -> list[torch.Tensor]:
    """Sums over ranks of scalar tensors, in one collective (the inputs unchanged in one process)."""
    if not is_distributed():
        return list(values)
    packed = _to_comm(torch.stack([v.detach().to(torch.float64) for v in values]))
    dist.all_reduce(packed)
    return [p.to(device=v.device, dtype=v.dtype) for p, v in zip(packed, values)]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the identity in one process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_mask(mask: Mapping[str, torch.Tensor], src: int = 0) -> dict[str, torch.Tensor]:
    """Rank ``src``'s boolean tensors on every rank, in place of each rank's own (name order must agree)."""
    if not is_distributed():
        return dict(mask)
    out = {}
    for name, tensor in mask.items():
        sent = _to_comm(tensor)
        dist.broadcast(sent, src=src)
        out[name] = sent.to(device=tensor.device, dtype=torch.bool)
    return out


def check_same(tensor: torch.Tensor, what: str = "tensor") -> None:
    """Raise ``RuntimeError`` unless ``tensor`` is equal on every rank (all_reduce MIN and MAX; no-op in one process)."""
    if not is_distributed():
        return
    low = _to_comm(tensor.detach()).clone()
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError(f"{what} differs between the ranks of the distributed job (rank {rank()} sees "
                           f"{tensor.tolist() if tensor.numel() <= 8 else 'a different value'})")


_HASH_MODULUS = 2_147_483_629  # a prime below 2**31: sums over 2**32 positions stay inside int64


def mask_checksum(mask: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """int64 ``(tensors, 2)``: per tensor the kept count and a hash of the kept positions."""
    rows = []
    for tensor in mask.values():
        flat = tensor.reshape(-1)
        position = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64)
        weight = (position * 1_000_003 + 12_345) % _HASH_MODULUS
        rows.append(torch.stack([flat.sum(dtype=torch.int64), (weight * flat).sum()]))
    return torch.stack(rows)


def check_same_mask(mask: Mapping[str, torch.Tensor], what: str = "the mask") -> None:
    """Raise ``RuntimeError`` unless ``mask`` is identical on every rank (one checksum all_reduce; no-op in one process)."""
    if is_distributed():
        check_same(mask_checksum(mask), what)


def parameters_checksum(module: torch.nn.Module) -> torch.Tensor:
    """float64 sum and sum of squares per parameter (to check that ranks hold the same weights)."""
    return torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().pow(2).sum()])
                        for p in module.parameters()])


def sync_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank (no-op in one process)."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        data = buffer.data
        sent = _to_comm(data)
        dist.broadcast(sent, src=src)
        if sent.data_ptr() != data.data_ptr():
            data.copy_(sent)


def convert_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Replace ``model``'s BatchNorm layers by ``torch.nn.SyncBatchNorm`` in place; returns ``model``.

    The new layers hold the same parameter and buffer tensors under the same
    names, so masks, optimizers, checkpoints and callbacks that hold ``model``
    see no difference. Without an initialised process group SyncBatchNorm
    computes what BatchNorm does.
    """
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:  # only a bare BatchNorm layer is replaced rather than converted in place
        raise ConfigError("sync_batchnorm needs a model that contains its BatchNorm layers, not a bare BatchNorm layer")
    return model


def check_sync_batchnorm(device: torch.device) -> None:
    """Refuse ``sync_batchnorm`` under torch.distributed on a device torch's SyncBatchNorm has no kernels for."""
    if is_distributed() and device.type != "cuda":
        raise ConfigError(f"sync_batchnorm needs CUDA devices under torch.distributed (torch's SyncBatchNorm has "
                          f"no {device.type} kernels); turn it off on {device.type}")


def wrap_ddp(model: torch.nn.Module, device: torch.device, *, sync_batchnorm: bool = False) -> torch.nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed, else ``model`` itself.

    The wrapper only runs the forward pass: callbacks, masks and checkpoints
    keep using ``model`` (parameter names without the ``module.`` prefix).
    With ``sync_batchnorm`` (distributed only) the BatchNorm layers are first
    converted in place (:func:`convert_sync_batchnorm`) so that their
    statistics cover the global batch; torch computes them on CUDA devices
    only, so any other device is refused with a :class:`ConfigError`.
    """
    if not is_distributed():
        return model
    if sync_batchnorm:
        check_sync_batchnorm(device)
        convert_sync_batchnorm(model)
    device_ids = None
    if device.type == "cuda":
        device_ids = [device.index if device.index is not None else torch.cuda.current_device()]
    # DDP's defaults: parameters and buffers broadcast from rank 0 at construction, buffers (BatchNorm
    # statistics) again before every forward, gradients averaged over the ranks during backward.
    return DistributedDataParallel(model, device_ids=device_ids)


# ----------------------------------------------------------------------------- files
def run_on_main(action: Callable[[], Any], what: str = "write") -> Any:
    """Run ``action`` on rank 0 only; every rank returns when it is done (and raises if it failed).

    A :class:`~pracset.errors.PracsetError` of rank 0 is raised as itself on
    every rank; any other failure as an ``OSError`` naming it.

    A barrier first (so that no rank still checks whether the file exists while
    rank 0 creates it), then rank 0 acts and broadcasts the outcome. Every rank
    must call it (SPMD). In one process: just ``action()``.
    """
    if not is_distributed():
        return action()
    dist.barrier()
    result, error = None, None
    if is_main():
        try:
            result = action()
        except BaseException as exc:  # reported to every rank below, then re-raised here
            error = exc
    # A refusal (PracsetError) reaches every rank as itself, so all ranks stop with the same one line.
    shared = broadcast_object(None if error is None else
                              error if isinstance(error, PracsetError) else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if isinstance(shared, PracsetError):
        raise shared
    if shared is not None:
        raise OSError(f"rank 0 failed to {what}: {shared}")
    return result


# ----------------------------------------------------------------------------- local launches (tests, CPU)
def free_port() -> int:
    """A TCP port on localhost that is free right now (for a test's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawned(rank_: int, fn: Callable, world: int, port: int, backend: str, timeout_minutes: float,
             args: tuple) -> None:
    os.environ.update(RANK=str(rank_), LOCAL_RANK=str(rank_), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_from_env(backend, timeout_minutes=timeout_minutes)
    try:
        fn(rank_, *args)
    finally:
        _destroy()


def spawn(fn: Callable, world: int, *args: Any, backend: str = "gloo", timeout_minutes: float = 30.0) -> None:
    """Run ``fn(rank, *args)`` in ``world`` fresh processes joined in one process group (for tests and CPU runs).

    ``fn`` must be importable (a module-level function); collectives that wait
    longer than ``timeout_minutes`` fail instead of hanging. Raises if any rank fails.
    """
    mp.spawn(_spawned, args=(fn, world, free_port(), backend, timeout_minutes, args), nprocs=world, join=True)


__all__ = ["all_gather_cat", "all_gather_cat_many", "all_reduce_sum", "barrier", "broadcast_mask",
           "broadcast_object", "check_same", "check_same_mask", "check_sync_batchnorm", "convert_sync_batchnorm",
           "gather_in_order", "global_batch_len", "init_from_env", "is_distributed", "is_main", "is_sharded",
           "launched_by_torchrun", "leave", "local_rank", "mask_checksum", "parameters_checksum", "rank",
           "run_on_main", "shard_bounds", "spawn", "sync_buffers", "world_size", "wrap_ddp"]
