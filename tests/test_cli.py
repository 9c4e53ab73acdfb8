import json
import subprocess
import sys

import pytest

from pracset.cli import main


def test_datasets_and_models_list_every_name(run_cli):
    from pracset.data import SOURCES
    from pracset.models import MODELS

    code, out, _ = run_cli("datasets")
    assert code == 0 and all(f"\n{n} " in "\n" + out for n in SOURCES.names())
    code, out, _ = run_cli("models")
    assert code == 0 and all(f"\n{n} " in "\n" + out for n in MODELS.names()) and "torchvision/" in out


def test_train_writes_a_run_and_does_not_redo_it(run_cli, tmp_path):
    out_dir = tmp_path / "run"
    args = ["train", "--data", "digits", "--arch", "mlp", "--epochs", "2", "--out", str(out_dir), "-q"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "trained mlp on digits: test accuracy" in out
    # the per-epoch checkpoint goes once the run is finished, as in every stage of a run
    assert {p.name for p in out_dir.iterdir()} == {"run.json", "model.pt", "metrics.json", "metrics.jsonl",
                                                   "ledger.json", "pracset.log"}
    lines = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads((out_dir / "metrics.json").read_text())["history"]  # one line per epoch
    metrics = json.loads((out_dir / "metrics.json").read_text())
    ledger = json.loads((out_dir / "ledger.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["ledger"]["train_iterations"] == 2 * 12
    assert ledger["total"]["train_iterations"] == 2 * 12
    before = (out_dir / "model.pt").stat().st_mtime_ns
    code, out, _ = run_cli(*args)
    assert code == 0 and out.startswith("already trained")
    assert (out_dir / "model.pt").stat().st_mtime_ns == before


BAD = [
    (["train", "--data", "imagenet22k", "--arch", "mlp"], "unknown data set 'imagenet22k'; valid names: cifar10, cifar100, digits"),
    (["train", "--data", "digits", "--arch", "resnet21"], "unknown model 'resnet21'; valid names:"),
    (["train", "--data", "digits", "--arch", "mlp", "--optimizer", "adam"], "unknown optimizer 'adam'; valid names: adamw, nesterov, sgd"),
    (["train", "--data", "digits", "--arch", "mlp", "--epochs", "0"], "argument --epochs: must be a positive integer, got '0'"),
    (["train", "--data", "digits", "--arch", "mlp", "--batch-size", "abc"], "argument --batch-size: must be a positive integer, got 'abc'"),
    (["train", "--data", "digits", "--arch", "mlp", "--lr", "-1"], "lr must be positive, got -1.0"),
    (["train", "--data", "digits", "--arch", "vgg16"], "model vgg16 needs images of at least 16x16, the data has 8x8"),
    (["train", "--data", "mnist", "--arch", "mlp", "--data-dir", "{tmp}"], "no mnist files in {tmp}: expected train-images-idx3-ubyte[.gz]"),
    (["train", "--data", "cifar10", "--arch", "mlp", "--data-dir", "{tmp}/nowhere"], "no cifar10 files in {tmp}/nowhere"),
    (["train", "--data", "digits", "--arch", "mlp", "--device", "cuda:0" if False else "tpu"], "unknown device 'tpu'"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a[1:5]) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_code_2(run_cli, tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "out"), "-q"]
    code, out, err = run_cli(*argv)
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert not (tmp_path / "out").exists()


def test_out_dir_holding_another_run_is_refused_and_kept(run_cli, tmp_path):
    out_dir = tmp_path / "run"
    assert run_cli("train", "--arch", "mlp", "--epochs", "1", "--out", str(out_dir), "-q")[0] == 0
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}
    code, _, err = run_cli("train", "--arch", "mlp", "--epochs", "2", "--out", str(out_dir), "-q")
    assert code == 2 and f"{out_dir} holds another run (changed train.epochs: 1 -> 2); choose another --out" in err
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    code, _, err = run_cli("train", "--arch", "mlp", "--out", str(tmp_path / "junk"), "-q")
    assert code == 2 and "is not empty and holds no pracset run" in err
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_console_script_reports_errors_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pracset", "train", "--data", "digits", "--arch", "nope",
                           "--out", str(tmp_path / "o"), "--epochs", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "unknown model 'nope'" in proc.stderr


@pytest.mark.parametrize("command", ["datasets", "models", "train"])
def test_every_subcommand_has_help(run_cli, command):
    code, out, _ = run_cli(command, "--help")
    assert code == 0 and "usage: pracset " + command in out


@pytest.mark.slow
def test_a_closed_output_pipe_ends_quietly():
    """`pracset models | head -1`: the reader closes the pipe; no BrokenPipeError traceback, exit 141."""
    process = subprocess.Popen([sys.executable, "-m", "pracset", "models"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    process.stdout.close()  # gone before the command writes (importing torch alone takes longer)
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    """Only a closed stdout ends quietly: a BrokenPipeError from elsewhere (a socket, a worker) propagates."""
    import pracset.cli as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe (a download socket)")

    monkeypatch.setattr(cli, "_cmd_models", broken)
    with pytest.raises(BrokenPipeError, match="download socket"):
        cli.main(["models"])


def test_a_full_disk_is_one_line_and_leaves_nothing_that_blocks_the_retry(run_cli, tmp_path, monkeypatch):
    import errno
    import os

    import pracset.fileio as fileio

    out_dir = tmp_path / "run"
    real_replace = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(fileio.os, "replace", full)
    code, _, err = run_cli("train", "--arch", "mlp", "--epochs", "1", "--out", str(out_dir), "-q")
    assert code == 2 and err == f"pracset train: error: No space left on device: {out_dir / 'run.json'}\n"
    assert not out_dir.exists()  # the temporary went with the failed write, and the empty directory too
    monkeypatch.setattr(fileio.os, "replace", real_replace)
    assert run_cli("train", "--arch", "mlp", "--epochs", "1", "--out", str(out_dir), "-q")[0] == 0


def test_config_reads_the_toml_tables_and_flags_win(run_cli, tmp_path, monkeypatch):
    """`--config` takes a pipeline file's tables (and its arch); a flag given on the command line overrides them."""
    from pathlib import Path

    from pracset.manifest import read_manifest

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("build", "--config", str(root / "pipelines" / "digits.toml"), "--out", "m.parquet",
                             "--epochs", "2", "--device", "cpu", "-q")
    assert code == 0, err
    identity = read_manifest(tmp_path / "m.parquet").provenance["build_identity"]
    assert identity["arch"] == "mlp"  # from the file
    assert (identity["train"]["epochs"], identity["train"]["lr"], identity["train"]["batch_size"]) == (2, 0.05, 64)
    assert identity["build"]["probe_sparsities"] == [0.5, 0.8, 0.9]
    (tmp_path / "bad.toml").write_text("arch = 'mlp'\n[train]\nepoch = 3\n")
    code, _, err = run_cli("train", "--config", "bad.toml", "--out", "r", "-q")
    assert code == 2 and err.startswith("pracset train: error: bad.toml: unknown key train.epoch; valid keys: epochs")
    code, _, err = run_cli("train", "--out", "r", "-q")
    assert code == 2 and err == "pracset train: error: give --arch, or an arch in the --config file\n"
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("command", ["train", "build", "ticket", "run", "inspect", "datasets", "models"])
def test_every_command_prints_its_help(command, capsys):
    """argparse formats help texts with %: a setting's help with a literal % once broke `pracset build --help`."""
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    assert "usage: pracset " + command in capsys.readouterr().out
