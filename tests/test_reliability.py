"""Reliability: killed runs leave only complete files and resume to the same result; runs are deterministic;
two ``pracset run`` on one directory do not mix.

Everything runs on scikit-learn's digits with tiny settings (3 epochs, batch
64, 2 IMP rounds, CPU). Commands that are killed, or whose process matters,
are real ``python -m pracset`` processes (cwd a temporary directory,
``OMP_NUM_THREADS=1``); a few follow-up commands go through
``pracset.cli.main`` in the test's process (fixture ``in_process``) to save
interpreter start-ups.

1. Crash safety (``test_killed_runs_...``): each of ``pracset build``,
   ``ticket`` and ``run`` is started ``KILLS`` times in one output directory
   and SIGKILLed after a random fraction of the duration of an uninterrupted
   run (one fraction per stratum of [0.25, 1), in a seeded order; set
   ``PRACSET_CRASH_SEED`` / ``PRACSET_CRASH_KILLS`` to draw others). After
   each kill every file must be complete and valid or absent: manifests read
   with ``read_manifest``, masks with ``Mask.load``, other ``.pt`` files with
   ``torch.load``, JSON parses, ``.npy`` / ``.npz`` load, PNG files end with
   their IEND chunk. Then ``--resume`` must finish with exactly the results of
   the uninterrupted run: every manifest column, mask, weight and statistics
   array bit for bit, every JSON value (timings and timestamps aside).
   Kills at random rarely hit the narrow windows where things go wrong, so
   the ``KILL_INSIDE`` tests kill inside (or right after) one chosen write.
2. Determinism: the same command twice, and a rebuild from the manifest's
   recorded ``build_identity``, give identical contents.
5. Concurrency: a second ``pracset run`` on a directory another one holds is
   refused by the lock and writes nothing.

Temporary files of atomic writes (``.NAME.XXXXXXXX.tmp``) that a kill leaves
are tolerated by the completeness check right after the kill: they are hidden
and no reader looks at them. The run that resumes must not be blocked by them
and removes them (tests at the end).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import command_env, pracset

pytestmark = pytest.mark.slow  # whole runs killed and resumed in real processes: about 2 minutes

SEED = int(os.environ.get("PRACSET_CRASH_SEED", "6"))
KILLS = int(os.environ.get("PRACSET_CRASH_KILLS", "3"))
TIMEOUT = 300

TINY = ["--data", "digits", "--arch", "mlp", "--epochs", "3", "--batch-size", "64", "--device", "cpu", "-q"]
COMMANDS = {
    "build": ["build", *TINY, "--probe-sparsity", "0.5", "0.8", "--out", "out/m.parquet"],
    "ticket": ["ticket", "--method", "imp", *TINY, "--rounds", "2", "--out", "out"],
    "run": ["run", "tiny.toml", "--out", "out", "--device", "cpu", "-q"],
}
PIPELINE = """\
name = "tiny"
arch = "mlp"
methods = ["imp", "prac-imp"]
seeds = [0]

[data]
name = "digits"

[train]
epochs = 3
batch_size = 64

[build]
probe_sparsities = [0.5]

[imp]
rounds = 2

[report]
plots = true
"""

# tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") in pracset.fileio.atomic_write
ATOMIC_TMP = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
VOLATILE = {"seconds", "created"}


# ----------------------------------------------------------------------------- running pracset
def start(argv: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pracset", *argv], cwd=cwd, env=command_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def workdir(path: Path, kind: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if kind == "run":
        (path / "tiny.toml").write_text(PIPELINE)
    return path


# ----------------------------------------------------------------------------- checking files
def check_file(path: Path) -> None:
    """Raise unless ``path`` is a complete, valid file of its kind."""
    from pracset.manifest import read_manifest
    from pracset.sparse.mask import Mask

    name, suffix = path.name, path.suffix
    if name == ".lock":
        assert path.read_text().strip().isdigit(), f"{path}: a lock file without a process id"
    elif suffix == ".parquet":
        read_manifest(path)
    elif name == "mask.pt":
        mask = Mask.load(path)
        report = path.with_suffix(".json")
        if report.exists():
            assert json.loads(report.read_text())["kept"] == mask.num_kept()
    elif suffix == ".pt":
        torch.load(path, map_location="cpu", weights_only=False)
    elif suffix == ".json":
        json.loads(path.read_text())
    elif suffix == ".jsonl":
        text = path.read_text()
        assert text == "" or text.endswith("\n"), f"{path}: a torn last line"
        [json.loads(line) for line in text.splitlines()]
    elif suffix == ".npy":
        np.load(path)
    elif suffix == ".npz":
        with np.load(path) as archive:
            for key in archive.files:
                archive[key]
    elif suffix == ".png":
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END), f"{path}: truncated PNG"
    elif suffix == ".md":
        assert path.read_text().endswith("\n"), f"{path}: truncated text"
    elif name == "pracset.log":  # append-only, one record a line: a kill may tear the last line, nothing else
        lines = path.read_text(errors="replace").splitlines()
        assert all(" pracset" in line for line in lines[:-1]), f"{path}: a line that is no log record"
    elif name == "tiny.toml":
        pass
    else:
        raise AssertionError(f"{path}: a file of an unknown kind")


def check_outputs(root: Path, context: str = "") -> list[Path]:
    """Every file under ``root`` is complete and valid; returns the atomic-write leftovers it tolerated."""
    leftovers = []
    for path in sorted(root.rglob("*")):
        if path.is_dir():
            continue
        if ATOMIC_TMP.match(path.name):
            leftovers.append(path)
            continue
        try:
            check_file(path)
        except Exception as exc:
            raise AssertionError(f"{context}: {path.relative_to(root)} is not a complete file: "
                                 f"{type(exc).__name__}: {exc}") from exc
    return leftovers


# ----------------------------------------------------------------------------- comparing results
def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _array(a: np.ndarray):
    a = np.asarray(a)
    return tuple(a.tolist()) if a.dtype.kind in "OUS" else (a.dtype.str, a.shape, a.tobytes())


def results(root: Path) -> dict[str, object]:
    """Everything a run wrote, as comparable values: byte-exact arrays and tensors, JSON without timings."""
    from pracset.manifest import COLUMNS, read_manifest
    from pracset.sparse.mask import Mask

    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_dir() or ATOMIC_TMP.match(path.name) or path.name in (".lock", "tiny.toml"):
            continue
        if path.suffix == ".parquet":
            m = read_manifest(path)
            out[key + ":selected_ids"] = _array(m.selected_ids)
            for name in m.table.column_names:
                out[f"{key}:{name}"] = _array(m.column(name))
            assert set(COLUMNS) <= set(m.table.column_names)
            out[key + ":metadata"] = _strip(m.metadata)
        elif path.name == "mask.pt":
            for name, tensor in Mask.load(path).items():
                out[f"{key}:{name}"] = _array(tensor.numpy())
        elif path.suffix == ".pt":
            state = torch.load(path, map_location="cpu", weights_only=True)
            if all(isinstance(v, torch.Tensor) for v in state.values()):
                for name, tensor in state.items():
                    out[f"{key}:{name}"] = _array(tensor.numpy())
            else:  # a training checkpoint
                out[key] = "checkpoint"
        elif path.suffix == ".json":
            out[key] = _strip(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            out[key] = [_strip(json.loads(line)) for line in path.read_text().splitlines()]
        elif path.suffix == ".npy":
            out[key] = _array(np.load(path))
        elif path.suffix == ".npz":
            with np.load(path) as archive:
                for name in archive.files:
                    out[f"{key}:{name}"] = _array(archive[name])
        elif path.suffix == ".md":
            out[key] = path.read_text()
        else:  # the PNG plots: present, content not compared
            out[key] = "present"
    return out


def assert_same_results(got: dict, expected: dict, context: str) -> None:
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    differ = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
    assert not (missing or extra or differ), f"{context}: missing {missing}, extra {extra}, different {differ}"


# ----------------------------------------------------------------------------- uninterrupted references
class Reference:
    def __init__(self, kind: str, root: Path):
        self.kind = kind
        self.cwd = workdir(root, kind)
        began = time.perf_counter()
        done = pracset(COMMANDS[kind], self.cwd)
        self.seconds = time.perf_counter() - began
        assert done.returncode == 0, done.stderr
        self.out = self.cwd / "out"
        assert not check_outputs(self.out, f"uninterrupted {kind}")
        self.results = results(self.out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    cache: dict[str, Reference] = {}

    def get(kind: str) -> Reference:
        if kind not in cache:
            cache[kind] = Reference(kind, tmp_path_factory.mktemp(f"reference-{kind}"))
        return cache[kind]

    return get


# ----------------------------------------------------------------------------- 1. crash safety
def kill_fractions(kind: str) -> list[float]:
    """One fraction of the uninterrupted duration per stratum of [0.25, 1), in a seeded order."""
    rng = random.Random(f"{SEED}-{kind}")
    fractions = [0.25 + 0.75 * (i + rng.random()) / KILLS for i in range(KILLS)]
    rng.shuffle(fractions)
    return fractions


@pytest.mark.parametrize("kind", ["build", "ticket", "run"])
def test_killed_runs_leave_complete_files_and_resume_to_the_same_result(kind, reference, tmp_path, in_process):
    ref = reference(kind)
    cwd = workdir(tmp_path, kind)
    out = cwd / "out"
    log = []
    for attempt, fraction in enumerate(kill_fractions(kind)):
        argv = COMMANDS[kind] + (["--resume"] if attempt else [])
        proc = start(argv, cwd)
        delay = fraction * ref.seconds
        try:
            code = proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            code = None
        _, err = proc.communicate()
        what = f"{kind} attempt {attempt} killed after {delay:.2f}s ({fraction:.2f} of {ref.seconds:.2f}s)"
        state = sorted(str(p.relative_to(cwd)) for p in out.rglob("*")) if out.exists() else []
        log.append((what if code is None else f"{kind} attempt {attempt} finished (rc {code}) before its kill")
                   + f"; {len(state)} paths in out/")
        assert code in (None, 0), f"{what}: rc {code}: {err}"
        if out.exists():
            check_outputs(out, what)
    done = in_process(COMMANDS[kind] + ["--resume"], cwd)
    assert done.returncode == 0, f"resume after {log}: {done.stderr}"
    leftovers = check_outputs(out, f"resumed {kind}")
    got = results(out)
    print("\n".join(log), f"\nleft by the kills: {[str(p.relative_to(out)) for p in leftovers]}")
    assert_same_results(got, ref.results, f"{kind} resumed after {log}")


# ----------------------------------------------------------------------------- 2. determinism
# The second run goes through pracset.cli.main in the test's process: another process than the reference's
# (another hash seed, another start), the same command line.
def test_same_build_twice_gives_identical_manifest_contents(reference, tmp_path, in_process):
    from pracset.build import stats_path
    from pracset.manifest import read_manifest

    ref = reference("build")
    cwd = workdir(tmp_path, "build")
    done = in_process(COMMANDS["build"], cwd)
    assert done.returncode == 0, done.stderr
    again = results(cwd / "out")
    assert_same_results(again, ref.results, "a second identical build")
    first, second = read_manifest(ref.out / "m.parquet"), read_manifest(cwd / "out" / "m.parquet")
    assert first.selected_ids.tobytes() == second.selected_ids.tobytes()
    for name in ("example_id", "selected", "forgetting_events", "presentations", "times_correct",
                 "first_learned_epoch", "never_learned", "last_correct", "last_loss", "margin",
                 "cep_disagreements", "score"):
        assert first.column(name).tobytes() == second.column(name).tobytes(), name
    assert stats_path(ref.out / "m.parquet").read_bytes() == stats_path(cwd / "out" / "m.parquet").read_bytes()
    # The files differ only by the time stamp and duration in the provenance.
    assert first.provenance["created"] and first.provenance["seconds"] >= 0


def test_manifest_records_what_rebuilds_it(reference, tmp_path):
    """Rebuild from the manifest's provenance alone (build_identity + device) and get the same contents."""
    from pracset.build import BuildConfig, build_manifest
    from pracset.config import from_dict
    from pracset.data import DataConfig
    from pracset.manifest import read_manifest
    from pracset.selection import SelectionConfig
    from pracset.sparse.early_bird import EarlyBirdConfig
    from pracset.train import TrainConfig

    ref = reference("build")
    record = read_manifest(ref.out / "m.parquet").provenance
    identity = record["build_identity"]
    assert set(identity) == {"data", "arch", "train", "build", "selection", "early_bird"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the command's process
    try:
        rebuilt = build_manifest(from_dict(DataConfig, identity["data"]), identity["arch"], tmp_path / "m.parquet",
                                 train=from_dict(TrainConfig, identity["train"]),
                                 build=from_dict(BuildConfig, identity["build"]),
                                 selection=from_dict(SelectionConfig, identity["selection"]),
                                 early_bird=from_dict(EarlyBirdConfig, identity["early_bird"] or {}),
                                 device=torch.device(record["device"]))
    finally:
        torch.set_num_threads(threads)
    assert not rebuilt.skipped
    # Every column, the statistics file and the metadata (timings aside) are those of the command's build.
    assert_same_results(results(tmp_path), ref.results, "rebuilt from the manifest's build_identity")


def test_same_ticket_run_twice_gives_identical_masks_and_accuracies(reference, tmp_path, in_process):
    from pracset.sparse.mask import Mask

    ref = reference("ticket")
    cwd = workdir(tmp_path, "ticket")
    done = in_process(COMMANDS["ticket"], cwd)
    assert done.returncode == 0, done.stderr
    assert_same_results(results(cwd / "out"), ref.results, "a second identical ticket run")
    for stage in ("round-00", "round-01", "round-02"):
        assert (cwd / "out" / stage / "mask.pt").read_bytes() == (ref.out / stage / "mask.pt").read_bytes(), stage
        assert Mask.load(cwd / "out" / stage / "mask.pt") == Mask.load(ref.out / stage / "mask.pt")
    first = json.loads((ref.out / "tickets.json").read_text())
    second = json.loads((cwd / "out" / "tickets.json").read_text())
    assert [r["test_accuracy"] for r in first["tickets"]] == [r["test_accuracy"] for r in second["tickets"]]
    assert [r["sparsity"] for r in first["tickets"]] == [r["sparsity"] for r in second["tickets"]] == \
        [0.0, 0.199992, 0.35999]


# ----------------------------------------------------------------------------- 5. concurrency
def _wait_for(paths: list[Path], proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths):
        assert proc.poll() is None, f"the first run ended early: {proc.communicate()}"
        assert time.monotonic() < deadline, f"{paths} did not appear"
        time.sleep(0.01)


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def _stopped(pid: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the first run did not stop"
        time.sleep(0.005)


class Contended:
    pass


def _main_here(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """``pracset ARGV`` through pracset.cli.main in the test's process (another process than the first run)."""
    import contextlib
    import io

    from pracset.cli import main

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(cwd)
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def contended(tmp_path_factory) -> Contended:
    """A first ``pracset run`` process holds the directory: it is paused (SIGSTOP) once it holds the lock and has
    written pipeline.json, so that it surely still holds it while a second run (with --resume) and a third
    (without) start on the same directory, from the test's own process; then the first continues to its end."""
    c = Contended()
    cwd = workdir(tmp_path_factory.mktemp("contended"), "run")
    c.out = out = cwd / "out"
    first = start(COMMANDS["run"], cwd)
    c.pid = first.pid
    try:
        _wait_for([out / ".lock", out / "pipeline.json"], first)
        first.send_signal(signal.SIGSTOP)
        _stopped(first.pid)
        c.before = _snapshot(out)
        c.second = _main_here(COMMANDS["run"] + ["--resume"], cwd)
        c.third = _main_here(COMMANDS["run"], cwd)
        c.during = _snapshot(out)
        c.first_alive = first.poll() is None
    except BaseException:
        first.kill()
        first.wait()
        raise
    first.send_signal(signal.SIGCONT)
    c.first = (first.wait(timeout=TIMEOUT), *first.communicate())
    return c


def _lock_message(c: Contended) -> str:
    return (f"pracset run: error: out is in use by another pracset run (process {c.pid}); "
            "wait for it to finish or choose another --out\n")


def test_second_run_on_the_same_directory_refuses_with_the_lock(contended):
    assert contended.first_alive
    code, out, err = contended.second
    assert (code, out, err) == (2, "", _lock_message(contended))


def test_refused_runs_write_nothing_while_the_first_holds_the_directory(contended):
    assert contended.second[0] == contended.third[0] == 2  # both refused (see the xfail below for the third)
    assert contended.during == contended.before  # bytes and mtimes of every file, the lock included
    assert contended.before[".lock"][0] == str(contended.pid).encode()


def test_first_run_finishes_with_one_valid_report(contended, reference):
    code, out, err = contended.first
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("pipeline tiny: PrAC set ") and lines[1] == "report: out/report.md"
    assert not (contended.out / ".lock").exists()
    assert not check_outputs(contended.out, "the run that held the lock")
    assert sorted(p.name for p in contended.out.glob("report*")) == ["report.json", "report.md"]
    # The same results as the uninterrupted, uncontended run: nothing was mixed in.
    assert_same_results(results(contended.out), reference("run").results, "the contended run")


def test_second_run_without_resume_is_told_about_the_lock(contended):
    code, out, err = contended.third
    assert code == 2 and out == ""
    assert err == _lock_message(contended)


def test_pipeline_lock_in_process(tmp_path):
    """The lock refuses while its holder lives and is taken over from a dead one (whose file it leaves as it is)."""
    from pracset.errors import ConfigError
    from pracset.fileio import DirectoryLock

    with DirectoryLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == str(os.getpid())
        with pytest.raises(ConfigError) as info:
            with DirectoryLock(tmp_path):
                pass
        assert str(info.value) == (f"{tmp_path} is in use by another pracset run (process {os.getpid()}); "
                                   "wait for it to finish or choose another --out")
    assert not (tmp_path / ".lock").exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(str(dead.pid))  # left by a killed run
    with DirectoryLock(tmp_path):
        with pytest.raises(ConfigError, match="in use by another pracset run"):  # it is ours now
            with DirectoryLock(tmp_path):
                pass
    assert (tmp_path / ".lock").read_text() == str(dead.pid)  # a file this process did not create: untouched


def test_a_lock_left_empty_by_a_kill_is_taken_over(tmp_path):
    """A .lock without a holder (even an empty one, killed before writing its pid) does not block the next run."""
    from pracset.fileio import DirectoryLock

    (tmp_path / ".lock").write_text("")  # killed between os.open(O_CREAT | O_EXCL) and the write of its pid
    with DirectoryLock(tmp_path):
        pass


# ----------------------------------------------------------------------------- what kills leave behind
# A kill inside one particular write, made certain. ``write PATTERN``: the first write into a file whose path
# matches the regular expression PATTERN (opened with open() or os.fdopen(), as np.save, matplotlib and
# pracset.fileio.atomic_write do) writes half its bytes, flushes them and SIGKILLs the process: exactly what a
# SIGKILL arriving in the middle of that write leaves. ``MODULE.FUNCTION SUFFIX``: the process is killed right
# after FUNCTION(path, ...) returns for a path ending in SUFFIX.
KILL_INSIDE = r"""
import builtins, importlib, io, os, re, signal, sys, runpy
what, target = sys.argv[1], sys.argv[2]


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class Dying:
    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        self._handle.write(data[: max(1, len(data) // 2)])
        self._handle.flush()
        die()

    def fileno(self):  # no writing around write() (PIL, numpy use the descriptor when they can)
        raise io.UnsupportedOperation("fileno")

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()


def writing(mode):
    return any(c in str(mode) for c in "wax+")


if what == "write":
    real_open, real_fdopen = builtins.open, os.fdopen

    def open_(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        return Dying(handle) if writing(mode) and re.search(target, str(file)) else handle

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        path = os.readlink(f"/proc/self/fd/{fd}")
        return Dying(handle) if writing(mode) and re.search(target, path) else handle

    builtins.open, os.fdopen = open_, fdopen
else:
    module_name, name = what.rsplit(".", 1)
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    suffix, _, nth = target.partition("#")  # SUFFIX#N: the N-th such write
    seen = [0]

    def write_then_die(path, *args, **kwargs):
        result = original(path, *args, **kwargs)
        if str(path).endswith(suffix):
            seen[0] += 1
            if seen[0] == int(nth or 1):
                die()
        return result

    setattr(module, name, write_then_die)
sys.argv = ["pracset", *sys.argv[3:]]
runpy.run_module("pracset", run_name="__main__", alter_sys=True)
"""


def killed_inside(what: str, target: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", KILL_INSIDE, what, target, *argv], cwd=cwd, env=command_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_a_kill_inside_a_prac_imp_id_file_leaves_no_truncated_file(tmp_path):
    """PrAC-IMP's id files (next_ids.npy, ...) are written atomically: a kill mid-write leaves none half-written."""
    argv = ["ticket", "--method", "prac-imp", *TINY, "--rounds", "1", "--out", "out"]
    done = killed_inside("write", "next_ids.npy", argv, tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr
    leftovers = check_outputs(tmp_path / "out", "killed inside the write of next_ids.npy")
    assert not (tmp_path / "out" / "round-00" / "next_ids.npy").exists()
    assert [p.name.split(".")[1] for p in leftovers] == ["next_ids"]


def test_a_kill_inside_the_manifest_write_leaves_no_truncated_manifest(reference, tmp_path, in_process):
    """The manifest is written atomically: a kill mid-write leaves no m.parquet, and --resume finishes it."""
    ref = reference("build")
    cwd = workdir(tmp_path, "build")
    done = killed_inside("write", r"/\.?m\.parquet(\.\w{8}\.tmp)?$", COMMANDS["build"], cwd)
    assert done.returncode == -signal.SIGKILL, done.stderr
    leftovers = check_outputs(cwd / "out", "killed inside the write of m.parquet")
    assert not (cwd / "out" / "m.parquet").exists() and [p.name.split(".")[1] for p in leftovers] == ["m"]
    done = in_process(COMMANDS["build"] + ["--resume"], cwd)
    assert done.returncode == 0, done.stderr
    assert_same_results(results(cwd / "out"), ref.results, "resumed after a kill inside the manifest write")


def test_a_kill_inside_a_report_plot_leaves_no_truncated_file(reference, tmp_path):
    """The report's plots are written atomically: a kill mid-write leaves no truncated PNG."""
    ref = reference("run")
    cwd = workdir(tmp_path, "run")
    shutil.copytree(ref.out, cwd / "out")
    for path in [*(cwd / "out").glob("report.*"), *(cwd / "out").glob("*.png")]:
        path.unlink()
    done = killed_inside("write", "accuracy_vs_sparsity.png", COMMANDS["run"] + ["--resume"], cwd)
    assert done.returncode == -signal.SIGKILL, done.stderr
    check_outputs(cwd / "out", "killed inside the write of a plot")


def test_a_kill_right_after_a_stage_finishes_loses_nothing_and_leaves_nothing(reference, tmp_path, in_process):
    """Killed right after a stage's metrics.json: its cost is already in the ledger, its checkpoint goes."""
    ref = reference("ticket")
    done = killed_inside("pracset.runs.atomic_write_json", "round-02/metrics.json", COMMANDS["ticket"], tmp_path)
    assert done.returncode == -signal.SIGKILL, done.stderr
    done = in_process(COMMANDS["ticket"] + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    got = results(tmp_path / "out")
    assert got["ledger.json"] == ref.results["ledger.json"]
    assert got["tickets.json"] == ref.results["tickets.json"]
    assert_same_results(got, ref.results, "resumed after a kill right after round-02/metrics.json")


def test_a_kill_between_the_ledger_and_a_stage_s_metrics_counts_the_probe_once(tmp_path, in_process):
    argv = ["ticket", "--method", "prac-imp", *TINY, "--rounds", "1", "--out", "out"]
    (tmp_path / "ref").mkdir()
    (tmp_path / "killed").mkdir()
    assert in_process(argv, tmp_path / "ref").returncode == 0
    # ledger.json is saved after round-00, then after round-01 (with its probe) and before its metrics.json
    done = killed_inside("pracset.ledger.atomic_write_json", "out/ledger.json#2", argv, tmp_path / "killed")
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert not (tmp_path / "killed" / "out" / "round-01" / "metrics.json").exists()
    done = in_process(argv + ["--resume"], tmp_path / "killed")
    assert done.returncode == 0, done.stderr
    assert_same_results(results(tmp_path / "killed" / "out"), results(tmp_path / "ref" / "out"), "resumed")


# A kill during an atomic write leaves its temporary file: hidden and never read, but the run that resumes must
# not be blocked by it, and removes it.
TMP = ".{name}.k7q2x9ab.tmp"  # as tempfile.mkstemp names them


def test_a_kill_during_the_first_write_of_a_ticket_run_does_not_block_its_resume(reference, tmp_path, in_process):
    """A .run.json.*.tmp left by a kill in the run's first write does not make the directory 'not empty'."""
    ref = reference("ticket")
    out = tmp_path / "out"
    out.mkdir()
    (out / TMP.format(name="run.json")).write_text('{"identity": {"meth')
    done = in_process(COMMANDS["ticket"] + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_results(results(out), ref.results, "resumed after a kill in the first write")


def test_a_kill_during_the_first_write_of_a_pipeline_does_not_block_its_resume(reference, tmp_path, in_process):
    """A .pipeline.json.*.tmp left by a kill in the run's first write does not make the directory 'not empty'."""
    ref = reference("run")
    cwd = workdir(tmp_path, "run")
    (cwd / "out").mkdir()
    (cwd / "out" / TMP.format(name="pipeline.json")).write_text('{"name": "ti')
    done = in_process(COMMANDS["run"] + ["--resume"], cwd)
    assert done.returncode == 0, done.stderr
    assert_same_results(results(cwd / "out"), ref.results, "resumed after a kill in the first write")


def test_a_resumed_run_removes_the_temporary_files_of_a_killed_one(reference, tmp_path, in_process):
    """Temporaries that kills left (each may be as large as a checkpoint) are removed by the resumed run."""
    ref = reference("ticket")
    out = tmp_path / "out"
    shutil.copytree(ref.out, out)
    (out / "tickets.json").unlink()
    leftover = out / "round-02" / TMP.format(name="checkpoint.pt")
    leftover.write_bytes(b"PK\x03\x04 half a checkpoint")
    done = in_process(COMMANDS["ticket"] + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert_same_results(results(out), ref.results, "resumed")
    assert not leftover.exists()


def test_a_finished_build_removes_a_stale_work_directory(reference, tmp_path, in_process):
    """Killed after writing the manifest, before removing NAME.parquet.partial/: the rerun removes it."""
    ref = reference("build")
    cwd = workdir(tmp_path, "build")
    shutil.copytree(ref.out, cwd / "out")
    stale = cwd / "out" / "m.parquet.partial"
    stale.mkdir()
    (stale / "checkpoint.pt").write_bytes(b"a checkpoint of the killed build")
    done = in_process(COMMANDS["build"] + ["--resume"], cwd)
    assert done.returncode == 0 and done.stdout.startswith("already built"), done.stderr
    assert not stale.exists()
