"""Choosing the device a run uses."""

from __future__ import annotations

import platform

import torch

from pracset.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when it is available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} asked for, but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


#: The most CPU threads :func:`set_threads` accepts. torch crashes (a segmentation fault, no message) when asked
#: for absurd counts such as 10**8; a fixed bound, not one derived from this machine's cores, keeps a run recorded
#: with N threads reproducible on any machine.
MAX_THREADS = 1024


def set_threads(count: int | None) -> None:
    """Use ``count`` CPU threads for torch's operators (``None``: torch's default, one per core).

    Results on the CPU depend on it (reductions split differently), so every
    run records the count it used (:func:`environment`). More than
    :data:`MAX_THREADS` is refused with one line.
    """
    if count is None:
        return
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise ConfigError(f"threads must be a positive integer, got {count!r}")
    if count > MAX_THREADS:
        raise ConfigError(f"threads must be at most {MAX_THREADS}, got {count}")
    torch.set_num_threads(count)


def environment() -> dict:
    """What a run's numbers depend on besides its settings: versions and the CPU thread count."""
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
