"""Training hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass

from pracset.config import ConfigBase, option, require, require_finite, require_seed

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """How one network is trained (the defaults are the PrAC / open_lth CIFAR recipe)."""

    epochs: int = option(30, "training epochs")
    batch_size: int = option(128, "examples per mini-batch")
    optimizer: str = option("sgd", "optimizer (sgd, nesterov, adamw)", metavar="NAME")
    lr: float = option(0.1, "peak learning rate")
    momentum: float = option(0.9, "momentum (sgd, nesterov) or beta1 (adamw)")
    weight_decay: float = option(1e-4, "weight decay")
    schedule: str = option("step", "learning-rate schedule (step, cosine, constant)", metavar="NAME")
    milestones: tuple[float, ...] = option((0.5, 0.75), "step schedule: fractions of training at which the rate is multiplied by gamma")
    gamma: float = option(0.1, "step schedule: factor applied at each milestone")
    warmup_epochs: float = option(0.0, "linear warm-up from 0 over this many epochs")
    seed: int = option(0, "seed of the initialisation, data order and augmentation")
    precision: str = option("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16", choices=PRECISIONS)
    eval_every: int = option(1, "evaluate on the test split every this many epochs (and after the last)")
    crop_padding: int | None = option(None, "random-crop padding in pixels (default: the data set's; 0 turns it off)")
    flip: bool | None = option(None, "random horizontal flips (default: the data set's)")
    drop_last: bool = option(False, "drop the last incomplete batch of each epoch")
    label_smoothing: float = option(0.0, "label smoothing of the training loss (0.1 in the usual ImageNet recipe); "
                                         "the recorder and train_loss see this smoothed loss, evaluation plain "
                                         "cross-entropy", added_later=True)
    random_resized_crop: bool = option(False, "streamed data: a random-resized crop (scale 0.08-1, aspect 3/4-4/3, "
                                              "back to the image size; ImageNet's) in place of the padded crop",
                                 added_later=True)
    sync_batchnorm: bool = option(False, "under torch.distributed, BatchNorm statistics over the global batch "
                                         "(torch's SyncBatchNorm; CUDA only) instead of each rank's slice",
                            added_later=True)
    cuda_graphs: bool = option(False, "capture the whole training step (forward, loss, backward, SGD update, mask "
                                      "multiply) in a CUDA graph and replay it, far fewer kernel launches for small "
                                      "models (CUDA, sgd or nesterov, one process); steps that need host work (RigL "
                                      "and GraNet mask updates, a last partial batch) run uncaptured; elsewhere it "
                                      "logs a warning and trains as without it", added_later=True)

    def __post_init__(self) -> None:
        require_finite(self, "lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing")
        require_seed(self.seed)
        require(self.epochs > 0, f"epochs must be a positive integer, got {self.epochs}")
        require(self.batch_size > 0, f"batch_size must be a positive integer, got {self.batch_size}")
        require(self.lr > 0, f"lr must be positive, got {self.lr}")
        require(0 <= self.momentum < 1, f"momentum must lie in [0, 1), got {self.momentum}")
        require(self.weight_decay >= 0, f"weight_decay must not be negative, got {self.weight_decay}")
        require(all(0 < m < 1 for m in self.milestones), f"milestones must be fractions in (0, 1), got {list(self.milestones)}")
        require(list(self.milestones) == sorted(self.milestones), f"milestones must increase, got {list(self.milestones)}")
        require(0 < self.gamma <= 1, f"gamma must lie in (0, 1], got {self.gamma}")
        require(self.warmup_epochs >= 0, f"warmup_epochs must not be negative, got {self.warmup_epochs}")
        require(self.eval_every > 0, f"eval_every must be a positive integer, got {self.eval_every}")
        require(self.crop_padding is None or self.crop_padding >= 0, f"crop_padding must not be negative, got {self.crop_padding}")
        require(0 <= self.label_smoothing < 1, f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        require(not (self.random_resized_crop and self.crop_padding),
                f"random_resized_crop replaces the padded random crop: leave crop_padding unset or 0, "
                f"got {self.crop_padding}")
