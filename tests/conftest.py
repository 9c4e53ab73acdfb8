"""Shared fixtures: the real data sets beside the checkout (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("PRACSET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the checkout (or $PRACSET_SHARED_DATA); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATA} (set PRACSET_SHARED_DATA to point at them)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_dir(shared_data: Path) -> Path:
    path = shared_data / "mnist"
    if not (path / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST idx files not found in {path}")
    return path
