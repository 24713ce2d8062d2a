"""The Kafka broker going away for a while and coming back (issue #6): the sidecar holds the library changes
it could not publish, reconnects, and every track ends analysed exactly once; nothing is lost.

The broker is a real Tansu on s3:// storage (moto), killed with SIGKILL and started again on the same port;
the sidecar runs whole (watcher, walk, ingest consumer on the Kafka bus, real models, Milvus Lite)."""
from __future__ import annotations

import asyncio
import shutil
import time

import pytest

from sidecar.config import Settings
from sidecar.service import Sidecar
from tests.kafka_broker import unique_name
from tests.test_bad_input import service_is_up
from tests.test_ingest import until_idle

pytestmark = pytest.mark.slow

OUTAGE_S = 8


async def test_the_sidecar_rides_out_a_broker_outage(durable_kafka, tmp_path, models_dir, music_dir, genre_excerpts):
    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    settings = Settings(
        music_dir=[music_dir], data_dir=data, reconcile_interval_s=0, debounce_s=0.3, bus="kafka",
        kafka_bootstrap=durable_kafka.bootstrap, kafka_topic=unique_name("library"), kafka_dead_letter_topic=unique_name("dead"),
        kafka_session_timeout_ms=2000, kafka_heartbeat_interval_ms=500,
    )
    sc = Sidecar(settings)
    await sc.start(watch=True)
    try:
        await until_idle(sc)
        assert sc.catalog.counts()["tracks"] == 5
        doomed = sorted(music_dir.iterdir())[0]

        durable_kafka.kill()
        new = []
        for i, src in enumerate(genre_excerpts["electronic"][:4]):  # changes that come due while the broker is away
            shutil.copy(src, music_dir / f"during-outage-{i}.ogg")
            new.append(music_dir / f"during-outage-{i}.ogg")
            await asyncio.sleep(OUTAGE_S / 8)
        doomed.unlink()
        await asyncio.sleep(OUTAGE_S / 2)
        assert sc.watcher.busy and service_is_up(sc)  # holding what it could not publish; nothing crashed

        await asyncio.to_thread(durable_kafka.start)  # start_tansu runs its own event loop to probe the broker
        deadline = time.monotonic() + 240
        while any(sc.catalog.file(str(p)) is None for p in new) or sc.catalog.file(str(doomed)) is not None:
            assert time.monotonic() < deadline, (sc.worker.stats, sc.catalog.counts())
            await asyncio.sleep(0.3)
        await until_idle(sc)

        files = sorted(str(p) for p in music_dir.iterdir())
        assert sorted(r["path"] for r in sc.catalog._q("SELECT path FROM files")) == files  # none lost, the removal kept
        tracks = {r["track_id"] for r in sc.catalog._q("SELECT track_id FROM tracks")}
        assert len(tracks) == len(files) == 8
        for model in ("musicnn", "dsp"):
            assert sorted(await asyncio.to_thread(sc.store.all_ids, model)) == sorted(tracks)  # one vector each
        assert sc.worker.stats.embedded == 9  # 5 + 4: each track analysed exactly once, none again after the restart

        # the broker dies while a track is being analysed: its offset is committed once the broker is back (or,
        # if the commit fails, the event comes back and finds the track stored); either way it is analysed once
        late = music_dir / "during-analysis.ogg"
        shutil.copy(genre_excerpts["electronic"][4], late)
        deadline = time.monotonic() + 60
        while sc.worker.stats.current != str(late):
            assert time.monotonic() < deadline, sc.worker.stats
            await asyncio.sleep(0.02)
        durable_kafka.kill()
        await asyncio.sleep(OUTAGE_S / 2)
        assert service_is_up(sc)
        await asyncio.to_thread(durable_kafka.start)
        deadline = time.monotonic() + 120
        while sc.catalog.file(str(late)) is None:
            assert time.monotonic() < deadline, sc.worker.stats
            await asyncio.sleep(0.3)
        await until_idle(sc)
        assert sc.catalog.counts()["tracks"] == 9
        assert sc.worker.stats.embedded == 10
        assert not sc.catalog.failures() and await sc.bus.dead_letters() == []
    finally:
        await sc.close()
