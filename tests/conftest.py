"""Shared fixtures. Heavy things (model weights, the demo music) are cached under .cache/ in the repo, so
that a second run of the suite starts in seconds; delete .cache/ to start from nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache"
SHARED = REPO.parent / "shared"
MUSICNN_REFERENCE = SHARED / "fixtures" / "musicnn_reference"

pytest_plugins = ["tests.kafka_broker"]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Model weights prepared once, as `sidecar setup` prepares them."""
    path = CACHE / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def demo_tracks() -> list[Path]:
    """Real, freely licensed music (OGG and MP3) from Debian packages, fetched once."""
    from sidecar.demo import fetch_demo_library

    return fetch_demo_library(CACHE / "music")


@pytest.fixture
def music_dir(tmp_path, demo_tracks) -> Path:
    """A fresh music folder holding copies of a few real tracks."""
    root = tmp_path / "music"
    root.mkdir()
    for t in demo_tracks[:4]:
        shutil.copy2(t, root / t.name)
    return root
