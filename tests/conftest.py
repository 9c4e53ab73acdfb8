"""Shared fixtures: the digits data set, pracset commands run in this process or in forked children, and the
real data sets beside the checkout (skipped when absent).

Helpers that are plain functions and classes live in modules beside this one (``commands.py``, ``hostile.py``):
the tests import them by name (``from commands import ForkRunner``), since pytest puts this folder on
``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import torch

from commands import ForkRunner

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under pytest-xdist (-n N) every worker is one of N processes on the machine's cores: one thread each, or
    # N workers times torch's default threads oversubscribe the CPU (many times slower on 2 cores).
    torch.set_num_threads(1)

SHARED_DATA = Path(os.environ.get("PRACSET_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


# ----------------------------------------------------------------------------- data
@pytest.fixture(scope="module")
def digits():
    """The digits data set (``load_dataset(DataConfig(name="digits"))``), loaded once per test module."""
    from pracset.data import DataConfig, load_dataset

    return load_dataset(DataConfig(name="digits"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or $PRACSET_SHARED_DATA); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set PRACSET_SHARED_DATA to point at them)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file():
    """``shared_file("mnist")``: that path under ``../shared/data`` (or $PRACSET_SHARED_DATA); the test skips
    when it is absent."""
    def find(path: str) -> Path:
        full = SHARED_DATA / path
        if not full.exists():
            pytest.skip(f"real data not found at {full} (it lives in ../shared/data beside the checkout; "
                        "set PRACSET_SHARED_DATA to point elsewhere)")
        return full

    return find


@pytest.fixture(scope="session")
def mnist_dir(shared_data: Path) -> Path:
    """The MNIST idx files in the shared data; skips when absent."""
    path = shared_data / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST idx files not found in {path}")
    return path


# ----------------------------------------------------------------------------- running pracset
def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    from pracset.cli import main

    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def run_cli(capsys):
    """``run_cli(*argv)``: ``pracset ARGV`` through pracset.cli.main in this process: (exit code, stdout, stderr)."""
    return lambda *argv: _main(argv, capsys)


@pytest.fixture
def in_process(monkeypatch, capsys):
    """``in_process(argv, cwd)``: ``pracset ARGV`` through pracset.cli.main in this process, in directory ``cwd``
    and on one thread (as ``OMP_NUM_THREADS=1`` in a command's own process): a CompletedProcess. Faster than a
    real process where no process has to die."""
    def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            code, out, err = _main(argv, capsys)
        finally:
            torch.set_num_threads(threads)
        return subprocess.CompletedProcess(argv, code, out, err)

    return run


@pytest.fixture(scope="module")
def cli(request, tmp_path_factory):
    """A :class:`commands.ForkRunner` for the test module: ``cli.run(argv, cwd)`` runs ``python -m pracset ARGV``
    in a forked child of one warm process, ``cli.python(code, cwd)`` a snippet. A module sets its defaults with
    ``FORK_RUNNER = {"timeout": ..., "headroom": ...}``."""
    runner = ForkRunner(tmp_path_factory.mktemp("streams"), **getattr(request.module, "FORK_RUNNER", {}))
    yield runner
    runner.close()
