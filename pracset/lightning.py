"""pracset inside a PyTorch Lightning ``Trainer``: per-example statistics, sparse training and a manifest.

:class:`PracsetCallback` is a Lightning callback (the optional extra: ``pip install 'pracset[lightning]'``)
that plugs pracset's own parts into a user's ``LightningModule``, as :class:`~pracset.stats.ExampleRecorder`
and :class:`~pracset.sparse.SparseStepper` plug into a loop of one's own:

* every training step it hands the step's example ids, labels, logits and per-example losses to an
  ``ExampleRecorder`` (kept on the module's device, stashed per epoch as pracset's Trainer does: no host
  synchronisation per step), and closes the recorder's epoch at each training epoch's end;
* optionally, after every optimizer step, a ``SparseStepper`` applies RigL, GraNet or a fixed ``Mask``
  (with the stepper's one difference from pracset's Trainer: a RigL update step is not skipped, so the
  mask update reads the weights after that step, and this step's gradient, still in ``param.grad``);
* at the end of training it selects with a :class:`~pracset.selection.SelectionConfig` rule from the
  recorded statistics and writes a manifest (no pruning probe is run: ``prac`` is then CET alone,
  ``cep`` is refused).

The contract: ``training_step`` returns a dict with ``loss`` (what Lightning backpropagates), ``logits``
(``(B, classes)``) and, optionally, ``losses`` (the per-example, unreduced losses, ``(B,)``). The example
ids and labels come from the dict's ``ids`` and ``labels`` when it has them, else from the batch, which
is then ``(x, y, ids)``. An id is the example's row in the training split (``0 .. num_examples - 1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn

from pracset import __version__
from pracset.data.torch_data import as_dataset
from pracset.device import environment
from pracset.errors import ConfigError
from pracset.manifest.assemble import dataset_metadata, manifest_columns
from pracset.manifest.schema import write_manifest
from pracset.mask import Mask
from pracset.runs import check_output_parent
from pracset.selection import SELECTION_RULES, Selection, SelectionConfig, SelectionInputs, check_size, select
from pracset.sparse import GraNet, GraNetConfig, RigL, RigLConfig, SparseMethod, SparseStepper, StaticMask
from pracset.stats import ExampleRecorder, ExampleStatistics
from pracset.train.run import split_labels
from pracset.train.step import StepOutput

try:  # the optional extra; without it this module still imports, and the callback says how to install it
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import pytorch_lightning as pl  # the older package name, same API
    except ImportError:
        pl = None


INSTALL = "pip install 'pracset[lightning]'"
CONTRACT = ("training_step must return a dict with 'loss', 'logits' (B, classes) and optionally 'losses' "
            "(per-example, unreduced), and give the example ids and labels as its 'ids' and 'labels' or as a "
            "batch (x, y, ids)")

_Base = pl.Callback if pl is not None else object


def as_sparse_method(sparse: SparseMethod | Mask | RigLConfig | GraNetConfig | None) -> SparseMethod | None:
    """The sparse method ``sparse`` names: a config builds RigL or GraNet, a ``Mask`` is held fixed."""
    if sparse is None or isinstance(sparse, SparseMethod):
        return sparse
    if isinstance(sparse, Mask):
        return StaticMask(sparse)
    if isinstance(sparse, GraNetConfig):
        return GraNet(sparse)
    if isinstance(sparse, RigLConfig):
        return RigL(sparse)
    raise ConfigError(f"sparse must be a RigLConfig, a GraNetConfig, a Mask or a SparseMethod, "
                      f"got {type(sparse).__name__}")


class PracsetCallback(_Base):
    """Records per-example statistics, steps a sparse method and writes a manifest inside a Lightning Trainer.

    Args:
        num_examples: the size of the training split (the ids index it); by default ``len(data.train)``.
        data: the data set the manifest describes (its content hashes, labels and class names):
            ``pracset.from_torch(train, test)``, a ``(train, test)`` pair that ``from_torch`` takes, or a
            pracset data set. Needed with ``manifest``; row ``i`` of its training split is example id ``i``.
        manifest: where to write the manifest when training ends (None: write none; replaced if it exists).
        selection: the rule and its settings (no probe is run: ``prac`` is CET alone; ``cep`` is refused).
        sparse: ``RigLConfig(...)``, ``GraNetConfig(...)``, a fixed ``Mask``, a ``SparseMethod``, or None.
        module: the network the sparse method masks (its parameter names are the mask's); by default the
            ``LightningModule`` itself.
        total_steps: the optimizer steps of the run, for RigL's and GraNet's schedules (by default
            ``trainer.estimated_stepping_batches``).
        seed: seeds RigL's and GraNet's random starting mask.
        keep_history: also keep the bit-packed per-epoch correctness history.

    The training step's outputs follow :data:`CONTRACT`. The statistics and the sparse method's mask and
    step count are saved in Lightning checkpoints (``state_dict``) and restored on resume.
    Single-process training is what is tested; under DDP the recorder gathers every rank's presentations
    as in pracset's own distributed runs, which needs a sampler that gives each example to exactly one rank
    per epoch (Lightning's default DistributedSampler repeats a few examples to even out the ranks).
    """

    def __init__(self, num_examples: int | None = None, *, data=None, manifest: str | Path | None = None,
                 selection: SelectionConfig = SelectionConfig(),
                 sparse: SparseMethod | Mask | RigLConfig | GraNetConfig | None = None,
                 module: nn.Module | None = None, total_steps: int | None = None, seed: int = 0,
                 keep_history: bool = False):
        if pl is None:
            raise ConfigError(f"pracset.lightning needs PyTorch Lightning: {INSTALL}")
        self.dataset = None if data is None else as_dataset(data)
        if data is not None and self.dataset is None:
            raise ConfigError("data must be pracset.from_torch(train, test), a (train, test) pair of torch "
                              f"Datasets or DataLoaders, or a pracset data set; got {type(data).__name__}")
        if num_examples is None:
            if self.dataset is None:
                raise ConfigError("give num_examples (the size of the training split) or data")
            num_examples = len(self.dataset.train)
        elif self.dataset is not None and len(self.dataset.train) != num_examples:
            raise ConfigError(f"num_examples is {num_examples} but data's training split holds "
                              f"{len(self.dataset.train)} examples")
        if isinstance(total_steps, bool) or (total_steps is not None and (
                not isinstance(total_steps, int) or total_steps <= 0)):
            raise ConfigError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.num_examples = num_examples
        self.manifest = None if manifest is None else Path(manifest)
        self.selection = selection
        if self.manifest is not None:
            if self.dataset is None:
                raise ConfigError("writing a manifest needs data= (the content hashes and labels of the training "
                                  "split): give pracset.from_torch(train, test)")
            check_output_parent(self.manifest)
            self._check_selection(selection)
        self.recorder = ExampleRecorder(num_examples, "cpu", keep_history=keep_history)
        self.method = as_sparse_method(sparse)
        self.module = module
        self.total_steps = total_steps
        self.seed = seed
        self.stepper: SparseStepper | None = None
        self.result: Selection | None = None
        self._steps = 0            # optimizer steps the sparse method has seen (restored on resume)
        self._stepped = False      # an optimizer step ran since the last batch end

    def _check_selection(self, selection: SelectionConfig) -> None:
        SELECTION_RULES.get(selection.rule)
        if selection.rule == "cep":
            raise ConfigError("the cep rule needs the pruning probe, which the Lightning callback does not run; "
                              "use prac (CET alone here), cet, random or topk-forgetting")
        check_size(selection, self.num_examples)

    # -- Lightning hooks
    def on_fit_start(self, trainer, pl_module) -> None:
        """Move the recorder to the module's device and start the sparse method on the module."""
        device = pl_module.device
        if self.recorder.device != device:
            state = self.recorder.state_dict()
            self.recorder = ExampleRecorder(self.num_examples, device, keep_history=self.recorder.keep_history)
            self.recorder.load_state_dict(state)
        self._stepped = False
        if self.method is None:
            return
        if len(trainer.optimizers) != 1:
            raise ConfigError(f"the sparse method needs exactly one optimizer, the module has {len(trainer.optimizers)}")
        total = self.total_steps or trainer.estimated_stepping_batches
        if total == float("inf") or int(total) <= 0:
            raise ConfigError("the run's length is unknown (no max_epochs or max_steps): give total_steps=")
        model = self.module if self.module is not None else pl_module
        self.stepper = SparseStepper(model, trainer.optimizers[0], self.method, total_steps=int(total), seed=self.seed)
        self.stepper.state.step = self._steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        """Note that this batch steps the optimizer (not every batch does under gradient accumulation)."""
        self._stepped = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """Record the step's presentations; after an optimizer step, step the sparse method."""
        # a training_step that returns None skips its batch (Lightning then hands on None, {} or {"loss": None})
        if outputs is not None and not (isinstance(outputs, Mapping) and all(v is None for v in outputs.values())):
            self.record(outputs, batch, trainer.current_epoch, trainer.global_step)
        if self._stepped and self.stepper is not None:
            self.stepper.step()
            self._steps = self.stepper.steps
        self._stepped = False

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Close the recorder's epoch."""
        self.recorder.end_epoch()

    def on_train_end(self, trainer, pl_module) -> None:
        """Write the manifest (when one was asked for)."""
        self.recorder.flush()  # a run stopped mid-epoch
        if self.manifest is not None:
            self.write_manifest(self.manifest, trainer=trainer, pl_module=pl_module)

    # -- recording
    def record(self, outputs, batch, epoch: int, step: int = 0) -> None:
        """Hand one step's outputs (see :data:`CONTRACT`) to the recorder; shapes are checked, nothing waits."""
        if not isinstance(outputs, Mapping) or "logits" not in outputs:
            got = f"a dict with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ConfigError(f"{CONTRACT}; got {got}")
        ids, labels = outputs.get("ids"), outputs.get("labels")
        if ids is None or labels is None:
            if not isinstance(batch, (tuple, list)) or len(batch) < 3:
                raise ConfigError(f"{CONTRACT}; the outputs lack 'ids' or 'labels' and the batch is not (x, y, ids)")
            ids = batch[2] if ids is None else ids
            labels = batch[1] if labels is None else labels
        device = self.recorder.device
        logits = outputs["logits"].detach()
        ids = torch.as_tensor(ids).reshape(-1).to(device, torch.int64, non_blocking=True)
        labels = torch.as_tensor(labels).reshape(-1).to(device, torch.int64, non_blocking=True)
        losses = outputs.get("losses")
        n = len(ids)
        if logits.dim() != 2 or len(logits) != n or len(labels) != n:
            raise ConfigError(f"{CONTRACT}; got logits {tuple(logits.shape)}, {n} ids and {len(labels)} labels")
        if losses is not None:
            if losses.shape != (n,):
                raise ConfigError(f"'losses' must hold one unreduced loss per example ({n},), got "
                                  f"{tuple(losses.shape)}: use reduction='none'")
            losses = losses.detach()
        self.recorder.on_batch_end(None, StepOutput(ids, labels, logits.to(device), losses, step, epoch))

    def statistics(self) -> ExampleStatistics:
        """The statistics recorded so far, as host arrays (one copy)."""
        return self.recorder.statistics()

    # -- the manifest
    def write_manifest(self, path: str | Path, selection: SelectionConfig | None = None, *, trainer=None,
                       pl_module=None) -> Path:
        """Select from the recorded statistics (``selection``, by default the callback's) and write a manifest.

        The selection is kept as :attr:`result`. Call it again after training to write another rule's
        manifest from the same statistics, without training again.
        """
        if self.dataset is None:
            raise ConfigError("writing a manifest needs the callback's data= (give pracset.from_torch(train, test))")
        selection = selection or self.selection
        self._check_selection(selection)
        statistics = self.recorder.statistics()
        labels = split_labels(self.dataset.train)
        self.result = select(SelectionInputs.from_statistics(labels, statistics), selection)
        columns = manifest_columns(self.dataset, statistics, None, self.result)
        metadata = {"dataset": dataset_metadata(self.dataset), "selection": self.result.describe(),
                    "provenance": self._provenance(trainer, pl_module)}
        return write_manifest(path, columns, metadata)

    def _provenance(self, trainer, pl_module) -> dict:
        env = environment()
        provenance = {"command": "lightning", "cep": "none", "pracset_version": __version__,
                      "lightning_version": pl.__version__, "torch_version": env["torch"],
                      "python_version": env["python"], "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if pl_module is not None:
            provenance["arch"] = type(pl_module).__name__
        if trainer is not None:
            provenance.update(epochs_run=int(trainer.current_epoch), iterations=int(trainer.global_step))
        if self.method is not None and self.method.mask is not None:
            provenance["sparse"] = {"method": self.method.name, "sparsity": round(self.method.mask.sparsity(), 6)}
        return provenance

    # -- checkpoints
    def state_dict(self) -> dict:
        """The recorder's statistics and the sparse method's mask and step count, for Lightning checkpoints."""
        return {"recorder": self.recorder.state_dict(), "num_examples": self.num_examples,
                "sparse": None if self.method is None else self.method.state_dict(), "steps": self._steps}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` saved (Lightning calls it when resuming from a checkpoint)."""
        if state_dict.get("num_examples") != self.num_examples:
            raise ConfigError(f"the checkpoint's statistics cover {state_dict.get('num_examples')} examples, "
                              f"this callback {self.num_examples}")
        self.recorder.load_state_dict(state_dict["recorder"])
        saved = state_dict.get("sparse")
        if (saved is None) != (self.method is None):
            raise ConfigError("the checkpoint was trained " + ("without" if saved is None else "with")
                              + " a sparse method and this callback " + ("has one" if saved is None else "has none"))
        if saved is not None:
            self.method.load_state_dict(saved)
        self._steps = int(state_dict.get("steps", 0))


__all__ = ["CONTRACT", "INSTALL", "PracsetCallback", "as_sparse_method"]
