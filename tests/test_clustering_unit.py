"""Clustering without a server: what a job reads from a real catalog and store, what the job registry refuses,
and that relabelling a partition does not change its score."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from schemas.clustering import ClusteringStart
from sidecar.clustering.jobs import KEEP_JOBS, ClusteringJobs, library_for
from sidecar.clustering.library import load_library
from sidecar.clustering.scoring import TagStats, score_partition
from sidecar.data.catalog import Catalog
from sidecar.errors import BadInput, Conflict, NotFound
from sidecar.text.vocabulary import MSD_TAGS
from tests.mirror_store import MirrorStore


def library(tmp_path, n: int, *, tagged_every: int = 1, tempo_every: int = 1) -> tuple[Catalog, MirrorStore, list[str]]:
    """n tracks in a real catalog, every `tagged_every`-th with MusiCNN tags, every `tempo_every`-th with a DSP
    tempo, and an 8-d vector each."""
    rng = np.random.default_rng(n)
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    ids = [f"{i:032x}" for i in range(n)]
    now = time.time()
    with catalog._tx() as db:
        db.executemany(
            "INSERT INTO tracks (track_id, content_hash, title, artist, created_at, updated_at) VALUES (?,?,?,?,?,?)",
            [(t, t, f"song {i}", f"artist {i % 7}", now, now) for i, t in enumerate(ids)],
        )
        db.executemany(
            "INSERT INTO embeddings (track_id, model, model_version, content_hash, status, tags, features, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?)",
            [(t, "musicnn", "1", t, "done", json.dumps(dict(zip(MSD_TAGS, rng.random(50).round(3).tolist()))), None, now)
             for i, t in enumerate(ids) if i % tagged_every == 0]
            + [(t, "dsp", "1", t, "done", None, json.dumps({"tempo_bpm": 60.0 + i}), now)
               for i, t in enumerate(ids) if i % tempo_every == 0],
        )
    return catalog, MirrorStore({"m": (ids, rng.normal(size=(n, 8)).astype(np.float32))}), ids


def test_the_library_is_the_tracks_with_both_a_vector_and_tags(tmp_path):
    catalog, store, ids = library(tmp_path, 30, tagged_every=2, tempo_every=3)
    store.remove("m", [ids[0]])
    lib = load_library(catalog, store, "m")
    assert set(lib.ids) == {t for i, t in enumerate(ids) if i % 2 == 0 and i != 0}
    vectors = store.get_vectors("m", lib.ids)
    assert np.allclose(lib.vectors, np.stack([vectors[t] for t in lib.ids]))
    row = lib.ids.index(ids[6])
    assert lib.titles[row] == "song 6" and lib.artists[row] == "artist 6" and lib.tempo[row] == 66.0
    assert np.isnan(lib.tempo[lib.ids.index(ids[2])])  # no DSP analysis
    probs = catalog.musicnn_tags([ids[6]])[ids[6]]
    assert lib.tags.shape == (14, 50) and np.allclose(lib.tags[row], [probs[t] for t in MSD_TAGS])
    catalog.close()


def test_a_job_is_refused_on_too_small_a_library_or_one_it_cannot_split(tmp_path):
    catalog, store, _ = library(tmp_path, 5001)
    small = ClusteringStart(min_songs_per_playlist=2501, max_songs_per_playlist=3000)
    with pytest.raises(Conflict) as e:
        library_for(catalog, store, "m", small)
    assert e.value.field == "model" and "at least 5002" in str(e.value)
    with pytest.raises(BadInput) as e:
        library_for(catalog, store, "m", ClusteringStart(max_songs_per_playlist=2, min_songs_per_playlist=1))
    assert e.value.field == "max_songs_per_playlist" and "at least 3" in str(e.value)
    with pytest.raises(BadInput) as e:
        library_for(catalog, store, "m", ClusteringStart(algorithms=["kmeans", "spectral"]))
    assert e.value.field == "algorithms"
    assert len(library_for(catalog, store, "m", ClusteringStart(algorithms=["spectral"], sample_size=5000))) == 5001
    catalog.close()


def test_the_registry_keeps_one_running_job_and_the_last_finished_ones():
    jobs = ClusteringJobs()
    req = ClusteringStart(iterations=3, seed=9)
    first = jobs.reserve("m", req)
    assert jobs.running is first and first.seed == 9 and jobs.get(first.job_id) is first
    with pytest.raises(NotFound) as e:
        jobs.get("nope")
    assert e.value.field == "job_id"
    first.stop()
    assert first.cancel.is_set()
    first.status = "cancelled"
    with pytest.raises(Conflict) as e:
        first.stop()
    assert e.value.field == "job_id"
    for _ in range(KEEP_JOBS + 5):
        jobs.reserve("m", ClusteringStart()).status = "done"
    running = jobs.reserve("m", req)
    assert len(jobs.jobs) == KEEP_JOBS and jobs.running is running and jobs.newest_first()[0] is running
    assert first.job_id not in jobs.jobs
    jobs.drop(running)
    assert jobs.running is not running and running.job_id not in jobs.jobs
    jobs.cancel_all()
    assert all(j.cancel.is_set() for j in jobs.jobs.values())


def test_a_partition_scores_the_same_whatever_its_labels_are_called():
    rng = np.random.default_rng(4)
    stats = TagStats.of(rng.random((40, 50)))
    labels = rng.integers(-1, 5, 40)
    renamed = np.where(labels >= 0, (labels * 7 + 3) % 11 + 20, -1)  # another name for each playlist, noise kept
    a, b = score_partition(labels, stats), score_partition(renamed, stats)
    assert a.purity == pytest.approx(b.purity) and a.diversity == pytest.approx(b.diversity)
    assert sorted(a.sizes.tolist()) == sorted(b.sizes.tolist()) and 0 < a.purity < 1 and 0 <= a.diversity <= 1
