"""Shared fixtures. Tests that need the real data sets find them through the same rule as the
loaders ($DIFFLAB_DATA, else ../shared/data beside the project root); without them they skip, except
under CI (CI=true), where a missing data directory is a failure so CI never goes green by skipping."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("DIFFLAB_DATA") or ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    if not (path / "mnist").is_dir() and not (path / "cifar10").is_dir():
        message = f"real data not found at {path} (set DIFFLAB_DATA)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + "; CI must not skip data tests")
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Seed torch, and restore its thread count (in-process CLI calls with --threads set it)."""
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
