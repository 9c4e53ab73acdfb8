"""SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity") as a ticket method.

The mask is found once, at initialisation, before any training: every
prunable weight is scored by its connection sensitivity ``|w * dL/dw|`` on a
training batch (the paper: one; ``batches`` sums the loss gradient over more),
and the ``sparsity`` fraction with the lowest scores is pruned (global ranking
by default, as the paper; exact counts and ties as magnitude pruning's). The
network then trains once with that mask from the same initialisation. The
paper normalises the scores by their sum, which leaves their order unchanged.

With ``[imp] controls`` the ticket gets the sanity-check controls (Ma et al.
2021; Frankle et al. 2021 ran them on SNIP, whose masks they found no better
than a random mask of the same layer-wise density): the mask on another
initialisation, and a shuffled mask on the same one; and a dense network
trained on the full split is the reference a ticket must match.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from pracset.config import ConfigBase, option, require, to_dict
from pracset.data import num_batches
from pracset.errors import ConfigError
from pracset.mask import Mask
from pracset.sparse.pruning import RANKING_CHOICES, prune_to_sparsity
from pracset.tickets.accounting import ticket_files
from pracset.tickets.context import RewindPoint
from pracset.tickets.controls import control_accuracies, control_jobs, verdict
from pracset.tickets.health import dense_collapsed, majority_rate
from pracset.tickets.methods import TicketMethod
from pracset.tickets.masks import dense_mask
from pracset.tickets.rounds import dense_job_start, rewound_with_mask
from pracset.tickets.stages import StageJob, train_jobs
from pracset.train.run import split_labels


@dataclass(frozen=True)
class SNIPConfig(ConfigBase):
    """SNIP's settings; its table is ``[snip]``, its flags ``--snip-...`` (the sparsity is ``--sparsity``'s)."""

    sparsity: float = option(0.8, "fraction of the prunable weights pruned at initialisation (default: [imp] sparsity)")
    batches: int = option(1, "training batches whose summed loss gradient scores the connections (the paper: 1)")
    ranking: str = option("global", "global (the paper: one ranking over every prunable layer) or layerwise",
                          choices=RANKING_CHOICES)

    def __post_init__(self) -> None:
        require(0.0 < self.sparsity < 1.0, f"sparsity must lie in (0, 1), got {self.sparsity}")
        require(isinstance(self.batches, int) and self.batches >= 1, f"batches must be at least 1, got {self.batches}")


def connection_sensitivity(model: nn.Module, mask: Mask, batches) -> dict[str, torch.Tensor]:
    """``|w * dL/dw|`` of every tensor ``mask`` covers, with ``L`` the sum over ``batches`` of each batch's mean
    cross-entropy; ``model`` (in training mode, as the paper) is left as it was."""
    scratch = copy.deepcopy(model).train()
    params = dict(scratch.named_parameters())
    for batch in batches:
        F.cross_entropy(scratch(batch.x), batch.y).backward()
    return {name: (params[name] * params[name].grad).abs().detach() for name in mask}


def snip_mask(model: nn.Module, mask: Mask, batches, config: SNIPConfig) -> Mask:
    """The SNIP mask: ``config.sparsity`` of ``mask``'s weights pruned, lowest connection sensitivity first."""
    scores = connection_sensitivity(model, mask, batches)
    ranked = copy.deepcopy(model)
    with torch.no_grad():  # magnitude pruning of a copy whose weights are the scores: its counts and tie rule
        for name, param in ranked.named_parameters():
            if name in scores:
                param.copy_(scores[name])
    return prune_to_sparsity(ranked, mask, config.sparsity, ranking=config.ranking)


def _first_batches(loader, count: int) -> list:
    loader.set_epoch(0)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == count:
            break
    return out


class SNIP(TicketMethod):
    """SNIP: prune at initialisation by connection sensitivity, then train once (on the full split or a set)."""

    name, section, config_class = "snip", "snip", SNIPConfig

    def identity(self, settings):
        return {**super().identity(settings), "snip": to_dict(self.config(settings))}

    def check(self, settings, train, num_examples, fixed_ids):
        config = self.config(settings)
        n = num_examples if fixed_ids is None else len(fixed_ids)
        available = num_batches(n, train.batch_size, train.drop_last)
        if config.batches > available:
            raise ConfigError(f"snip batches {config.batches} is more than an epoch's {available} batches")

    def run(self, ctx, settings, fixed_ids):
        config, imp, layout = self.config(settings), settings.imp, ctx.layout
        stage = layout.sparse
        init = RewindPoint(ctx.model().state_dict(), 0)  # the ticket, and its controls, start from step 0
        ctx.save_rewind_point(init.state)  # the ticket's starting point, for pracset export and load_ticket
        stage.create()
        if ctx.run.finished_stage_metrics(stage) is None:  # scored again on a resume: the same batches, the same mask
            base = dense_mask(ctx, imp)
            model = ctx.model().to(ctx.device)
            train_loader, _ = ctx.loaders(fixed_ids, ctx.train)
            snip_mask(model, base.to(ctx.device), _first_batches(train_loader, config.batches), config).save(stage.mask)
        mask = Mask.load(stage.mask)
        jobs = [StageJob(ctx, stage, partial(rewound_with_mask, ctx, mask, init), ids=fixed_ids)]
        if imp.controls:
            jobs += control_jobs(ctx, stage, mask, init, start_step=0, ids=fixed_ids)
            jobs.append(StageJob(ctx, layout.dense_reference, partial(dense_job_start, ctx, imp)))
        metrics, *rest = train_jobs(jobs, pack=imp.pack_controls)
        row = {"stage": stage.name, "round": None, "sparsity": round(mask.sparsity(), 6),
               "test_accuracy": metrics.test_accuracy, "iterations": metrics.train_iterations,
               **ticket_files(layout, stage, stage)}
        if imp.controls:
            dense = rest[-1].test_accuracy
            controls = control_accuracies(ctx, stage)
            collapsed = dense_collapsed(dense, majority_rate(split_labels(ctx.dataset.test)))
            row.update(dense_accuracy=dense, dense_reference=layout.dense_reference.name, controls=controls,
                       verdict=verdict(metrics.test_accuracy, dense, controls, imp.tolerance, collapsed=collapsed))
        return [row]
