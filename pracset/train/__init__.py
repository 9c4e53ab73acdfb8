"""Training: one loop with callbacks, optimizers and schedules, the iteration ledger."""

from pracset.ledger import IterationLedger, StageCost
from pracset.train.config import TrainConfig
from pracset.train.loop import Callback, StepOutput, Trainer, TrainState, evaluate
from pracset.train.optim import OPTIMIZERS, SCHEDULES, lr_factor

__all__ = ["Callback", "IterationLedger", "OPTIMIZERS", "SCHEDULES", "StageCost", "StepOutput",
           "TrainConfig", "TrainState", "Trainer", "evaluate", "lr_factor"]
