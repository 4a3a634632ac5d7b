"""Shared test fixtures: the real-data folder (``BTNET_DATA``) and deterministic seeds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """``$BTNET_DATA`` or ``../shared/data`` next to the repository."""
    return Path(os.environ.get("BTNET_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests using it skip cleanly when it is absent."""
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"real data not found at {root} (set BTNET_DATA)")
    return root


@pytest.fixture(scope="session")
def mobilefacenet_weights(data_dir: Path) -> Path:
    path = data_dir / "weights" / "mobilefacenet_insightface_ms1m.safetensors"
    if not path.is_file():
        pytest.skip(f"MobileFaceNet weights not found at {path}")
    return path


@pytest.fixture(scope="session")
def celeba_dir(data_dir: Path) -> Path:
    path = data_dir / "celeba112"
    if not path.is_dir():
        pytest.skip(f"CelebA subset not found at {path}")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): on two shared cores torch's default pool only adds waiting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
