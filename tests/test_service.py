"""The real `sidecar serve`, as a subprocess, on real music: freshness, restarts, moves, deletes, SIGKILL."""
from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.sidecar_process import SidecarProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def make_sidecar(tmp_path, models_dir, music_dir):
    started: list[SidecarProcess] = []

    def make(**env) -> SidecarProcess:
        sc = SidecarProcess(music_dir, tmp_path / "data", models_dir, tmp_path / "sidecar.log", **env)
        started.append(sc)
        return sc

    yield make
    for sc in started:
        sc.kill()


def embedded_seconds(sc: SidecarProcess, track_id: str) -> dict[str, float]:
    return {m: r["seconds"] for m, r in sc.get(f"/api/tracks/{track_id}")["models"].items()}


def test_copied_ogg_is_recommended_within_its_embedding_time_plus_3_seconds(make_sidecar, music_dir, demo_tracks):
    sc = make_sidecar().start()
    sc.wait_idle()
    other = next(iter(sc.tracks().values()))["track_id"]
    new_ogg = next(t for t in demo_tracks if t.name == "music-2.ogg")  # an untouched original OGG, 60 s

    t0 = time.monotonic()
    shutil.copy(new_ogg, music_dir / "new arrival.ogg")
    found = None
    while time.monotonic() - t0 < 60 and found is None:
        hits = sc.get("/api/similar_tracks", item_id=other, n=50)
        found = next((h for h in hits if h["title"] == "new arrival"), None)
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    assert found is not None, sc.log()
    assert 0 < found["distance"] < 2 and found["author"] is None and found["album"] == "music"
    seconds = embedded_seconds(sc, found["item_id"])
    assert set(seconds) == {"musicnn", "dsp"}
    assert elapsed <= sum(seconds.values()) + 3.0, (elapsed, seconds)

    # the track's detail carries its tags, features and per-model status
    detail = sc.get(f"/api/tracks/{found['item_id']}")
    assert detail["paths"] == [str(music_dir / "new arrival.ogg")] and 59 < detail["duration_s"] < 62
    tags = detail["models"]["musicnn"]["tags"]  # the 50 MSD tags and the 50 MagnaTagATune ones ("mtt:...")
    assert len(tags) == 100 and sum(t.startswith("mtt:") for t in tags) == 50 and detail["models"]["musicnn"]["status"] == "done"
    assert 40 <= detail["models"]["dsp"]["features"]["tempo_bpm"] <= 250
    assert [t["track_id"] for t in sc.get("/api/tracks", query="new arr")["tracks"]] == [found["item_id"]]

    # bad input: a 4xx whose JSON body names the field, never a 500
    for params, status, field in [
        ({}, 400, "item_id"), ({"item_id": other, "n": 0}, 400, "n"), ({"item_id": other, "n": 100000}, 400, "n"),
        ({"item_id": other, "n": "many"}, 400, "n"), ({"item_id": "nope"}, 404, "item_id"),
        ({"item_id": other, "model": "nosuch"}, 400, "model"), ({"item_id": other, "x": 1}, 400, "x"),
    ]:
        code, body = sc.get_status("/api/similar_tracks", **params)
        assert (code, body.get("field")) == (status, field), (params, code, body)
    assert sc.get_status("/api/tracks/nope") == (404, {"error": "no track with id 'nope'", "field": "track_id"})
    assert sc.get_status("/api/tracks", limit=0)[0] == 400
    assert sc.get_status("/no/such/route")[0] == 404


def test_metrics_parse_as_prometheus_text_and_count_the_work(make_sidecar):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    sc = make_sidecar().start()
    sc.wait_idle()
    with urllib.request.urlopen(f"http://127.0.0.1:{sc.port}/metrics") as r:
        families = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
    embedded = {s.labels["model"]: s.value for s in families["sidecar_tracks_embedded"].samples if s.name.endswith("_total")}
    assert embedded == {"musicnn": 5.0, "dsp": 5.0}
    assert any(s.labels.get("stage") == "musicnn" for s in families["sidecar_stage_seconds"].samples)
    assert families["sidecar_queue_depth"].samples[0].value == 0  # idle: nothing waits on the bus
    served = {(s.labels["route"], s.labels["status"]) for s in families["sidecar_http_request_seconds"].samples}
    assert ("/api/status", "200") in served  # wait_idle polled it; routes by pattern, not by path


def test_restart_embeds_nothing_a_move_runs_no_model_and_a_delete_removes(make_sidecar, music_dir):
    sc = make_sidecar().start()
    first = sc.wait_idle()
    assert first["ingest"]["embedded"] == 5 and first["models"]["musicnn"]["done"] == 5
    before = sc.tracks()
    ids = {t["track_id"] for t in before.values()}
    seconds = {tid: embedded_seconds(sc, tid) for tid in ids}
    sc.stop()

    # a move while the sidecar is down is found by the start-up walk, by content: same identity, no model run
    moved_offline = sorted(music_dir.glob("*.ogg"))[0]
    (music_dir / "sub").mkdir()
    moved_offline.rename(music_dir / "sub" / moved_offline.name)
    sc.start()
    again = sc.wait_idle()
    assert again["ingest"]["embedded"] == 0, sc.log()
    after = sc.tracks()
    assert {t["track_id"] for t in after.values()} == ids
    assert after[str(music_dir / "sub" / moved_offline.name)]["track_id"] == before[str(moved_offline)]["track_id"]
    assert {tid: embedded_seconds(sc, tid) for tid in ids} == seconds  # nothing was recomputed

    # a move while serving (the watcher's move event): no model runs, the id follows the file
    victim = sorted(music_dir.glob("*.ogg"))[0]
    victim_id = before[str(victim)]["track_id"]
    victim.rename(music_dir / "renamed.ogg")
    deadline = time.time() + 10
    while str(music_dir / "renamed.ogg") not in sc.tracks() and time.time() < deadline:
        time.sleep(0.1)
    st = sc.wait_idle()
    assert sc.tracks()[str(music_dir / "renamed.ogg")]["track_id"] == victim_id
    assert st["ingest"]["embedded"] == 0 and st["tracks"] == 5

    # a delete removes the track from results and from the catalog
    anchor = next(tid for tid in ids if tid != victim_id)
    assert victim_id in {h["item_id"] for h in sc.get("/api/similar_tracks", item_id=anchor, n=50)}
    os.remove(music_dir / "renamed.ogg")
    deadline = time.time() + 10
    while victim_id in {h["item_id"] for h in sc.get("/api/similar_tracks", item_id=anchor, n=50)}:
        assert time.time() < deadline, sc.log()
        time.sleep(0.1)
    assert sc.get_status(f"/api/tracks/{victim_id}")[0] == 404
    assert sc.wait_idle()["tracks"] == 4


def test_sigkill_during_ingest_loses_no_track_and_duplicates_no_vector(make_sidecar, music_dir, excerpts, tmp_path):
    for t in excerpts[5:]:  # a bigger library, so the kill lands mid-ingest
        shutil.copy2(t, music_dir / t.name)
    n_files = len(list(music_dir.glob("*.ogg")))
    sc = make_sidecar().start()
    deadline = time.time() + 120
    while (st := sc.get("/api/status"))["ingest"]["embedded"] < 2:
        assert time.time() < deadline, sc.log()
        time.sleep(0.05)
    sc.kill()  # SIGKILL: no clean-up runs
    assert st["models"].get("musicnn", {}).get("done", 0) < n_files, "the kill came too late to test anything"

    sc.start()
    final = sc.wait_idle()
    assert final["tracks"] == n_files and final["files"] == n_files
    assert final["models"]["musicnn"] == {"done": n_files, "failed": 0}
    assert final["models"]["dsp"] == {"done": n_files, "failed": 0}
    sc.stop()

    from sidecar.data.store import VectorStore

    store = VectorStore(str(tmp_path / "data" / "milvus.db"))
    try:
        for model in ("musicnn", "dsp"):
            stored = store.all_ids(model)
            assert len(stored) == len(set(stored)) == n_files, (model, stored)
    finally:
        store.close()
