"""The same recording in other files (sidecar/data/recordings.py): real audio re-encoded, made quieter and trimmed,
analysed by the real pipeline (`sidecar scan`), is recorded as a duplicate of its original while distinct tracks
of one album are not; a playlist holds one file of a recording unless the settings allow more."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.data.recordings import Recordings, contour, same_contour, similar_descriptors

pytestmark = pytest.mark.slow


# ------------------------------------------------------------------------------------------- the lists' rule
def test_a_list_keeps_the_best_ranked_file_of_each_recording_and_none_of_a_taken_one():
    r = Recordings({"a": "a", "a2": "a", "a3": "a", "b": "b", "b2": "b"})
    assert r.distinct(["x", "a2", "b", "a", "y", "b2", "a3", "z"]) == ["x", "a2", "b", "y", "z"]
    assert r.distinct(["x", "a2", "b", "a", "y"], 3) == ["x", "a2", "b"]  # filled from further down, to the limit
    assert r.distinct([("a3", 0.9), ("c", 0.8), ("a", 0.7), ("y", 0.6)], key=lambda h: h[0], taken=["a2"]) == [("c", 0.8), ("y", 0.6)]
    assert r.distinct(iter(["y", "c", "x"]), 2, taken=["c"]) == ["y", "x"]  # a taken track itself is left out too
    # `spare` bounds what distinct leaves out: the files after the first of each group, and the taken tracks
    assert r.spare() == 3 and r.spare(["a", "q"]) == 5
    assert Recordings().distinct(["a", "a2", "a3"]) == ["a", "a2", "a3"]  # no groups: every track its own recording


def test_stage_one_needs_close_durations_and_close_descriptors():
    x = [9.5, 0.12, 7.5, 0.7]
    assert similar_descriptors(200.0, x, 195.0, [11.0, 0.125, 7.55, 0.72])  # a trimmed, re-mastered copy
    assert not similar_descriptors(200.0, x, 240.0, x)  # 40 s longer
    assert not similar_descriptors(200.0, x, 200.0, [9.5, 0.14, 7.5, 0.7])  # another rhythm
    # short tracks get wider tolerances: the same difference passes at 60 s (x3), not at 200 s
    assert similar_descriptors(60.0, x, 60.0, [9.5, 0.135, 7.5, 0.7]) and not similar_descriptors(200.0, x, 200.0, [9.5, 0.135, 7.5, 0.7])
    # it broadcasts: one track against many
    many = similar_descriptors(np.array([200.0, 200.0, 260.0]), np.array([x, [9.5, 0.2, 7.5, 0.7], x]), 200.0, x)
    assert many.tolist() == [True, False, False]


def test_stage_two_tells_a_recording_from_another_by_its_loudness_contour(demo_tracks):
    """Real music: a quieter file trimmed by a fraction of the contour's step is the same; two tracks of one album
    are not, nor is a track too short to tell."""
    from plugins.embedders.dsp import SR, loudness_contour
    from sidecar.pipeline.audio import decode

    y, other = (decode(p).at(SR) for p in sorted(p for p in demo_tracks if p.parent.name == "frozen-bubble-data")[:2])
    a = contour(loudness_contour(y))
    assert same_contour(a, contour(loudness_contour(0.5 * y[int(1.37 * SR) :])))  # -6 dB, 1.37 s trimmed
    assert same_contour(a, contour(loudness_contour(y[int(0.06 * SR) :])))  # half a step: the worst offset
    assert not same_contour(a, contour(loudness_contour(other)))
    assert contour(loudness_contour(y[: 5 * SR])) is None and not same_contour(a, None)


# ---------------------------------------------------------------------------------------- real audio, pipeline
@pytest.fixture(scope="module")
def copies_library(tmp_path_factory, models_dir) -> dict:
    """Full real tracks: A (Wesnoth), three altered files of A (MP3, -6 dB, trimmed 2.4 s + 1.1 s), two other
    tracks of A's album and three electronic tracks, analysed by `sidecar scan` with A first, the copies after."""
    import soundfile as sf
    from typer.testing import CliRunner

    from sidecar.cli import app
    from sidecar.demo import ELECTRONIC_PACKAGE, ORCHESTRAL_PACKAGE, fetch_demo_library
    from tests.conftest import CACHE

    orchestral = sorted(fetch_demo_library(CACHE / "music", (ORCHESTRAL_PACKAGE,)))
    electronic = sorted(fetch_demo_library(CACHE / "music", (ELECTRONIC_PACKAGE,)))
    long = [t for t in orchestral if 150 <= sf.info(t).duration <= 240][:3]
    root = tmp_path_factory.mktemp("copies")
    music, data = root / "music", root / "data"
    music.mkdir()
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    original = music / "orig.ogg"
    shutil.copy(long[0], original)
    scan = lambda: CliRunner().invoke(app, ["scan", str(music), "--data-dir", str(data)])  # noqa: E731
    result = scan()
    assert result.exit_code == 0 and "1 analysed" in result.output, result.output

    y, sr = sf.read(original, dtype="float32", always_2d=True)
    sf.write(music / "orig.mp3", y, sr, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(music / "orig-6db.flac", y * np.float32(10 ** (-6 / 20)), sr, format="FLAC", subtype="PCM_16")
    sf.write(music / "orig-trimmed.flac", y[int(2.4 * sr) : len(y) - int(1.1 * sr)], sr, format="FLAC", subtype="PCM_16")
    for i, t in enumerate(long[1:]):
        shutil.copy(t, music / f"album-{i}.ogg")
    for i, t in enumerate(electronic[:3]):
        shutil.copy(t, music / f"other-{i}{t.suffix}")
    result = scan()
    assert result.exit_code == 0 and "8 analysed" in result.output, result.output
    return {"music": music, "data": data}


def test_altered_files_of_a_recording_are_recorded_as_duplicates_of_the_first(copies_library):
    from sidecar.data.catalog import Catalog

    catalog = Catalog(copies_library["data"] / "catalog.sqlite3")
    try:
        at = catalog.track_ids_at(str(p) for p in copies_library["music"].iterdir())
        by_name = {Path(p).name: t for p, t in at.items()}
        a = by_name["orig.ogg"]
        assert [catalog.track(by_name[n])["duplicate_of"] for n in ("orig.mp3", "orig-6db.flac", "orig-trimmed.flac")] == [a] * 3
        others = [t for n, t in by_name.items() if not n.startswith("orig")]
        assert len(others) == 5 and all(catalog.track(t)["duplicate_of"] is None for t in others + [a])
        assert set(catalog.recording_groups()) == {a, by_name["orig.mp3"], by_name["orig-6db.flac"], by_name["orig-trimmed.flac"]}
    finally:
        catalog.close()


async def similar_to_a(copies_library, **settings) -> tuple[list[str], dict[str, str], dict]:
    """GET /api/similar_tracks for A on a sidecar with `settings`: the file names answered, in order; the names by
    id; A's track detail."""
    from sidecar.config import Settings
    from sidecar.http.app import make_app
    from sidecar.service import Sidecar

    sc = Sidecar(Settings(music_dir=[copies_library["music"]], data_dir=copies_library["data"], **settings))
    await sc.open()
    try:
        names = {t: Path(p).name for p, t in sc.catalog.track_ids_at(str(p) for p in copies_library["music"].iterdir()).items()}
        a = next(t for t, n in names.items() if n == "orig.ogg")
        async with TestClient(TestServer(make_app(sc))) as client:
            r = await client.get("/api/similar_tracks", params={"item_id": a, "n": "5"})
            body = await r.json()
            assert r.status == 200, body
            detail = await (await client.get(f"/api/tracks/{next(t for t, n in names.items() if n == 'orig.mp3')}")).json()
        return [names[h["item_id"]] for h in body], names, dict(detail, a=a)
    finally:
        await sc.close()


async def test_a_playlist_holds_one_file_of_a_recording_unless_the_settings_allow_more(copies_library):
    default, _, detail = await similar_to_a(copies_library)
    assert detail["duplicate_of"] == detail["a"]  # the track detail says which track it is another file of
    # A's own other files are left out, and the list is filled from further down: five other recordings
    assert len(default) == 5 and not any(n.startswith("orig") for n in default), default
    allowed, _, _ = await similar_to_a(copies_library, allow_duplicate_recordings=True)
    assert allowed[0] == "orig.mp3" and {"orig.mp3", "orig-6db.flac", "orig-trimmed.flac"} <= set(allowed), allowed
