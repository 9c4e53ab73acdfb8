"""Finding tickets: IMP with rewinding, PrAC-IMP, RigL, GraNet, and the sanity-check controls.

:func:`find_tickets` runs a method of :data:`TICKET_METHODS` into one output
directory (:class:`~pracset.runs.TicketLayout` names its files), stage by
stage; a finished stage is not redone, so an interrupted run continues where
it stopped (``resume``), and a directory that holds another run is refused.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pracset.config import to_dict
from pracset.data import ImageDataset, load_dataset
from pracset.errors import ConfigError
from pracset.fileio import atomic_write_json
from pracset.manifest import read_manifest
from pracset.mask import Mask
from pracset.models.custom import ArchitectureLike, resolve_architecture
from pracset.runs import RunDirectory, TicketLayout, read_json
from pracset.selection import SelectionConfig
from pracset.sparse.early_bird import EarlyBirdConfig
from pracset.tickets.config import BUDGET_RULES, IMPConfig, round_budget
from pracset.tickets.context import Snapshot, TicketContext
from pracset.tickets.controls import CONTROLS, Control
from pracset.tickets.methods import IMP, TicketMethod, TicketSettings
from pracset.tickets.registry import METHOD_SECTIONS, TICKET_METHODS, ticket_settings
from pracset.tickets.rounds import RoundPolicy, train_rounds
from pracset.tickets.health import run_warnings
from pracset.tickets.accounting import split_costs
from pracset.train.config import TrainConfig
from pracset.train.optim import check_names
from pracset.train.run import check_loader_settings, new_model, resolve_data
from pracset.train.tensorboard import require_tensorboard

log = logging.getLogger(__name__)


@dataclass
class _PreparedRun:
    """A ticket run checked and identified, before its directory is opened."""

    runner: TicketMethod
    settings: TicketSettings
    architecture: object
    dataset: ImageDataset
    identity: dict
    fixed_ids: np.ndarray | None
    manifest_info: dict | None


def _prepare(method: str, data, arch: ArchitectureLike, *, train: TrainConfig, settings: TicketSettings,
             manifest, device: torch.device, weights: str | None, dataset) -> _PreparedRun:
    """Check a ticket run's settings, data and architecture and compute its identity; writes nothing."""
    runner = TICKET_METHODS.get(method)
    check_names(train)
    architecture = resolve_architecture(arch, weights)
    data, dataset, data_identity = resolve_data(data, dataset)
    dataset = dataset or load_dataset(data)
    check_loader_settings(dataset, train, device)
    fixed_ids, manifest_info = None, None
    if manifest is not None:
        m = read_manifest(manifest, fingerprint=dataset.fingerprint, dataset_name=dataset.name,
                          image_size=getattr(dataset, "image_size", None))
        hashes = np.asarray(m.column("content_hash")).astype("U16")
        if m.size != len(dataset.train) or not np.array_equal(hashes, dataset.train_hashes):
            raise ConfigError(f"{manifest}: its rows do not hold this data set's examples (the sizes or the content "
                              "hashes differ); it was altered or built on other data")
        fixed_ids = m.selected_ids
        manifest_info = {"path": str(manifest), "selected": m.num_selected, "size": m.size,
                         "rule": m.selection.get("rule"), "arch": m.provenance.get("arch")}
    identity = {"method": method, "data": data_identity, "arch": architecture.name, "train": to_dict(train),
                "manifest": manifest_info, **runner.identity(settings)}
    model = new_model(architecture, dataset)  # the architecture must fit the data before anything is written
    if isinstance(runner, IMP):  # IMP's rounds must leave weights in this model's mask (prac-imp is an IMP too)
        imp = settings.imp
        full = Mask.ones(model, prunable=imp.prunable, dense=imp.dense_layers)
        imp.check_rounds_fit(full.num_weights, {name: full[name].numel() for name in full})
    runner.check(settings, train, len(dataset.train), fixed_ids)
    return _PreparedRun(runner, settings, architecture, dataset, identity, fixed_ids, manifest_info)


def find_tickets(method: str, data, arch: ArchitectureLike, out: str | Path, *, train: TrainConfig = TrainConfig(),
                 imp: IMPConfig = IMPConfig(), early_bird: EarlyBirdConfig = EarlyBirdConfig(),
                 selection: SelectionConfig = SelectionConfig(), manifest: str | Path | None = None,
                 device: torch.device = torch.device("cpu"), resume: bool = False, progress: bool = False,
                 tensorboard: bool | str | Path = False, weights: str | None = None,
                 dataset: ImageDataset | None = None, **method_settings) -> dict:
    """Find tickets of ``arch`` on ``data`` with ``method`` and write them into ``out``.

    ``data`` is a :class:`DataConfig`, a pracset data set or a ``(train,
    test)`` pair of your own tensors / torch Datasets / DataLoaders; ``arch``
    a registered name, an ``nn.Module`` (a template re-initialised per seed)
    or a function that makes one. Every other setting has a default.

    With ``manifest``, the method trains on the manifest's selected examples
    (PrAC-IMP: a fixed PrAC set, e.g. built on another architecture). Returns
    the summary written to ``tickets.json``: one row per ticket (sparsity,
    test accuracy, iterations, controls and verdict), the run's ledger and
    where the final mask and weights are. ``tensorboard`` writes every
    stage's per-epoch scalars under ``out/tensorboard`` (or the directory
    given); it needs the optional ``tensorboard`` package.

    A method's own settings are the keyword of its section
    (:data:`~pracset.tickets.registry.METHOD_SECTIONS`: ``rigl=RigLConfig(...)``,
    ``granet=GraNetConfig(...)``, ...); without them it runs with its defaults
    at ``imp.sparsity``.
    """
    if tensorboard is not False:
        require_tensorboard()
    settings = ticket_settings(imp=imp, early_bird=early_bird, selection=selection, **method_settings)
    prepared = _prepare(method, data, arch, train=train, settings=settings, manifest=manifest, device=device,
                        weights=weights, dataset=dataset)
    dataset = prepared.dataset
    layout = TicketLayout(out)
    with RunDirectory(layout.root, prepared.identity, resume=resume, finished=layout.summary.name) as run:
        if run.status == "done":
            log.info("%s already holds this finished run", layout.root)
            return {**read_json(layout.summary, "ticket summary"), "skipped": True}
        run.claim(data=dataset)
        board = None if tensorboard is False else (layout.tensorboard if tensorboard is True else Path(tensorboard))
        ctx = TicketContext(dataset, prepared.architecture, train, device, run, layout, progress, board)
        rows = prepared.runner.run(ctx, settings, prepared.fixed_ids)
        final = rows[-1]
        mask_stage = layout.round(final["round"]) if final["round"] is not None else layout.sparse
        ledger = run.ledger.to_dict()
        costs = split_costs(layout, ledger["stages"], imp.num_rounds) if final["round"] is not None else None
        summary = {"method": method, "arch": prepared.architecture.name, "data": dataset.name,
                   "manifest": prepared.manifest_info, "tickets": rows, "final": final,
                   "warnings": run_warnings(rows), "ledger": ledger,
                   "costs": costs, "mask": str(mask_stage.mask),
                   "weights": str(layout.stage(final["stage"]).model) if final.get("evaluated", True) else None}
        atomic_write_json(layout.summary, summary)
        return summary


def train_imp_seeds_packed(data, arch: ArchitectureLike, runs: Sequence[tuple[str | Path, TrainConfig]], *,
                           imp: IMPConfig = IMPConfig(), device: torch.device = torch.device("cpu"),
                           weights: str | None = None, dataset: ImageDataset | None = None,
                           pack: str | bool = True, tensorboard: Sequence[Path | None] | None = None) -> None:
    """Train full-data IMP runs that differ only in their seed in lockstep: one round loop for all of them
    (:func:`~pracset.tickets.rounds.train_rounds`).

    ``runs`` are ``(out, train)`` pairs, as :func:`find_tickets` ("imp") would
    take them. Every round of every run trains with the others', and the
    controls (when ``imp.controls``) once the search is done, as packed jobs
    by the executor rule (:func:`~pracset.tickets.stages.plan`): ``pack=True``
    packs whatever ``imp.pack_controls`` says (calling this is asking for it),
    a ``pack_controls`` choice decides as a single run would. A stage started
    alone (a Trainer checkpoint) continues alone; packed jobs write no
    TensorBoard scalars (``tensorboard``: each run's folder for the stages
    that train alone). Each directory then holds the stages
    ``find_tickets("imp", ..., resume=True)`` would have trained, which it
    reads back and summarises. Finished runs are left alone; every directory
    is checked before any is written.
    """
    settings = ticket_settings(imp=imp)
    boards = list(tensorboard) if tensorboard is not None else [None] * len(runs)
    with ExitStack() as stack:
        opened = []
        for (out, train), board in zip(runs, boards):
            prepared = _prepare("imp", data, arch, train=train, settings=settings, manifest=None, device=device,
                                weights=weights, dataset=dataset)
            dataset = prepared.dataset  # loaded once for all the runs
            layout = TicketLayout(out)
            run = stack.enter_context(RunDirectory(layout.root, prepared.identity, resume=True,
                                                   finished=layout.summary.name))
            if run.status != "done":
                opened.append((run, layout, train, prepared.architecture, board))
        contexts = []
        for run, layout, train, architecture, board in opened:  # claimed only once every directory was accepted
            run.claim(data=dataset)
            contexts.append(TicketContext(dataset, architecture, train, device, run, layout, tensorboard=board))
        if contexts:
            train_rounds([RoundPolicy(ctx, imp) for ctx in contexts], pack=pack)


__all__ = ["BUDGET_RULES", "CONTROLS", "Control", "IMPConfig", "METHOD_SECTIONS", "Snapshot", "TICKET_METHODS",
           "TicketContext", "TicketMethod", "TicketSettings", "find_tickets", "round_budget", "ticket_settings",
           "train_imp_seeds_packed"]
