"""Every benchmark runs end to end: ``python -m pipelines.benchmarks.NAME --smoke`` from the repository root.

A smoke run takes a few steps on synthetic data (no download, no data
directory), so a benchmark that a change in pracset broke fails here rather
than on the day someone needs its figures. Each ends with a verdict line;
a smoke run measures nothing, so that verdict is SKIP.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every benchmark run in its own process: about 1.5 minutes

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "pipelines" / "benchmarks"
NAMES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem not in ("__init__", "common"))


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_benchmark_is_listed():
    listed = subprocess.run([sys.executable, "-c", "from pipelines.benchmarks import NAMES; print(*NAMES)"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(listed) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run(name: str, tmp_path: Path):
    report = tmp_path / "report.json"
    result = run(["-m", f"pipelines.benchmarks.{name}", "--smoke", "--json", str(report)])
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("VERDICT SKIP: "), f"{name}'s last line is not a SKIP verdict: {last!r}"
    saved = json.loads(report.read_text())
    assert saved["verdict"] == "SKIP" and saved["verdict_line"] == last and saved["smoke"] is True


def test_verdicts():
    """PASS and FAIL lines name the figures against their targets; FAIL exits 1; a non-gating check is not judged."""
    code = """
import argparse
from pipelines.benchmarks.common import Check, finish, verdict
ok = Check("a/b", 1.02, "<=", 1.03, unit="x")
bad = Check("c", 7.0, ">=", 6.0, unit="x", digits=1)
worse = Check("c", 5.0, ">=", 6.0, unit="x", digits=1)
print(verdict([ok, bad])[1])
print(verdict([ok, worse])[1])
print(verdict([ok, Check("c", 5.0, ">=", 6.0, gate=False)])[1])
print(verdict([ok], skip="no GPU")[1])
print(verdict([ok], smoke=True)[0])
print(finish(argparse.Namespace(smoke=False, json=None), {}, [worse]))
"""
    lines = run(["-c", code], timeout=60).stdout.splitlines()
    assert lines[0] == "VERDICT PASS: a/b 1.02x <= 1.03x; c 7.0x >= 6x"
    assert lines[1] == "VERDICT FAIL: c 5.0x < 6x"
    assert lines[2] == "VERDICT PASS: a/b 1.02x <= 1.03x"
    assert lines[3] == "VERDICT SKIP: no GPU"
    assert lines[4] == "SKIP"
    assert lines[-2:] == ["VERDICT FAIL: c 5.0x < 6x", "1"]


def test_the_prepared_gpu_checks_run_every_gpu_benchmark(tmp_path: Path):
    """pipelines/gpu-checks.sh is issue 14's one device call: each benchmark it names exists, takes its flags and
    leaves its JSON (a smoke run, or a machine without CUDA, gives SKIP)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "pipelines/gpu-checks.sh", str(tmp_path / "out"), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in ("capture_equality", "gpu_floor", "packed"):
        assert name in NAMES
        saved = json.loads((tmp_path / "out" / f"{name}.json").read_text())
        assert saved["verdict"] == "SKIP" and (tmp_path / "out" / f"{name}.txt").read_text().strip()


def test_the_packed_sync_check_judges_every_step_of_the_second_epoch_and_nothing_else(monkeypatch):
    """The GPU-only sync check, its mode switches recorded on the CPU: "error" from the second epoch's first
    batch to its last step, "default" before and for the epoch-end copy of the metrics."""
    import torch

    import pracset.train.packed as packed_module
    from pipelines.benchmarks.packed import sync_check
    from pracset.data import DeviceLoader, ImageSplit
    from pracset.models import InputSpec, build_model
    from pracset.sparse import Mask
    from pracset.train import TrainConfig

    mode, steps = ["default"], []
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda m: mode.append(m))
    enforce = packed_module._enforce
    monkeypatch.setattr(packed_module, "_enforce", lambda *a: (steps.append(mode[-1]), enforce(*a)))
    generator = torch.Generator().manual_seed(0)
    split = ImageSplit(torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8, generator=generator),
                       torch.randint(0, 10, (32,), generator=generator))
    loaders = [DeviceLoader(split, 16, (0.5,) * 3, (0.25,) * 3, shuffle=True, seed=s) for s in range(2)]
    pairs = [(m, Mask.ones(m)) for m in (build_model("conv4", InputSpec(3, 8, 8, 10), seed=s) for s in range(3))]
    assert sync_check(pairs, loaders, 3, TrainConfig(epochs=1, batch_size=16, warmup_epochs=0)) is None
    # one _enforce before training, then one per step: 2 steps an epoch
    assert steps == ["default", "default", "default", "error", "error"]
    assert mode[-1] == "default"
