"""The ingest pipeline in-process on real music and real models: bad files, tag edits, replays, dead letters."""
from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import mutagen
import pytest

from schemas.events import ScanCompleted, TrackUpserted
from sidecar import metrics
from sidecar.config import Settings
from sidecar.service import Sidecar

pytestmark = pytest.mark.slow


async def until_idle(sc: Sidecar, timeout: float = 120, processed: int = 0) -> None:
    """Until at least `processed` events were handled in all and nothing is left. (Kafka's lag is known only
    from the last fetch, so right after a publish the bus can look idle: count what was sent.)"""
    deadline = time.monotonic() + timeout
    while sc.worker.stats.processed < processed or not await sc.is_idle():
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"ingest did not finish: {sc.worker.stats}; lag {await sc.lag()}, reconciled {sc.reconciled.is_set()}, "
                f"idle {sc.idle.is_set()}, watcher busy {bool(sc.watcher and sc.watcher.busy)}, "
                f"{len(await sc.bus.dead_letters())} dead letters"
            )
        await asyncio.sleep(0.1)


async def reconcile(sc: Sidecar) -> None:
    """Walk the roots now, as the periodic walk would, and wait for what it sent."""
    before = sc.worker.stats.processed
    sent = await sc.reconciler.run(sc.roots)
    await until_idle(sc, processed=before + sent)


@pytest.fixture(params=["embedded", "kafka"])
def bus_settings(request) -> dict:
    """The same pipeline tests over both buses: the embedded log, and Kafka on a real broker."""
    if request.param == "embedded":
        return {"bus": "embedded"}
    from tests.kafka_broker import unique_name

    return {
        "bus": "kafka", "kafka_bootstrap": request.getfixturevalue("kafka_bootstrap"),
        "kafka_topic": unique_name("library"), "kafka_dead_letter_topic": unique_name("dead"),
        "kafka_session_timeout_ms": 2000, "kafka_heartbeat_interval_ms": 500,
    }


@pytest.fixture
async def running(tmp_path, models_dir, music_dir, bus_settings):
    """A started sidecar (no HTTP, no watcher: events come from the start-up walk and the test)."""
    made: list[Sidecar] = []

    async def start(**overrides) -> Sidecar:
        data = tmp_path / "data"
        data.mkdir(exist_ok=True)
        if not (data / "models").exists():
            (data / "models").symlink_to(models_dir)
        settings = Settings(music_dir=[music_dir], data_dir=data, reconcile_interval_s=0, **bus_settings, **overrides)
        sc = Sidecar(settings)
        made.append(sc)
        await sc.start(watch=False)
        await until_idle(sc)
        return sc

    yield start
    for sc in made:
        await sc.close()


def model_rows(sc: Sidecar) -> dict[tuple[str, str], float]:
    rows = sc.catalog._q("SELECT track_id, model, updated_at FROM embeddings WHERE status = 'done'")
    return {(r["track_id"], r["model"]): r["updated_at"] for r in rows}


async def test_bad_files_are_recorded_with_reasons_and_the_rest_goes_on(running, music_dir, excerpts):
    (music_dir / "empty.ogg").write_bytes(b"")
    (music_dir / "notes.flac").write_text("this is a text file, not FLAC\n" * 20)
    good = excerpts[0].read_bytes()
    (music_dir / "truncated.ogg").write_bytes(good[: len(good) // 50])  # the header and a fraction of a second
    (music_dir / "garbage.mp3").write_bytes(bytes(range(256)) * 400)

    sc = await running()
    reasons = {Path(f["path"]).name: f["reason"] for f in sc.catalog.failures()}
    assert "0 bytes" in reasons["empty.ogg"]
    assert "cannot decode" in reasons["notes.flac"]
    assert "cannot decode" in reasons["garbage.mp3"]
    assert "too short" in reasons["truncated.ogg"] or "cannot decode" in reasons["truncated.ogg"]
    counts = sc.catalog.counts()
    assert counts["tracks"] == 5 and counts["failed_files"] == 4
    assert counts["models"]["musicnn"]["done"] == 5 and counts["models"]["dsp"]["done"] == 5

    # a failed file is not retried while unchanged, and is analysed once it is fixed
    embedded = sc.worker.stats.embedded
    await reconcile(sc)
    assert sc.worker.stats.embedded == embedded
    shutil.copy(excerpts[6], music_dir / "truncated.ogg")
    await reconcile(sc)
    assert sc.worker.stats.embedded == embedded + 1
    assert "truncated.ogg" not in {Path(f["path"]).name for f in sc.catalog.failures()}

    # one call retries every failure: each is tried again (and, still broken, recorded again)
    retried = sc.catalog.clear_failures()
    assert {Path(p).name for p in retried} == {"empty.ogg", "notes.flac", "garbage.mp3"} and not sc.catalog.failures()
    before = sc.worker.stats.processed
    for p in retried:
        await sc.bus.publish(TrackUpserted(path=p, source="retry"))
    await until_idle(sc, processed=before + 3)
    assert {Path(f["path"]).name for f in sc.catalog.failures()} == {"empty.ogg", "notes.flac", "garbage.mp3"}


async def test_a_tag_edit_runs_no_model_but_updates_the_metadata(running, music_dir):
    sc = await running()
    before = model_rows(sc)
    path = sorted(music_dir.glob("*.ogg"))[0]
    f = mutagen.File(path, easy=True)
    f["title"], f["artist"] = "A New Title", "Somebody"
    f.save()

    await reconcile(sc)
    track_id = sc.catalog.file(str(path)).track_id
    track = sc.catalog.track(track_id)
    assert (track["title"], track["artist"]) == ("A New Title", "Somebody")
    assert model_rows(sc) == before  # no model ran
    assert sc.catalog.file(str(path)).size == path.stat().st_size  # the new file state is remembered


async def test_replay_reembeds_each_track_once_and_keeps_one_vector_per_model(running, music_dir):
    sc = await running()
    before = model_rows(sc)
    tracks = {k[0] for k in before}
    # the log now also holds duplicate upserts of every file: a replay meets each track twice
    before_n = sc.worker.stats.processed
    files = sorted(music_dir.glob("*.ogg"))
    for p in files:
        st = p.stat()
        await sc.bus.publish(TrackUpserted(path=str(p), size=st.st_size, mtime_ns=st.st_mtime_ns, source="test"))
    await until_idle(sc, processed=before_n + len(files))
    dsp_before = metrics.EMBEDDED.labels("dsp")._value.get()

    before_n = sc.worker.stats.processed
    await sc.worker.replays.request(["dsp"])
    await until_idle(sc, processed=before_n + 1)
    await sc.worker.replays.wait()
    after = model_rows(sc)
    assert {t for t, _ in after} == tracks
    for t in tracks:
        assert after[(t, "dsp")] > before[(t, "dsp")]  # re-embedded
        assert after[(t, "musicnn")] == before[(t, "musicnn")]  # untouched
    assert metrics.EMBEDDED.labels("dsp")._value.get() - dsp_before == len(tracks)  # once each, not twice
    for model in ("musicnn", "dsp"):
        ids = await asyncio.to_thread(sc.store.all_ids, model)
        assert sorted(ids) == sorted(tracks)
    assert [r["status"] for r in sc.catalog.replays()] == ["done"]


async def test_malformed_and_foreign_events_go_to_dead_letters_and_the_pipeline_goes_on(running, music_dir, excerpts):
    sc = await running()
    before_n = sc.worker.stats.processed
    malformed = metrics.MALFORMED._value.get()
    await sc.bus.publish_raw(b"k", b"{not json")
    await sc.bus.publish_raw(b"k", b'{"type": "track.upserted", "path": ""}')
    await sc.bus.publish(TrackUpserted(path="/etc/passwd", source="test"))
    await sc.bus.publish(TrackUpserted(path=str(music_dir / ".." / ".." / "x.ogg"), source="test"))
    shutil.copy(excerpts[7], music_dir / "after.ogg")
    await sc.bus.publish(TrackUpserted(path=str(music_dir / "after.ogg"), source="test"))
    await until_idle(sc, processed=before_n + 5)

    reasons = [r for _, r in await sc.bus.dead_letters()]
    assert len(reasons) == 4
    assert sum("invalid event" in r for r in reasons) == 2 and any("path" in r for r in reasons)
    assert sum("outside the music roots" in r for r in reasons) == 2
    assert metrics.MALFORMED._value.get() - malformed == 2
    assert sc.catalog.file(str(music_dir / "after.ogg")) is not None  # the valid event after them was processed


async def test_a_scan_completed_event_makes_the_worker_walk_the_library(running, music_dir, excerpts):
    sc = await running()
    shutil.copy(excerpts[7], music_dir / "late.ogg")  # no watcher here: only a walk can find it
    before = sc.worker.stats.processed
    await sc.bus.publish(ScanCompleted(source="test"))
    await until_idle(sc, processed=before + 2)  # the scan event, then the upsert it caused
    assert sc.catalog.file(str(music_dir / "late.ogg")) is not None
    assert sc.catalog.counts()["models"]["musicnn"]["done"] == 6


def test_replay_from_the_cli_checks_its_arguments(tmp_path):
    from typer.testing import CliRunner

    from sidecar.cli import app

    result = CliRunner().invoke(app, ["replay", "--models", "nosuchmodel", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "nosuchmodel" in result.output
    result = CliRunner().invoke(app, ["replay", "--data-dir", str(tmp_path), "--port", "1"])
    assert result.exit_code == 2 and "--music-dir" in result.output


def test_a_model_failure_is_retried_with_backoff_but_unusable_audio_is_not(excerpts):
    from plugins.embedders.dsp import DspEmbedder
    from sidecar.pipeline.audio import decode
    from sidecar.pipeline.handlers import MODEL_ATTEMPTS, EventHandlers
    from sidecar.plugins import LoadedEmbedders

    class FailsOnce(DspEmbedder):  # the real DSP analysis behind a passing fault
        calls = 0

        def embed(self, audio):
            FailsOnce.calls += 1
            if FailsOnce.calls == 1:
                raise MemoryError("out of memory for a moment")
            return super().embed(audio)

    class Refuses(DspEmbedder):
        calls = 0

        def embed(self, audio):
            Refuses.calls += 1
            raise ValueError("this audio is of no use to me")

    handlers = EventHandlers(None, None, LoadedEmbedders(ready={"dsp": FailsOnce(), "other": Refuses()}), [])
    try:
        out = handlers.embed(decode(excerpts[0]), ["dsp", "other"])
    finally:
        handlers.close()
    result, _, error = out["dsp"]
    assert error is None and len(result.vector) == 52 and FailsOnce.calls == 2
    assert out["other"][0] is None and "of no use" in out["other"][2] and Refuses.calls == 1 < MODEL_ATTEMPTS
