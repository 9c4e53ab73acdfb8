"""Whole pipelines under torchrun: two processes, and two "nodes" on this machine, against one process.

These start real ``torchrun`` jobs (Gloo on the CPU) running the commands the
README's "Scaling out" section gives, on a shortened digits pipeline, and
compare what they write with a one-process run: the PrAC set, every round's
mask and every ticket's test accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pracset.manifest import read_manifest
from pracset.sparse import Mask

pytestmark = pytest.mark.slow  # whole pipelines under torchrun and in one process: about a minute

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "digits.toml"
SHORT = ["--set", "train.epochs=4", "--set", "imp.rounds=2", "--set", "transfer=[]", "--device", "cpu", "-q"]
TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))


def _env() -> dict:
    # one thread per process: two ranks on a 2-core machine; no inherited torchrun variables
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    _check(subprocess.run([sys.executable, "-m", "pracset", "run", str(PIPELINE), "--out", str(out), *SHORT],
                          env=_env(), capture_output=True, text=True, timeout=600))
    return out


def _assert_same_run(a: Path, b: Path) -> None:
    ma, mb = read_manifest(a / "manifest.parquet"), read_manifest(b / "manifest.parquet")
    assert np.array_equal(ma.selected_ids, mb.selected_ids)
    for run in ("imp-s0", "prac-imp-s0"):
        ta, tb = (json.loads((x / "mlp" / run / "tickets.json").read_text()) for x in (a, b))
        assert [t["sparsity"] for t in ta["tickets"]] == [t["sparsity"] for t in tb["tickets"]]
        # one test example is 1/359: the ranks' float sums may round differently, nothing more
        for x, y in zip(ta["tickets"], tb["tickets"]):
            assert x["test_accuracy"] == pytest.approx(y["test_accuracy"], abs=1.01 / 359)
        for r in (1, 2):
            mask_a, mask_b = (Mask.load(x / "mlp" / run / f"round-{r:02d}" / "mask.pt") for x in (a, b))
            assert all(torch.equal(mask_a[n], mask_b[n]) for n in mask_a)
        assert ta["ledger"]["total"] == tb["ledger"]["total"]  # the job's iterations, counted once


def test_a_pipeline_on_two_processes_equals_one_process(one_process, tmp_path):
    out = tmp_path / "run"
    stdout = _check(subprocess.run(
        [TORCHRUN, "--standalone", "--nproc-per-node", "2", "-m", "pracset", "run", str(PIPELINE),
         "--out", str(out), *SHORT], env=_env(), capture_output=True, text=True, timeout=600, cwd=tmp_path))
    assert stdout.count("report: ") == 1  # the result is printed once, by rank 0
    _assert_same_run(one_process, out)
    saved = [json.loads((x / "report.json").read_text())["iterations_saved"] for x in (out, one_process)]
    assert saved[0] == saved[1]  # the report's headline, written once


def test_a_pipeline_on_two_nodes_equals_one_process(one_process, tmp_path):
    """Two torchrun invocations, one process each, meeting at a static rendezvous on localhost (node 0 hosts it).

    Static, not c10d: with both "nodes" on one machine, c10d's election of the node that hosts the store can
    race (both see the endpoint as local), which hung one run of the whole suite here.
    """
    out, port = tmp_path / "run", _free_port()

    def command(node_rank: int) -> list[str]:
        return [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node_rank),
                "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "pracset", "run", str(PIPELINE),
                "--out", str(out), *SHORT]

    nodes = [subprocess.Popen(command(rank), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=tmp_path) for rank in range(2)]
    results = []
    for rank, node in enumerate(nodes):
        try:
            stdout, stderr = node.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for n in nodes:
                n.kill()
            raise
        results.append(subprocess.CompletedProcess(command(rank), node.returncode, stdout, stderr))
    printed = [_check(r) for r in results]
    assert sum(p.count("report: ") for p in printed) == 1
    _assert_same_run(one_process, out)
