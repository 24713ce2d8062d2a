"""A small demo library of freely licensed game soundtracks from Debian's packages.

Used when `sidecar serve` is given no music folder, and by the tests. Fetched with `apt-get download` (a
package registry, not a hub) and unpacked with `dpkg-deb -x`; nothing is installed system-wide.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

# Small packages whose music is full-length tracks (OGG and MP3), about 45 MB together.
DEMO_PACKAGES = ("frozen-bubble-data", "caveexpress-data", "asc-music")
MUSIC_SUFFIXES = {".ogg", ".mp3", ".opus", ".flac"}
MIN_TRACK_BYTES = 500_000  # skip sound effects and jingles
# Larger sets with predictable content, for tests of text search: orchestral (Wesnoth) and electronic (Nexuiz)
ORCHESTRAL_PACKAGE, ELECTRONIC_PACKAGE = "wesnoth-1.16-music", "nexuiz-music"
ARCHIVE_SUFFIXES = {".pk3", ".zip"}  # some games keep their music in a zip


class DemoLibraryError(RuntimeError):
    pass


def _apt_download(package: str, into: Path) -> Path:
    def attempt() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, text=True)

    if shutil.which("apt-get") is None:
        raise DemoLibraryError("apt-get is not available: pass --music-dir to point the sidecar at your music")
    result = attempt()
    if result.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update"], capture_output=True)
        result = attempt()
    if result.returncode != 0:
        raise DemoLibraryError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
    return next(into.glob(f"{package}_*.deb"))


def fetch_demo_library(dest: Path, packages: tuple[str, ...] = DEMO_PACKAGES) -> list[Path]:
    """Put the packages' music tracks under dest/<package>/ and return their paths. Idempotent."""
    dest.mkdir(parents=True, exist_ok=True)
    tracks: list[Path] = []
    for package in packages:
        target = dest / package
        if not (target / ".complete").exists():
            with tempfile.TemporaryDirectory() as tmp:
                tmp_path = Path(tmp)
                deb = _apt_download(package, tmp_path)
                subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")], check=True)
                target.mkdir(exist_ok=True)
                for f in sorted((tmp_path / "root").rglob("*")):
                    if f.suffix.lower() in MUSIC_SUFFIXES and f.is_file() and f.stat().st_size >= MIN_TRACK_BYTES:
                        shutil.copy2(f, target / f.name)
                    elif f.suffix.lower() in ARCHIVE_SUFFIXES and f.is_file():
                        _extract_music(f, target)
            (target / ".complete").touch()
        tracks += sorted(p for p in target.iterdir() if p.suffix.lower() in MUSIC_SUFFIXES)
    return tracks


def _extract_music(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            name = Path(info.filename).name
            if Path(name).suffix.lower() in MUSIC_SUFFIXES and info.file_size >= MIN_TRACK_BYTES:
                (target / name).write_bytes(z.read(info))


def demo_music_dir(data_dir: Path) -> Path:
    """The demo library's folder, fetched if needed (used when no music folder is configured)."""
    root = data_dir / "demo-music"
    fetch_demo_library(root)
    return root
