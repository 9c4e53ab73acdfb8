"""IMP with rewinding, one round loop for full-data IMP and PrAC-IMP.

Round 0 trains densely from the initialisation and keeps the whole state at
the rewind step; every later round prunes the previous round's trained
weights, rewinds and trains again. The two methods differ only in their
:class:`RoundPolicy`: which examples a round trains on, with what budget and
callbacks, what a finished round writes (PrAC-IMP: the next round's set), and
which training is the round's ticket (IMP: the round itself; PrAC-IMP: the
round's mask trained again on the full split).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Sequence

import numpy as np
import torch

from pracset import __version__
from pracset.ledger import IterationLedger
from pracset.manifest.assemble import dataset_metadata, manifest_columns
from pracset.config import to_dict
from pracset.errors import ConfigError, RunFileError
from pracset.fileio import atomic_np_save, naming, require_regular_file
from pracset.manifest import write_manifest
from pracset.mask import Mask
from pracset.runs import StageFiles
from pracset.selection import SelectionConfig, SelectionInputs, select
from pracset.sparse import StaticMask
from pracset.sparse.early_bird import EarlyBirdConfig, EarlyBirdStop
from pracset.sparse.pruning import magnitude_prune
from pracset.stats import ExampleRecorder, pruning_probe
from pracset.tickets.config import IMPConfig, check_layers_kept, round_budget
from pracset.tickets.context import Snapshot, TicketContext
from pracset.tickets.health import RoundHealth, chance_threshold, dense_collapsed, majority_rate, warn
from pracset.tickets.accounting import ticket_files
from pracset.tickets.controls import control_jobs, train_and_complete_controls, verdict
from pracset.tickets.packing import PackedStage, rewound_with_mask, should_pack, started, train_and_complete_packed
from pracset.train.config import TrainConfig
from pracset.train.loop import Callback
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

    def __init__(self, ctx: TicketContext, config: IMPConfig, fixed_ids: np.ndarray | None = None):
        self.ctx = ctx
        self.config = config
        #: a manifest's selected ids: IMP then trains every round (so every ticket) and its controls on them
        self.fixed_ids = fixed_ids

    def training_ids(self, r: int, previous: StageFiles) -> np.ndarray | None:
        """The example ids round ``r`` trains on (``None``: the whole split)."""
        return self.fixed_ids

    def ticket_ids(self) -> np.ndarray | None:
        """The example ids a ticket and its controls train on: IMP's tickets are its rounds, on its set."""
        return self.fixed_ids

    def recipe(self, ids: np.ndarray | None) -> TrainConfig:
        return self.ctx.train

    def rewind_step(self, ids: np.ndarray | None) -> int:
        """The step of round 0 whose state later rounds rewind to."""
        n = self.ctx.num_examples
        return self.config.rewind_step_on(n if ids is None else len(ids), n, self.ctx.train)

    def start_step(self) -> int:
        """Where a pruned round's learning-rate schedule starts: it continues from the rewind step (open_lth)."""
        return self.rewind_step(self.ticket_ids())

    def ticket_start_step(self) -> int:
        """Where a ticket's (and its controls') schedule starts; for IMP the ticket is the round."""
        return self.start_step()

    def callbacks(self, mask: Mask) -> list[Callback]:
        return []

    def write_round_outputs(self, r: int, stage: StageFiles, model, mask: Mask,
                            callbacks: Sequence[Callback]) -> tuple[dict, IterationLedger]:
        """Write what a trained round adds before it is marked done; returns extra metrics and their cost."""
        return {}, IterationLedger()

    def train_and_complete_ticket(self, r: int, stage: StageFiles, metrics: dict, mask: Mask,
                                  rewind: dict) -> tuple[StageFiles | None, dict | None]:
        """Train (or read back) the ticket of round ``r``'s mask; ``(None, None)`` when it is not evaluated.

        For IMP the round's own training is the ticket.
        """
        return stage, metrics

    def ticket_stage(self, r: int) -> StageFiles | None:
        """Where round ``r``'s ticket (its mask trained on the full split) is; ``None`` when it is not trained.

        For IMP the round itself is the ticket.
        """
        return self.ctx.layout.round(r)

    def ticket_job(self, r: int, mask: Mask, rewind: dict) -> PackedStage | None:
        """Round ``r``'s ticket as an unstarted stage to train, when it is trained apart from the round.

        For IMP the round itself is the ticket: ``None``.
        """
        return None

    def dense_reference(self, dense: dict, needed: bool) -> tuple[str, dict] | None:
        """The fully trained dense network tickets are compared with: the stage name and its metrics.

        Round 0 when it trained on the full split for the full budget (IMP
        without a manifest); otherwise a dense network trained on the full
        split for that (the ``dense`` stage), when ``needed`` (a verdict will
        read it): matching a subset-trained or Early-Bird-stopped round 0 would
        be too easy.
        """
        if self._round0_is_full_dense(dense):
            return self.ctx.layout.round(0).name, dense
        if not needed:
            return None
        stage = self.ctx.layout.dense_reference
        metrics = self.ctx.run.finished_stage_metrics(stage)
        if metrics is None:
            metrics = self.ctx.train_and_complete_stage(stage, self.ctx.model())
        return stage.name, metrics

    def _round0_is_full_dense(self, dense: dict) -> bool:
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

    def start_step(self):
        return 0  # as the official code, a round restarts its (scaled) schedule at the rewound weights

    def ticket_start_step(self) -> int:
        return RoundPolicy.start_step(self)  # a full-split ticket continues the full schedule from the rewind step

    def callbacks(self, mask):
        out: list[Callback] = []
        if self.recomputes:
            out.append(ExampleRecorder(self.ctx.num_examples, self.ctx.device))
        if self.config.early_bird:
            out.append(EarlyBirdStop(self.early_bird, mask, warmup_epochs=int(self.ctx.train.warmup_epochs),
                                     prune=lambda model, base: imp_prune(model, base, self.config)))
        return out

    def write_round_outputs(self, r, stage, model, mask, callbacks):
        bird = next((c for c in callbacks if isinstance(c, EarlyBirdStop)), None)
        extra = {"early_bird_epoch": bird.stopped_epoch if bird else None}
        probe_ledger = IterationLedger()
        if not self.recomputes:
            return extra, probe_ledger
        recorder = next(c for c in callbacks if isinstance(c, ExampleRecorder))
        disagreements = None
        if r == 0:
            atomic_np_save(stage.forgetting, recorder.statistics().forgetting_events)
        else:
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
        model (the paper's definition; round 0 has no CEP), unlike ``pracset
        build``'s one-shot probe; the provenance says which, with the round
        and its sparsity.
        """
        ctx = self.ctx
        write_manifest(stage.prac_set, manifest_columns(ctx.dataset, statistics, disagreements, chosen), {
            "dataset": dataset_metadata(ctx.dataset),
            "selection": chosen.describe(),
            "provenance": {"command": "ticket --method prac-imp", "cep": "trained-round" if r > 0 else "none",
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

    def ticket_job(self, r, mask, rewind):
        ticket = self.ticket_stage(r)
        if ticket is None or started(self.ctx, ticket):
            return None
        return PackedStage(self.ctx, ticket, partial(rewound_with_mask, self.ctx, mask, rewind), ids=self.ticket_ids())

    def train_and_complete_ticket(self, r, stage, metrics, mask, rewind):
        if not self._evaluates(r):
            return None, None  # only the ticket the user asked for is trained on the full split
        ticket = self.ctx.layout.ticket(r)
        done = self.ctx.run.finished_stage_metrics(ticket)
        if done is None:
            done = self.ctx.train_and_complete_stage(ticket, self.ctx.rewound(mask, rewind),
                                                     callbacks=[StaticMask(mask)],
                                                     start_step=self.ticket_start_step())
        return ticket, done


def _train_tickets_packed(policy: RoundPolicy, rewind: dict) -> None:
    """Every round's ticket trained apart from its round (PrAC-IMP's) and every ticket's controls that have not
    started, as packed jobs: they share the full-split recipe and the start step, and need only their mask."""
    ctx, config = policy.ctx, policy.config
    jobs: list[PackedStage] = []
    for r in range(1, config.num_rounds + 1):
        ticket = policy.ticket_stage(r)
        if ticket is None:
            continue
        mask = Mask.load(ctx.layout.round(r).mask)
        job = policy.ticket_job(r, mask, rewind)
        jobs += [job] if job is not None else []
        if config.controls:
            jobs += control_jobs(ctx, ticket, mask, rewind, ids=policy.ticket_ids())
    train_and_complete_packed(jobs, start_step=policy.ticket_start_step())


def _train_and_complete_round(policy: RoundPolicy, r: int, stage: StageFiles, model, mask: Mask, ids, *,
                              extra_callbacks: Sequence[Callback] = (), start_step: int = 0) -> dict:
    """Train one round, write what it adds, book its cost and mark it done; returns its metrics."""
    ctx = policy.ctx
    hooks = policy.callbacks(mask)
    result = ctx.train_stage(stage, model, ids=ids, train=policy.recipe(ids),
                             callbacks=[*extra_callbacks, *hooks], start_step=start_step)
    if r == 0:
        snapshot = next(c for c in extra_callbacks if isinstance(c, Snapshot))
        if snapshot.state is None:
            raise ConfigError(f"rewind step {snapshot.step} lies beyond the dense run's steps")
        ctx.save_rewind_point(snapshot.state)
    extra, probe_ledger = policy.write_round_outputs(r, stage, model, mask, hooks)
    if ids is not None:
        extra["set_size"] = int(len(ids))
    cost = IterationLedger({**result.ledger.stages, **probe_ledger.stages})
    return ctx.run.complete_stage(stage, {**result.metrics, **extra}, cost)


def dense_mask(ctx: TicketContext, config: IMPConfig) -> Mask:
    """Round 0's mask: every weight kept, over the tensors IMP may prune (``prunable``, less ``dense_layers``)."""
    return Mask.ones(ctx.model(), prunable=config.prunable, dense=config.dense_layers)


def imp_prune(model, mask: Mask, config: IMPConfig) -> Mask:
    """One IMP prune: ``prune_fraction`` of ``mask``'s weights by magnitude (``ranking``, per-layer rates)."""
    # The last prunable tensor is the output layer; the LTH paper prunes it at half the rate.
    rates = {} if config.output_rate is None else {list(mask)[-1]: config.output_rate}
    return magnitude_prune(model, mask, config.prune_fraction, ranking=config.ranking, layer_rates=rates)


def prune_next(ctx: TicketContext, previous: StageFiles, config: IMPConfig) -> Mask:
    """The next round's mask: one IMP prune of the previous round's mask, by its trained weights."""
    model = ctx.load_model(previous)
    mask = imp_prune(model, Mask.load(previous.mask, model=model).to(ctx.device), config).to("cpu")
    check_layers_kept(mask, previous.name)
    return mask


def run_rounds(policy: RoundPolicy) -> list[dict]:
    """The IMP round loop; returns one row per ticket (round 0: the dense network)."""
    ctx, config, layout = policy.ctx, policy.config, policy.ctx.layout
    dense = layout.round(0)
    base = dense_mask(ctx, config)
    dense_metrics = ctx.run.finished_stage_metrics(dense)
    if dense_metrics is None:
        ids = policy.training_ids(0, dense)
        base.save(dense.mask)
        dense_metrics = _train_and_complete_round(policy, 0, dense, ctx.model(), base, ids,
                                     extra_callbacks=[Snapshot(policy.rewind_step(ids))])
    rewind = ctx.load_rewind_point()
    majority = majority_rate(split_labels(ctx.dataset.test))
    reference = policy.dense_reference(dense_metrics, needed=config.controls)
    rows = [_row(dense, 0, base, dense_metrics, reference, None, config.tolerance, majority)]
    rows[0].update(ticket_files(layout, dense, dense))
    health = RoundHealth(layout, ctx.train, policy.start_step(), config.num_rounds, majority)
    health.assess(0, dense_metrics, rows[0])
    previous = dense
    for r in range(1, config.num_rounds + 1):  # the search: every round's mask, and its training
        stage = layout.round(r)
        trained = r < config.num_rounds or policy.trains_last_round
        if ctx.run.finished_stage_metrics(stage) is None and not (stage.mask.exists() and not trained):
            mask = prune_next(ctx, previous, config)
            mask.save(stage.mask)
            if trained:
                _train_and_complete_round(policy, r, stage, ctx.rewound(mask, rewind), mask,
                                          policy.training_ids(r, previous), extra_callbacks=[StaticMask(mask)],
                                          start_step=policy.start_step())
        previous = stage
    if should_pack(config, ctx):
        _train_tickets_packed(policy, rewind)
    for r in range(1, config.num_rounds + 1):  # the tickets on the full split (or read back), and their controls
        stage = layout.round(r)
        metrics = ctx.run.finished_stage_metrics(stage)
        mask = Mask.load(stage.mask)
        ticket, ticket_metrics = policy.train_and_complete_ticket(r, stage, metrics, mask, rewind)
        controls = (train_and_complete_controls(ctx, ticket, mask, rewind, policy.ticket_start_step(),
                                                ids=policy.ticket_ids())
                    if config.controls and ticket is not None else None)
        row = _row(ticket or stage, r, mask, ticket_metrics, reference, controls, config.tolerance, majority)
        row.update(ticket_files(layout, stage, ticket))  # the mask is the round's; the weights its ticket's
        health.assess(r, metrics, row)
        if ticket != stage and metrics is not None:  # the round that trained this mask, apart from its ticket
            row.update(set_size=metrics.get("set_size"), round_iterations=metrics["ledger"].get("train_iterations"),
                       round_test_accuracy=metrics["final"].get("test_accuracy"),
                       early_bird_epoch=metrics.get("early_bird_epoch"))
        rows.append(row)
    return rows


def _row(stage: StageFiles, r: int, mask: Mask, metrics: dict | None, reference: tuple[str, dict] | None,
         controls: dict | None, tolerance: float, majority: float) -> dict:
    """One ticket's row; a round whose mask was not evaluated on the full split has no accuracy."""
    dense_accuracy = reference[1]["final"].get("test_accuracy") if reference is not None else None
    row = {"stage": stage.name, "round": r, "sparsity": round(mask.sparsity(), 6), "evaluated": metrics is not None,
           "test_accuracy": metrics["final"].get("test_accuracy") if metrics is not None else None,
           "dense_accuracy": dense_accuracy, "dense_reference": reference[0] if reference is not None else None,
           "iterations": metrics.get("ledger", {}).get("train_iterations") if metrics is not None else None}
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
