"""The iteration ledger: every training iteration and forward pass a run spends."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from pracset.errors import RunFileError
from pracset.fileio import atomic_write_json
from pracset.runfiles import is_count, kind, read_json, shown

KINDS = ("train", "eval", "probe")


@dataclass
class StageCost:
    """Work spent by one stage (a dense run, an IMP round, a probe, ...)."""

    train_iterations: int = 0   # optimizer steps (forward + backward on one batch)
    train_examples: int = 0     # examples seen in those steps
    eval_batches: int = 0
    eval_examples: int = 0      # forward passes for evaluation
    probe_batches: int = 0
    probe_examples: int = 0     # forward passes for pruning probes / scoring

    @property
    def forward_examples(self) -> int:
        """Every example forward pass, training included."""
        return self.train_examples + self.eval_examples + self.probe_examples


@dataclass
class IterationLedger:
    """Counts the work of a run, per stage, from batch sizes known on the host.

    Counting never reads a device value, so it costs no synchronisation.
    """

    stages: dict[str, StageCost] = field(default_factory=dict)

    def add(self, stage: str, kind: str, examples: int, batches: int = 1) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown ledger kind {kind!r}; valid: {', '.join(KINDS)}")
        cost = self.stages.setdefault(stage, StageCost())
        if kind == "train":
            cost.train_iterations += batches
            cost.train_examples += examples
        elif kind == "eval":
            cost.eval_batches += batches
            cost.eval_examples += examples
        else:
            cost.probe_batches += batches
            cost.probe_examples += examples

    def total(self) -> StageCost:
        out = StageCost()
        for cost in self.stages.values():
            for name in vars(out):
                setattr(out, name, getattr(out, name) + getattr(cost, name))
        return out

    def to_dict(self) -> dict:
        def row(cost: StageCost) -> dict:
            return {**vars(cost), "forward_examples": cost.forward_examples}

        return {"stages": {k: row(v) for k, v in self.stages.items()}, "total": row(self.total())}

    @classmethod
    def from_dict(cls, data: dict, where: str = "the ledger") -> "IterationLedger":
        """The ledger :meth:`to_dict` wrote, checked: ``{"stages": {NAME: {COUNT: n, ...}}, ...}`` with every
        count a non-negative integer and no unknown count; anything else raises a one-line
        :class:`~pracset.errors.RunFileError` that starts with ``where``."""
        if not isinstance(data, dict):
            raise RunFileError(f"{where} must be a JSON object with 'stages', got {kind(data)}")
        stages_raw = data.get("stages", {})
        if not isinstance(stages_raw, dict):
            raise RunFileError(f"{where}: 'stages' must be an object of stage costs, got {kind(stages_raw)}")
        known = {f.name for f in fields(StageCost)}
        stages = {}
        for name, row in stages_raw.items():
            if not isinstance(row, dict):
                raise RunFileError(f"{where}: stage {shown(name)} must be an object of counts, got {kind(row)}")
            counts = {k: v for k, v in row.items() if k != "forward_examples"}
            unknown = sorted(set(counts) - known)
            if unknown:
                raise RunFileError(f"{where}: stage {shown(name)} has unknown count {shown(unknown[0])}")
            bad = next((k for k, v in counts.items() if not is_count(v)), None)
            if bad is not None:
                raise RunFileError(f"{where}: stage {shown(name)} count {bad!r} must be a non-negative integer, "
                                   f"got {shown(counts[bad])}")
            stages[name] = StageCost(**counts)
        return cls(stages)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "IterationLedger":
        """Read ``ledger.json``; a damaged file or one of another structure is one RunFileError naming it."""
        return cls.from_dict(read_json(path, "ledger"), where=f"ledger {path}")
