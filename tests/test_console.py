"""The console (issue 25, item 1): one log line per stage by default, per-epoch lines only with -v (pracset's
own; other libraries' debug output stays off), every epoch still in metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys


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
