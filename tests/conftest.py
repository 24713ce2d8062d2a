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

pytest_plugins = ["tests.kafka_broker", "tests.supysonic_server", "tests.postgres_server", "tests.milvus_server"]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """Model weights prepared once, as `sidecar setup` prepares them."""
    path = CACHE / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def wheel() -> Path:
    """The musicnn wheel itself (its TensorFlow checkpoints), downloaded once into the cache."""
    from plugins.embedders.musicnn import download_wheel

    folder = CACHE / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    return download_wheel(folder)


@pytest.fixture(scope="session")
def demo_tracks() -> list[Path]:
    """Real, freely licensed music (OGG and MP3) from Debian packages, fetched once."""
    from sidecar.demo import fetch_demo_library

    return fetch_demo_library(CACHE / "music")


def make_excerpts(tracks: list[Path], out_dir: Path, seconds: int = 30) -> list[Path]:
    """OGG Vorbis excerpts from the middle of real tracks, so that suites which analyse a whole library stay
    fast. Real music, real OGG files; made once."""
    import soundfile as sf

    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for t in tracks:
        target = out_dir / f"{t.parent.name}-{t.stem}.ogg"
        if not target.exists():
            info = sf.info(t)
            start = max(0, int(info.frames / 2 - seconds / 2 * info.samplerate))
            data, sr = sf.read(t, start=start, frames=seconds * info.samplerate, dtype="float32")
            sf.write(target.with_suffix(".tmp"), data, sr, format="OGG", subtype="VORBIS")
            target.with_suffix(".tmp").rename(target)
        out.append(target)
    return out


@pytest.fixture(scope="session")
def excerpts(demo_tracks) -> list[Path]:
    return make_excerpts(demo_tracks, CACHE / "excerpts")


@pytest.fixture(scope="session")
def genre_excerpts() -> dict[str, list[Path]]:
    """Music whose kind is known, as excerpts: 34 orchestral tracks (Wesnoth) and 17 electronic ones (Nexuiz)."""
    from sidecar.demo import ELECTRONIC_PACKAGE, ORCHESTRAL_PACKAGE, fetch_demo_library

    return {
        label: make_excerpts(fetch_demo_library(CACHE / "music", (package,)), CACHE / "excerpts")
        for label, package in (("orchestral", ORCHESTRAL_PACKAGE), ("electronic", ELECTRONIC_PACKAGE))
    }


@pytest.fixture
def music_dir(tmp_path, excerpts) -> Path:
    """A fresh music folder holding copies of five real excerpts."""
    root = tmp_path / "music"
    root.mkdir()
    for t in excerpts[:5]:
        shutil.copy2(t, root / t.name)
    return root


@pytest.fixture(scope="session")
def analysed_library(tmp_path_factory, genre_excerpts, models_dir) -> dict:
    """51 real tracks (34 orchestral, 17 electronic excerpts) analysed once by `sidecar scan`, shared by the
    suites that query a library. Their kind is known by file name; the folder name says nothing.

    {"music": folder, "data": data dir, "kinds": {title: "orchestral" | "electronic"}}. Tests that change
    the catalog or the store must work on a copy (see `copy_library`)."""
    from typer.testing import CliRunner

    from sidecar.cli import app

    root = tmp_path_factory.mktemp("library")
    music, data = root / "music" / "library", root / "data"
    music.mkdir(parents=True)
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    kinds = {}
    for kind, files in genre_excerpts.items():
        for f in files:
            shutil.copy(f, music / f.name)
            kinds[f.stem] = kind
    result = CliRunner().invoke(app, ["scan", str(music.parent), "--data-dir", str(data)])
    assert result.exit_code == 0 and "51 analysed" in result.output, result.output
    return {"music": music.parent, "data": data, "kinds": kinds}


@pytest.fixture
async def open_sidecar(analysed_library):
    """Open (not start) sidecars on the analysed library: stores, models and text search, no ingest."""
    from sidecar.config import Settings
    from sidecar.service import Sidecar

    made = []

    async def open_(data_dir: Path | None = None, **overrides) -> Sidecar:
        settings = Settings(music_dir=[analysed_library["music"]], data_dir=data_dir or analysed_library["data"], **overrides)
        sc = Sidecar(settings)
        await sc.open()
        made.append(sc)
        return sc

    yield open_
    for sc in made:
        await sc.close()


@pytest.fixture
def copy_library(analysed_library, tmp_path) -> Path:
    """A private copy of the analysed library's data dir, for tests that write to it."""
    data = tmp_path / "data"
    shutil.copytree(analysed_library["data"], data, symlinks=True)
    return data


@pytest.fixture(scope="session")
def trained(analysed_library, tmp_path_factory):
    """(data dir, CLI result): a copy of the analysed library with a text projection trained by
    `sidecar train-text`, so text seeds and prompts work on the musicnn model."""
    from typer.testing import CliRunner

    from sidecar.cli import app

    data = tmp_path_factory.mktemp("trained") / "data"
    shutil.copytree(analysed_library["data"], data, symlinks=True)
    result = CliRunner().invoke(app, ["train-text", "--data-dir", str(data), "--epochs", "60"])
    return data, result
