"""Bad input, table-driven: every case gets one exact, one-line message and changes nothing the user had.

The table ``CASES`` (below the small helpers it uses) is the reference of what
pracset answers to bad input. Each row is a :class:`Case`: what is wrong, how
it is run (a ``pracset`` command line, or a Python callable for the library
API), and the exact message (``exact=False``: a precise fragment of it).

For a command line, run in a real process (the ``cli`` fixture: a forked child),
``test_command_line`` checks:

* exit code 2;
* stderr is exactly one line, ``pracset COMMAND: error: MESSAGE`` (argparse's
  own errors included), with no traceback, and nothing is on stdout;
* every file that existed before (the user's files in the case's working
  directory and the shared inputs) is unchanged, bytes and mtime;

and ``test_refused_command_writes_nothing`` that no new file or directory
appeared (a refused command must not leave half-made output that trips the
next, corrected, command). These command-line tests are marked ``slow`` (some
90 commands, most of a minute together): ``-m "not slow"`` runs the Python
API table alone.

For a Python callable ``test_python_api`` checks that it raises the given
:class:`~pracset.errors.PracsetError` subclass whose ``str`` is the one-line
message, and writes nothing.

A library bug the table finds is marked ``xfail`` (strict) with the reason
``library bug: ...`` until it is fixed: ``Case.xfail`` where the message
checks fail, ``Case.leaves`` where the command writes files before it
refuses. (None is marked now: every bug this table found is fixed.)

Placeholders in argv and messages: ``{shared}`` is the directory of the shared
inputs (a digits manifest, damaged Parquet files, a synthetic MNIST idx
directory, ...), built once per module by the ``shared`` fixture. Each CLI
case runs with its own empty working directory as cwd, so relative paths in
argv appear as such in the messages; ``setup`` puts the user's files there.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from commands import ForkRunner, command_env

from pracset.tickets import METHOD_SECTIONS, TICKET_METHODS
from pracset.errors import ConfigError, DataError, PracsetError, UnknownNameError
from pracset.manifest.schema import ManifestError

# Small settings shared by every command that gets as far as training.
TINY = ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "-q"]


# ----------------------------------------------------------------------------- the table
@dataclass
class Case:
    id: str
    what: str
    argv: list[str] | None = None                      # a pracset command line (placeholders allowed)
    call: Callable[[Path], object] | None = None       # or a Python callable, given the shared directory
    message: str = ""                                  # the exact message (or a fragment, exact=False)
    exact: bool = True
    error: type[Exception] = PracsetError              # Python cases: the exception type
    setup: Callable[[Path, Path], None] | None = None  # (case dir, shared dir): the user's files
    prefix: str | None = None                          # CLI: default "pracset COMMAND: error: "
    xfail: str | None = None                           # "library bug: ..." that breaks the message checks
    leaves: str | None = None                          # "library bug: ..." that makes the command write files
    timeout: int = 60                                  # CLI: seconds before the run is killed (and fails)

    def param(self, bug: str | None):
        marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
        return pytest.param(self, id=self.id, marks=marks)


def _write(name: str, text: str) -> Callable[[Path, Path], None]:
    def setup(case: Path, shared: Path) -> None:
        (case / name).write_text(textwrap.dedent(text))
    return setup


def _unfinished_build(work: Path, argv: list[str]) -> None:
    """The work directory a killed ``pracset build ARGV`` leaves: its identity record, no manifest yet."""
    from pracset.build import BuildConfig, build_identity
    from pracset.cli import build_parser
    from pracset.config import from_args
    from pracset.data import DataConfig
    from pracset.selection import SelectionConfig
    from pracset.sparse.early_bird import EarlyBirdConfig
    from pracset.train import TrainConfig

    args = build_parser().parse_args([*argv, "--out", "m.parquet"])
    identity = build_identity(from_args(DataConfig, args), args.arch, from_args(TrainConfig, args),
                              from_args(BuildConfig, args), from_args(SelectionConfig, args),
                              from_args(EarlyBirdConfig, args, prefix="early-bird"))
    work.mkdir()
    (work / "run.json").write_text(json.dumps({"identity": identity}))


def _copy(source: str, name: str | None = None) -> Callable[[Path, Path], None]:
    def setup(case: Path, shared: Path) -> None:
        src = shared / source
        dst = case / (name or Path(source).name)
        shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst)
    return setup


def _both(*setups):
    def setup(case: Path, shared: Path) -> None:
        for s in setups:
            s(case, shared)
    return setup


TOML_OK = """\
name = "tiny"
arch = "mlp"
methods = ["imp"]
[data]
name = "digits"
[train]
epochs = 1
batch_size = 64
[imp]
rounds = 1
[report]
plots = false
"""

# The same pipeline with a dense training that would run for hours: a case run on it passes only when it is
# refused before training starts (its short timeout kills a run that trains).
TOML_LONG = TOML_OK.replace("epochs = 1\n", "epochs = 100000\n")
RANKING_TYPO = "probe_ranking must be one of global, layerwise, got 'Global'"


def _hf_with_text_labels(path: Path) -> None:
    import datasets
    import numpy as np

    rows = {"image": [np.zeros((4, 4), dtype=np.uint8)] * 3, "label": ["x", "y", "z"]}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(rows) for s in ("train", "test")}).save_to_disk(path)


def _nested_metadata_manifest(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"example_id": [0]}).replace_schema_metadata({b"pracset": b"[" * 200_000 + b"]" * 200_000})
    pq.write_table(table, path)


def _toml(extra_top: str = "", replace: tuple[str, str] | None = None) -> Callable[[Path, Path], None]:
    text = TOML_OK
    if replace:
        assert replace[0] in text
        text = text.replace(*replace)
    return _write("p.toml", extra_top + text)


def _models() -> str:
    from pracset.models import MODELS
    return ", ".join(MODELS.names())


def _torchvision() -> str:
    from pracset.models import torchvision_names
    return ", ".join(torchvision_names())


# Python API callables (each takes the shared directory).
def _read(name, **kw):
    def call(shared: Path):
        from pracset.manifest import read_manifest
        return read_manifest(shared / name, **kw)
    return call


def _write_dup_ids(shared: Path):
    from pracset.manifest import read_manifest, write_manifest
    m = read_manifest(shared / "digits.parquet")
    columns = {n: m.column(n) for n in m.table.column_names}
    columns["example_id"] = columns["example_id"].copy()
    columns["example_id"][5] = 3
    return write_manifest(shared / "never-written.parquet", columns, m.metadata)


def _write_bad_reason(shared: Path):
    from pracset.manifest import read_manifest, write_manifest
    m = read_manifest(shared / "digits.parquet")
    columns = {n: m.column(n) for n in m.table.column_names}
    columns["reason"] = np.where(columns["selected"], "luck", "")
    return write_manifest(shared / "never-written.parquet", columns, m.metadata)


def _mask_load(name):
    def call(shared: Path):
        from pracset.sparse.mask import Mask
        return Mask.load(shared / name)
    return call


def _build_to(out: str, **changes):
    def call(shared: Path):
        from pracset.build import BuildConfig, build_manifest
        from pracset.data import DataConfig
        from pracset.selection import SelectionConfig
        from pracset.train import TrainConfig
        kwargs = dict(train=TrainConfig(epochs=1), build=BuildConfig(), selection=SelectionConfig(),
                      device=torch.device("cpu"))
        arch = changes.pop("arch", "mlp")
        if "rule" in changes:
            kwargs["selection"] = SelectionConfig(rule=changes.pop("rule"))
        kwargs.update(changes)
        return build_manifest(DataConfig(), arch, shared / out, **kwargs)
    return call


def _tickets(method: str, **changes):
    def call(shared: Path):
        from pracset.data import DataConfig
        from pracset.tickets import find_tickets
        from pracset.train import TrainConfig
        return find_tickets(method, DataConfig(), "mlp", shared / "never-written", train=TrainConfig(epochs=1),
                            device=torch.device("cpu"), **changes)
    return call


def _config(cls_path: str, **values):
    def call(shared: Path):
        module, name = cls_path.rsplit(".", 1)
        cls = getattr(__import__(module, fromlist=[name]), name)
        return cls(**values)
    return call


def _from_dict(cls_path: str, values: dict, where: str = ""):
    def call(shared: Path):
        from pracset.config import from_dict
        module, name = cls_path.rsplit(".", 1)
        return from_dict(getattr(__import__(module, fromlist=[name]), name), values, where=where)
    return call


def _pipeline(raw: dict):
    def call(shared: Path):
        from pracset.pipeline import pipeline_from_dict
        return pipeline_from_dict(raw, where="p.toml")
    return call


def _load_data(**values):
    def call(shared: Path):
        from pracset.data import DataConfig, load_dataset
        values_ = {k: (v.format(shared=shared) if isinstance(v, str) else v) for k, v in values.items()}
        return load_dataset(DataConfig(**values_))
    return call


def _build_model(name: str, channels: int, size: int, classes: int = 10):
    def call(shared: Path):
        from pracset.models import InputSpec, build_model
        return build_model(name, InputSpec(channels, size, size, classes))
    return call


def _recorder(n: int):
    def call(shared: Path):
        from pracset.stats import ExampleRecorder
        return ExampleRecorder(n)
    return call


def _build_with(**build):
    """build_manifest with ``BuildConfig(**build)`` into the shared directory (one epoch: a setting checked only
    after training shows as another message and a ``.partial`` work directory left in the shared inputs)."""
    def call(shared: Path):
        from pracset.build import BuildConfig, build_manifest
        from pracset.data import DataConfig
        from pracset.train import TrainConfig
        return build_manifest(DataConfig(), "mlp", shared / "never-written.parquet",
                              train=TrainConfig(epochs=1, batch_size=64), build=BuildConfig(**build),
                              device=torch.device("cpu"))
    return call


CASES: list[Case] = [
    # --- unknown names: the message lists the valid names
    Case("unknown-data-set", "a data set pracset does not know",
         ["build", "--data", "imagenet22k", "--arch", "mlp", "--out", "m.parquet", *TINY],
         message="unknown data set 'imagenet22k'; valid names: cifar10, cifar100, digits, fashion-mnist, hf, "
                 "imagefolder, mnist, tiny-imagenet"),
    Case("unknown-model", "an architecture name that does not exist",
         ["build", "--arch", "resnet21", "--out", "m.parquet", *TINY],
         message="unknown model 'resnet21'; valid names: {models}"),
    Case("unknown-torchvision-model", "a torchvision/ name that torchvision does not have",
         ["ticket", "--method", "imp", "--arch", "torchvision/resnet19", "--out", "t", *TINY],
         message="unknown torchvision model 'resnet19'; valid names: {torchvision}"),
    Case("unknown-optimizer", "an optimizer name that does not exist",
         ["build", "--arch", "mlp", "--optimizer", "adam", "--out", "m.parquet", *TINY],
         message="unknown optimizer 'adam'; valid names: adamw, nesterov, sgd"),
    Case("unknown-schedule", "a learning-rate schedule that does not exist",
         ["ticket", "--method", "imp", "--arch", "mlp", "--schedule", "linear", "--out", "t", *TINY],
         message="unknown schedule 'linear'; valid names: constant, cosine, step"),
    Case("unknown-selection-rule", "a selection rule that does not exist",
         ["build", "--arch", "mlp", "--rule", "best", "--out", "m.parquet", *TINY],
         message="unknown selection rule 'best'; valid names: ccs, cep, cet, highest, lowest, prac, random, topk-forgetting"),
    Case("unknown-ticket-method", "a ticket method that does not exist (argparse lists the choices)",
         ["ticket", "--method", "grasp", "--arch", "mlp", "--out", "t", *TINY],
         message="argument --method: invalid choice: 'grasp' (choose from "
                 + ", ".join(f"'{name}'" for name in TICKET_METHODS.names()) + ")"),  # the registry's names
    Case("unknown-distribution", "a RigL density distribution that does not exist",
         ["ticket", "--method", "rigl", "--arch", "mlp", "--rigl-distribution", "erdos", "--out", "t", *TINY],
         message="unknown density distribution 'erdos'; valid names: erk, uniform"),
    Case("unknown-pipeline-method", "a pipeline naming a ticket method that does not exist",
         ["run", "p.toml", "--device", "cpu", "-q"],
         setup=_toml(replace=('methods = ["imp"]', 'methods = ["imp", "grasp"]')),
         message="p.toml: unknown method 'grasp' in methods; valid names: " + ", ".join(TICKET_METHODS.names())
                 + ", granet-prac, rigl-prac"),
    Case("unknown-device", "a device that does not exist",
         ["build", "--arch", "mlp", "--out", "m.parquet", "--epochs", "1", "--device", "tpu", "-q"],
         message="unknown device 'tpu'; use auto, cpu, cuda or cuda:N"),
    # --- numbers out of range
    Case("sparsity-1", "--sparsity 1.0: nothing would be left",
         ["ticket", "--method", "imp", "--arch", "mlp", "--sparsity", "1.0", "--out", "t", *TINY],
         message="sparsity must lie in (0, 1), got 1.0"),
    Case("sparsity-negative", "--sparsity below 0",
         ["ticket", "--method", "rigl", "--arch", "mlp", "--sparsity", "-0.1", "--out", "t", *TINY],
         message="sparsity must lie in (0, 1), got -0.1"),
    Case("sparsity-nan", "--sparsity nan",
         ["ticket", "--method", "imp", "--arch", "mlp", "--sparsity", "nan", "--out", "t", *TINY],
         message="sparsity must be a finite number, got nan"),
    Case("probe-sparsity-1.5", "--probe-sparsity 1.5",
         ["build", "--arch", "mlp", "--probe-sparsity", "0.5", "1.5", "--out", "m.parquet", *TINY],
         message="probe sparsities must lie in (0, 1), got [0.5, 1.5]"),
    Case("granet-init-above-final", "GraNet's initial sparsity above its final one",
         ["ticket", "--method", "granet", "--arch", "mlp", "--sparsity", "0.5", "--granet-init-sparsity", "0.9",
          "--out", "t", *TINY], message="sparsities must satisfy 0 <= init_sparsity <= sparsity < 1, got 0.9 and 0.5"),
    Case("epochs-0", "--epochs 0",
         ["build", "--arch", "mlp", "--epochs", "0", "--out", "m.parquet", "-q"],
         message="argument --epochs: must be a positive integer, got '0'"),
    Case("epochs-float", "--epochs 2.5",
         ["ticket", "--method", "imp", "--arch", "mlp", "--epochs", "2.5", "--out", "t", "-q"],
         message="argument --epochs: must be a positive integer, got '2.5'"),
    Case("batch-size-negative", "--batch-size -3",
         ["build", "--arch", "mlp", "--batch-size", "-3", "--out", "m.parquet", "-q"],
         message="argument --batch-size: must be a positive integer, got '-3'"),
    Case("batch-size-text", "--batch-size abc",
         ["ticket", "--method", "imp", "--arch", "mlp", "--batch-size", "abc", "--out", "t", "-q"],
         message="argument --batch-size: must be a positive integer, got 'abc'"),
    Case("rounds-0", "--rounds 0",
         ["ticket", "--method", "imp", "--arch", "mlp", "--rounds", "0", "--out", "t", *TINY],
         message="argument --rounds: must be a positive integer, got '0'"),
    Case("rigl-delta-t-0", "--rigl-delta-t 0",
         ["ticket", "--method", "rigl", "--arch", "mlp", "--rigl-delta-t", "0", "--out", "t", *TINY],
         message="argument --rigl-delta-t: must be a positive integer, got '0'"),
    Case("lr-negative", "--lr -1",
         ["build", "--arch", "mlp", "--lr", "-1", "--out", "m.parquet", *TINY],
         message="lr must be positive, got -1.0"),
    Case("milestones-decreasing", "--milestones that do not increase",
         ["build", "--arch", "mlp", "--milestones", "0.9", "0.5", "--out", "m.parquet", *TINY],
         message="milestones must increase, got [0.9, 0.5]"),
    Case("image-size-0", "--image-size 0",
         ["build", "--arch", "mlp", "--image-size", "0", "--out", "m.parquet", *TINY],
         message="image_size must be a positive integer, got 0"),
    Case("cep-without-probe", "the cep rule with the probe switched off",
         ["build", "--arch", "mlp", "--rule", "cep", "--probe-sparsity", "--out", "m.parquet", *TINY],
         message="the cep rule needs the pruning probe's results; give --probe-sparsity values"),
    Case("size-above-split", "--rule random --size larger than the training split",
         ["build", "--arch", "mlp", "--rule", "random", "--size", "5000", "--out", "m.parquet", *TINY],
         message="size 5000 exceeds the 1438 training examples"),
    Case("rewind-beyond-training", "--rewind beyond the dense run's steps",
         ["ticket", "--method", "imp", "--arch", "mlp", "--rounds", "1", "--rewind", "100000it", "--out", "t",
          *TINY],
         message="rewind point 100000it (iteration 100000) lies beyond the dense run's 23 steps (it must be below 23)"),
    Case("rewind-epochs-beyond-training", "--rewind in epochs beyond the dense run",
         ["ticket", "--method", "imp", "--arch", "mlp", "--rounds", "1", "--rewind", "2ep", "--out", "t", *TINY],
         message="rewind point 2ep (iteration 46) lies beyond the dense run's 23 steps (it must be below 23)"),
    Case("rewind-without-unit", "--rewind without its unit",
         ["ticket", "--method", "imp", "--arch", "mlp", "--rewind", "500", "--out", "t", *TINY],
         message="rewind must be a count of iterations or epochs such as 500it or 3ep (0it = the initialisation), "
                 "got '500'"),
    Case("rewind-negative", "--rewind negative",
         ["ticket", "--method", "imp", "--arch", "mlp", "--rewind=-3ep", "--out", "t", *TINY],
         message="rewind must be a count of iterations or epochs such as 500it or 3ep (0it = the initialisation), "
                 "got '-3ep'"),
    # --- the recipe conventions: --fraction, --set, --config, --threads, --weights
    Case("fraction-zero", "--fraction 0",
         ["build", "--arch", "mlp", "--rule", "random", "--fraction", "0", "--out", "m.parquet", *TINY],
         message="fraction must lie in (0, 1], got 0.0"),
    Case("fraction-nan", "--fraction nan",
         ["build", "--arch", "mlp", "--rule", "random", "--fraction", "nan", "--out", "m.parquet", *TINY],
         message="fraction must be a finite number, got nan"),
    Case("fraction-and-size", "--fraction and --size together",
         ["build", "--arch", "mlp", "--rule", "random", "--fraction", "0.5", "--size", "10", "--out", "m.parquet",
          *TINY], message="give size or fraction, not both", exact=False),
    Case("set-without-value", "pracset run --set without KEY=VALUE",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q", "--set", "train.lr"], setup=_toml(),
         message="--set takes KEY=VALUE or SECTION.KEY=VALUE, got 'train.lr'"),
    Case("set-unknown-key", "pracset run --set of a key the section does not have",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q", "--set", "train.learning_rate=0.1"],
         setup=_toml(), message="unknown key train.learning_rate; valid keys: epochs, batch_size", exact=False),
    Case("set-wrong-type", "pracset run --set of a number as text",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q", "--set", "train.epochs=many"],
         setup=_toml(), message="train.epochs must be an integer", exact=False),
    Case("config-missing", "--config naming a file that does not exist",
         ["train", "--config", "nothing.toml", "--arch", "mlp", "--out", "t", *TINY],
         message="settings file nothing.toml does not exist"),
    Case("config-bad-toml", "--config naming a file that is not TOML",
         ["train", "--config", "p.toml", "--arch", "mlp", "--out", "t", *TINY],
         setup=_write("p.toml", "[train\nlr = "), message="p.toml is not valid TOML", exact=False),
    Case("random-resized-crop-in-memory", "--random-resized-crop on data held in memory",
         ["train", "--arch", "mlp", "--random-resized-crop", "--out", "t", *TINY],
         message="random_resized_crop is drawn by the streaming loader's workers: turn on --stream "
                 "(or [data] stream = true) for it"),
    Case("stream-small-data-set", "--stream on a data set that loads in memory",
         ["train", "--arch", "mlp", "--stream", "--out", "t", *TINY],
         message="data set 'digits' is small and loads in memory; streaming serves imagefolder, tiny-imagenet, hf"),
    Case("workers-negative", "--workers negative",
         ["train", "--arch", "mlp", "--stream", "--workers=-1", "--out", "t", *TINY],
         message="workers must not be negative, got -1"),
    Case("threads-zero", "--threads 0",
         ["train", "--arch", "mlp", "--threads", "0", "--out", "t", *TINY],
         message="argument --threads: must be a positive integer, got '0'"),
    Case("weights-on-a-registry-model", "--weights for a model without pretrained weights",
         ["train", "--arch", "mlp", "--weights", "DEFAULT", "--out", "t", *TINY],
         message="weights name pretrained weights of torchvision/NAME models; mlp has none"),
    Case("weights-unknown", "--weights that the torchvision model does not have",
         ["train", "--arch", "torchvision/resnet18", "--weights", "IMAGENET9K", "--out", "t", *TINY],
         message="unknown weights 'IMAGENET9K' for torchvision/resnet18; valid: IMAGENET1K_V1, DEFAULT"),
    Case("granet-window-empty", "GraNet's delta_t longer than its pruning window",
         ["ticket", "--method", "granet", "--arch", "mlp", "--granet-delta-t", "1000", "--out", "t", *TINY],
         message="the pruning window of 23 training steps [0.0, 0.6875] holds no update every delta_t=1000 steps"),
    # --- the architecture does not fit the data
    Case("vgg16-on-digits", "VGG-16 on 8x8 digits",
         ["build", "--arch", "vgg16", "--data", "digits", "--out", "m.parquet", *TINY],
         message="model vgg16 needs images of at least 16x16, the data has 8x8"),
    Case("lenet5-on-digits", "LeNet-5 on 8x8 digits",
         ["ticket", "--method", "imp", "--arch", "lenet5", "--out", "t", *TINY],
         message="model lenet5 needs images of at least 12x12, the data has 8x8"),
    Case("pipeline-arch-does-not-fit", "a pipeline building on VGG-16 for 8x8 digits",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q"],
         setup=_toml(replace=('arch = "mlp"', 'arch = "vgg16"')),
         message="model vgg16 needs images of at least 16x16, the data has 8x8"),
    Case("pipeline-rewind-beyond-training", "a pipeline whose IMP rewinds beyond its dense run",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q"],
         setup=_toml(replace=("rounds = 1", "rounds = 1\nrewind = \"500it\"")),
         message="rewind point 500it (iteration 500) lies beyond the dense run's 23 steps (it must be below 23)"),
    Case("pipeline-rewind-as-a-number", "a pipeline whose rewind point has no unit",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q"],
         setup=_toml(replace=("rounds = 1", "rounds = 1\nrewind = 3")),
         message="p.toml: imp.rewind must be a string, got 3"),
    Case("pipeline-size-above-split", "a pipeline whose selection keeps more examples than the split holds",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q"],
         setup=_toml(replace=("[report]", '[selection]\nrule = "random"\nsize = 2000\n[report]')),
         message="size 2000 exceeds the 1438 training examples"),
    Case("ticket-out-below-file", "ticket --out inside a path that is a file",
         ["ticket", "--method", "imp", "--arch", "mlp", "--out", "notes.txt/t", *TINY],
         setup=_write("notes.txt", "mine"), message="notes.txt is not a directory; choose another --out"),
    # --- data directories
    Case("data-dir-nothing", "--data mnist with a data dir that holds nothing",
         ["build", "--data", "mnist", "--data-dir", "{shared}/nothing", "--arch", "mlp", "--out", "m.parquet", *TINY],
         message="no mnist files in {shared}/nothing: expected train-images-idx3-ubyte[.gz], "
                 "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; "
                 "or pass --download"),
    Case("data-dir-missing", "--data-dir that does not exist",
         ["build", "--data", "imagefolder", "--data-dir", "nowhere", "--arch", "mlp", "--out", "m.parquet", *TINY],
         message="--data-dir nowhere does not exist"),
    Case("data-dir-wrong-set-mnist", "--data mnist with a directory holding CIFAR-10",
         ["ticket", "--method", "imp", "--data", "mnist", "--data-dir", "{shared}/cifar10", "--arch", "mlp",
          "--out", "t", *TINY],
         message="no mnist files in {shared}/cifar10: expected train-images-idx3-ubyte[.gz], "
                 "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; "
                 "or pass --download"),
    Case("data-dir-wrong-set-cifar100", "--data cifar100 with a directory holding CIFAR-10",
         ["build", "--data", "cifar100", "--data-dir", "{shared}/cifar10", "--arch", "mlp", "--out", "m.parquet",
          *TINY],
         message="no cifar100 files in {shared}/cifar10: expected cifar-100-python/ holding train, test, meta; "
                 "or pass --download"),
    Case("data-dir-truncated-idx", "an MNIST directory whose training images file is truncated",
         ["build", "--data", "mnist", "--data-dir", "{shared}/mnist-truncated", "--arch", "mlp", "--out", "m.parquet",
          *TINY], message="{shared}/mnist-truncated/train-images-idx3-ubyte is truncated or padded: header says "
                          "31360 bytes of data, file holds 31260"),
    Case("data-needs-dir", "--data mnist with no --data-dir at all",
         ["build", "--data", "mnist", "--arch", "mlp", "--out", "m.parquet", *TINY],
         message="no mnist files (no --data-dir given): expected train-images-idx3-ubyte[.gz], "
                 "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; "
                 "or pass --download"),
    # --- manifests
    Case("manifest-other-data-set", "a manifest built on digits used for (synthetic) MNIST",
         ["ticket", "--method", "prac-imp", "--data", "mnist", "--data-dir", "{shared}/mnist",
          "--manifest", "{shared}/digits.parquet", "--arch", "mlp", "--out", "t", *TINY],
         message="manifest {shared}/digits.parquet was built for data set digits with fingerprint 94ba05bbc311..., "
                 "not this one (mnist e93885c99710...)"),
    Case("manifest-newer-schema", "a manifest of a newer schema version",
         ["inspect", "{shared}/newer.parquet"],
         message="manifest {shared}/newer.parquet was written by a newer pracset: schema version 2, "
                 "this one reads up to 1; upgrade pracset"),
    Case("manifest-truncated", "a truncated Parquet manifest",
         ["inspect", "{shared}/truncated.parquet"],
         message="manifest {shared}/truncated.parquet is truncated: it has no Parquet footer (4096 bytes)"),
    Case("manifest-truncated-ticket", "ticket --manifest with a truncated Parquet file",
         ["ticket", "--method", "prac-imp", "--manifest", "{shared}/truncated.parquet", "--arch", "mlp", "--out", "t",
          *TINY], message="manifest {shared}/truncated.parquet is truncated: it has no Parquet footer (4096 bytes)"),
    Case("manifest-empty", "an empty file as manifest",
         ["inspect", "{shared}/empty.parquet"], message="manifest {shared}/empty.parquet is empty (0 bytes)"),
    Case("manifest-not-parquet", "a text file as manifest",
         ["inspect", "{shared}/notes.parquet"],
         message="manifest {shared}/notes.parquet is not a Parquet file (no PAR1 magic at its start)"),
    Case("manifest-plain-parquet", "a Parquet file that is not a manifest",
         ["ticket", "--method", "rigl", "--manifest", "{shared}/plain.parquet", "--arch", "mlp", "--out", "t", *TINY],
         message="{shared}/plain.parquet is not a pracset manifest: its Parquet metadata has no 'pracset' key"),
    Case("manifest-duplicate-ids", "a manifest with a duplicate example_id",
         ["inspect", "{shared}/duplicate-ids.parquet", "--json"],
         message="manifest {shared}/duplicate-ids.parquet: 1 duplicate example_id value(s) (first: 3)"),
    Case("inspect-missing", "pracset inspect on a file that does not exist",
         ["inspect", "missing.parquet"], message="manifest missing.parquet does not exist"),
    Case("inspect-directory", "pracset inspect on a directory",
         ["inspect", "{shared}/nothing"], message="manifest {shared}/nothing is a directory, not a Parquet file"),
    Case("ticket-manifest-missing", "ticket --manifest naming a file that does not exist",
         ["ticket", "--method", "prac-imp", "--manifest", "missing.parquet", "--arch", "mlp", "--out", "t", *TINY],
         message="manifest missing.parquet does not exist"),
    # --- output locations that hold something
    Case("build-out-not-parquet", "build --out that does not end in .parquet (the user's CSV is there)",
         ["build", "--arch", "mlp", "--out", "selection.csv", *TINY], setup=_write("selection.csv", "id\n1\n"),
         message="the manifest path must end in .parquet, got selection.csv"),
    Case("build-out-user-file", "build --out naming a file of the user that is no manifest",
         ["build", "--arch", "mlp", "--out", "notes.parquet", *TINY], setup=_copy("notes.parquet"),
         message="notes.parquet exists and is not a readable manifest (manifest notes.parquet is not a Parquet file "
                 "(no PAR1 magic at its start)); choose another --out"),
    Case("build-out-other-settings", "build --out naming a manifest built with other settings",
         ["build", "--arch", "mlp", "--out", "digits.parquet", "--epochs", "2", "--batch-size", "64", "--device", "cpu",
          "-q"], setup=_copy("digits.parquet"),
         message="digits.parquet exists and was built with other settings (changed train.epochs: 1 -> 2); choose "
                 "another --out or remove it"),
    Case("build-out-directory", "build --out naming a directory",
         ["build", "--arch", "mlp", "--out", "d.parquet", *TINY], setup=lambda c, s: (c / "d.parquet").mkdir(),
         message="d.parquet exists and is not a readable manifest (manifest d.parquet is a directory, not a Parquet "
                 "file); choose another --out"),
    Case("build-out-below-file", "build --out inside a path that is a file",
         ["build", "--arch", "mlp", "--out", "notes.txt/m.parquet", *TINY], setup=_write("notes.txt", "mine"),
         message="notes.txt is not a directory", exact=False),
    Case("build-unfinished-no-resume", "an unfinished build's work directory, without --resume",
         ["build", "--arch", "mlp", "--out", "m.parquet", *TINY],
         setup=lambda c, s: _unfinished_build(c / "m.parquet.partial", ["build", "--arch", "mlp", *TINY]),
         message="m.parquet.partial holds an unfinished build; pass --resume to continue it or choose another --out"),
    Case("ticket-out-other-run", "ticket --out holding a run with other settings",
         ["ticket", "--method", "imp", "--arch", "mlp", "--rounds", "1", "--out", "ticket-run", "--epochs", "2",
          "--batch-size", "64", "--device", "cpu", "-q"], setup=_copy("ticket-run"),
         message="ticket-run holds another run (changed train.epochs: 1 -> 2); choose another --out"),
    Case("ticket-out-user-files", "ticket --out naming a directory of the user's files",
         ["ticket", "--method", "imp", "--arch", "mlp", "--out", "mine", *TINY],
         setup=lambda c, s: ((c / "mine").mkdir(), (c / "mine" / "notes.txt").write_text("mine")),
         message="mine is not empty and holds no pracset run; choose another --out"),
    Case("ticket-out-is-file", "ticket --out naming a file of the user",
         ["ticket", "--method", "imp", "--arch", "mlp", "--out", "notes.txt", *TINY], setup=_write("notes.txt", "mine"),
         message="notes.txt is not a directory", exact=False),
    Case("run-out-other-pipeline", "run --out holding another pipeline's results",
         ["run", "p.toml", "--out", "pipeline-run", "--device", "cpu", "-q"],
         setup=_both(_toml(), _copy("pipeline-run")),
         message="pipeline-run holds another run (changed train.epochs: 2 -> 1); choose another --out"),
    Case("run-out-user-files", "run --out naming a directory of the user's files",
         ["run", "p.toml", "--out", "mine", "--device", "cpu", "-q"],
         setup=_both(_toml(), lambda c, s: ((c / "mine").mkdir(), (c / "mine" / "notes.txt").write_text("mine"))),
         message="mine is not empty and holds no pracset pipeline run; choose another --out"),
    Case("run-out-is-file", "run --out naming a file of the user",
         ["run", "p.toml", "--out", "notes.txt", "--device", "cpu", "-q"],
         setup=_both(_toml(), _write("notes.txt", "mine")),
         message="notes.txt is not a directory", exact=False),
    # --- pipeline files
    Case("pipeline-missing", "run on a pipeline file that does not exist",
         ["run", "missing.toml", "-q"], message="pipeline file missing.toml does not exist"),
    Case("pipeline-not-toml", "a pipeline file that is not TOML",
         ["run", "p.toml", "-q"], setup=_write("p.toml", "name = tiny\n"),
         message="p.toml is not valid TOML: Invalid value (at line 1, column 8)"),
    Case("pipeline-unknown-top-key", "a pipeline with an unknown top-level key",
         ["run", "p.toml", "-q"], setup=_toml(extra_top='colour = "red"\n'),
         message="p.toml: unknown key 'colour'; valid keys: name, arch, methods, transfer, seeds, transfer_seeds, "
                 "transfer_sets, description, "
                 "controls_on, tensorboard, data, train, build, selection, imp, early_bird, "
                 + ", ".join(METHOD_SECTIONS) + ", report, compare, ablate"),  # each ticket method's own table, from the registry
    Case("pipeline-unknown-section-key", "a pipeline with an unknown key in [train]",
         ["run", "p.toml", "-q"], setup=_toml(replace=("epochs = 1", "epoch = 1")),
         message="p.toml: unknown key train.epoch; valid keys: epochs, batch_size, optimizer, lr, momentum, weight_decay, "
                 "schedule, milestones, gamma, warmup_epochs, seed, precision, eval_every, crop_padding, flip, "
                 "drop_last, label_smoothing, random_resized_crop, sync_batchnorm, cuda_graphs"),
    Case("pipeline-unknown-section", "a pipeline with an unknown section",
         ["run", "p.toml", "-q"], setup=_toml(replace=("[report]", "[reporting]")),
         message="p.toml: unknown key 'reporting'; valid keys: name, arch, methods, transfer, seeds, transfer_seeds, "
                 "transfer_sets, description, "
                 "controls_on, tensorboard, data, train, build, selection, imp, early_bird, "
                 + ", ".join(METHOD_SECTIONS) + ", report, compare, ablate"),  # each ticket method's own table, from the registry
    Case("hf-text-labels", "a Hugging Face folder whose labels are text, not class indices",
         ["train", "--data", "hf", "--data-dir", "hfstr", "--arch", "mlp", "--out", "o", *TINY],
         setup=lambda c, s: _hf_with_text_labels(c / "hfstr"),
         message="hfstr: labels in column 'label' must be integers (class indices), got <U1 values; map them to "
                 "a ClassLabel first"),
    Case("pipeline-name-escapes", "a pipeline whose name would put its default output outside runs/",
         ["run", "p.toml", "-q"], setup=_toml(replace=('name = "tiny"', 'name = "../../escaped"')),
         message="p.toml: name must be a plain name (letters, digits, '.', '_', '-'; no '/'), got '../../escaped'"),
    Case("manifest-nested-metadata", "a manifest whose metadata is JSON nested without end",
         ["inspect", "deep.parquet"], setup=lambda c, s: _nested_metadata_manifest(c / "deep.parquet"),
         message="deep.parquet: the pracset metadata is nested too deeply to be a manifest's"),
    Case("pipeline-wrong-type", "a pipeline with a string where [train] epochs wants an integer",
         ["run", "p.toml", "-q"], setup=_toml(replace=("epochs = 1", 'epochs = "1"')),
         message="p.toml: train.epochs must be an integer, got '1'"),
    Case("pipeline-wrong-type-bool", "a pipeline with a number where [report] plots wants true/false",
         ["run", "p.toml", "-q"], setup=_toml(replace=("plots = false", "plots = 0")),
         message="p.toml: report.plots must be true or false, got 0"),
    Case("pipeline-methods-not-list", "a pipeline whose methods is a string",
         ["run", "p.toml", "-q"], setup=_toml(replace=('methods = ["imp"]', 'methods = "imp"')),
         message="p.toml: methods must be a list, got 'imp'"),
    Case("pipeline-seeds-not-integers", "a pipeline whose seeds are not integers",
         ["run", "p.toml", "-q"], setup=_toml(extra_top='seeds = [0, "1"]\n'),
         message="p.toml: seeds must be integers, got [0, '1']"),
    Case("pipeline-section-not-table", "a pipeline whose data is a string, not a table",
         ["run", "p.toml", "-q"], setup=_write("p.toml", 'name = "x"\narch = "mlp"\ndata = "digits"\n'),
         message="p.toml: [data] must be a table"),
    Case("pipeline-missing-arch", "a pipeline without arch",
         ["run", "p.toml", "-q"], setup=_toml(replace=('arch = "mlp"\n', "")), message="p.toml: missing key 'arch'"),
    Case("pipeline-sparsity-1", "a pipeline with [imp] sparsity = 1.0",
         ["run", "p.toml", "-q"], setup=_toml(replace=("rounds = 1", "sparsity = 1.0")),
         message="p.toml: [imp] sparsity must lie in (0, 1), got 1.0"),
    # --- a value outside a setting's choices (a misspelt name): refused where the settings are read, before
    # any training or output (it once trained the dense model first and left m.parquet.partial/ behind)
    Case("pipeline-choice-typo", "a pipeline whose [build] probe_ranking is misspelt",
         ["run", "p.toml", "--device", "cpu", "-q"],
         setup=_write("p.toml", TOML_LONG.replace("[imp]", '[build]\nprobe_ranking = "Global"\n[imp]')),
         timeout=30, message=f"p.toml: [build] {RANKING_TYPO}"),
    Case("pipeline-choice-typo-imp", "a pipeline whose [imp] budget is not one of its choices",
         ["run", "p.toml", "--device", "cpu", "-q"],
         setup=_write("p.toml", TOML_LONG.replace("[imp]", '[imp]\nbudget = "Linear"')), timeout=30,
         message="p.toml: [imp] budget must be one of official, linear, full, got 'Linear'"),
    Case("build-config-choice-typo", "build --config whose [build] probe_ranking is misspelt",
         ["build", "--config", "b.toml", "--arch", "mlp", "--out", "m.parquet", "--device", "cpu", "-q"],
         setup=_write("b.toml", '[train]\nepochs = 100000\nbatch_size = 64\n[build]\nprobe_ranking = "Global"\n'),
         timeout=30, message=f"b.toml: {RANKING_TYPO}"),
    Case("ticket-config-choice-typo", "ticket --config whose [selection] never_learned is misspelt",
         ["ticket", "--method", "prac-imp", "--config", "t.toml", "--arch", "mlp", "--out", "t", "--device", "cpu",
          "-q"], setup=_write("t.toml", '[train]\nepochs = 100000\n[selection]\nnever_learned = "dropped"\n'),
         timeout=30, message="t.toml: never_learned must be one of keep, count-presentations, drop, got 'dropped'"),
    Case("set-choice-typo", "pracset run --set build.probe_ranking=Global",
         ["run", "p.toml", "--out", "out", "--device", "cpu", "-q", "--set", "build.probe_ranking=Global"],
         setup=_write("p.toml", TOML_LONG), timeout=30, message=f"p.toml: [build] {RANKING_TYPO}"),
    Case("flag-choice-typo", "build --probe-ranking Global (argparse lists the choices)",
         ["build", "--arch", "mlp", "--probe-ranking", "Global", "--out", "m.parquet", "--epochs", "100000",
          "--device", "cpu", "-q"], timeout=30,
         message="argument --probe-ranking: invalid choice: 'Global' (choose from 'global', 'layerwise')"),
    # --- argparse usage errors
    Case("missing-required-flag", "ticket without --method",
         ["ticket", "--arch", "mlp", "--out", "t"], message="the following arguments are required: --method"),
    Case("abbreviated-flag", "an abbreviated flag (--epoch for --epochs) is not accepted",
         ["build", "--arch", "mlp", "--out", "m.parquet", "--epoch", "3"], prefix="pracset: error: ",
         message="unrecognized arguments: --epoch 3"),
    Case("no-command", "pracset without a command", [], message="the following arguments are required: COMMAND"),
    # --- the Python API
    Case("api-read-other-fingerprint", "read_manifest with the fingerprint of another data set",
         call=_read("digits.parquet", fingerprint="0" * 32), error=ManifestError,
         message="manifest {shared}/digits.parquet was built for data set digits with fingerprint 94ba05bbc311..., "
                 "not this one (000000000000...)"),
    Case("api-read-other-name", "read_manifest with another data set's name",
         call=_read("digits.parquet", dataset_name="mnist"), error=ManifestError,
         message="manifest {shared}/digits.parquet was built for data set digits with fingerprint 94ba05bbc311..., "
                 "not this one (mnist)"),
    Case("api-read-newer", "read_manifest on a newer schema", call=_read("newer.parquet"), error=ManifestError,
         message="manifest {shared}/newer.parquet was written by a newer pracset: schema version 2, "
                 "this one reads up to 1; upgrade pracset"),
    Case("api-read-truncated", "read_manifest on a truncated file", call=_read("truncated.parquet"),
         error=ManifestError,
         message="manifest {shared}/truncated.parquet is truncated: it has no Parquet footer (4096 bytes)"),
    Case("api-read-empty", "read_manifest on an empty file", call=_read("empty.parquet"), error=ManifestError,
         message="manifest {shared}/empty.parquet is empty (0 bytes)"),
    Case("api-read-plain", "read_manifest on a Parquet file without pracset metadata", call=_read("plain.parquet"),
         error=ManifestError,
         message="{shared}/plain.parquet is not a pracset manifest: its Parquet metadata has no 'pracset' key"),
    Case("api-read-duplicates", "read_manifest with a duplicate example_id", call=_read("duplicate-ids.parquet"),
         error=ManifestError,
         message="manifest {shared}/duplicate-ids.parquet: 1 duplicate example_id value(s) (first: 3)"),
    Case("api-write-duplicates", "write_manifest with a duplicate example_id", call=_write_dup_ids, error=ConfigError,
         message="manifest: 1 duplicate example_id value(s) (first: 3)"),
    Case("api-write-bad-reason", "write_manifest with a reason outside REASONS", call=_write_bad_reason,
         error=ConfigError, message="manifest: reason 'luck' at example_id 2 is not one of cet, cep, both, random, "
                                    "topk, balance (or '' on unselected rows)"),
    Case("api-mask-truncated", "Mask.load on a truncated mask file (the rest of the line is torch's)",
         call=_mask_load("truncated-mask.pt"), exact=False,
         message="cannot read mask file {shared}/truncated-mask.pt: PytorchStreamReader failed reading zip archive"),
    Case("api-mask-not-a-mask", "Mask.load on a torch file that is no mask", call=_mask_load("not-a-mask.pt"),
         message="{shared}/not-a-mask.pt is not a pracset mask file"),
    Case("api-mask-missing", "Mask.load on a missing file", call=_mask_load("missing.pt"),
         message="mask file {shared}/missing.pt does not exist"),
    Case("api-build-not-parquet", "build_manifest to a path without .parquet", call=_build_to("m.csv"),
         error=ConfigError, message="the manifest path must end in .parquet, got {shared}/m.csv"),
    Case("api-build-unknown-rule", "build_manifest with an unknown selection rule",
         call=_build_to("m.parquet", rule="best"), error=UnknownNameError,
         message="unknown selection rule 'best'; valid names: ccs, cep, cet, highest, lowest, prac, random, topk-forgetting"),
    Case("api-find-tickets-unknown-method", "find_tickets with an unknown method", call=_tickets("grasp"),
         error=UnknownNameError, message="unknown ticket method 'grasp'; valid names: " + ", ".join(TICKET_METHODS.names())),
    Case("api-rigl-sparsity-1", "RigLConfig(sparsity=1.0)",
         call=_config("pracset.sparse.rigl.RigLConfig", sparsity=1.0), error=ConfigError,
         message="sparsity must lie in [0, 1), got 1.0"),
    Case("api-granet-sparsity-1.5", "GraNetConfig(sparsity=1.5)",
         call=_config("pracset.sparse.granet.GraNetConfig", sparsity=1.5), error=ConfigError,
         message="sparsities must satisfy 0 <= init_sparsity <= sparsity < 1, got 0.5 and 1.5"),
    Case("api-imp-sparsity-0", "IMPConfig(sparsity=0)", call=_config("pracset.tickets.IMPConfig", sparsity=0.0),
         error=ConfigError, message="sparsity must lie in (0, 1), got 0.0"),
    Case("api-build-probe-1.5", "BuildConfig(probe_sparsities=(1.5,))",
         call=_config("pracset.build.BuildConfig", probe_sparsities=(1.5,)), error=ConfigError,
         message="probe sparsities must lie in (0, 1), got [1.5]"),
    Case("api-train-epochs-0", "TrainConfig(epochs=0)", call=_config("pracset.train.TrainConfig", epochs=0),
         error=ConfigError, message="epochs must be a positive integer, got 0"),
    Case("api-from-dict-wrong-type", "from_dict(TrainConfig) with a string for epochs",
         call=_from_dict("pracset.train.TrainConfig", {"epochs": "3"}, where="train"), error=ConfigError,
         message="train.epochs must be an integer, got '3'"),
    Case("api-from-dict-unknown-key", "from_dict(TrainConfig) with an unknown key",
         call=_from_dict("pracset.train.TrainConfig", {"epoch": 3}, where="train"), error=ConfigError,
         message="unknown key train.epoch; valid keys: epochs, batch_size, optimizer, lr, momentum, weight_decay, "
                 "schedule, milestones, gamma, warmup_epochs, seed, precision, eval_every, crop_padding, flip, "
                 "drop_last, label_smoothing, random_resized_crop, sync_batchnorm, cuda_graphs"),
    Case("api-pipeline-unknown-key", "pipeline_from_dict with an unknown key",
         call=_pipeline({"name": "x", "arch": "mlp", "data": {}, "colour": "red"}), error=ConfigError,
         message="p.toml: unknown key 'colour'; valid keys: name, arch, methods, transfer, seeds, transfer_seeds, "
                 "transfer_sets, description, "
                 "controls_on, tensorboard, data, train, build, selection, imp, early_bird, "
                 + ", ".join(METHOD_SECTIONS) + ", report, compare, ablate"),  # each ticket method's own table, from the registry
    Case("api-load-unknown-data-set", "load_dataset of an unknown name", call=_load_data(name="svhn"),
         error=UnknownNameError, message="unknown data set 'svhn'; valid names: cifar10, cifar100, digits, "
                                         "fashion-mnist, hf, imagefolder, mnist, tiny-imagenet"),
    Case("api-load-wrong-dir", "load_dataset(mnist) on a CIFAR-10 directory",
         call=_load_data(name="mnist", data_dir="{shared}/cifar10"), error=DataError,
         message="no mnist files in {shared}/cifar10: expected train-images-idx3-ubyte[.gz], "
                 "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]; "
                 "or pass --download"),
    Case("api-model-does-not-fit", "build_model(vgg16) for 8x8 images", call=_build_model("vgg16", 1, 8),
         error=ConfigError, message="model vgg16 needs images of at least 16x16, the data has 8x8"),
    Case("api-model-unknown", "build_model of an unknown name", call=_build_model("resnet21", 1, 8),
         error=UnknownNameError, message="unknown model 'resnet21'; valid names: {models}"),
    Case("api-recorder-empty", "ExampleRecorder with no examples", call=_recorder(0), error=ConfigError,
         message="the recorder needs at least one example"),
    Case("api-config-choice-typo", "BuildConfig(probe_ranking='Global')",
         call=_config("pracset.build.BuildConfig", probe_ranking="Global"), error=ConfigError, message=RANKING_TYPO),
    Case("api-build-choice-typo", "build_manifest(..., build=BuildConfig(probe_ranking='Global'))",
         call=_build_with(probe_ranking="Global"), error=ConfigError, message=RANKING_TYPO),
    Case("api-from-dict-choice-typo", "from_dict(BuildConfig) with a misspelt probe_ranking (a TOML table)",
         call=_from_dict("pracset.build.BuildConfig", {"probe_ranking": "Global"}, where="build"), error=ConfigError,
         message=RANKING_TYPO),
    Case("api-pipeline-choice-typo", "pipeline_from_dict with a misspelt [build] probe_ranking",
         call=_pipeline({"name": "x", "arch": "mlp", "data": {}, "build": {"probe_ranking": "Global"}}),
         error=ConfigError, message=f"p.toml: [build] {RANKING_TYPO}"),
]


# ----------------------------------------------------------------------------- running command lines
# A command line is run in a real process: the ``cli`` fixture (conftest.py, commands.ForkRunner) forks a child
# per case of one process that imported pracset once. This keeps 30+ processes within a few seconds on a small
# machine; test_runner_matches_a_real_process checks that it answers as ``python -m pracset`` does.


# ----------------------------------------------------------------------------- shared inputs
def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _synthetic_mnist(root: Path, train: int = 40, test: int = 10) -> None:
    rng = np.random.default_rng(0)
    root.mkdir()
    _idx(root / "train-images-idx3-ubyte", rng.integers(0, 256, (train, 28, 28)))
    _idx(root / "train-labels-idx1-ubyte", np.arange(train) % 10)
    _idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 256, (test, 28, 28)))
    _idx(root / "t10k-labels-idx1-ubyte", np.arange(test) % 10)


def _fake_cifar10(root: Path) -> None:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)


def _raw_parquet(path: Path, table: pa.Table, meta: dict | None) -> None:
    table = table.replace_schema_metadata(None if meta is None else {b"pracset": json.dumps(meta).encode()})
    pq.write_table(table, path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """The inputs that many cases share (read-only for them: the tests check they stay unchanged)."""
    from pracset.build import BuildConfig, build_manifest
    from pracset.data import DataConfig
    from pracset.fileio import atomic_write_json
    from pracset.manifest import read_manifest
    from pracset.pipeline import pipeline_from_dict
    from pracset.selection import SelectionConfig
    from pracset.sparse.mask import Mask
    from pracset.tickets import IMPConfig, find_tickets
    from pracset.train import TrainConfig
    import tomllib

    root = tmp_path_factory.mktemp("shared")
    cpu = torch.device("cpu")
    # A real digits manifest, built with the command line's defaults but one epoch of batch 64.
    build_manifest(DataConfig(), "mlp", root / "digits.parquet", train=TrainConfig(epochs=1, batch_size=64),
                   build=BuildConfig(), selection=SelectionConfig(), device=cpu)
    m = read_manifest(root / "digits.parquet")
    data = (root / "digits.parquet").read_bytes()
    (root / "truncated.parquet").write_bytes(data[:4096])  # a copy cut short: no footer
    (root / "empty.parquet").write_bytes(b"")
    (root / "notes.parquet").write_text("my notes, not a Parquet file\n")
    _raw_parquet(root / "plain.parquet", pa.table({"id": [0, 1, 2], "value": [0.5, 1.5, 2.5]}), None)
    _raw_parquet(root / "newer.parquet", m.table, {**m.metadata, "schema_version": 2})
    ids = m.table.column("example_id").to_numpy().copy()
    ids[5] = 3
    dup = m.table.set_column(0, "example_id", pa.array(ids))
    _raw_parquet(root / "duplicate-ids.parquet", dup, m.metadata)
    labels = m.table.column("label").to_numpy().copy()
    labels[7] = 2**40  # schema-valid (labels need only be non-negative), but not a class of this data set
    _raw_parquet(root / "huge-label.parquet", m.table.set_column(2, "label", pa.array(labels)), m.metadata)
    # Data directories: synthetic MNIST (idx), a fake CIFAR-10, an empty one, a truncated idx file.
    _synthetic_mnist(root / "mnist")
    _fake_cifar10(root / "cifar10")
    (root / "nothing").mkdir()
    _synthetic_mnist(root / "mnist-truncated")
    images = root / "mnist-truncated" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    # Masks: a valid one, a truncated one, a file that is no mask.
    mask = Mask({"w": torch.tensor([[True, False], [False, True]])})
    mask.save(root / "mask.pt")
    pt = (root / "mask.pt").read_bytes()
    (root / "truncated-mask.pt").write_bytes(pt[: len(pt) // 2])
    torch.save({"weights": torch.zeros(2)}, root / "not-a-mask.pt")
    # A finished ticket run (IMP, 1 epoch, 1 round) and a pipeline directory of another configuration.
    find_tickets("imp", DataConfig(), "mlp", root / "ticket-run", train=TrainConfig(epochs=1, batch_size=64),
                 imp=IMPConfig(rounds=1), device=cpu)
    other = pipeline_from_dict(tomllib.loads(TOML_OK.replace("epochs = 1", "epochs = 2")), where="other.toml")
    (root / "pipeline-run").mkdir()
    atomic_write_json(root / "pipeline-run" / "pipeline.json", {"identity": other.to_dict()})
    shutil.copy2(root / "digits.parquet", root / "pipeline-run" / "manifest.parquet")
    return root


def _snapshot(*roots: Path) -> dict[str, tuple[bytes, int]]:
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
            elif path.is_dir():
                files[str(path) + "/"] = (b"", 0)
    return files


def _fill(text: str, shared: Path) -> str:
    if "{models}" in text:
        text = text.replace("{models}", _models())
    if "{torchvision}" in text:
        text = text.replace("{torchvision}", _torchvision())
    return text.replace("{shared}", str(shared))


# ----------------------------------------------------------------------------- the tests
CLI_CASES = [c for c in CASES if c.argv is not None]
API_CASES = [c for c in CASES if c.call is not None]


def test_the_table_is_large_and_well_formed():
    assert len(CASES) >= 30 and len(CLI_CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    for case in CASES:
        assert (case.argv is None) != (case.call is None), case.id
        assert case.message and "\n" not in case.message, case.id
        for bug in (case.xfail, case.leaves):
            assert bug is None or bug.startswith("library bug: "), case.id


@dataclass
class _Outcome:
    code: int
    out: str
    err: str
    argv: list[str]
    changed: list[str]
    created: list[str]


@pytest.fixture(scope="module")
def outcomes(cli: ForkRunner, shared: Path, tmp_path_factory) -> Callable[[Case], _Outcome]:
    """Runs each CLI case once (in its own working directory) and remembers what happened."""
    done: dict[str, _Outcome] = {}

    def run(case: Case) -> _Outcome:
        if case.id not in done:
            work = tmp_path_factory.mktemp(case.id) / "cwd"
            work.mkdir()
            if case.setup:
                case.setup(work, shared)
            before = _snapshot(work, shared)
            argv = [_fill(a, shared) for a in case.argv]
            code, out, err = cli.run(argv, work, timeout=case.timeout)
            after = _snapshot(work, shared)
            changed = sorted(p for p in before if before[p] != after.get(p))
            done[case.id] = _Outcome(code, out, err, argv, changed=changed, created=sorted(set(after) - set(before)))
        return done[case.id]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("case", [c.param(c.xfail) for c in CLI_CASES])
def test_command_line(case: Case, outcomes, shared: Path):
    """Exit code 2, exactly one line on stderr (the expected message), no traceback, the user's files kept."""
    result = outcomes(case)
    err = result.err
    assert "Traceback" not in err, err
    assert result.code == 2, (result.code, err)
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err!r}"
    command = result.argv[0] if result.argv and not result.argv[0].startswith("-") else None
    prefix = case.prefix or (f"pracset {command}: error: " if command else "pracset: error: ")
    line = err[:-1]
    assert line.startswith(prefix), line
    message = _fill(case.message, shared)
    if case.exact:
        assert line[len(prefix):] == message
    else:
        assert message in line[len(prefix):]
    assert result.out == "", result.out
    assert not result.changed, f"the user's files changed: {result.changed}"


@pytest.mark.slow
@pytest.mark.parametrize("case", [c.param(c.leaves) for c in CLI_CASES])
def test_refused_command_writes_nothing(case: Case, outcomes):
    """A refused command leaves the file system as it found it (no half-made output to trip the next run)."""
    result = outcomes(case)
    assert result.code != 0
    assert not result.created, f"a refused command wrote {result.created}"


CHOICE_CASES = [c for c in CLI_CASES if "choice-typo" in c.id]


@pytest.mark.slow
@pytest.mark.parametrize("case", [c.param(None) for c in CHOICE_CASES])
def test_a_misspelt_choice_is_refused_before_training(case: Case, outcomes):
    """A value outside a setting's choices stops the command before its (hours-long) dense training: well
    within the case's timeout, and with no work directory (``m.parquet.partial/``), manifest or run left."""
    assert case.timeout <= 30 and len(CHOICE_CASES) >= 5
    result = outcomes(case)
    assert result.code == 2, (result.code, result.err)
    assert not [p for p in result.created if ".partial" in p or ".parquet" in p or "/runs" in p], result.created
    assert not result.created, result.created


@pytest.mark.parametrize("case", [c.param(c.xfail) for c in API_CASES])
def test_python_api(case: Case, shared: Path):
    """The given PracsetError subclass with the one-line message; the shared inputs untouched."""
    before = _snapshot(shared)
    with pytest.raises(PracsetError) as info:
        case.call(shared)
    assert isinstance(info.value, case.error), type(info.value)
    text = str(info.value)
    assert "\n" not in text
    message = _fill(case.message, shared)
    if case.exact:
        assert text == message
    else:
        assert message in text
    assert _snapshot(shared) == before


def test_runner_matches_a_real_process(cli: ForkRunner, shared: Path, tmp_path: Path):
    """The forking runner answers as ``python -m pracset`` does (exit code, stdout, stderr)."""
    argv = ["inspect", str(shared / "truncated.parquet")]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    forked = cli.run(argv, tmp_path / "a")
    real = subprocess.run([sys.executable, "-m", "pracset", *argv], cwd=tmp_path / "b",
                          env=command_env(unbuffered=True), capture_output=True, text=True, timeout=120)
    assert forked == (real.returncode, real.stdout, real.stderr)


# ----------------------------------------------------------------------------- what a leftover costs the user
@pytest.mark.slow
def test_a_refused_build_does_not_block_the_corrected_one(cli: ForkRunner, tmp_path: Path):
    code, _, err = cli.run(["build", "--data", "digts", "--arch", "mlp", "--out", "m.parquet", *TINY], tmp_path)
    assert code == 2 and "unknown data set 'digts'" in err
    code, _, err = cli.run(["build", "--data", "digits", "--arch", "mlp", "--out", "m.parquet", *TINY], tmp_path)
    assert code == 0, err


@pytest.mark.slow
def test_a_refused_ticket_run_does_not_block_the_corrected_one(cli: ForkRunner, tmp_path: Path):
    code, _, err = cli.run(["ticket", "--method", "imp", "--arch", "lenet5", "--rounds", "1", "--out", "t", *TINY],
                           tmp_path)
    assert code == 2 and "model lenet5 needs images of at least 12x12" in err
    code, _, err = cli.run(["ticket", "--method", "imp", "--arch", "mlp", "--rounds", "1", "--out", "t", *TINY],
                           tmp_path)
    assert code == 0, err


def test_inspect_of_a_manifest_with_a_huge_label(cli: ForkRunner, shared: Path, tmp_path: Path):
    """A label of 2**40 (it once sized a bincount) is refused in one line: every label must be one of the classes
    the header's dataset.class_names names (issue 23 item 6; the plain `inspect` indexed the names with it)."""
    path = str(shared / "huge-label.parquet")
    for argv in (["inspect", "--json", path], ["inspect", path]):
        code, out, err = cli.run(argv, tmp_path)
        assert "Traceback" not in err
        assert code == 2 and err.count("\n") == 1, (code, err)
        assert f"label {2**40} at example_id 7 is not a class of the 10 its metadata (dataset.class_names) names" in err
