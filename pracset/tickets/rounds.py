"""IMP with rewinding: one round loop for full-data IMP and PrAC-IMP, for one run or several in step.

Round 0 trains densely from the initialisation and keeps the whole state at
the rewind step; every later round prunes the previous round's trained
weights, rewinds and trains again. The two methods differ only in their
:class:`RoundPolicy`: which examples a round trains on, with what budget and
callbacks, what a finished round writes (PrAC-IMP: the next round's set), and
which training is the round's ticket (IMP: the round itself; PrAC-IMP: the
round's mask trained again on the full split).

:func:`train_rounds` makes each round's stages (the round, its ticket when that
trains apart, their sanity-check controls) :class:`~pracset.tickets.stages.StageJob` s,
for every run it is given (the seeds of one recipe), and trains them with
:func:`~pracset.tickets.stages.train_jobs`, whose one rule packs the jobs that can
train together (full-data IMP's rounds of several seeds with their controls; a
PrAC-IMP ticket with its controls) and trains the others one by one.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

from pracset import __version__
from pracset.config import to_dict
from pracset.errors import ConfigError, RunFileError
from pracset.fileio import atomic_np_save, naming, require_regular_file
from pracset.ledger import IterationLedger
from pracset.manifest import write_manifest
from pracset.manifest.assemble import dataset_metadata, manifest_columns
from pracset.mask import Mask
from pracset.runs import StageFiles, StageMetrics
from pracset.selection import SelectionConfig, SelectionInputs, reads_cep, select
from pracset.sparse.early_bird import EarlyBirdConfig, EarlyBirdStop
from pracset.stats import ExampleRecorder, pruning_probe
from pracset.tickets.accounting import ticket_files
from pracset.tickets.config import IMPConfig, round_budget
from pracset.tickets.masks import dense_mask, imp_prune, prune_next
from pracset.tickets.context import RewindPoint, TicketContext
from pracset.tickets.controls import control_accuracies, control_jobs, verdict
from pracset.tickets.health import RoundHealth, chance_threshold, dense_collapsed, majority_rate, warn
from pracset.tickets.stages import StageJob, Trained, train_jobs
from pracset.train.config import TrainConfig
from pracset.train.step import Callback
from pracset.train.run import split_labels

log = logging.getLogger(__name__)


def load_ids(path) -> np.ndarray:
    """An id file of a run (``next_ids.npy``); a read error or a damaged file is one line naming it."""
    try:
        with naming(path):  # an OSError of read() names no file
            require_regular_file(path, "id file", error=RunFileError)  # a FIFO would block forever
            return np.load(path)
    except (ValueError, EOFError) as exc:  # not a .npy file, truncated, or a pickled (object) array
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RunFileError(f"id file {path} is damaged or truncated ({reason})") from None


class RoundPolicy:
    """What full-data IMP does; :class:`PracSetPolicy` overrides the hooks where PrAC-IMP differs."""

    #: whether the last round is trained: for IMP it *is* the final ticket; PrAC-IMP's last round on its
    #: subset would only find a next mask and set, which nobody uses
    trains_last_round = True
    #: whether a round's ticket trains apart from the round (PrAC-IMP: its mask again, on the full split)
    separate_ticket = False

    def __init__(self, ctx: TicketContext, config: IMPConfig, fixed_ids: np.ndarray | None = None):
        self.ctx = ctx
        self.config = config
        #: a manifest's selected ids: IMP then trains every round (so every ticket) and its controls on them
        self.fixed_ids = fixed_ids

    def training_ids(self, r: int, previous: StageFiles | None) -> np.ndarray | None:
        """The example ids round ``r`` trains on (``None``: the whole split); ``previous`` is round ``r - 1``."""
        return self.fixed_ids

    def ticket_ids(self) -> np.ndarray | None:
        """The example ids a ticket and its controls train on: IMP's tickets are its rounds, on its set."""
        return self.fixed_ids

    def recipe(self, ids: np.ndarray | None) -> TrainConfig:
        return self.ctx.train

    def rewind_step(self, ids: np.ndarray | None) -> int:
        """The step of a full schedule on the examples ``ids`` that ``rewind`` names."""
        n = self.ctx.num_examples
        return self.config.rewind_step_on(n if ids is None else len(ids), n, self.ctx.train)

    @property
    def rewind_at(self) -> int:
        """The step of round 0 whose state later rounds rewind to (the rewind point's step)."""
        return self.rewind_step(self.training_ids(0, None))

    def ticket_start_step(self) -> int:
        """Where a ticket's (and its controls') schedule starts: its examples' full schedule continues from the
        rewind step (open_lth)."""
        return self.rewind_step(self.ticket_ids())

    def round_start_step(self) -> int:
        """Where a pruned round's schedule starts; for IMP the round is the ticket."""
        return self.ticket_start_step()

    def round0_start_step(self) -> int:
        """Where round 0's schedule starts: at the beginning (the Data-Diet protocol: after its pretraining)."""
        return 0

    def round_callbacks(self) -> Callable[[Mask | None], list[Callback]] | None:
        """What makes a round's callbacks from its mask (``None``: it has none, and may train packed)."""
        return None

    def write_round_outputs(self, r: int, stage: StageFiles, trained: Trained) -> tuple[dict, IterationLedger]:
        """Write what a trained round adds before it is marked done; returns extra metrics and their cost."""
        return {}, IterationLedger()

    def round0_jobs(self) -> list[StageJob]:
        """Round 0 (dense, from the initialisation, keeping the state at the rewind step), unless it is done."""
        ctx = self.ctx
        stage = ctx.layout.round(0)
        if ctx.run.finished_stage_metrics(stage) is not None:
            return []
        stage.create()
        dense_mask(ctx, self.config).save(stage.mask)
        ids = self.training_ids(0, None)
        return [StageJob(ctx, stage, partial(dense_job_start, ctx, self.config), ids=ids, recipe=self.recipe(ids),
                         snapshot_step=self.rewind_at, callbacks=self.round_callbacks(),
                         finish=partial(finish_round, self, 0, stage))]

    def ticket_stage(self, r: int) -> StageFiles | None:
        """Where round ``r``'s ticket is; ``None`` when it is not trained. For IMP the round itself is the ticket."""
        return self.ctx.layout.round(r)

    def reference_job(self, dense: StageMetrics) -> StageJob | None:
        """The dense network tickets are judged against, as a job, when round 0 is not it and a verdict will read it.

        Round 0 is the reference when it trained on the full split for the full
        budget (IMP without a manifest); otherwise the ``dense-reference``
        stage trains a dense network on the full split for that: matching a
        subset-trained or Early-Bird-stopped round 0 would be too easy.
        """
        if self._round0_is_full_dense(dense) or not self.config.controls:
            return None
        return StageJob(self.ctx, self.ctx.layout.dense_reference, partial(dense_job_start, self.ctx, self.config))

    def dense_reference(self, dense: StageMetrics) -> tuple[str, StageMetrics] | None:
        """The reference's stage name and metrics (:meth:`reference_job`); ``None`` when no verdict reads one."""
        if self._round0_is_full_dense(dense):
            return self.ctx.layout.round(0).name, dense
        if not self.config.controls:
            return None
        stage = self.ctx.layout.dense_reference
        return stage.name, _finished(self.ctx, stage)

    def _round0_is_full_dense(self, dense: StageMetrics) -> bool:
        return self.fixed_ids is None and dense.get("early_bird_epoch") is None


class PracSetPolicy(RoundPolicy):
    """PrAC-IMP (Zhang et al. 2021): rounds train on the PrAC set, and each mask's ticket on the full split.

    Every round records per-example forgetting, stops with Early-Bird, and
    selects the next round's set: CET (this round's forgetting) union CEP
    (dense vs. this round's sparse predictions, from round 1 on). With
    ``fixed_ids`` (a manifest's set, e.g. built on another architecture) every
    round, round 0 included, trains on that set and nothing is recomputed.
    """

    trains_last_round = False
    separate_ticket = True

    def __init__(self, ctx: TicketContext, config: IMPConfig, early_bird: EarlyBirdConfig,
                 selection: SelectionConfig, fixed_ids: np.ndarray | None = None):
        super().__init__(ctx, config, fixed_ids)
        self.early_bird = early_bird
        self.selection = selection
        self._dense_model = None

    @property
    def recomputes(self) -> bool:
        return self.fixed_ids is None

    def training_ids(self, r, previous):
        if not self.recomputes:
            return self.fixed_ids
        return None if r == 0 else load_ids(previous.next_ids)

    def ticket_ids(self):
        return None  # PrAC-IMP's tickets (its masks trained again) and their controls train on the full split

    def recipe(self, ids):
        if ids is None:
            return self.ctx.train
        return round_budget(self.ctx.train, len(ids) / self.ctx.num_examples, self.config.budget)

    def round_start_step(self):
        return 0  # as the official code, a round restarts its (scaled) schedule at the rewound weights

    def round_callbacks(self):
        if not (self.recomputes or self.config.early_bird):
            return None
        return self._callbacks

    def _callbacks(self, mask: Mask | None) -> list[Callback]:
        out: list[Callback] = []
        if self.recomputes:
            out.append(ExampleRecorder(self.ctx.num_examples, self.ctx.device))
        if self.config.early_bird:
            out.append(EarlyBirdStop(self.early_bird, mask, warmup_epochs=int(self.ctx.train.warmup_epochs),
                                     prune=lambda model, base: imp_prune(model, base, self.config)))
        return out

    def write_round_outputs(self, r, stage, trained):
        model, mask, callbacks = trained.model, trained.mask, trained.callbacks
        bird = next((c for c in callbacks if isinstance(c, EarlyBirdStop)), None)
        extra = {"early_bird_epoch": bird.stopped_epoch if bird else None}
        probe_ledger = IterationLedger()
        if not self.recomputes:
            return extra, probe_ledger
        recorder = next(c for c in callbacks if isinstance(c, ExampleRecorder))
        disagreements = None
        if r == 0:
            atomic_np_save(stage.forgetting, recorder.statistics().forgetting_events)
            if self.selection.rule == "cep":
                # CEP alone has nothing to select from before a sparse model is trained: round 1 trains on the
                # full split (as round 0), and its CEP picks round 2's set.
                atomic_np_save(stage.next_ids, np.arange(self.ctx.num_examples, dtype=np.int64))
                extra["next_set"] = self.ctx.num_examples
                return extra, probe_ledger
        elif reads_cep(self.selection):  # a rule that does not read CEP (cet, a score's) pays for no probe
            # The probe's cost is booked as a stage of its own, merged by replacement: a resume that probes
            # again (killed before metrics.json) counts it once.
            probe = pruning_probe(self.dense_model(), self.ctx.full_split_loader(), [], pruned_models=[model],
                                  num_examples=self.ctx.num_examples, mask=mask, precision=self.ctx.train.precision,
                                  ledger=probe_ledger, stage=self.ctx.layout.probe_stage(r))
            disagreements = probe.disagreements
            extra["cep"] = int(probe.critical.sum())
        labels = split_labels(self.ctx.dataset.train)
        statistics = recorder.statistics()
        chosen = select(SelectionInputs.from_statistics(labels, statistics, disagreements), self.selection)
        next_ids = chosen.ids
        self._write_set_manifest(r, stage, mask, statistics, disagreements, chosen)
        atomic_np_save(stage.next_ids, next_ids)
        extra["next_set"] = len(next_ids)
        return extra, probe_ledger

    def _write_set_manifest(self, r, stage, mask, statistics, disagreements, chosen) -> None:
        """Write the set this round selected as a manifest (``round-RR/prac-set.parquet``): the paper's PrAC set.

        Its CEP compares the dense model with this round's *trained* sparse
        model (the paper's definition; round 0, and a rule that reads no CEP, have
        none), unlike ``pracset build``'s one-shot probe; the provenance says
        which, with the round and its sparsity.
        """
        ctx = self.ctx
        write_manifest(stage.prac_set, manifest_columns(ctx.dataset, statistics, disagreements, chosen), {
            "dataset": dataset_metadata(ctx.dataset),
            "selection": chosen.describe(),
            "provenance": {"command": "ticket --method prac-imp",
                           "cep": "trained-round" if disagreements is not None else "none",
                           "arch": ctx.arch.name, "seed": ctx.train.seed, "train": to_dict(ctx.train),
                           "imp": to_dict(self.config), "round": r, "sparsity": round(mask.sparsity(), 6),
                           "pracset_version": __version__, "torch_version": torch.__version__},
        })

    def dense_model(self):
        if self._dense_model is None:
            self._dense_model = self.ctx.load_model(self.ctx.layout.round(0))
        return self._dense_model

    def _evaluates(self, r: int) -> bool:
        return not (self.config.evaluate == "none" or (self.config.evaluate == "final" and r < self.config.num_rounds))

    def ticket_stage(self, r):
        return self.ctx.layout.ticket(r) if self._evaluates(r) else None


def dense_job_start(ctx: TicketContext, config: IMPConfig,
                    rewind: RewindPoint | None = None) -> tuple[torch.nn.Module, Mask]:
    """A dense stage's start: the initialisation (or the ``rewind`` point), and round 0's mask (every weight
    kept)."""
    mask = dense_mask(ctx, config)
    return (ctx.model() if rewind is None else ctx.rewound(mask, rewind)), mask


def rewound_with_mask(ctx: TicketContext, mask: Mask, rewind: RewindPoint) -> tuple[torch.nn.Module, Mask]:
    """A pruned stage's start: the rewind point with ``mask`` applied, and the mask."""
    return ctx.rewound(mask, rewind), mask


def _finished(ctx: TicketContext, stage: StageFiles) -> StageMetrics:
    metrics = ctx.run.finished_stage_metrics(stage)
    if metrics is None:  # the round loop trains every stage it reads: a missing one is a bug, said plainly
        raise ConfigError(f"{stage.name} has not trained")
    return metrics


def finish_round(policy: RoundPolicy, r: int, stage: StageFiles, trained: Trained) -> tuple[dict, IterationLedger]:
    """What a trained round adds before it is marked done: round 0's rewind point, then the policy's outputs."""
    if r == 0 and trained.snapshot is not None:  # the rewind point is saved before round 0 is marked done
        policy.ctx.save_rewind_point(trained.snapshot)
    return policy.write_round_outputs(r, stage, trained)


def _round_jobs(policy: RoundPolicy, r: int, rewind: RewindPoint) -> tuple[list[StageJob], list[StageJob]]:
    """Round ``r``'s stages: the round itself (its mask pruned from round ``r - 1``), which the search needs now;
    and its ticket when that trains apart, with their sanity-check controls, which nothing later reads.
    :func:`~pracset.tickets.stages.train_jobs` skips those already done."""
    ctx, config, layout = policy.ctx, policy.config, policy.ctx.layout
    stage, previous = layout.round(r), layout.round(r - 1)
    trained = r < config.num_rounds or policy.trains_last_round
    jobs: list[StageJob] = []
    later: list[StageJob] = []
    if ctx.run.finished_stage_metrics(stage) is None and not (stage.mask.exists() and not trained):
        mask = prune_next(ctx, previous, config)
        stage.create()
        mask.save(stage.mask)
        if trained:
            ids = policy.training_ids(r, previous)
            jobs.append(StageJob(ctx, stage, partial(rewound_with_mask, ctx, mask, rewind), ids=ids,
                                 recipe=policy.recipe(ids), start_step=policy.round_start_step(),
                                 callbacks=policy.round_callbacks(), finish=partial(finish_round, policy, r, stage)))
    else:
        mask = Mask.load(stage.mask)
    ticket = policy.ticket_stage(r)
    if ticket is None:
        return jobs, later
    if policy.separate_ticket:
        later.append(StageJob(ctx, ticket, partial(rewound_with_mask, ctx, mask, rewind), ids=policy.ticket_ids(),
                              start_step=policy.ticket_start_step()))
    if config.controls:
        later += control_jobs(ctx, ticket, mask, rewind, start_step=policy.ticket_start_step(), ids=policy.ticket_ids())
    return jobs, later


def run_rounds(policy: RoundPolicy) -> list[dict]:
    """One IMP run: its stages trained (:func:`train_rounds`), then one row per ticket (round 0: the dense network)."""
    train_rounds([policy])
    return ticket_rows(policy)


def train_rounds(policies: Sequence[RoundPolicy], *, pack: str | bool | None = None) -> None:
    """The IMP round loop of one run, or of several runs in step (the seeds of one recipe).

    Round by round, every run's round is trained (by
    :func:`~pracset.tickets.stages.train_jobs`, ``pack`` its packing choice;
    ``None``: the runs' ``pack_controls``): the next mask needs it. The stages
    nothing later reads (the dense reference, the tickets that train apart
    from their rounds, every control) are trained together once the search is
    done, where the most of them can share a packed job (PrAC-IMP's 8 tickets
    with both controls: 24 models, two jobs of 12).
    """
    pack = policies[0].config.pack_controls if pack is None else pack
    train_jobs([job for policy in policies for job in policy.round0_jobs()], pack=pack)
    rewinds = [policy.ctx.load_rewind_point(policy.rewind_at) for policy in policies]
    later = [job for policy in policies
             for job in [policy.reference_job(_finished(policy.ctx, policy.ctx.layout.round(0)))] if job is not None]
    for r in range(1, policies[0].config.num_rounds + 1):
        jobs = []
        for policy, rewind in zip(policies, rewinds):
            now, after = _round_jobs(policy, r, rewind)
            jobs += now
            later += after
        train_jobs(jobs, pack=pack)
    train_jobs(later, pack=pack)


def ticket_rows(policy: RoundPolicy) -> list[dict]:
    """One row per ticket of a run whose stages are all trained (round 0: the dense network)."""
    ctx, config, layout = policy.ctx, policy.config, policy.ctx.layout
    dense = layout.round(0)
    dense_metrics = _finished(ctx, dense)
    majority = majority_rate(split_labels(ctx.dataset.test))
    reference = policy.dense_reference(dense_metrics)
    rows = [_row(dense, 0, Mask.load(dense.mask), dense_metrics, reference, None, config.tolerance, majority)]
    rows[0].update(ticket_files(layout, dense, dense))
    health = RoundHealth(layout, ctx.train, policy.round_start_step(), config.num_rounds, majority,
                         dense_start_step=policy.round0_start_step())
    health.assess(0, dense_metrics, rows[0])
    for r in range(1, config.num_rounds + 1):
        stage = layout.round(r)
        metrics = ctx.run.finished_stage_metrics(stage)  # None: PrAC-IMP's last round, not trained on its set
        mask = Mask.load(stage.mask)
        ticket = policy.ticket_stage(r)
        ticket_metrics = None if ticket is None else (metrics if ticket == stage else _finished(ctx, ticket))
        controls = control_accuracies(ctx, ticket) if config.controls and ticket is not None else None
        row = _row(ticket or stage, r, mask, ticket_metrics, reference, controls, config.tolerance, majority)
        row.update(ticket_files(layout, stage, ticket))  # the mask is the round's; the weights its ticket's
        health.assess(r, metrics, row)
        if ticket != stage and metrics is not None:  # the round that trained this mask, apart from its ticket
            row.update(set_size=metrics.get("set_size"), round_iterations=metrics.train_iterations,
                       round_test_accuracy=metrics.test_accuracy, early_bird_epoch=metrics.get("early_bird_epoch"))
        rows.append(row)
    return rows


def _row(stage: StageFiles, r: int, mask: Mask, metrics: StageMetrics | None,
         reference: tuple[str, StageMetrics] | None, controls: dict | None, tolerance: float, majority: float) -> dict:
    """One ticket's row; a round whose mask was not evaluated on the full split has no accuracy."""
    dense_accuracy = reference[1].test_accuracy if reference is not None else None
    row = {"stage": stage.name, "round": r, "sparsity": round(mask.sparsity(), 6), "evaluated": metrics is not None,
           "test_accuracy": metrics.test_accuracy if metrics is not None else None,
           "dense_accuracy": dense_accuracy, "dense_reference": reference[0] if reference is not None else None,
           "iterations": metrics.train_iterations if metrics is not None else None}
    if dense_accuracy is not None and dense_collapsed(dense_accuracy, majority):
        row["dense_collapsed"] = True
        if r == 0:
            warn(f"the dense network collapsed (test accuracy {dense_accuracy:.4f}, at most "
                 f"{chance_threshold(majority):.4f} with the majority class at {majority:.4f}): it is no reference, "
                 "and no ticket is said to match it")
    if controls is not None:
        row["controls"] = controls
        row["verdict"] = verdict(row["test_accuracy"], dense_accuracy, controls, tolerance,
                                 collapsed=row.get("dense_collapsed", False))
    return row
