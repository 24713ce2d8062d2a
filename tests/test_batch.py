"""The re-embed (a replay of the library's events): progress, ETA, cancel, one at a time, search answering
throughout, and resuming after SIGKILL. On the 51 analysed real tracks."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.http.app import make_app
from sidecar.data.store import VectorStore

pytestmark = pytest.mark.slow


def dsp_times(catalog) -> dict[str, float]:
    return {r["track_id"]: r["updated_at"] for r in catalog._q("SELECT track_id, updated_at FROM embeddings WHERE model = 'dsp'")}


async def test_reembed_over_http_progress_cancel_and_search_throughout(open_sidecar, copy_library):
    sc = await open_sidecar(copy_library)
    anchor = sc.store.mirrors["musicnn"].ids[0]
    before = dsp_times(sc.catalog)
    async with TestClient(TestServer(make_app(sc))) as client:
        assert (await client.get("/api/batch/progress")).status == 404  # nothing has run yet
        r = await client.post("/api/batch/start", json={"models": ["dsp"]})
        first = await r.json()
        assert r.status == 202 and first["status"] == "running" and first["models"] == ["dsp"]
        r = await client.post("/api/batch/start", json={"models": ["dsp"]})
        assert r.status == 409 and first["replay_id"] in (await r.json())["error"]
        while (p := await (await client.get("/api/batch/progress")).json())["processed"] < 3:
            r = await client.get("/api/similar_tracks", params={"item_id": anchor, "n": 5})  # search keeps answering
            assert r.status == 200 and len(await r.json()) == 5
            await asyncio.sleep(0.05)
        assert p["total"] == 52 and p["eta_s"] is not None and p["rate_per_s"] > 0  # 51 tracks + the request itself
        r = await client.post("/api/batch/cancel")
        cancelled = await r.json()
        assert r.status == 200 and cancelled["status"] == "cancelled" and cancelled["processed"] < 52
        assert (await client.post("/api/batch/cancel")).status == 409
        assert sc.catalog.replay(first["replay_id"])["status"] == "cancelled"

        # a full run, followed as server-sent events
        r = await client.post("/api/batch/start", json={"models": ["dsp"]})
        assert r.status == 202
        events = []
        async with client.get("/api/batch/progress", headers={"Accept": "text/event-stream"}) as stream:
            async for line in stream.content:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
        assert events[-1]["status"] == "done" and events[-1]["processed"] == 53 and events[-1]["embedded"] == 51
        assert len(events) >= 2 and events[0]["processed"] <= events[-1]["processed"]
    after = dsp_times(sc.catalog)
    assert all(after[t] > before[t] for t in before)  # every track re-embedded
    assert sorted(sc.store.all_ids("dsp")) == sorted(before)  # one vector each, none lost

    async with TestClient(TestServer(make_app(sc))) as client:
        for body, field in [({"models": ["nosuch"]}, "models"), ({"scope": "/etc"}, "scope"), ({"colour": 1}, "colour")]:
            r = await client.post("/api/batch/start", json=body)
            assert (r.status, (await r.json())["field"]) == (400, field)


def test_cli_replay_shows_progress_and_resumes_after_sigkill(analysed_library, copy_library):
    # both models on one worker: long enough (some seconds) to be caught mid-run by the 3-second progress lines
    env = dict(os.environ, SIDECAR_PORT="1", SIDECAR_INGEST_WORKERS="1", PYTHONUNBUFFERED="1", COLUMNS="120")
    args = [sys.executable, "-m", "sidecar.cli", "replay", "--models", "musicnn,dsp",
            "--music-dir", str(analysed_library["music"]), "--data-dir", str(copy_library)]
    log = copy_library / "replay.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not re.search(r"re-embed: ([1-9]\d*)/52 events, ETA \d+ s", log.read_text(errors="replace")):
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert " done: " not in log.read_text(errors="replace")  # killed mid-run, progress and ETA on screen

    resumed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming replay" in resumed.stdout + resumed.stderr and " done: " in resumed.stdout + resumed.stderr

    store = VectorStore(str(copy_library / "milvus.db"))
    try:
        for model in ("musicnn", "dsp"):
            ids = store.all_ids(model)
            assert len(ids) == len(set(ids)) == 51
    finally:
        store.close()
