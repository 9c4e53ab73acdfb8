"""The console (issue 25, item 1): one log line per stage by default, per-epoch lines only with -v (pracset's
own; other libraries' debug output stays off), every epoch still in metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # every test trains in a real `python -m pracset` process: about 20 s


def _train(tmp_path, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / ("v" if flags else "plain")
    done = subprocess.run([sys.executable, "-m", "pracset", "train", "--data", "digits", "--arch", "mlp",
                           "--epochs", "3", "--out", str(out), *flags], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return out, done.stderr.splitlines()


def test_one_line_per_stage_by_default_and_a_line_per_epoch_with_v(tmp_path):
    out, lines = _train(tmp_path)
    assert not [line for line in lines if " epoch " in line]
    assert [line.split(" ", 2)[2] for line in lines if "pracset.train.run" in line] == [
        f"pracset.train.run: dense: test accuracy {json.loads((out / 'metrics.json').read_text())['final']['test_accuracy']:.4f}"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # every epoch is kept on disk
    _, verbose = _train(tmp_path, "-v")
    epochs = [line for line in verbose if "DEBUG pracset.train.loop: dense epoch" in line]
    assert [line.split("dense epoch ")[1].split(":")[0] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all(" pracset" in line.split("DEBUG", 1)[1][:9] for line in verbose if "DEBUG" in line)  # pracset's only


def test_the_run_directory_keeps_every_line_in_pracset_log(tmp_path):
    out, console = _train(tmp_path)
    logged = (out / "pracset.log").read_text().splitlines()
    assert [line.split("dense epoch ")[1].split(":")[0] for line in logged if "dense epoch" in line] == [
        "1/3", "2/3", "3/3"]  # the per-epoch lines the console left out
    assert any("pracset.train.run: dense: test accuracy" in line for line in logged)


def test_a_pracset_log_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "elsewhere.txt"
    target.write_text("mine\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / "pracset.log").symlink_to(target)
    done = subprocess.run([sys.executable, "-m", "pracset", "train", "--data", "digits", "--arch", "mlp", "--epochs",
                           "1", "--out", str(out)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 2 and target.read_text() == "mine\n"
    assert done.stderr.strip().splitlines()[-1].startswith("pracset train: error: ")


def test_in_a_terminal_the_console_still_leaves_per_epoch_lines_out(tmp_path):
    """On a terminal the log goes through tqdm's handler (logging_redirect_tqdm), which keeps the console's
    filter but not a handler level: per-epoch lines must stay out there too."""
    import pty

    master, slave = pty.openpty()
    done = subprocess.run([sys.executable, "-m", "pracset", "train", "--data", "digits", "--arch", "mlp",
                           "--epochs", "2", "--out", str(tmp_path / "tty")], stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=slave, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO once the child's side is closed and drained
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert done.returncode == 0, text
    assert "dense: test accuracy" in text and " epoch 1/2" not in text


def test_a_pracset_log_that_is_a_fifo_is_refused_without_hanging(tmp_path):
    out = tmp_path / "run"
    assert subprocess.run([sys.executable, "-m", "pracset", "train", "--data", "digits", "--arch", "mlp", "--epochs",
                           "1", "-q", "--out", str(out)], env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300).returncode == 0
    (out / "pracset.log").unlink()
    os.mkfifo(out / "pracset.log")
    (out / "metrics.json").unlink()  # unfinished again, so that --resume opens the log
    done = subprocess.run([sys.executable, "-m", "pracset", "train", "--data", "digits", "--arch", "mlp", "--epochs",
                           "1", "-q", "--out", str(out), "--resume"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().endswith("pracset.log is a FIFO, not a regular file; pracset writes its log only to one")
