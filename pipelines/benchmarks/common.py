"""What the benchmarks of this package share: timing, the command line, smoke data and the verdict.

Every benchmark is a module run from the repository root,
``python -m pipelines.benchmarks.NAME [--data-dir DIR] ...``. It prints its
figures, one line per target checked, and as its last line the verdict::

    VERDICT PASS: <figure> <= <target>          exit status 0
    VERDICT FAIL: <figure> > <target>           exit status 1
    VERDICT SKIP: <why nothing was judged>      exit status 0

SKIP means this run could not judge its target: the machine lacks what the
target needs (a GPU for a GPU-only figure), or the run was a ``--smoke`` run:
a few steps on synthetic data written to a temporary folder, which checks that
the benchmark works end to end (``tests/test_benchmarks.py`` runs each one so)
but measures nothing worth comparing with a target.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import logging
import os
import platform
import statistics
import struct
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

# torch and pracset are imported inside the functions that use them: the manifest benchmark needs neither
# torch nor its two seconds of start-up.
if TYPE_CHECKING:
    import torch

DATA_DIR_ENV = "PRACSET_DATA_DIR"  # named in help texts; pracset.data.DataConfig reads it when no data_dir is given
SMOKE_HELP = ("run a few steps on synthetic data in a temporary folder (no --data-dir, no download) to check that "
              "the benchmark works; the verdict is SKIP, since so small a run measures nothing")


# --------------------------------------------------------------------------- timing
def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously; a CPU needs nothing)."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed_result(device: torch.device | None, fn: Callable[[], object]) -> tuple[float, object]:
    """Seconds ``fn`` takes, with the device synchronised on both sides, and what it returned."""
    sync(device)
    started = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - started, result


def timed(device: torch.device | None, fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, with the device synchronised on both sides."""
    return timed_result(device, fn)[0]


def interleaved(variants: Sequence[str], repeats: int, run: Callable[[str], float]) -> dict[str, list[float]]:
    """``repeats`` rounds, each timing every variant once (``run(variant)`` returns seconds).

    The order rotates from round to round (A B C, B C A, C A B, ...): on a
    shared, noisy machine a slow drift then does not favour one variant.
    """
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        shift = r % len(variants)
        for variant in list(variants[shift:]) + list(variants[:shift]):
            times[variant].append(run(variant))
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{v} {times[v][-1]:.3f}s" for v in variants), flush=True)
    return times


def per_round_ratios(times: dict[str, list[float]], base: str) -> dict[str, list[float]]:
    """Each variant's seconds over ``base``'s, round by round (rounds of :func:`interleaved`)."""
    return {v: [t / b for t, b in zip(values, times[base])] for v, values in times.items() if v != base}


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {key: statistics.median(values) for key, values in times.items()}


def print_times(title: str, times: dict[str, list[float]], items: int | None = None, unit: str = "images/s",
                notes: dict[str, str] | None = None) -> None:
    """A table of the median seconds of each entry (and ``items`` per second when given) with every run."""
    width = max(len(title), *(len(k) for k in times)) + 2
    rate = f"{unit:>14}" if items else ""
    print(f"\n{title:<{width}}{'median s':>10}{rate}   all runs (s)")
    for key, values in times.items():
        median = statistics.median(values)
        per_second = f"{items / median:>14,.0f}" if items else ""
        runs = ", ".join(f"{t:.3f}" for t in values)
        print(f"{key:<{width}}{median:>10.3f}{per_second}   {runs}{(notes or {}).get(key, '')}")


class SyncCounter:
    """Counts the host synchronisations inside a ``with`` block (CUDA only).

    ``torch.cuda.set_sync_debug_mode('warn')`` makes every synchronising CUDA
    call warn; the warnings are recorded and counted, so a loop that waits for
    the GPU once per step shows a count that grows with the steps.
    """

    def __enter__(self) -> "SyncCounter":
        import torch

        torch.cuda.synchronize()
        self._catcher = warnings.catch_warnings(record=True)
        self._caught = self._catcher.__enter__()
        self._read = self._count = 0
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        import torch

        torch.cuda.set_sync_debug_mode("default")
        self._catcher.__exit__(*exc)
        torch.cuda.synchronize()

    @property
    def count(self) -> int:
        """The syncs so far (read per step by a callback: only the warnings new since the last read are scanned)."""
        new = self._caught[self._read:]
        self._read += len(new)
        self._count += sum("synchroniz" in str(w.message) for w in new)
        return self._count


class CaptureLog(logging.Handler):
    """Keeps what ``pracset.train.graphs`` logs (whether each fit captured its training step, or why not).

    Installed on that logger at INFO by :meth:`install`; :meth:`take` returns the messages since the last take.
    """

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    @classmethod
    def install(cls) -> "CaptureLog":
        handler = cls()
        logger = logging.getLogger("pracset.train.graphs")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        return handler

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def take(self) -> list[str]:
        taken, self.messages = self.messages, []
        return taken


# --------------------------------------------------------------------------- command line and machine
def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the module docstring (its first line; its "Run it" section as the epilog),
    with the ``--json`` and ``--smoke`` flags every benchmark has."""
    run_it = doc.split("Run it\n------\n", 1)
    main = getattr(sys.modules["__main__"], "__spec__", None)  # run with -m: say so in the usage line
    prog = f"python -m {main.name}" if main is not None and main.name.startswith(__package__ + ".") else None
    parser = argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0],
                                     epilog="examples:\n" + run_it[1].strip("\n") if len(run_it) == 2 else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON here")
    parser.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    return parser


def add_data_dir(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR", help=f"{what} (default: ${DATA_DIR_ENV})")


def add_device(parser: argparse.ArgumentParser, default: str = "cpu") -> None:
    parser.add_argument("--device", default=default, help=f"torch device: auto, cpu or cuda[:N] (default {default})")


def add_threads(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--threads", type=int, default=None,
                        help=f"torch.set_num_threads (default: $OMP_NUM_THREADS when set, else {default})")


def mnist_parser(doc: str) -> argparse.ArgumentParser:
    """:func:`make_parser` with ``--data-dir`` (the MNIST idx files) and ``--device`` (default cpu)."""
    parser = make_parser(doc)
    add_data_dir(parser, "folder of the four MNIST idx files")
    add_device(parser)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, *, smoke: dict,
          needs_data_dir: bool = False, positive: Sequence[str] = ()) -> argparse.Namespace:
    """Parse ``argv``; under ``--smoke`` the settings in ``smoke`` replace the parsed ones."""
    args = parser.parse_args(argv)
    if args.smoke:
        if getattr(args, "data_dir", None):
            parser.error("--smoke writes its own synthetic data: leave out --data-dir")
        for name, value in smoke.items():
            setattr(args, name, value)
    elif needs_data_dir and _no_data_dir(args.data_dir):
        parser.error(f"--data-dir is required unless ${DATA_DIR_ENV} is set")
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _no_data_dir(data_dir: str | None) -> bool:
    from pracset.data import DataConfig  # the library's own rule: data_dir, else the environment variable

    return DataConfig(data_dir=data_dir).resolved_data_dir() is None


def open_device(name: str) -> tuple[torch.device, str | None]:
    """The device to time on, and why the run must be skipped (None when it can run)."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return device, f"--device {name} asked for, but CUDA is not available on this machine"
        if device.index is not None:
            torch.cuda.set_device(device)
    return device, None


def set_threads(requested: int | None, default: int | None) -> int:
    """Set torch's intra-op threads: ``requested``, else torch's own choice when $OMP_NUM_THREADS is set
    (a shared machine's way of rationing cores), else ``default`` (None: torch's own choice)."""
    import torch

    if requested is None and not os.environ.get("OMP_NUM_THREADS"):
        requested = default
    if requested:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


def machine_line(device: torch.device) -> str:
    """Where the figures come from: the device, torch and the threads."""
    import torch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return (f"device {device} ({name}); python {platform.python_version()}; torch {torch.__version__}; "
            f"{torch.get_num_threads()} torch threads (os.cpu_count()={os.cpu_count()})")


def lenet300(device: torch.device) -> torch.nn.Module:
    """A fresh LeNet-300-100 for 28x28 MNIST images, always from seed 0, on ``device`` in training mode."""
    from pracset.models import InputSpec, build_model

    return build_model("lenet300", InputSpec(1, 28, 28, 10), seed=0).to(device).train()


def lenet300_fit(config, loader, device: torch.device, callbacks: Sequence = ()) -> Callable[[], object]:
    """``Trainer(config).fit`` of a fresh LeNet-300-100 over ``loader``, ready to call: the model, the
    callbacks and the trainer are built now, outside whatever region the call is timed in."""
    from pracset.train import Trainer

    model, trainer, callbacks = lenet300(device), Trainer(config), list(callbacks)
    return lambda: trainer.fit(model, loader, callbacks=callbacks)


def input_spec(dataset):
    """The model input (``pracset.models.InputSpec``) of an ``ImageDataset``."""
    from pracset.models import InputSpec

    height, width = dataset.image_size
    return InputSpec(dataset.channels, height, width, dataset.num_classes)


# pracset internals that the benchmarks use exactly as the library's own commands do (neither is in the
# public API): reached through here only, so that a move inside the package is one fix in one place.
def make_loaders(dataset, config, device, **kwargs):
    """The training and test loaders of ``pracset train`` (``pracset.train.run.make_loaders``)."""
    from pracset.train.run import make_loaders as library_make_loaders

    return library_make_loaders(dataset, config, device, **kwargs)


def use_bf16_for(precision: str, device: torch.device) -> bool:
    """Whether the Trainer autocasts to bf16 for ``precision`` on ``device`` (``pracset.train.loop``)."""
    from pracset.train.loop import use_bf16_for as library_use_bf16_for

    return library_use_bf16_for(precision, device)


# --------------------------------------------------------------------------- data (real, or synthetic for --smoke)
def write_synthetic_mnist(folder: Path, train: int = 512, test: int = 128, seed: int = 0) -> Path:
    """The four MNIST idx files, gzipped, with random pixels and labels: the real loader reads them as MNIST."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        arrays = {"images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  "labels-idx1-ubyte": rng.integers(0, 10, n, dtype=np.uint8)}
        for stem, array in arrays.items():
            header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
            with gzip.open(folder / f"{prefix}-{stem}.gz", "wb", compresslevel=1) as handle:
                handle.write(header + array.tobytes())
    return folder


def write_synthetic_image_folder(root: Path, classes: int = 2, train: int = 48, test: int = 8, size: int = 32,
                                 seed: int = 0) -> Path:
    """A ``train/<class>/*.jpg`` + ``test/<class>/*.jpg`` tree of random RGB images, per class counts."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"{i:04d}.jpg", quality=75)
    return root


@contextlib.contextmanager
def data_dir(args: argparse.Namespace, write_synthetic: Callable[[Path], Path]) -> Iterator[str | None]:
    """``--data-dir`` (None: pracset reads $PRACSET_DATA_DIR), or under ``--smoke`` a temporary folder that
    ``write_synthetic`` fills, removed afterwards."""
    if not args.smoke:
        yield args.data_dir
        return
    with tempfile.TemporaryDirectory(prefix="pracset-bench-smoke.") as folder:
        yield str(write_synthetic(Path(folder) / "data"))


def load_mnist(data_dir: str | None):
    """MNIST from ``data_dir`` (None: $PRACSET_DATA_DIR) through pracset's own source, as an ``ImageDataset``."""
    from pracset.data import DataConfig, load_dataset

    return load_dataset(DataConfig(name="mnist", data_dir=data_dir))


# --------------------------------------------------------------------------- targets and the verdict
_NEGATION = {"<=": ">", "<": ">=", ">=": "<", ">": "<=", "==": "!="}
_COMPARE = {"<=": float.__le__, "<": float.__lt__, ">=": float.__ge__, ">": float.__gt__, "==": float.__eq__}


@dataclass(frozen=True)
class Check:
    """One target: ``value op target`` must hold. A check that does not ``gate`` is reported, not judged."""

    name: str
    value: float
    op: str
    target: float
    unit: str = ""
    digits: int = 2
    gate: bool = True

    @property
    def passed(self) -> bool:
        return _COMPARE[self.op](float(self.value), float(self.target))

    def figure(self, op: str | None = None) -> str:
        """``name value op target``: with ``op`` left out, the comparison the target asks for."""
        return f"{self.name} {self.value:.{self.digits}f}{self.unit} {op or self.op} {self.target:g}{self.unit}"

    def unjudged(self) -> str:
        return f"{self.name} {self.value:.{self.digits}f}{self.unit} (target {self.op} {self.target:g}{self.unit})"

    def as_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "op": self.op, "target": self.target,
                "gate": self.gate, "passed": self.passed}


def verdict(checks: Sequence[Check], *, smoke: bool = False, skip: str | None = None) -> tuple[str, str]:
    """``(status, line)``: the status PASS, FAIL or SKIP, and the final line that states it."""
    gating = [c for c in checks if c.gate]
    if skip is None and smoke:
        skip = "smoke run on synthetic data, not a measurement" + (
            f"; figures: {'; '.join(c.unjudged() for c in gating)}" if gating else "")
    if skip is None and not gating:
        skip = "no target could be checked in this run"
    if skip is not None:
        return "SKIP", f"VERDICT SKIP: {skip}"
    failed = [c for c in gating if not c.passed]
    if failed:
        return "FAIL", "VERDICT FAIL: " + "; ".join(c.figure(_NEGATION[c.op]) for c in failed)
    return "PASS", "VERDICT PASS: " + "; ".join(c.figure() for c in gating)


def finish(args: argparse.Namespace, report: dict, checks: Sequence[Check] = (), *, skip: str | None = None) -> int:
    """Print each target, write ``--json`` (with the verdict), print the verdict last; the exit status."""
    if checks:
        print()
    for check in checks:
        outcome = ("not judged (smoke run)" if args.smoke else "not judged" if skip
                   else "PASS" if check.passed else "FAIL")
        note = "" if check.gate or args.smoke or skip else " (expected, not judged)"
        print(f"target {check.name} {check.op} {check.target:g}{check.unit}: "
              f"{check.value:.{check.digits}f}{check.unit} -> {outcome}{note}")
    status, line = verdict(checks, smoke=args.smoke, skip=skip)
    if args.json:
        report = {**report, "smoke": args.smoke, "checks": [c.as_dict() for c in checks], "verdict": status,
                  "verdict_line": line}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    print(line, flush=True)
    return 1 if status == "FAIL" else 0
