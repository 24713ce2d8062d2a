"""Clustering the library into playlists: the purity/diversity metrics on small exact cases, then the job API
on real music whose kind is known (34 orchestral Wesnoth tracks, 17 electronic Nexuiz ones)."""
from __future__ import annotations

import asyncio
import re
import time

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from schemas.clustering import ClusteringStart
from sidecar.clustering.job import Job
from sidecar.clustering.jobs import run_job
from sidecar.clustering.library import Library
from sidecar.clustering.playlists import build_playlists, playlist_name, tag_label
from sidecar.clustering.scoring import TagStats, identity_distances, score_partition, select_diverse
from sidecar.clustering.search import enforce_sizes, search, stratified_sample

NAME = re.compile(r"^[A-Z0-9][\w&-]*( [\w&-]+)*( · [A-Z0-9][\w&-]*( [\w&-]+)*)+( · (Slow|Moderate|Fast|Very fast) \(\d+ BPM\))?$")


# ------------------------------------------------------------------------------------ metrics, exactly
def two_kinds(n_each: int = 6) -> np.ndarray:
    """Tag probabilities of two clear kinds: tags 0-2 high in the first, 3-5 in the second, with a little noise."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.0, 0.1, (2 * n_each, 50))
    p[:n_each, :3] += 0.6
    p[n_each:, 3:6] += 0.6
    return p


def test_purity_is_a_per_song_mean_not_a_sum_and_does_not_reward_tiny_clusters():
    p = two_kinds()
    truth = np.array([0] * 6 + [1] * 6)
    s = score_partition(truth, TagStats.of(p))
    # perfect: each song among the library's top half on its playlist's tags; the ceiling for 6 of 12 is 17/22
    assert s.purity == pytest.approx(1 - 5 / 22, abs=0.01) and s.diversity == pytest.approx(1.0)
    # the same library twice over: the seed's sum doubles, ours stays
    s2 = score_partition(np.concatenate([truth, truth]), TagStats.of(np.vstack([p, p])))
    assert s2.purity == pytest.approx(s.purity, abs=0.05)
    # one song per playlist: its defining tags come from no one else (leave-one-out) -> no purity at all
    assert score_partition(np.arange(12), TagStats.of(p)).purity == 0.0
    # songs left out (noise) count 0: dropping half the songs cannot raise purity
    half = truth.copy()
    half[::2] = -1
    assert score_partition(half, TagStats.of(p)).purity < s.purity
    # a random split is near the 0.5 baseline of percentile ranks
    rnd = np.array([0, 1] * 6)
    assert score_partition(rnd, TagStats.of(p)).purity < 0.65


def test_diversity_is_bounded_and_does_not_grow_with_the_number_of_playlists():
    mean = np.full(4, 0.25)
    same = identity_distances(np.array([[0.5, 0.2, 0.1, 0.2], [0.5, 0.2, 0.1, 0.2]]), mean)
    apart = identity_distances(np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1]]), mean)
    assert same[0, 1] == pytest.approx(0.0) and apart[0, 1] == pytest.approx(1.0)
    # splitting each kind into many copies of itself adds playlists, not diversity
    p = two_kinds()
    two = score_partition(np.array([0] * 6 + [1] * 6), TagStats.of(p)).diversity
    many = score_partition(np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]), TagStats.of(p)).diversity
    assert many < two


def test_sizes_are_enforced_by_splitting_then_trimming_and_top_n_keeps_the_most_different():
    rng = np.random.default_rng(1)
    blobs = np.repeat(np.eye(3)[[0, 1, 2, 0]] * np.array([[1], [1], [1], [-1]]), [10, 9, 9, 9], axis=0) * 10  # four groups, one cluster
    x = np.vstack([blobs + rng.normal(0, 0.1, blobs.shape), rng.normal(size=(3, 3))])
    labels = np.array([0] * 37 + [1] * 2 + [-1])
    out = enforce_sizes(labels, x, max_songs=10, min_songs=3, seed=0)
    assert (out[37:] == -1).all()  # the 2-song cluster is dropped
    assert sorted(np.bincount(out[out >= 0]).tolist()) == [9, 9, 9, 10]  # 37 songs split into ceil(37/10) parts, as grouped
    assert len({tuple(out[a:b]) for a, b in [(0, 10), (10, 19), (19, 28), (28, 37)]}) == 4
    # a part that is still too big is trimmed to the songs nearest its centroid
    out = enforce_sizes(np.zeros(40, int), rng.normal(size=(40, 3)), max_songs=10, min_songs=1, seed=0)
    assert np.bincount(out[out >= 0]).max() <= 10
    d = np.array([[0, 0.1, 0.9], [0.1, 0, 0.8], [0.9, 0.8, 0]])
    assert select_diverse(d, 2, np.array([5, 5, 5])) == [2, 0]
    assert sorted(select_diverse(d, 0, np.array([5, 5, 5]))) == [0, 1, 2]


def test_names_and_stratified_samples():
    assert playlist_name(["electronic", "dance", "House"], 128.2) == "Electronic · Dance · Fast (128 BPM)"
    assert playlist_name(["rnb", "female vocalists"], None) == "R&B · Female Vocalists"
    assert NAME.match(playlist_name(["Progressive rock", "80s"], 75))
    rng = np.random.default_rng(0)
    strata = np.array([0] * 90 + [1] * 6 + [2] * 4)
    sample = stratified_sample(rng, np.arange(100), 30, strata)
    assert len(sample) == len(set(sample.tolist())) == 30
    assert (strata[sample] == 2).sum() >= 4 and (strata[sample] == 1).sum() >= 5  # rare kinds are always in


def synthetic_library(n_each: int = 40) -> Library:
    """Two kinds of track, in the vectors and in the tags; a tempo for each."""
    rng = np.random.default_rng(3)
    vectors = np.vstack([rng.normal(0, 1, (n_each, 8)) + 4, rng.normal(0, 1, (n_each, 8)) - 4])
    tags = two_kinds(n_each)
    ids = [f"t{i}" for i in range(2 * n_each)]
    return Library(ids, ids, [None] * len(ids), vectors, tags, np.r_[np.full(n_each, 128.0), np.full(n_each, 70.0)])


def test_a_sampled_search_extends_its_best_solution_to_every_track():
    lib = synthetic_library()
    req = ClusteringStart(algorithms=["kmeans", "dbscan"], iterations=12, seed=5, sample_size=30, max_songs_per_playlist=25)
    job = Job("j", "m", req.algorithms, 5, req.iterations)
    best, feats, pcs = search(lib, req, job)
    assert job.done == 12 and len(best.rows) == 30 and best.labels.shape == (30,)
    playlists, _ = build_playlists(lib, best, feats, pcs, req)
    placed = [t.track_id for p in playlists for t in p.tracks]
    assert len(placed) == len(set(placed)) >= 60 and all(p.size <= 25 for p in playlists)  # beyond the 30 sampled
    for p in playlists:
        assert len({int(t.track_id[1:]) < 40 for t in p.tracks}) == 1  # never the two kinds together
    assert {p.name.split(" (")[0].rsplit(" · ", 1)[1] for p in playlists} == {"Fast", "Slow"}


def test_a_job_whose_every_run_fails_says_why(monkeypatch):
    import sidecar.clustering.search as clustering_search

    def broken(params, x, seed):
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(clustering_search, "run_algorithm", broken)
    job = Job("j", "m", ["gmm"], 1, 3)
    run_job(job, synthetic_library(10), ClusteringStart(algorithms=["gmm"], iterations=3))
    snap = job.snapshot()
    assert snap.status == "failed" and "all 3 clustering runs failed" in snap.error and "singular" in snap.error
    assert snap.progress.done == 3 and snap.finished_at is not None


# ------------------------------------------------------------------------------------ the job, real music
async def wait_for(client, job_id: str, until: set[str], timeout: float = 60.0) -> tuple[dict, list[int]]:
    seen: list[int] = []
    t0 = time.monotonic()
    while True:
        r = await client.get(f"/api/clustering/{job_id}")
        assert r.status == 200
        job = await r.json()
        seen.append(job["progress"]["done"])
        if job["status"] in until:
            return job, seen
        assert time.monotonic() - t0 < timeout, job
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_clustering_separates_orchestral_from_electronic(open_sidecar, analysed_library):
    from sidecar.http.app import make_app

    sc = await open_sidecar()
    kinds = analysed_library["kinds"]
    async with TestClient(TestServer(make_app(sc))) as client:
        r = await client.post("/api/clustering/start", json={
            "model": "musicnn", "algorithms": ["kmeans", "gmm", "dbscan", "spectral"], "iterations": 40,
            "max_songs_per_playlist": 12, "top_n_playlists": 0, "seed": 7,
        })
        started = await r.json()
        assert r.status == 202 and started["status"] == "running" and started["tracks"] == 51 and started["seed"] == 7
        job, seen = await wait_for(client, started["job_id"], {"done", "failed"})
        assert job["status"] == "done", job["error"]
        assert seen == sorted(seen) and seen[-1] == job["progress"]["total"] == 40  # progress only advances
        assert job["best_score"] is not None and job["best_params"]["algorithm"] in {"kmeans", "gmm", "dbscan", "spectral"}
        assert job["eta_s"] is None and job["elapsed_s"] > 0

        playlists = job["playlists"]
        assert len(playlists) >= 2
        placed = [t["title"] for p in playlists for t in p["tracks"]]
        assert len(placed) == len(set(placed)) >= 35  # each track in one playlist at most; few left out
        pure = 0
        for p in playlists:
            assert 3 <= p["size"] == len(p["tracks"]) <= 12
            assert 0 <= p["purity"] <= 1 and 0 <= p["diversity"] <= 1
            assert NAME.match(p["name"]), p["name"]
            # the name is two of the playlist's defining tags (the first two unless another playlist has them) and its tempo
            parts, labels = p["name"].split(" · "), [tag_label(t["tag"]) for t in p["top_tags"]]
            assert parts[0] == labels[0] and parts[1].split(" ")[0] in " ".join(labels[1:]), (p["name"], labels)
            assert parts[-1].endswith(f"({round(p['tempo_bpm'])} BPM)")
            share = [kinds[t["title"]] for t in p["tracks"]]
            pure += max(share.count("orchestral"), share.count("electronic")) / len(share) >= 0.8
        assert pure > len(playlists) / 2, [(p["name"], [kinds[t["title"]] for t in p["tracks"]]) for p in playlists]
        assert len({p["name"] for p in playlists}) == len(playlists)
        # an electronic playlist is named for it
        electronic = [p for p in playlists if all(kinds[t["title"]] == "electronic" for t in p["tracks"])]
        assert electronic and any("Electronic" in p["name"] for p in electronic)

        listed = await (await client.get("/api/clustering")).json()
        assert listed["jobs"][0]["job_id"] == started["job_id"] and listed["jobs"][0]["playlists"] is None
        r = await client.post(f"/api/clustering/{started['job_id']}/cancel")
        assert r.status == 409 and (await r.json())["field"] == "job_id"  # done: nothing to cancel


@pytest.mark.slow
async def test_a_long_run_reports_progress_refuses_a_second_start_and_cancels_promptly(open_sidecar):
    from sidecar.http.app import make_app

    sc = await open_sidecar()
    async with TestClient(TestServer(make_app(sc))) as client:
        r = await client.post("/api/clustering/start", json={"algorithms": ["kmeans", "spectral"], "iterations": 100000, "seed": 1})
        assert r.status == 202
        job_id = (await r.json())["job_id"]
        r = await client.post("/api/clustering/start", json={"iterations": 5})
        body = await r.json()
        assert r.status == 409 and body["job_id"] == job_id and job_id in body["error"]

        t0 = time.monotonic()
        first = None
        while True:  # the event loop stays free while the thread works: these polls answer at once
            job = await (await client.get(f"/api/clustering/{job_id}")).json()
            done = job["progress"]["done"]
            first = done if first is None and done > 0 else first
            if first is not None and done >= first + 3:
                break
            assert time.monotonic() - t0 < 30, job
            await asyncio.sleep(0.05)
        assert job["status"] == "running" and job["eta_s"] > 0 and job["best_score"] is not None

        t0 = time.monotonic()
        r = await client.post(f"/api/clustering/{job_id}/cancel")
        assert r.status == 200
        job, _ = await wait_for(client, job_id, {"cancelled", "done", "failed"}, timeout=5)
        stopped = time.monotonic() - t0
        assert job["status"] == "cancelled" and job["cancel_requested"] and job["playlists"] is None
        assert stopped < 1.5, stopped
        assert job["progress"]["done"] < 100000

        r = await client.post("/api/clustering/start", json={"iterations": 3, "seed": 2})  # free again
        assert r.status == 202
        job, _ = await wait_for(client, (await r.json())["job_id"], {"done", "failed"})
        assert job["status"] == "done"


@pytest.mark.slow
async def test_bad_clustering_requests_are_400_naming_the_field(open_sidecar):
    from sidecar.http.app import make_app

    sc = await open_sidecar()
    async with TestClient(TestServer(make_app(sc))) as client:
        for bad, field in [
            ({"model": "nope"}, "model"), ({"algorithms": ["kmeans", "magic"]}, "algorithms"), ({"algorithms": []}, "algorithms"),
            ({"iterations": 0}, "iterations"), ({"iterations": 10**7}, "iterations"),
            ({"max_songs_per_playlist": 0}, "max_songs_per_playlist"), ({"top_n_playlists": -1}, "top_n_playlists"),
            ({"k_min": 5, "k_max": 3}, "k_max"), ({"max_songs_per_playlist": 4, "min_songs_per_playlist": 5}, "min_songs_per_playlist"),
            ({"colour": "red"}, "colour"), ({"seed": -1}, "seed"),
        ]:
            r = await client.post("/api/clustering/start", json=bad)
            body = await r.json()
            assert (r.status, body.get("field")) == (400, field), (bad, body)
        r = await client.post("/api/clustering/start")
        assert r.status == 400 and (await r.json())["field"] == "body"
        r = await client.post("/api/clustering/start", data=b"{oops", headers={"Content-Type": "application/json"})
        assert r.status == 400
        for method, path in [("GET", "/api/clustering/nope"), ("POST", "/api/clustering/nope/cancel")]:
            r = await client.request(method, path)
            assert r.status == 404 and (await r.json())["field"] == "job_id"
        assert (await (await client.get("/api/clustering")).json())["jobs"] == []
