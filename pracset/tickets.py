"""Finding tickets: IMP with rewinding, PrAC-IMP, RigL, GraNet, and the sanity-check controls.

Every method writes into one output directory, stage by stage; a stage whose
result file exists is not redone, so an interrupted run continues where it
stopped (``--resume``), and a directory that holds another run is refused.

Layout of the output directory::

    run.json                 what was asked (compared on resume)
    rewind.pt                the weights (BN statistics included) at the rewind step
    round-00/                dense training (IMP's round 0)
    round-RR/                IMP round RR: mask.pt (+ mask.json), model.pt, metrics.json, [ids.npy]
    ticket-RR/               PrAC-IMP: round RR's ticket trained on the full split
    control-RR-reinit/       the same mask, a random re-initialisation
    control-RR-random-mask/  a random mask with the same layer-wise sparsity
    sparse/                  RigL / GraNet: mask.pt, model.pt, metrics.json
    ledger.json              every training iteration and forward pass, per stage
    tickets.json             one row per ticket: sparsity, accuracy, controls, iterations, verdict
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from pracset.config import option, require, to_dict
from pracset.data import DataConfig, DeviceLoader, ImageDataset, load_dataset, num_batches
from pracset.errors import ConfigError
from pracset.fileio import (DirectoryLock, atomic_np_save, atomic_torch_save, atomic_write_json,
                            holds_only_temporaries, locked_output_directory, remove_temporaries)
from pracset.models import build_model, check_model_name, has_convolutions
from pracset.selection import SelectionConfig, SelectionInputs, select
from pracset.sparse.distributions import random_mask
from pracset.sparse.early_bird import EarlyBirdConfig, EarlyBirdStop
from pracset.sparse.mask import PRUNING_SCOPES, Mask
from pracset.sparse.methods import GraNet, GraNetConfig, RigL, RigLConfig, StaticMask
from pracset.sparse.pruning import magnitude_prune
from pracset.stats import ExampleRecorder, pruning_probe
from pracset.train.config import TrainConfig
from pracset.train.ledger import IterationLedger
from pracset.train.loop import Callback, StepOutput, Trainer, TrainState
from pracset.train.optim import check_names
from pracset.train.run import input_spec, make_loaders

log = logging.getLogger(__name__)

TICKET_METHODS = ("imp", "prac-imp", "rigl", "granet")
BUDGET_RULES = ("official", "linear")


@dataclass(frozen=True)
class IMPConfig:
    """Iterative magnitude pruning with rewinding (and PrAC-IMP's additions)."""

    sparsity: float = option(0.9, "target sparsity: IMP runs enough rounds to reach it (unless --rounds)")
    rounds: int | None = option(None, "pruning rounds (default: enough to reach --sparsity)")
    prune_fraction: float = option(0.2, "fraction of the remaining weights pruned per round")
    prune_scope: str = option("global", "global or layerwise magnitude pruning", choices=("global", "layerwise"))
    prunable: str = option("all", "prunable weights: all conv+linear, or conv only (official PrAC code)",
                           choices=PRUNING_SCOPES)
    dense_layers: tuple[str, ...] = option((), "layers left dense (module or parameter names)")
    output_rate: float | None = option(None, "prune the output layer at this fraction per round instead "
                                             "(the LTH paper: half the rate)")
    rewind_step: int = option(0, "rewind to the weights at this training iteration (0 = initialisation)")
    controls: bool = option(False, "also train the sanity-check controls of every ticket (random re-init, random mask)")
    tolerance: float = option(0.005, "a ticket matches dense when its accuracy is at most this much lower")
    # PrAC-IMP
    budget: str = option("official", "PrAC-IMP round budget on a subset P: official = epochs x |P|/N "
                                     "(iterations fall as (|P|/N)^2), linear = the full epochs (iterations "
                                     "fall as |P|/N)", choices=BUDGET_RULES)
    early_bird: bool = option(True, "PrAC-IMP: stop every round early once its mask settles")
    early_bird_eps: float = option(0.08, "Early-Bird mask-distance threshold")
    early_bird_queue: int = option(5, "Early-Bird: settled epochs in a row")
    early_bird_wait: bool = option(True, "Early-Bird: count only after a distance first exceeds eps (official)")

    def __post_init__(self) -> None:
        require(0 < self.sparsity < 1, f"sparsity must lie in (0, 1), got {self.sparsity}")
        require(self.rounds is None or self.rounds > 0, f"rounds must be a positive integer, got {self.rounds}")
        require(0 < self.prune_fraction < 1, f"prune_fraction must lie in (0, 1), got {self.prune_fraction}")
        require(self.output_rate is None or 0 <= self.output_rate < 1,
                f"output_rate must lie in [0, 1), got {self.output_rate}")
        require(self.rewind_step >= 0, f"rewind_step must not be negative, got {self.rewind_step}")
        require(self.budget in BUDGET_RULES, f"budget must be one of {', '.join(BUDGET_RULES)}, got {self.budget!r}")

    @property
    def num_rounds(self) -> int:
        """Rounds whose compound pruning first reaches ``sparsity``."""
        if self.rounds is not None:
            return self.rounds
        return max(1, math.ceil(math.log(1 - self.sparsity) / math.log(1 - self.prune_fraction) - 1e-9))


class Snapshot(Callback):
    """Keeps a copy of the model's whole state (BN statistics included) at a given global step."""

    def __init__(self, step: int):
        self.step = step
        self.state: dict | None = None

    def _take(self, model: nn.Module) -> None:
        self.state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def on_fit_start(self, state: TrainState) -> None:
        if self.step == 0 and self.state is None:
            self._take(state.model)

    def on_batch_end(self, state: TrainState, out: StepOutput) -> None:
        if state.step == self.step and self.state is None:
            self._take(state.model)

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = state["state"]


# ----------------------------------------------------------------------------- the run directory
class RunDir:
    """An output directory whose stages are skipped once their result file exists."""

    def __init__(self, root: Path, identity: dict, resume: bool):
        self.root = root
        marker = root / "run.json"
        if marker.exists():
            try:
                previous = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                raise ConfigError(f"{marker} is unreadable; choose another --out") from None
            if previous.get("identity") != identity:
                before = previous.get("identity", {})
                changed = sorted(k for k in set(identity) | set(before) if identity.get(k) != before.get(k))
                raise ConfigError(f"{root} holds another run (different {', '.join(changed)}); choose another --out")
            if not (root / "tickets.json").exists() and not resume:
                raise ConfigError(f"{root} holds an unfinished run; pass --resume to continue it or choose another --out")
        elif root.exists() and not holds_only_temporaries(root, also=(DirectoryLock.NAME,)):
            raise ConfigError(f"{root} is not empty and holds no pracset run; choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        remove_temporaries(root)  # left by a killed run
        atomic_write_json(marker, {"identity": identity})
        self.ledger = IterationLedger.load(root / "ledger.json") if (root / "ledger.json").exists() else IterationLedger()

    def done(self, stage: str) -> dict | None:
        path = self.root / stage / "metrics.json"
        if not path.exists():
            return None
        (self.root / stage / "checkpoint.pt").unlink(missing_ok=True)  # left by a kill after the stage finished
        return json.loads(path.read_text())

    def save_ledger(self) -> None:
        self.ledger.save(self.root / "ledger.json")


@dataclass
class Context:
    """What every stage of one run shares."""

    dataset: ImageDataset
    arch: str
    train: TrainConfig
    device: torch.device
    run: RunDir
    progress: bool

    def model(self, seed: int | None = None) -> nn.Module:
        return build_model(self.arch, input_spec(self.dataset), seed=self.train.seed if seed is None else seed)

    def loaders(self, ids=None, train: TrainConfig | None = None) -> tuple[DeviceLoader, DeviceLoader]:
        return make_loaders(self.dataset, train or self.train, self.device, ids=ids,
                            conv_net=has_convolutions(self.model()))

    def train_stage(self, stage: str, model: nn.Module, *, ids=None, train: TrainConfig | None = None,
                    callbacks: Sequence[Callback] = (), start_step: int = 0,
                    extra: Callable[[], dict] | None = None) -> dict:
        """Train ``model`` as stage ``stage``; write its model.pt and metrics.json; book its cost."""
        directory = self.run.root / stage
        directory.mkdir(parents=True, exist_ok=True)
        config = train or self.train
        train_loader, test_loader = self.loaders(ids, config)
        ledger = IterationLedger()
        checkpoint = directory / "checkpoint.pt"
        trainer = Trainer(config, ledger=ledger, stage=stage, checkpoint=checkpoint, resume=True,
                          progress=self.progress)
        state = trainer.fit(model, train_loader, test_loader, callbacks, start_step=start_step)
        final = dict(state.history[-1]) if state.history else {}
        if "test_accuracy" not in final:
            from pracset.train.loop import evaluate

            result = evaluate(model, test_loader, precision=config.precision, ledger=ledger, stage=stage)
            final.update(test_loss=result["loss"], test_accuracy=result["accuracy"])
        atomic_torch_save(model.state_dict(), directory / "model.pt")
        metrics = {"stage": stage, "final": final, "history": state.history, "epochs": config.epochs,
                   "examples": train_loader.num_examples, "ledger": ledger.to_dict()["stages"].get(stage, {}),
                   **(extra() if extra else {})}
        # The run's ledger first: metrics.json marks the stage done, so its cost must already be booked.
        self.run.ledger.stages.update(ledger.stages)
        self.run.save_ledger()
        atomic_write_json(directory / "metrics.json", metrics)
        checkpoint.unlink(missing_ok=True)
        log.info("%s: test accuracy %.4f", stage, final.get("test_accuracy", float("nan")))
        return metrics

    def load_model(self, stage: str) -> nn.Module:
        model = self.model()
        model.load_state_dict(torch.load(self.run.root / stage / "model.pt", map_location="cpu", weights_only=True))
        return model.to(self.device)


def _save_mask(ctx: Context, stage: str, mask: Mask) -> None:
    mask.save(ctx.run.root / stage / "mask.pt")


def _load_mask(ctx: Context, stage: str) -> Mask:
    return Mask.load(ctx.run.root / stage / "mask.pt")


def _rewound(ctx: Context, mask: Mask, rewind: dict, seed: int | None = None) -> nn.Module:
    """A fresh model at the rewind point (or re-initialised with ``seed``) with ``mask`` applied."""
    model = ctx.model(seed)
    if seed is None:
        model.load_state_dict(rewind)
    mask.apply_(model)
    return model.to(ctx.device)


def _layer_rates(model: nn.Module, mask: Mask, config: IMPConfig) -> dict[str, float]:
    if config.output_rate is None:
        return {}
    return {list(mask)[-1]: config.output_rate}  # the last prunable tensor is the output layer


def _scaled(train: TrainConfig, fraction: float, rule: str) -> TrainConfig:
    """PrAC-IMP's round budget on a subset holding ``fraction`` of the training split."""
    if rule == "linear":
        return train
    return replace(train, epochs=max(1, int(train.epochs * fraction)))


# ----------------------------------------------------------------------------- IMP and PrAC-IMP
def _dense_round(ctx: Context, config: IMPConfig, *, ids=None, callbacks=(), train=None,
                 extra: Callable[[], dict] | None = None, rewind_step: int | None = None) -> tuple[dict, dict]:
    """Round 0: dense training from the initialisation, snapshotting the rewind point."""
    rewind_path = ctx.run.root / "rewind.pt"
    snapshot = Snapshot(config.rewind_step if rewind_step is None else rewind_step)
    metrics = ctx.run.done("round-00")
    if metrics is None:
        model = ctx.model()

        def save_rewind() -> dict:
            if snapshot.state is None:
                raise ConfigError(f"rewind step {snapshot.step} lies beyond the dense run's steps")
            atomic_torch_save(snapshot.state, rewind_path)
            return extra() if extra else {}

        metrics = ctx.train_stage("round-00", model, ids=ids, train=train, callbacks=[snapshot, *callbacks],
                                  extra=save_rewind)
    rewind = torch.load(rewind_path, map_location="cpu", weights_only=True)
    return metrics, rewind


def _prune_next(ctx: Context, previous_stage: str, mask: Mask, config: IMPConfig) -> Mask:
    model = ctx.load_model(previous_stage)
    return magnitude_prune(model, mask.to(ctx.device), config.prune_fraction, scope=config.prune_scope,
                           layer_rates=_layer_rates(model, mask, config)).to("cpu")


def _controls(ctx: Context, stage: str, mask: Mask, rewind: dict, start_step: int) -> dict:
    """Train the two sanity-check controls of a ticket on the full split."""
    out = {}
    reinit_stage = f"control-{stage}-reinit"
    done = ctx.run.done(reinit_stage)
    if done is None:
        model = _rewound(ctx, mask, rewind, seed=ctx.train.seed + 1_000)
        done = ctx.train_stage(reinit_stage, model, callbacks=[StaticMask(mask)], start_step=start_step)
    out["reinit"] = done["final"]["test_accuracy"]
    random_stage = f"control-{stage}-random-mask"
    done = ctx.run.done(random_stage)
    if done is None:
        densities = {n: float(t.float().mean()) for n, t in mask.items()}
        generator = torch.Generator().manual_seed(ctx.train.seed + 2_000)
        shuffled = random_mask(ctx.model(), densities, generator)
        model = _rewound(ctx, shuffled, rewind)
        done = ctx.train_stage(random_stage, model, callbacks=[StaticMask(shuffled)], start_step=start_step)
    out["random_mask"] = done["final"]["test_accuracy"]
    return out


def run_imp(ctx: Context, config: IMPConfig) -> list[dict]:
    """Full-data IMP with rewinding: round r trains the mask of r prunes from the rewind point."""
    dense, rewind = _dense_round(ctx, config)
    mask = Mask.ones(ctx.model(), scope=config.prunable, dense=config.dense_layers)
    if not (ctx.run.root / "round-00" / "mask.pt").exists():
        _save_mask(ctx, "round-00", mask)
    rows = [_row(ctx, "round-00", 0, mask, dense, dense, None)]
    previous = "round-00"
    for r in range(1, config.num_rounds + 1):
        stage = f"round-{r:02d}"
        metrics = ctx.run.done(stage)
        if metrics is None:
            mask = _prune_next(ctx, previous, _load_mask(ctx, previous), config)
            (ctx.run.root / stage).mkdir(parents=True, exist_ok=True)
            _save_mask(ctx, stage, mask)
            model = _rewound(ctx, mask, rewind)
            metrics = ctx.train_stage(stage, model, callbacks=[StaticMask(mask)], start_step=config.rewind_step)
        mask = _load_mask(ctx, stage)
        controls = _controls(ctx, stage, mask, rewind, config.rewind_step) if config.controls else None
        rows.append(_row(ctx, stage, r, mask, metrics, dense, controls, config.tolerance))
        previous = stage
    return rows


def run_prac_imp(ctx: Context, config: IMPConfig, *, selection: SelectionConfig = SelectionConfig(),
                 manifest_ids: np.ndarray | None = None) -> list[dict]:
    """PrAC-IMP (Zhang et al. 2021, DESIGN 2.2): IMP whose rounds train on the PrAC set, then full-data tickets.

    Round 0 trains densely on all examples (or on ``manifest_ids``) with the
    recorder; every later round rewinds, trains the pruned network on the
    current set P with the round budget scaled by |P|/N (``config.budget``),
    stops early with Early-Bird, and recomputes P = CET (this round's
    forgetting) union CEP (dense vs. this round's sparse predictions). With
    ``manifest_ids`` (a set built elsewhere, e.g. on another architecture) P is
    fixed and never recomputed. Each round's mask is then trained from the
    rewind point on the full split (``ticket-RR``): that is the ticket.
    """
    n = len(ctx.dataset.train)
    bird_config = EarlyBirdConfig(eps=config.early_bird_eps, queue_length=config.early_bird_queue,
                                  wait_for_change=config.early_bird_wait)
    base = Mask.ones(ctx.model(), scope=config.prunable, dense=config.dense_layers)
    labels = ctx.dataset.train.labels.cpu().numpy()
    fixed = manifest_ids is not None

    def round_callbacks(mask: Mask, recorder: ExampleRecorder | None):
        bird = EarlyBirdStop(bird_config, mask, warmup_epochs=int(ctx.train.warmup_epochs)) if config.early_bird else None
        return bird, [c for c in (recorder, bird) if c is not None]

    # Round 0: dense, on everything (or on the manifest's set).
    ids0 = manifest_ids
    train0 = _scaled(ctx.train, len(ids0) / n, config.budget) if fixed else ctx.train
    recorder = ExampleRecorder(n, ctx.device)
    bird0, callbacks0 = round_callbacks(base, None if fixed else recorder)
    def extra0():
        out = {"early_bird_epoch": bird0.stopped_epoch if bird0 else None}
        if not fixed:
            atomic_np_save(ctx.run.root / "round-00" / "forgetting.npy", recorder.statistics().forgetting_events)
            next_ids = _prac_set(labels, recorder, None, selection)
            atomic_np_save(ctx.run.root / "round-00" / "next_ids.npy", next_ids)
            out["next_set"] = len(next_ids)
        return out

    # On a fixed subset, round 0 sees |P|/N of the examples per epoch: rewind to the same point of
    # training in epochs (k x |P|/N of its steps), not to a step it may never reach.
    rewind_step = round(config.rewind_step * len(ids0) / n) if fixed else config.rewind_step
    dense_metrics, rewind = _dense_round(ctx, config, ids=ids0, callbacks=callbacks0, train=train0, extra=extra0,
                                         rewind_step=rewind_step)
    if not (ctx.run.root / "round-00" / "mask.pt").exists():
        _save_mask(ctx, "round-00", base)
    dense_model = ctx.load_model("round-00")
    rows = [_row(ctx, "round-00", 0, base, dense_metrics, dense_metrics, None)]
    previous = "round-00"
    for r in range(1, config.num_rounds + 1):
        stage = f"round-{r:02d}"
        ids = manifest_ids if fixed else np.load(ctx.run.root / previous / "next_ids.npy")
        metrics = ctx.run.done(stage)
        if metrics is None:
            mask = _prune_next(ctx, previous, _load_mask(ctx, previous), config)
            (ctx.run.root / stage).mkdir(parents=True, exist_ok=True)
            _save_mask(ctx, stage, mask)
            atomic_np_save(ctx.run.root / stage / "ids.npy", ids)
            recorder = ExampleRecorder(n, ctx.device)
            bird, callbacks = round_callbacks(mask, None if fixed else recorder)
            model = _rewound(ctx, mask, rewind)
            train_r = _scaled(ctx.train, len(ids) / n, config.budget)

            def extra(model=model, recorder=recorder, bird=bird, mask=mask, stage=stage):
                out = {"set_size": int(len(ids)), "early_bird_epoch": bird.stopped_epoch if bird else None}
                if not fixed:
                    probe_loader = DeviceLoader(ctx.dataset.train.to(ctx.device), 512, *ctx.dataset.normalization)
                    # Booked into a ledger of its own and merged by replacement: a resume that probes again
                    # (killed after the run's ledger was saved, before metrics.json) must not count it twice.
                    probe_ledger = IterationLedger()
                    probe = pruning_probe(dense_model, probe_loader, [], pruned_models=[model], num_examples=n,
                                          mask=mask, precision=ctx.train.precision, ledger=probe_ledger,
                                          stage=f"probe-{stage[-2:]}")
                    ctx.run.ledger.stages.update(probe_ledger.stages)
                    next_ids = _prac_set(labels, recorder, probe.disagreements, selection)
                    atomic_np_save(ctx.run.root / stage / "next_ids.npy", next_ids)
                    out.update(next_set=len(next_ids), cep=int(probe.critical.sum()))
                return out

            # As the official code, a round restarts its (scaled) schedule from step 0 at the rewound
            # weights; full-data tickets below continue the schedule from the rewind step (open_lth).
            metrics = ctx.train_stage(stage, model, ids=ids, train=train_r,
                                      callbacks=[StaticMask(mask), *callbacks], extra=extra)
        mask = _load_mask(ctx, stage)
        ticket_stage = f"ticket-{r:02d}"
        ticket = ctx.run.done(ticket_stage)
        if ticket is None:
            ticket = ctx.train_stage(ticket_stage, _rewound(ctx, mask, rewind), callbacks=[StaticMask(mask)],
                                     start_step=config.rewind_step)
        controls = _controls(ctx, ticket_stage, mask, rewind, config.rewind_step) if config.controls else None
        row = _row(ctx, ticket_stage, r, mask, ticket, dense_metrics, controls, config.tolerance)
        row["set_size"] = metrics.get("set_size")
        row["round_iterations"] = metrics.get("ledger", {}).get("train_iterations")
        row["round_test_accuracy"] = metrics["final"].get("test_accuracy")
        row["early_bird_epoch"] = metrics.get("early_bird_epoch")
        rows.append(row)
        previous = stage
    return rows


def _prac_set(labels: np.ndarray, recorder: ExampleRecorder, disagreements: np.ndarray | None,
              selection: SelectionConfig) -> np.ndarray:
    inputs = SelectionInputs.from_statistics(labels, recorder.statistics(), disagreements)
    return select(inputs, selection).ids


def _row(ctx: Context, stage: str, round_: int, mask: Mask, metrics: dict, dense: dict,
         controls: dict | None, tolerance: float = 0.005) -> dict:
    accuracy = metrics["final"].get("test_accuracy")
    dense_accuracy = dense["final"].get("test_accuracy")
    row = {"stage": stage, "round": round_, "sparsity": round(mask.sparsity(), 6), "test_accuracy": accuracy,
           "dense_accuracy": dense_accuracy, "iterations": metrics.get("ledger", {}).get("train_iterations")}
    if controls is not None:
        row["controls"] = controls
        matches = accuracy >= dense_accuracy - tolerance
        beats = accuracy > max(controls.values()) + tolerance
        row["verdict"] = {"matches_dense": bool(matches), "beats_controls": bool(beats),
                          "winning_ticket": bool(matches and beats), "tolerance": tolerance}
    return row


# ----------------------------------------------------------------------------- RigL and GraNet
def run_dynamic(ctx: Context, method: str, method_config, ids=None) -> list[dict]:
    """Train with RigL or GraNet (dense-to-sparse or sparse-to-sparse) in one stage."""
    stage = "sparse"
    metrics = ctx.run.done(stage)
    if metrics is None:
        callback = (RigL if method == "rigl" else GraNet)(method_config)
        model = ctx.model()
        metrics = ctx.train_stage(stage, model, ids=ids, callbacks=[callback])
        _save_mask(ctx, stage, callback.mask)
    mask = _load_mask(ctx, stage)
    return [{"stage": stage, "round": None, "sparsity": round(mask.sparsity(), 6),
             "test_accuracy": metrics["final"].get("test_accuracy"),
             "iterations": metrics["ledger"].get("train_iterations")}]


# ----------------------------------------------------------------------------- entry point
def sparse_method_config(method: str, imp: IMPConfig, rigl: RigLConfig | None = None,
                         granet: GraNetConfig | None = None) -> RigLConfig | GraNetConfig | None:
    """The RigL / GraNet configuration ``find_tickets`` uses (the given one, or the default at IMP's sparsity)."""
    if method == "rigl":
        return rigl or RigLConfig(sparsity=imp.sparsity)
    if method == "granet":  # GraNet starts below its final sparsity
        return granet or GraNetConfig(sparsity=imp.sparsity, init_sparsity=min(0.5, imp.sparsity))
    return None


def check_ticket_schedule(method: str, train: TrainConfig, imp: IMPConfig, sparse_config, num_examples: int,
                    manifest_ids: np.ndarray | None) -> None:
    """Refuse settings that cannot work for a run of this length, before anything is written.

    The rewind step must lie inside the dense run (and, for PrAC-IMP on a
    fixed subset ``manifest_ids``, inside its shortened round 0); a RigL or
    GraNet schedule must hold at least one update.
    """
    def steps(n: int, config: TrainConfig) -> int:
        return num_batches(n, config.batch_size, config.drop_last) * config.epochs

    full = steps(num_examples, train)
    if method in ("imp", "prac-imp"):
        # Tickets continue the full-data schedule from the rewind step, so it must lie inside it.
        if imp.rewind_step >= full:
            raise ConfigError(f"rewind step {imp.rewind_step} lies beyond the dense run's {full} steps "
                              f"(it must be below {full})")
        if method == "prac-imp" and manifest_ids is not None:
            n0 = len(manifest_ids)
            k0 = round(imp.rewind_step * n0 / num_examples)
            steps0 = steps(n0, _scaled(train, n0 / num_examples, imp.budget))
            if k0 > steps0:
                raise ConfigError(f"rewind step {imp.rewind_step}, scaled to the manifest's {n0} examples ({k0}), "
                                  f"lies beyond round 0's {steps0} steps")
    elif sparse_config is not None:
        n = len(manifest_ids) if manifest_ids is not None else num_examples
        (RigL if method == "rigl" else GraNet)(sparse_config).check_schedule(steps(n, train))


def find_tickets(method: str, data: DataConfig, arch: str, out: str | Path, *, train: TrainConfig,
                 imp: IMPConfig = IMPConfig(), rigl: RigLConfig | None = None, granet: GraNetConfig | None = None,
                 selection: SelectionConfig = SelectionConfig(), manifest: str | Path | None = None,
                 device: torch.device, resume: bool = False, progress: bool = False,
                 dataset: ImageDataset | None = None) -> dict:
    """Run ``method`` and write its tickets into ``out``; returns the summary written to ``tickets.json``."""
    if method not in TICKET_METHODS:
        raise ConfigError(f"unknown ticket method {method!r}; valid names: {', '.join(TICKET_METHODS)}")
    check_names(train)
    check_model_name(arch)
    out = Path(out)
    dataset = dataset or load_dataset(data)
    manifest_ids = None
    manifest_info = None
    if manifest is not None:
        from pracset.manifest import read_manifest

        m = read_manifest(manifest, fingerprint=dataset.fingerprint, dataset_name=dataset.name)
        manifest_ids = m.selected_ids
        manifest_info = {"path": str(manifest), "selected": m.num_selected, "size": m.size,
                         "rule": m.selection.get("rule"), "arch": m.provenance.get("arch")}
    sparse_config = sparse_method_config(method, imp, rigl, granet)
    identity = {"method": method, "data": to_dict(data), "arch": arch, "train": to_dict(train),
                "imp": to_dict(imp), "selection": to_dict(selection), "manifest": manifest_info,
                "sparse": to_dict(sparse_config) if sparse_config is not None else None}
    build_model(arch, input_spec(dataset))  # the architecture must fit the data before anything is written
    check_ticket_schedule(method, train, imp, sparse_config, len(dataset.train), manifest_ids)
    with locked_output_directory(out):  # a second process on the same --out is refused
        run = RunDir(out, identity, resume)
        if (out / "tickets.json").exists():
            log.info("%s already holds this finished run", out)
            return {**json.loads((out / "tickets.json").read_text()), "skipped": True}
        ctx = Context(dataset, arch, train, device, run, progress)
        if method == "imp":
            rows = run_imp(ctx, imp)
        elif method == "prac-imp":
            rows = run_prac_imp(ctx, imp, selection=selection, manifest_ids=manifest_ids)
        else:
            rows = run_dynamic(ctx, method, sparse_config, ids=manifest_ids)
        final = rows[-1]
        final_stage = final["stage"]
        mask_stage = final_stage.replace("ticket-", "round-")
        summary = {"method": method, "arch": arch, "data": dataset.name, "manifest": manifest_info,
                   "tickets": rows, "final": final, "ledger": run.ledger.to_dict(),
                   "mask": str(out / mask_stage / "mask.pt"), "weights": str(out / final_stage / "model.pt")}
        atomic_write_json(out / "tickets.json", summary)
        return summary
