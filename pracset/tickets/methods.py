"""The ticket methods: what each checks before a run and how it runs.

A method is a small object with two hooks, :meth:`TicketMethod.check` and
:meth:`TicketMethod.run`, and the settings it declares;
:data:`pracset.tickets.registry.TICKET_METHODS` is the registry the command
line and the TOML pipelines take their choices from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping
from functools import partial

import numpy as np

from pracset.config import to_dict
from pracset.data import num_batches
from pracset.errors import ConfigError
from pracset.ledger import IterationLedger
from pracset.mask import Mask
from pracset.selection import SelectionConfig
from pracset.sparse import GraNet, GraNetConfig, RigL, RigLConfig
from pracset.sparse.early_bird import EarlyBirdConfig
from pracset.tickets.config import IMPConfig, round_budget
from pracset.tickets.context import TicketContext
from pracset.tickets.accounting import ticket_files
from pracset.tickets.data_diet import DataDietPolicy, pretrain_epochs
from pracset.tickets.rounds import PracSetPolicy, RoundPolicy, run_rounds
from pracset.tickets.stages import StageJob, Trained, train_jobs
from pracset.train.config import TrainConfig


@dataclass(frozen=True)
class TicketSettings:
    """What a ticket run reads: the shared tables, and each method's own settings by section (absent: the method's
    default). Made by :func:`pracset.tickets.registry.ticket_settings`, which checks the sections' names."""

    imp: IMPConfig = IMPConfig()
    early_bird: EarlyBirdConfig = EarlyBirdConfig()
    selection: SelectionConfig = SelectionConfig()
    own: Mapping[str, Any] = field(default_factory=dict)

    def of(self, section: str | None):
        """The settings given for ``section`` (a method's table), or ``None``."""
        return self.own.get(section) if section else None


def _steps(num_examples: int, train: TrainConfig) -> int:
    return num_batches(num_examples, train.batch_size, train.drop_last) * train.epochs


class TicketMethod:
    """How one method finds tickets. Subclasses override :meth:`run`, and :meth:`check` / :meth:`identity`.

    A method with settings of its own names their ``section`` (its TOML table,
    its ``--SECTION-...`` flags and its :func:`~pracset.tickets.find_tickets`
    keyword) and their ``config_class``; the command line, the pipelines and
    ``find_tickets`` take them from :mod:`pracset.tickets.registry`.
    """

    name = ""
    section: str | None = None
    config_class: type | None = None
    #: a pipeline records the method's table in its identity only when one is given (a table added after
    #: pipelines were written, whose runs keep their identity); ``False``: always, ``None`` when not given
    recorded_when_given = True

    def config(self, settings: TicketSettings):
        """The method's settings: the ones given, or its default (:meth:`default_config`)."""
        given = settings.of(self.section)
        return given if given is not None else self.default_config(settings)

    def default_config(self, settings: TicketSettings):
        """The settings of a run that gave none: the config class's defaults at IMP's target sparsity."""
        return self.config_class(sparsity=settings.imp.sparsity)

    def identity(self, settings: TicketSettings) -> dict:
        """The settings that make two runs of this method the same run."""
        return {"imp": to_dict(settings.imp)}

    def check(self, settings: TicketSettings, train: TrainConfig, num_examples: int,
              fixed_ids: np.ndarray | None) -> None:
        """Refuse settings that cannot work for a run of this length, before anything is written."""

    def run(self, ctx: TicketContext, settings: TicketSettings, fixed_ids: np.ndarray | None) -> list[dict]:
        raise NotImplementedError


class IMP(TicketMethod):
    """IMP with rewinding: round r trains the mask of r prunes from the rewind point.

    On the full split, or with a manifest on its selected examples: every
    round (so every ticket) and its controls train on that set with the full
    recipe (IMP on a subset; with a random set, the random-subset baseline),
    and tickets are compared with a dense network trained on the full split.
    """

    name = "imp"

    def check(self, settings, train, num_examples, fixed_ids):
        if settings.imp.manifest_use == "pretrain":
            epochs = pretrain_epochs(settings.imp)
            if fixed_ids is None or not epochs:
                raise ConfigError("manifest_use pretrain (the Data-Diet protocol) pretrains on a manifest's set up to "
                                  "the rewind point: give --manifest and a rewind point in epochs, e.g. --rewind 2ep")
            if epochs >= train.epochs:
                raise ConfigError(f"the pretraining's {epochs} epochs (--rewind {settings.imp.rewind}) must be fewer "
                                  f"than the recipe's {train.epochs}")
            fixed_ids = None  # every round trains on the full split
        # Tickets continue round 0's schedule from the rewind step, so it must lie inside it.
        n = num_examples if fixed_ids is None else len(fixed_ids)
        full = _steps(n, train)
        k = settings.imp.rewind_step_on(n, num_examples, train)
        if k >= full:
            where = "" if fixed_ids is None else f" on the manifest's {n} examples"
            raise ConfigError(f"rewind point {settings.imp.rewind} (iteration {k}) lies beyond the dense run's "
                              f"{full} steps{where} (it must be below {full})")

    def run(self, ctx, settings, fixed_ids):
        if settings.imp.manifest_use == "pretrain":
            return run_rounds(DataDietPolicy(ctx, settings.imp, fixed_ids))
        return run_rounds(RoundPolicy(ctx, settings.imp, fixed_ids))


class PracIMP(IMP):
    """PrAC-IMP (Zhang et al. 2021): IMP whose rounds train on the PrAC set, then full-data tickets."""

    name = "prac-imp"

    def identity(self, settings):
        # Early-Bird's settings are part of the run only when it is on (as in a build's identity).
        return {**super().identity(settings),
                "early_bird": to_dict(settings.early_bird) if settings.imp.early_bird else None,
                "selection": to_dict(settings.selection)}

    def check(self, settings, train, num_examples, fixed_ids):
        if settings.imp.manifest_use != "rounds":
            raise ConfigError("manifest_use pretrain (the Data-Diet protocol) is a setting of imp; prac-imp uses a "
                              "manifest as its fixed set")
        super().check(settings, train, num_examples, None)  # its tickets continue the full-split schedule
        selection = settings.selection
        if selection.rule in ("highest", "lowest", "ccs") and selection.score in ("el2n", "grand"):
            raise ConfigError(f"PrAC-IMP's rounds select from their own statistics, which hold no {selection.score}: "
                              "rank by forgetting, aum, confidence, variability or margin (or build the set with "
                              f"pracset build --scores {selection.score} and pass it as --manifest)")
        imp = settings.imp
        if selection.rule == "cep" and fixed_ids is None and imp.num_rounds < 2:
            raise ConfigError("PrAC-IMP with the cep rule selects its first set after round 1 (round 0 has no sparse "
                              "model to compare): give 2 or more rounds")
        if fixed_ids is not None:  # round 0 on the fixed subset is shorter: the scaled rewind step must fit it
            n0 = len(fixed_ids)
            k0 = imp.rewind_step_on(n0, num_examples, train)
            steps0 = _steps(n0, round_budget(train, n0 / num_examples, imp.budget))
            if k0 > steps0:
                raise ConfigError(f"rewind point {imp.rewind}, on the manifest's {n0} examples (iteration {k0}), "
                                  f"lies beyond round 0's {steps0} steps")

    def run(self, ctx, settings, fixed_ids):
        return run_rounds(PracSetPolicy(ctx, settings.imp, settings.early_bird, settings.selection, fixed_ids))


class DynamicSparse(TicketMethod):
    """RigL / GraNet: one training run whose mask changes as it trains (on the full split or a manifest's set)."""

    method_class: type | None = None  # set by each subclass
    recorded_when_given = False  # its table was in every pipeline's identity from the start

    def identity(self, settings):
        return {"sparse": to_dict(self.config(settings))}

    def check(self, settings, train, num_examples, fixed_ids):
        n = len(fixed_ids) if fixed_ids is not None else num_examples
        self.method_class(self.config(settings)).check_schedule(_steps(n, train))

    def run(self, ctx, settings, fixed_ids):
        stage = ctx.layout.sparse
        job = StageJob(ctx, stage, lambda: (ctx.model(), None), ids=fixed_ids, fixed_mask=False,
                       callbacks=lambda _: [self.method_class(self.config(settings))], finish=partial(_save_mask, stage))
        metrics, = train_jobs([job])
        mask = Mask.load(stage.mask)
        return [{"stage": stage.name, "round": None, "sparsity": round(mask.sparsity(), 6),
                 "test_accuracy": metrics.test_accuracy, "iterations": metrics.train_iterations,
                 **ticket_files(ctx.layout, stage, stage)}]


def _save_mask(stage, trained: Trained) -> tuple[dict, IterationLedger]:
    """A dynamic-sparse stage's final mask, the one its method (the only callback) ended with."""
    trained.callbacks[0].mask.save(stage.mask)
    return {}, IterationLedger()


class RigLMethod(DynamicSparse):
    """RigL (Evci et al. 2020) as a ticket method."""
    name, method_class, section, config_class = "rigl", RigL, "rigl", RigLConfig


class GraNetMethod(DynamicSparse):
    """GraNet (Liu et al. 2021) as a ticket method."""
    name, method_class, section, config_class = "granet", GraNet, "granet", GraNetConfig

    def default_config(self, settings):
        # GraNet starts sparser than dense but below its final sparsity.
        return GraNetConfig(sparsity=settings.imp.sparsity, init_sparsity=min(0.5, settings.imp.sparsity))
