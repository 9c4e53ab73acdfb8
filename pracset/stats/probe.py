"""The pruning probe: on which training examples does a pruned network disagree with the dense one?

This is CEP (critical examples for pruning) of the PrAC paper, a single-model
form of Hooker et al.'s pruning-identified exemplars: the dense model and a
pruned model classify every example of the training split in eval mode,
without augmentation, and an example is critical when their predicted classes
differ (the label plays no part). Every forward pass is booked in the ledger
under kind ``probe`` (the official code does not count them).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from pracset import distributed as ddp
from torch.utils.data import DataLoader, Dataset

from pracset.data.base import ImageSplit
from pracset.data.loader import DeviceLoader
from pracset.data.torch_data import read_examples
from pracset.errors import ConfigError
from pracset.ledger import IterationLedger
from pracset.mask import Mask
from pracset.sparse.pruning import check_ranking, prune_to_sparsity
from pracset.train.loop import model_device, use_bf16_for

log = logging.getLogger(__name__)


@torch.no_grad()
def predict(model: nn.Module, loader: DeviceLoader, *, precision: str = "auto",
            ledger: IterationLedger | None = None, stage: str = "probe") -> torch.Tensor:
    """Predicted classes of ``model`` over ``loader`` in loader order, on the device (no host sync).

    Under torch.distributed a sharded loader splits the work over the ranks and
    every rank gets all the predictions, in loader order.
    """
    if loader.shuffle or loader.crop_padding or loader.flip:
        raise ConfigError("the probe needs a loader without shuffling or augmentation")
    was_training = model.training
    model.eval()
    bf16 = use_bf16_for(precision, loader.device)
    out, index = [], []
    sharded = ddp.is_sharded(loader)  # under torch.distributed each rank probes its slices
    for position, batch in enumerate(loader):
        with torch.autocast(device_type=loader.device.type, dtype=torch.bfloat16, enabled=bf16):
            out.append(model(batch.x).argmax(1))
        if sharded:
            index.append(batch.index)
        if ledger is not None:
            ledger.add(stage, "probe", examples=ddp.global_batch_len(loader, position) if sharded else len(batch.index))
    model.train(was_training)
    if sharded:  # every rank's predictions, in the loader's (one-process) order
        return ddp.gather_in_order(torch.cat(index), torch.cat(out), loader.ids)
    return torch.cat(out)


@dataclass(frozen=True)
class ProbeResult:
    """Per example of the probed split (indexed by example id)."""

    disagreements: np.ndarray            # int32: sparsities at which the pruned model disagreed
    disagreed_at: dict[float, int]       # sparsity -> number of examples that disagreed there
    pruned_accuracy: dict[float, float]  # sparsity -> the pruned model's training accuracy (no fine-tuning)
    dense_accuracy: float
    collapsed: tuple[float, ...] = ()    # sparsities whose pruned model collapsed (:func:`probe_collapsed`)
    collapsed_dropped: bool = False      # whether their disagreements were left out of ``disagreements``

    @property
    def critical(self) -> np.ndarray:
        """True where the pruned model disagreed at any probed sparsity."""
        return self.disagreements > 0


def _probe_loader(loader, device: torch.device):
    """A pracset loader as it is; torch data read once into a device loader without shuffling or augmentation.

    The inputs are used as the data gives them (uint8 ones as floats, like
    :class:`~pracset.data.torch_data.TorchBatches` gives them to training).
    """
    if not isinstance(loader, (DataLoader, Dataset)):
        return loader
    inputs, labels = read_examples(loader, "the probed data")
    split = ImageSplit(inputs.float(), labels).to(device)
    return DeviceLoader(split, 512, (0.0,) * split.channels, (1.0,) * split.channels)


#: A pruned model whose training accuracy lies this far below the dense model's has collapsed: it disagrees on
#: whole classes, not on the critical examples of a working sparse network.
COLLAPSE_DROP = 0.25


def probe_collapsed(pruned_accuracy: float, dense_accuracy: float) -> bool:
    """Whether a pruned model has collapsed: its training accuracy is more than :data:`COLLAPSE_DROP` below
    the dense model's."""
    return pruned_accuracy < dense_accuracy - COLLAPSE_DROP


def pruning_probe(model: nn.Module, loader: DeviceLoader, sparsities: Sequence[float], *,
                  num_examples: int, pruned_models: Sequence[nn.Module] = (), mask: Mask | None = None,
                  ranking: str = "global", precision: str = "auto", ledger: IterationLedger | None = None,
                  stage: str = "probe", drop_collapsed: bool = False) -> ProbeResult:
    """Compare ``model`` with pruned copies of itself on every example of ``loader``.

    Each sparsity in ``sparsities`` gives one pruned copy: one-shot magnitude
    pruning (``ranking`` global or layer-wise) of the prunable weights to that
    sparsity, no fine-tuning. ``pruned_models`` adds models pruned elsewhere
    (e.g. the sparse network of an IMP round), reported under their own
    sparsity. ``num_examples`` is the size of the split the ids index.

    ``loader`` may also be a torch ``DataLoader`` or ``Dataset`` of ``(x, y)``
    or ``(x, y, index)`` items: it is read once, in id order, onto the model's
    device (:func:`pracset.data.torch_data.read_examples`) and probed from there.

    With ``drop_collapsed``, a pruned model that collapsed (:func:`probe_collapsed`)
    adds nothing to ``disagreements``; it is still reported (``collapsed``).
    """
    loader = _probe_loader(loader, model_device(model))
    if not sparsities and not pruned_models:
        raise ConfigError("the pruning probe needs at least one sparsity or pruned model")
    check_ranking(ranking)  # before the dense pass, not after it
    for s in sparsities:
        if not 0 < s < 1:
            raise ConfigError(f"probe sparsities must lie in (0, 1), got {s}")
    ids = loader.ids
    labels = loader.split.labels[ids]
    dense = predict(model, loader, precision=precision, ledger=ledger, stage=stage)
    counts = torch.zeros(num_examples, dtype=torch.int32, device=loader.device)
    disagreed_at, accuracy = {}, {}
    candidates = []
    base_mask = mask if mask is not None else Mask.ones(model)
    for sparsity in sparsities:
        pruned = copy.deepcopy(model)
        prune_to_sparsity(pruned, base_mask, sparsity, ranking=ranking).apply_(pruned)
        candidates.append((float(sparsity), pruned))
    for pruned in pruned_models:
        kept = Mask({n: p != 0 for n, p in pruned.named_parameters() if n in base_mask})
        candidates.append((round(kept.sparsity(), 4), pruned))
    dense_accuracy = round(float((dense == labels).float().mean()), 6)
    collapsed = []
    for sparsity, pruned in candidates:
        predicted = predict(pruned, loader, precision=precision, ledger=ledger, stage=stage)
        differs = predicted != dense
        disagreed_at[sparsity] = differs.sum()
        accuracy[sparsity] = round(float((predicted == labels).float().mean()), 6)  # one sync per probed model
        if probe_collapsed(accuracy[sparsity], dense_accuracy):
            collapsed.append(sparsity)
            if drop_collapsed:
                continue
        counts.index_add_(0, ids, differs.to(torch.int32))
    result = ProbeResult(
        disagreements=counts.cpu().numpy(),
        disagreed_at={s: int(v) for s, v in disagreed_at.items()},
        pruned_accuracy=accuracy,
        dense_accuracy=dense_accuracy,
        collapsed=tuple(collapsed),
        collapsed_dropped=drop_collapsed and bool(collapsed),
    )
    for s in result.disagreed_at:
        log.info("probe at sparsity %.3f: %d examples disagree, pruned train accuracy %.4f",
                 s, result.disagreed_at[s], result.pruned_accuracy[s])
        if s in result.collapsed:
            log.warning("the pruned model at sparsity %.3f has only %.1f%% training accuracy (dense %.1f%%): its "
                        "disagreements mark whole classes rather than critical examples; %s", s,
                        100 * result.pruned_accuracy[s], 100 * result.dense_accuracy,
                        "they are left out of the set" if drop_collapsed else "they are kept, as asked")
    return result
