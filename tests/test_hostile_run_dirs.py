"""Run directories from strangers and runs that fail: issue 23, items 2, 3 and 7.

* Item 2: a symbolic link to a folder in a run directory (a stage such as
  ``round-02``, a pipeline's stage or sub-run folder, the run directory
  itself, a build's work directory) is refused with one line naming it, and
  the folder it points to is left byte for byte as it was; a link made while
  a run holds its directory is refused at the write.
* Item 3: ``build --out X.parquet`` never overwrites a user's ``X.dense.pt`` or
  ``X.stats.npz`` (refused by name before any training), yet a resumed build
  replaces the ones its own record says it wrote; only pracset's own
  temporary names (``.NAME.XXXXXXXX.tmp``) are temporaries: a user's
  ``.draft.tmp`` neither makes a directory count as empty nor is deleted.
* Item 7: a run that fails before its first stage finishes (a diverged
  training, a full disk) is one line and exit code 2 and leaves nothing that
  blocks the corrected command; one that fails later keeps its results; an
  interrupted one keeps its checkpoint; ``--resume`` removes pracset's
  temporaries only; a read error names its file.

Everything runs on digits with one epoch of an MLP on the CPU. Commands run
through ``pracset.cli.main`` in this process (fixture ``in_process``), where a full
disk or a read error can be simulated with monkeypatch; one runs as a real
process to check that its stderr is exactly one line.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from commands import pracset

from pracset.errors import ConfigError
from pracset.fileio import atomic_write_json, is_temporary, locked_output_directory
from pracset.runs import RunDirectory, TicketLayout

TINY = ["--data", "digits", "--arch", "mlp", "--epochs", "1", "--batch-size", "64", "--device", "cpu", "-q"]
TICKET = ["ticket", "--method", "imp", *TINY, "--rounds", "2", "--out", "out"]
BUILD = ["build", *TINY, "--probe-sparsity", "0.5", "--out", "m.parquet"]
PIPELINE = """\
name = "tiny"
arch = "mlp"
methods = ["imp"]
seeds = [0]

[data]
name = "digits"

[train]
epochs = 1
batch_size = 64

[build]
probe_sparsities = [0.5]

[imp]
rounds = 1
controls = false
"""
RUN = ["run", "tiny.toml", "--out", "p", "--device", "cpu", "-q"]
TMP = ".{name}.k7q2x9ab.tmp"  # as tempfile.mkstemp names an atomic write's temporary


def refused(done: subprocess.CompletedProcess, command: str) -> str:
    """The one-line message of a refused command (exit code 2, one line on stderr, nothing on stdout)."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr)
    assert lines[0].startswith(f"pracset {command}: error: ") and "Traceback" not in done.stderr, done.stderr
    assert done.stdout == "", done.stdout
    return lines[0].removeprefix(f"pracset {command}: error: ")


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and link (target) under ``root``, never following a link."""
    found: dict[str, bytes | str] = {}
    for folder, subfolders, files in os.walk(root):
        for name in subfolders + files:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                found[key] = "-> " + os.readlink(path)
            elif path.is_file():
                found[key] = path.read_bytes()
    return found


def victim(path: Path) -> dict[str, bytes | str]:
    """A user's folder with files named as a stage's are: what a link must never let pracset write to."""
    path.mkdir(parents=True)
    (path / "model.pt").write_bytes(b"the user's own model")
    (path / "metrics.json").write_text('{"mine": true}')
    (path / "notes.txt").write_text("keep me")
    return snapshot(path)


@pytest.fixture(scope="module")
def ticket_run(tmp_path_factory) -> Path:
    """A finished ``pracset ticket`` run (IMP, 2 rounds): its folder ``out``."""
    cwd = tmp_path_factory.mktemp("ticket")
    done = pracset(TICKET, cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "out"


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory) -> Path:
    """A finished ``pracset run`` of a tiny pipeline: its folder ``p``."""
    cwd = tmp_path_factory.mktemp("pipeline")
    (cwd / "tiny.toml").write_text(PIPELINE)
    done = pracset(RUN, cwd)
    assert done.returncode == 0, done.stderr
    return cwd / "p"


def unfinished_ticket_run(ticket_run: Path, cwd: Path) -> Path:
    """A copy of the ticket run in ``cwd/out`` as a kill during round 2 leaves it."""
    out = cwd / "out"
    shutil.copytree(ticket_run, out)
    (out / "tickets.json").unlink()
    shutil.rmtree(out / "round-02")
    return out


# ----------------------------------------------------------------------------- item 2: linked folders

@pytest.mark.slow
def test_resume_refuses_a_linked_round_and_leaves_the_folder_it_points_to_untouched(ticket_run, tmp_path, in_process):
    out = unfinished_ticket_run(ticket_run, tmp_path)
    before = victim(tmp_path / "theirs")
    (out / "round-02").symlink_to(tmp_path / "theirs", target_is_directory=True)
    run_before = snapshot(out)
    message = refused(in_process(TICKET + ["--resume"], tmp_path), "ticket")
    assert message == ("out/round-02 is a symbolic link to a folder; pracset never reads or writes a run through a "
                       "link: remove the link or choose another --out")
    assert snapshot(tmp_path / "theirs") == before
    assert snapshot(out) == run_before  # nothing of the run changed either (no temporaries removed, no lock left)


@pytest.mark.slow
@pytest.mark.parametrize("link", ["p/mlp/imp-s0/round-01", "p/mlp"])
def test_a_pipeline_resume_refuses_a_linked_stage_or_sub_run(pipeline_run, tmp_path, in_process, link):
    p = tmp_path / "p"
    shutil.copytree(pipeline_run, p)
    (p / "report.json").unlink()
    (p / "mlp" / "imp-s0" / "tickets.json").unlink()
    (tmp_path / "tiny.toml").write_text(PIPELINE)
    moved = tmp_path / "theirs"
    shutil.move(tmp_path / link, moved)  # the user's folder now: the run's files in it must stay as they are
    (moved / "notes.txt").write_text("keep me")
    before = snapshot(moved)
    (tmp_path / link).symlink_to(moved, target_is_directory=True)
    message = refused(in_process(RUN + ["--resume"], tmp_path), "run")
    assert message.startswith(f"{link} is a symbolic link to a folder; ")
    assert snapshot(moved) == before


def test_a_linked_run_directory_or_build_work_directory_is_refused(tmp_path, in_process):
    before = victim(tmp_path / "theirs")
    (tmp_path / "out").symlink_to(tmp_path / "theirs", target_is_directory=True)
    assert refused(in_process(TICKET, tmp_path), "ticket").startswith("out is a symbolic link to a folder; ")
    (tmp_path / "empty").mkdir()  # an empty folder would otherwise take the whole run
    (tmp_path / "out").unlink()
    (tmp_path / "out").symlink_to(tmp_path / "empty", target_is_directory=True)
    assert refused(in_process(TICKET, tmp_path), "ticket").startswith("out is a symbolic link to a folder; ")
    assert os.listdir(tmp_path / "empty") == []
    (tmp_path / "m.parquet.partial").symlink_to(tmp_path / "theirs", target_is_directory=True)
    message = refused(in_process(BUILD, tmp_path), "build")
    assert message.startswith("m.parquet.partial is a symbolic link to a folder; ")
    assert snapshot(tmp_path / "theirs") == before  # no .lock, no run.json, nothing
    assert not (tmp_path / "m.parquet").exists()


def test_a_folder_linked_while_a_run_holds_its_directory_is_refused_at_the_write(tmp_path):
    """The check on opening finds the links that were there; one made later is refused where pracset writes."""
    before = victim(tmp_path / "theirs")
    layout = TicketLayout(tmp_path / "out")
    with RunDirectory(layout.root, {"what": "test"}, resume=False, finished="tickets.json") as run:
        run.claim()
        (layout.root / "round-03").symlink_to(tmp_path / "theirs", target_is_directory=True)
        with pytest.raises(ConfigError, match=r"round-03 is a symbolic link to a folder"):
            atomic_write_json(layout.round(3).metrics, {"epoch": 1})
        with pytest.raises(ConfigError, match=r"round-03 is a symbolic link to a folder"):
            layout.round(3).create()
        with pytest.raises(ConfigError, match=r"round-03 is a symbolic link to a folder"):
            atomic_write_json(layout.round(3).directory / "deeper" / "x.json", {})
        (layout.root / "mlp").symlink_to(tmp_path / "theirs", target_is_directory=True)
        with pytest.raises(ConfigError, match=r"out/mlp is a symbolic link to a folder"):
            with locked_output_directory(layout.root / "mlp" / "imp-s0"):  # a pipeline's sub-run
                pass
    assert snapshot(tmp_path / "theirs") == before


# ----------------------------------------------------------------------------- item 3: the user's files

@pytest.mark.parametrize("name", ["m.dense.pt", "m.stats.npz"])
def test_build_refuses_a_users_file_beside_the_manifest_before_training(tmp_path, in_process, monkeypatch, name):
    from pracset.train.loop import Trainer

    def no_training(*args, **kwargs):
        raise AssertionError("the build trained before refusing")

    monkeypatch.setattr(Trainer, "fit", no_training)
    (tmp_path / name).write_bytes(b"the user's own file")
    message = refused(in_process(BUILD, tmp_path), "build")
    assert message == (f"{name} exists and pracset did not write it (no unfinished build here records it); "
                       "move it away or choose another --out")
    assert (tmp_path / name).read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no manifest, no work directory


def test_a_resumed_build_replaces_the_files_its_record_lists(tmp_path, in_process, monkeypatch):
    """Interrupted between its statistics and its manifest, a build resumes over the files it recorded writing
    (and removes its own temporaries beside them, never a user's look-alike)."""
    import pracset.build

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pracset.build, "_write_new_manifest", interrupted)
        assert in_process(BUILD, tmp_path).returncode == 130
    assert (tmp_path / "m.stats.npz").exists() and (tmp_path / "m.dense.pt").exists()
    assert not (tmp_path / "m.parquet").exists()
    ours = tmp_path / TMP.format(name="m.stats.npz")
    ours.write_bytes(b"half the statistics of a killed write")
    theirs = tmp_path / ".m.stats.npz.draft.tmp"
    theirs.write_bytes(b"the user's draft")
    done = in_process(BUILD + ["--resume"], tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("built m.parquet"), done.stderr
    assert not ours.exists() and theirs.read_bytes() == b"the user's draft"
    assert not (tmp_path / "m.parquet.partial").exists()


def test_only_pracsets_temporary_names_are_temporaries():
    assert is_temporary(Path(".run.json.k7q2x9ab.tmp")) and is_temporary(Path(".m.stats.npz.ab_d12_9.tmp"))
    assert is_temporary(Path(".checkpoint.pt.k7q2x9ab.tmp"), of="checkpoint.pt")
    assert not is_temporary(Path(".checkpoint.pt.k7q2x9ab.tmp"), of="model.pt")
    for name in (".draft.tmp", ".notes.tmp", ".a.b.tmp", ".x.ABCDEFGH.tmp", ".x.abcdefghi.tmp", "x.k7q2x9ab.tmp"):
        assert not is_temporary(Path(name)), name


def test_a_users_temporary_look_alike_is_not_an_empty_directory(tmp_path, in_process):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".draft.tmp").write_bytes(b"the user's draft")
    message = refused(in_process(TICKET, tmp_path), "ticket")
    assert message == "out is not empty and holds no pracset run; choose another --out"
    assert sorted(os.listdir(tmp_path / "out")) == [".draft.tmp"]
    assert (tmp_path / "out" / ".draft.tmp").read_bytes() == b"the user's draft"


@pytest.mark.slow
def test_resume_removes_pracsets_temporaries_only(ticket_run, tmp_path, in_process):
    out = unfinished_ticket_run(ticket_run, tmp_path)
    ours = [out / TMP.format(name="run.json"), out / "round-01" / TMP.format(name="checkpoint.pt")]
    for path in ours:
        path.write_bytes(b"half a file of a killed write")
    theirs = [out / ".notes.tmp", out / "round-01" / ".draft.tmp"]
    for path in theirs:
        path.write_bytes(b"the user's")
    done = in_process(TICKET + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert not any(path.exists() for path in ours)
    assert all(path.read_bytes() == b"the user's" for path in theirs)


# ----------------------------------------------------------------------------- item 7: failed runs

@pytest.mark.slow
def test_a_learning_rate_that_overflows_is_one_line_and_the_corrected_command_is_accepted(tmp_path):
    """The original report: a traceback, and run.json left behind so that the sane rate was refused."""
    done = pracset(TICKET + ["--lr", "1e300"], tmp_path)  # a real process: its whole stderr is one line
    assert done.returncode == 2 and done.stderr == (
        "pracset ticket: error: training diverged: the learning rate 1e+300 overflows the weight update at "
        "epoch 1 of round-00; lower --lr\n"), done.stderr
    assert not (tmp_path / "out").exists()
    done = pracset(TICKET + ["--lr", "0.1"], tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_non_finite_loss_is_one_line_and_leaves_an_empty_directory_that_is_accepted(tmp_path, in_process):
    (tmp_path / "out").mkdir()  # the user's empty folder stays (empty)
    message = refused(in_process(TICKET + ["--lr", "1e5"], tmp_path), "ticket")
    assert message == "training diverged: the loss is not finite at epoch 1 of round-00; lower --lr"
    assert os.listdir(tmp_path / "out") == []
    done = in_process(TICKET + ["--lr", "0.05"], tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_pipeline_whose_build_diverges_leaves_nothing(tmp_path, in_process):
    (tmp_path / "tiny.toml").write_text(PIPELINE)
    message = refused(in_process(RUN + ["--set", "train.lr=1e5"], tmp_path), "run")
    assert message == "training diverged: the loss is not finite at epoch 1 of dense; lower --lr"
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("lr,message", [
    (1e37, "training diverged: the loss is not finite at epoch 1 of a; lower --lr"),
    (1e300, "training diverged: the learning rate 1e+300 overflows the weight update at epoch 1 of a+b; lower --lr")])
def test_packed_training_checks_its_loss_too(lr, message):
    """The packed jobs (a round's seeds or controls trained as one network) stop as the Trainer does."""
    from pracset.data import DeviceLoader, ImageSplit
    from pracset.errors import TrainingDiverged
    from pracset.sparse import Mask
    from pracset.train import TrainConfig
    from pracset.train.packed import fit_packed

    generator = torch.Generator().manual_seed(0)
    split = ImageSplit(torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8, generator=generator),
                       torch.randint(0, 3, (64,), generator=generator))
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)) for _ in range(2)]
    masks = [Mask.ones(model) for model in models]
    loader = DeviceLoader(split, 16, (0.5,), (0.25,), shuffle=True, seed=3)
    with pytest.raises(TrainingDiverged) as caught:
        fit_packed(models, masks, loader, None, TrainConfig(epochs=2, batch_size=16, lr=lr), stages=["a", "b"])
    assert str(caught.value) == message


def full_disk_at(monkeypatch, name: str) -> None:
    """``fsync`` of the temporary of the file ``name`` (``FILE`` or ``FOLDER/FILE``) fails as on a full disk: an
    OSError that names no file, as the system raises it."""
    real = os.fsync
    folder, base = os.path.split(name)

    def fsync(fd):
        written = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(written).startswith(f".{base}.") and \
                (not folder or os.path.basename(os.path.dirname(written)) == folder):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to tell the files apart")
def test_a_full_disk_in_the_first_stage_is_one_line_naming_the_file_and_the_retry_is_accepted(tmp_path, in_process,
                                                                                              monkeypatch):
    with monkeypatch.context() as patch:
        full_disk_at(patch, "checkpoint.pt")
        message = refused(in_process(TICKET, tmp_path), "ticket")
    assert message == "No space left on device: out/round-00/checkpoint.pt"
    assert not (tmp_path / "out").exists()
    done = in_process(TICKET, tmp_path)  # the same command, once there is room
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to tell the files apart")
def test_a_full_disk_after_a_finished_stage_keeps_it_for_resume(tmp_path, in_process, monkeypatch):
    with monkeypatch.context() as patch:
        full_disk_at(patch, "round-01/mask.pt")  # round 1's first file: round 0 has finished by then
        message = refused(in_process(TICKET, tmp_path), "ticket")
    assert message == "No space left on device: out/round-01/mask.pt"
    kept = tmp_path / "out" / "round-00" / "metrics.json"
    assert kept.exists() and (tmp_path / "out" / "run.json").exists()
    before = kept.read_bytes()
    done = in_process(TICKET + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert kept.read_bytes() == before  # round 0 was not trained again


def test_an_interrupted_first_stage_keeps_its_checkpoint(tmp_path, in_process, monkeypatch):
    from pracset.train.loop import Trainer

    save = Trainer._save_checkpoint

    def save_then_interrupt(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_checkpoint", save_then_interrupt)
        assert in_process(TICKET, tmp_path).returncode == 130
    assert (tmp_path / "out" / "round-00" / "checkpoint.pt").exists()
    done = in_process(TICKET + ["--resume"], tmp_path)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model.pt", "checkpoint.pt"])
def test_a_read_error_names_the_file(ticket_run, tmp_path, in_process, monkeypatch, name):
    """``read()`` fails with an OSError that names no file (EIO, EINVAL): the one line must say which file."""
    out = unfinished_ticket_run(ticket_run, tmp_path)
    (out / "round-02").mkdir()
    shutil.copy(out / "round-01" / "model.pt", out / "round-02" / "checkpoint.pt")  # round 2 started, then killed
    load = torch.load

    def failing_load(f, *args, **kwargs):
        if Path(f).name == name:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", failing_load)
    shown = {"model.pt": "out/round-01/model.pt", "checkpoint.pt": "out/round-02/checkpoint.pt"}[name]
    assert refused(in_process(TICKET + ["--resume"], tmp_path), "ticket") == f"Invalid argument: {shown}"
