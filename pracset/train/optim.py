"""Optimizers and learning-rate schedules (plain registries)."""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from pracset.registry import Registry
from pracset.train.config import TrainConfig

OptimizerFactory = Callable[[list, TrainConfig], torch.optim.Optimizer]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", {
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay),
    "nesterov": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=c.momentum,
                                                  weight_decay=c.weight_decay, nesterov=c.momentum > 0),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, betas=(c.momentum, 0.999), weight_decay=c.weight_decay),
})


def step_factor(progress: float, config: TrainConfig) -> float:
    """The step schedule's learning-rate factor at ``progress`` (fraction of training done)."""
    return config.gamma ** sum(progress >= m for m in config.milestones)


def cosine_factor(progress: float, config: TrainConfig) -> float:
    """The cosine schedule's learning-rate factor at ``progress`` (fraction of training done)."""
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


SCHEDULES: Registry[Callable[[float, TrainConfig], float]] = Registry("schedule", {
    "step": step_factor,
    "cosine": cosine_factor,
    "constant": lambda progress, config: 1.0,
})


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Multiplier of ``config.lr`` at optimizer step ``step`` (0-based) of ``total_steps``.

    Milestones are fractions of the whole run, so they scale with the epoch
    count (PrAC scales a round's schedule with its budget this way).
    """
    warmup = config.warmup_epochs * steps_per_epoch
    if step < warmup:
        return (step + 1) / warmup
    return SCHEDULES.get(config.schedule)(step / max(total_steps, 1), config)


def check_names(config: TrainConfig) -> None:
    """Fail early, before anything is written, on an unknown optimizer or schedule."""
    OPTIMIZERS.get(config.optimizer)
    SCHEDULES.get(config.schedule)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``config`` names, over ``model``'s trainable parameters."""
    return OPTIMIZERS.get(config.optimizer)([p for p in model.parameters() if p.requires_grad], config)


def start_schedule_at(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR,
                      step: int) -> None:
    """Continue ``scheduler``'s schedule from global step ``step`` (rewinding): the rate of that step, now."""
    scheduler.last_epoch = step  # the LambdaLR's step count
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["lr"] = base * scheduler.lr_lambdas[0](step)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                   config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` with ``config``'s warm-up and schedule, indexed by optimizer step."""
    SCHEDULES.get(config.schedule)  # fail early on an unknown name
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, steps_per_epoch, config))
