"""The similarity space of a model (sidecar/data/space.py) and the vector store reading in it: the cosine of
two transformed vectors is the weighted mean of their blocks' cosines, statistics follow the library as it
doubles or halves, the mirror and Milvus itself (Lite, and a real server without the mirror) answer alike, a
model without a space reads its raw vectors, and a new dimension moves reads over only once every track has
its new vector, while the previous collection answers."""
from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from sidecar.data import space as space_module
from sidecar.data import store as store_module
from sidecar.data.mirror import Mirror
from sidecar.data.space import MIN_FIT, Space
from sidecar.data.space_index import SpaceIndex, index_names
from sidecar.data.store import VectorStore, collection_name, segments_name
from sidecar.errors import Conflict
from sidecar.plugins.api import Block

BLOCKS = (Block("timbre", 6, 0.8), Block("spread", 4, 0.2, scales=(1.0, 2.0, 0.5, 1.0)), Block("tags", 3, 0.5))
DIM = 13


def library(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Raw vectors with what z-scoring is for: a large offset every track shares and dimensions of very
    different spreads, in a few clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, dim)) * np.linspace(0.2, 5, dim)
    return (40 + centres[rng.integers(0, 5, n)] + rng.standard_normal((n, dim)) * np.linspace(0.1, 2, dim)).astype(np.float32)


def block_cosines_mean(a: np.ndarray, b: np.ndarray, raw: np.ndarray, blocks=BLOCKS) -> float:
    """The definition, computed independently in float64: z-score with raw's statistics, scale, then the
    weighted mean of each block's cosine."""
    mean, std = raw.astype(np.float64).mean(0), raw.astype(np.float64).std(0)
    za, zb = (a - mean) / std, (b - mean) / std
    total, lo = 0.0, 0
    for blk in blocks:
        s = np.ones(blk.size) if blk.scales is None else np.array(blk.scales)
        x, y = za[lo : lo + blk.size] * s, zb[lo : lo + blk.size] * s
        total += blk.weight * float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
        lo += blk.size
    return total / sum(blk.weight for blk in blocks)


def test_the_cosine_in_the_space_is_the_weighted_mean_of_the_block_cosines():
    raw = library(300, seed=1)
    t = Space.of(BLOCKS, DIM).fitted(raw, len(raw)).transform(raw)
    assert np.allclose(np.linalg.norm(t, axis=1), 1, atol=1e-6)
    rng = np.random.default_rng(2)
    for i, j in rng.integers(0, 300, (40, 2)):
        assert t[i] @ t[j] == pytest.approx(block_cosines_mean(raw[i], raw[j], raw), abs=2e-6)


def test_scales_weigh_dimensions_and_a_zero_scale_ignores_one():
    raw = library(200, seed=3)
    base = Space.of(BLOCKS, DIM).fitted(raw, 200)
    heavy = Space.of((BLOCKS[0], Block("spread", 4, 0.2, scales=(1.0, 2.0, 0.5, 0.0)), BLOCKS[2]), DIM).fitted(raw, 200)
    changed = raw.copy()
    changed[:, 9] += np.random.default_rng(4).standard_normal(200).astype(np.float32) * 5  # the last "spread" dimension
    assert not np.allclose(base.transform(changed), base.transform(raw), atol=1e-3)
    assert np.allclose(heavy.transform(changed), heavy.transform(raw), atol=1e-6)  # scale 0: not seen at all
    # a scale doubles that dimension's z-score before the block is made unit length
    y = (raw[:2].astype(np.float64) - base.mean) / base.std
    spread = y[:, 6:10] * [1.0, 2.0, 0.5, 1.0]
    assert np.allclose(base.transform(raw[:2])[:, 6:10], spread / np.linalg.norm(spread, axis=1, keepdims=True) * np.sqrt(0.2 / 1.5), atol=1e-6)


def test_a_wide_space_is_held_projected_on_its_principal_directions(monkeypatch):
    monkeypatch.setattr(space_module, "PROJECT", 6)
    raw = library(400, seed=5)
    space = Space.of(BLOCKS, DIM).fitted(raw, 400)
    assert space.basis.shape == (DIM, 6) and np.allclose(space.basis.T @ space.basis, np.eye(6), atol=1e-5)
    t = space.transform(raw)
    # the leading directions: more of the library's spread than any other 6 (here: the first 6 coordinates)
    kept = np.linalg.norm(space.lift(space.project(t)) - t.mean(0), axis=1)
    assert np.sum(kept**2) > np.sum(np.linalg.norm(t[:, :6] - t[:, :6].mean(0), axis=1) ** 2)
    mirror = Mirror(DIM, space)
    ids = [f"t{i}" for i in range(400)]
    mirror.put(ids, raw, settle=False)
    held = space.lift(space.project(t))
    assert np.allclose(mirror.vectors(), held, atol=1e-5) and mirror.vectors().shape == (400, DIM)
    unit = held / np.linalg.norm(held, axis=1, keepdims=True)
    assert np.allclose(mirror.similarities(t[3]), unit @ unit[3], atol=1e-5)  # the query's part in the span
    # what it finds is nearly as near in the full space as the full space's own 10 nearest
    found = [ids.index(h) for h, _ in mirror.search(t[3], 10, exclude=[ids[3]])]
    best = np.sort(t @ t[3])[-11:-1]
    assert np.mean(t[found] @ t[3]) >= 0.9 * np.mean(best) and not np.allclose(t[found] @ t[3], best[::-1])


def test_once_frozen_the_mirror_drops_the_raw_vectors_and_refits_no_more(monkeypatch):
    monkeypatch.setattr(space_module, "FREEZE", 128)
    raw = library(300, seed=15)
    ids = [f"t{i}" for i in range(300)]
    mirror = Mirror(DIM, Space.of(BLOCKS, DIM))
    mirror.put(ids[:100], raw[:100])
    assert mirror.space.fitted_on == 100 and not mirror.space.frozen and mirror._raw is not None
    mirror.put(ids[100:300], raw[100:300])
    assert mirror.space.fitted_on == 300 and mirror.space.frozen and mirror._raw is None
    frozen = mirror.space
    mirror.remove(ids[:200])  # no longer halving or doubling: the statistics stay
    mirror.put([f"n{i}" for i in range(300)], raw)
    assert mirror.space is frozen and np.allclose(mirror.get(["n7"])["n7"], frozen.transform(raw[7:8])[0], atol=1e-5)


def test_statistics_are_fitted_at_min_fit_then_each_time_the_library_doubles_or_halves():
    space = Space.of(BLOCKS, DIM)
    assert [space.due(n) for n in (0, 1, MIN_FIT - 1, MIN_FIT)] == [False, False, False, True]
    space = space.fitted(library(100, seed=6), 100)
    assert space.fitted_on == 100 and [space.due(n) for n in (51, 100, 199, 200, 50)] == [False, False, False, True, True]
    assert Space.of(BLOCKS, DIM).fitted(library(10, seed=6), 10).fitted_on == 0  # too few tracks: plain blocks
    with pytest.raises(ValueError, match="cover 13 dimensions"):
        Space.of(BLOCKS, 12)


def test_the_mirror_refits_as_the_library_grows_and_transforms_new_tracks_with_the_current_statistics():
    raw = library(400, seed=7)
    ids = [f"t{i}" for i in range(400)]
    mirror = Mirror(DIM, Space.of(BLOCKS, DIM))
    mirror.put(ids[:MIN_FIT - 1], raw[:MIN_FIT - 1])
    assert mirror.space.fitted_on == 0  # not yet: plain unit blocks of the raw vectors
    fits = []
    for i in range(MIN_FIT - 1, 100):  # one track at a time, as ingest writes them
        mirror.put([ids[i]], raw[i : i + 1])
        fits.append(mirror.space.fitted_on)
    assert sorted(set(fits)) == [MIN_FIT, 2 * MIN_FIT] and fits.index(2 * MIN_FIT) == 2 * MIN_FIT - MIN_FIT
    on_64 = Space.of(BLOCKS, DIM).fitted(raw[:64], 64)
    mirror_rows = mirror.get(ids[:100])
    # the rows written after the fit at 64 used its statistics; every row reads as if transformed with them
    assert np.allclose(np.stack([mirror_rows[t] for t in ids[:100]]), on_64.transform(raw[:100]), atol=1e-5)
    mirror.put(ids[100:128], raw[100:128])  # 128 = twice 64: refit over all of them, from the mirror alone
    assert mirror.space.fitted_on == 128
    on_128 = Space.of(BLOCKS, DIM).fitted(raw[:128], 128)
    assert np.allclose(mirror.vectors(), on_128.transform(raw[:128]), atol=1e-5)
    assert np.allclose(mirror.space.mean, on_128.mean, rtol=1e-6) and np.allclose(mirror.space.std, on_128.std, rtol=1e-5)
    mirror.remove(ids[:64])  # halved: refit over what is left
    assert mirror.space.fitted_on == 64
    left = Space.of(BLOCKS, DIM).fitted(raw[64:128], 64)
    assert np.allclose(np.stack([mirror.get([t])[t] for t in ids[64:128]]), left.transform(raw[64:128]), atol=1e-5)
    unit = mirror.vectors() / np.linalg.norm(mirror.vectors(), axis=1, keepdims=True)
    assert np.allclose(mirror.similarities(mirror.vectors()[3]), unit @ unit[3], atol=1e-6)


def test_a_mirror_without_space_keeps_the_raw_vectors():
    raw = library(100, seed=8)
    mirror = Mirror(DIM)
    mirror.put([f"t{i}" for i in range(100)], raw)
    assert np.array_equal(mirror.vectors(), raw) and mirror.space is None


# ---- the store, on Milvus Lite and on a real Milvus server
def expected(raw: np.ndarray) -> np.ndarray:
    return Space.of(BLOCKS, DIM).fitted(raw, len(raw)).transform(raw)


def check_reads(store: VectorStore, model: str, ids: list[str], raw: np.ndarray) -> None:
    """Every read is in the space fitted over the whole library, and searches rank exactly there."""
    t = expected(raw)
    got = store.get_vectors(model, ids[:20])
    assert np.allclose(np.stack([got[i] for i in ids[:20]]), t[:20], atol=1e-5)
    have, stacked = store.stacked(model, ids[5:15] + ["nope"])
    assert have == ids[5:15] and np.allclose(stacked, t[5:15], atol=1e-5)
    for q in (0, 17, 42):
        exact = np.argsort(-(t @ t[q]), kind="stable")
        hits = store.search(model, t[q], 10, exclude=[ids[q]])
        assert [h for h, _ in hits] == [ids[i] for i in exact if i != q][:10]
        assert np.allclose([s for _, s in hits], [t[ids.index(h)] @ t[q] for h, _ in hits], atol=1e-5)
    rows, sims = store.similarities(model, t[[1, 2]])
    assert len(rows) == len(ids) and np.allclose(sims[rows.row(ids[9])], t[[1, 2]] @ t[9], atol=1e-5)
    snap_ids, snap = store.snapshot(model)
    assert sorted(snap_ids) == sorted(ids) and np.allclose(snap[snap_ids.index(ids[30])], t[30], atol=1e-5)
    with pytest.raises(Conflict, match="has 12 numbers"):
        store.search(model, t[0][:12], 5)


@pytest.mark.parametrize("mirror", [True, False], ids=["mirror", "milvus-lite"])
def test_reads_are_in_the_space_from_the_mirror_and_from_milvus_lite(tmp_path, mirror):
    raw = library(150, seed=9)
    ids = [uuid.uuid4().hex for _ in range(150)]
    store = VectorStore(str(tmp_path / "v.db"), mirror=mirror)
    try:
        store.ensure_collection("m", DIM, space=BLOCKS)
        store.ensure_collection("plain", DIM)
        store.upsert("m", [(t, v, "h") for t, v in zip(ids, raw)])
        store.upsert("plain", [(t, v, "h") for t, v in zip(ids, raw)])
        check_reads(store, "m", ids, raw)
        got = store.get_vectors("plain", ids[:5])  # no space: the raw vectors, and plain cosine
        assert all(np.array_equal(got[t], raw[i]) for i, t in enumerate(ids[:5]))
        assert store.search("plain", raw[3], 1)[0] == (ids[3], pytest.approx(1.0, abs=1e-6))
    finally:
        store.close()
    again = VectorStore(str(tmp_path / "v.db"), mirror=mirror)  # at start, fitted over everything stored
    try:
        again.ensure_collection("m", DIM, space=BLOCKS)
        check_reads(again, "m", ids, raw)
    finally:
        again.close()


def wait_visible(store: VectorStore, model: str, ids: list[str], timeout: float = 30) -> None:
    """A server's collections default to bounded staleness: wait until a plain read sees every write."""
    deadline = time.monotonic() + timeout
    while len(store.get_vectors(model, ids)) < len(ids):
        assert time.monotonic() < deadline, "writes never became visible"
        time.sleep(0.2)


def wait_searchable(store: VectorStore, model: str, query: np.ndarray, track_id: str, timeout: float = 30) -> None:
    """Until a search finds this track (searches read with the collection's bounded staleness)."""
    deadline = time.monotonic() + timeout
    while [t for t, _ in store.search(model, query, 1)] != [track_id]:
        assert time.monotonic() < deadline, "the write never became searchable"
        time.sleep(0.2)


@pytest.mark.slow
def test_without_the_mirror_a_server_searches_the_spaces_own_collection_with_shared_statistics(milvus_uri, monkeypatch):
    model = "m" + uuid.uuid4().hex[:8]
    raw = library(150, seed=10)
    ids = [uuid.uuid4().hex for _ in range(150)]
    writer, reader = VectorStore(milvus_uri, mirror=False), VectorStore(milvus_uri, mirror=False)  # a worker, an API
    try:
        writer.ensure_collection(model, DIM, space=BLOCKS)
        writer.upsert(model, [(t, v, "h") for t, v in zip(ids, raw)])  # due at MIN_FIT: fitted over all 150, exactly
        wait_visible(writer, model, ids)
        wait_searchable(writer, model, expected(raw)[149], ids[149])
        check_reads(writer, model, ids, raw)
        reader.ensure_collection(model, DIM, space=BLOCKS)  # adopts the writer's statistics: fits nothing itself
        w, r = writer._models[model].index, reader._models[model].index
        assert r.key == w.key and np.array_equal(r.space.mean, w.space.mean) and r.space.fitted_on == 150

        # a larger library: the writer refits on a random sample (ids below a bound), now projected (PROJECT 8)
        monkeypatch.setattr(store_module, "SAMPLE", 200)
        monkeypatch.setattr(space_module, "PROJECT", 8)
        big = library(3000, seed=11)
        big_ids = [uuid.uuid4().hex for _ in range(3000)]
        writer.upsert(model, [(t, v, "h") for t, v in zip(big_ids, big)])
        space = w.space
        assert space.fitted_on == 3150 and space.held_dim == 8
        everything = np.concatenate([raw, big])
        full = Space.of(BLOCKS, DIM).fitted(everything, len(everything))
        assert not np.allclose(space.mean, full.mean, rtol=0, atol=1e-9)  # a sample, not everything
        assert np.all(np.abs(space.mean - full.mean) < 0.3 * full.std) and np.allclose(space.std, full.std, rtol=0.2)

        monkeypatch.setattr(store_module, "REFIT_CHECK_S", 0.0)  # the reader's next read checks the statistics
        t = space.transform(everything)
        all_ids = ids + big_ids
        wait_searchable(reader, model, t[-1], all_ids[-1])
        assert r.key == w.key and np.array_equal(r.space.basis, space.basis)  # adopted, with the new 8-d vectors
        held = space.project(t)
        held /= np.linalg.norm(held, axis=1, keepdims=True)
        recall = []
        for q in np.random.default_rng(12).integers(0, len(all_ids), 20):
            hits = reader.search(model, t[q], 10)
            # scores are the cosines of the vectors as held (projected), as the mirror gives them
            assert np.allclose([s for _, s in hits], [held[all_ids.index(h)] @ held[q] for h, _ in hits], atol=1e-4)
            recall.append(len({h for h, _ in hits} & {all_ids[i] for i in np.argsort(-(held @ held[q]))[:10]}) / 10)
        # HNSW is approximate, and its graph is built in parallel (not reproducible)
        assert np.median(recall) >= 0.9 and sum(r >= 0.8 for r in recall) >= 16, recall
        rows, sims = reader.similarities(model, t[[3, 4]])
        assert np.allclose(sims[rows.row(all_ids[3])], held[[3, 4]] @ held[3], atol=1e-4)

        writer.delete(model, ids[:10])  # gone from the space's collection too
        deadline = time.monotonic() + 30
        while r.held(ids[:10])[0]:
            assert time.monotonic() < deadline, "deleted tracks still in the space's collection"
            time.sleep(0.2)
    finally:
        writer._drop(collection_name(model))
        writer.close()
        reader.close()


@pytest.mark.parametrize("mirror", [True, False], ids=["mirror", "milvus-lite"])
def test_held_snapshots_and_their_stamp_follow_a_refit(tmp_path, monkeypatch, mirror):
    """snapshot(held=True) gives every vector as held (projected), with the same cosines as the held reads, and
    held_stamp changes when a refit moves them to other axes (what a cached map must notice)."""
    monkeypatch.setattr(space_module, "PROJECT", 8)
    raw = library(80, seed=17)
    ids = [uuid.uuid4().hex for _ in range(80)]
    store = VectorStore(str(tmp_path / "v.db"), mirror=mirror)
    try:
        store.ensure_collection("m", DIM, space=BLOCKS)
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[:40], raw[:40])])  # fitted over 40, projected to 8-d
        stamp = store.held_stamp("m")
        snap_ids, held = store.snapshot("m", held=True)
        assert held.shape == (40, 8) and stamp is not None
        have, some = store.stacked("m", list(snap_ids[:5]), held=True)
        assert np.allclose(unit(some) @ unit(held).T, unit(held[:5]) @ unit(held).T, atol=1e-5)
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[40:], raw[40:])])  # doubled: refitted
        assert store.held_stamp("m") != stamp and store.snapshot("m", held=True)[1].shape == (80, 8)
    finally:
        store.close()


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.slow
def test_a_mirror_on_a_server_loads_the_spaces_own_collection_once_the_statistics_are_frozen(milvus_uri, monkeypatch):
    monkeypatch.setattr(space_module, "FREEZE", 100)
    monkeypatch.setattr(store_module, "FREEZE", 100)
    model = "m" + uuid.uuid4().hex[:8]
    raw = library(150, seed=16)
    ids = [uuid.uuid4().hex for _ in range(150)]
    writer = VectorStore(milvus_uri, mirror=False)
    try:
        writer.ensure_collection(model, DIM, space=BLOCKS)
        writer.upsert(model, [(t, v, "h") for t, v in zip(ids, raw)])  # fitted over 150: frozen
        index = writer._models[model].index
        assert index.space.frozen
        wait_searchable(writer, model, index.space.transform(raw[149])[0], ids[149])
        api = VectorStore(milvus_uri, mirror=True)
        read, batches = [], api.milvus.batches
        monkeypatch.setattr(api.milvus, "batches", lambda name, *a, **k: read.append(name) or batches(name, *a, **k))
        try:
            api.ensure_collection(model, DIM, space=BLOCKS)
            assert read == [index.vectors_name]  # the vectors as held, not the raw ones
            mirror = api.mirrors[model]
            # the shared statistics, and the vectors as the space collection holds them
            assert mirror.space.fitted_on == 150 and np.array_equal(mirror.space.mean, index.space.mean)
            have, held = index.held(ids)
            assert np.allclose(mirror.held([mirror.pos[t] for t in have]), held, atol=1e-6)
            q = index.space.transform(raw[7])[0]
            assert [t for t, _ in api.search(model, q, 5)] == [t for t, _ in writer.search(model, q, 5)]
        finally:
            api.close()
    finally:
        writer._drop(collection_name(model))
        writer.close()


def test_a_writer_with_earlier_statistics_is_not_searched_until_it_adopts_the_stored_ones(tmp_path):
    """Two processes writing one library (a worker and another; here two SpaceIndex on one Lite file): vectors
    transformed with statistics other than the stored ones never meet a query, and their writer writes them
    again once it sees the stored ones. Half-written statistics are waited for, not fitted over."""
    store = VectorStore(str(tmp_path / "v.db"), mirror=False)
    try:
        store.ensure_collection("m", DIM, space=BLOCKS)
        raw = library(300, seed=15)
        ids = [uuid.uuid4().hex for _ in range(300)]
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[:100], raw[:100])])  # fitted over 100
        mine = store._models["m"].index
        other = SpaceIndex(store.milvus, collection_name("m"), Space.of(BLOCKS, DIM))
        assert other.refresh(100, lambda: pytest.fail("fitted again")) and other.key == mine.key  # adopted

        store.upsert("m", [(t, v, "h") for t, v in zip(ids[100:250], raw[100:250])])  # doubled: refitted
        assert mine.space.fitted_on == 250 and other.key != mine.key
        other.write(ids[250:], raw[250:])  # meanwhile the other process writes with what it has
        store.milvus.client.upsert(collection_name("m"), [{"track_id": t, "vector": v.tolist(), "content_hash": "h"}
                                                         for t, v in zip(ids[250:], raw[250:])])
        q = mine.space.transform(raw[260])[0]
        assert ids[260] not in {t for t, _ in store.search("m", q, 300)}  # its vector is in another space
        other.refresh(300, lambda: pytest.fail("fitted again"))  # sees the stored statistics, writes again
        assert other.key == mine.key and store.search("m", q, 1)[0][0] == ids[260]

        store.milvus.client.delete(index_names(collection_name("m"))[1], ids=["std"])  # half written
        before = other.space
        assert other.refresh(600, lambda: pytest.fail("fitted over half-written statistics")) is before
    finally:
        store.close()


# ---- a new dimension
@pytest.mark.parametrize("mirror", [True, False], ids=["mirror", "milvus-lite"])
def test_a_new_dimension_fills_a_new_collection_while_the_previous_one_answers(tmp_path, mirror, caplog):
    path = str(tmp_path / "v.db")
    old = library(80, seed=13, dim=8)
    ids = [uuid.uuid4().hex for _ in range(80)]
    store = VectorStore(path, mirror=mirror)
    store.ensure_collection("m", 8, segments=True)
    store.upsert("m", [(t, v, "h") for t, v in zip(ids, old)])
    store.replace_segments("m", ids[0], old[:3], "h")
    store.close()

    new = library(80, seed=14)
    store = VectorStore(path, mirror=mirror)
    try:
        store.ensure_collection("m", DIM, segments=True, space=BLOCKS)
        assert "80 of the 8-d collection's tracks still need a 13-d vector" in caplog.text
        assert store.dim("m") == 8 and store.search("m", old[4], 1)[0][0] == ids[4]  # the previous one answers
        assert store.segment_ids("m", ids[0]) == []  # segments of the old dimension: dropped, made again
        store.replace_segments("m", ids[0], new[:2], "h")
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[:50], new[:50])])
        store.upsert("m", [("extra" + "0" * 27, new[0], "h")])  # a new track: stored, not yet searched
        assert store.dim("m") == 8 and store.size("m") == 80 and store.search("m", old[60], 1)[0][0] == ids[60]
    finally:
        store.close()

    store = VectorStore(path, mirror=mirror)  # a restart half way keeps both
    try:
        store.ensure_collection("m", DIM, segments=True, space=BLOCKS)
        assert store.dim("m") == 8 and store.search("m", old[70], 1)[0][0] == ids[70]
        store.delete("m", ids[50:60])  # removed from the library: nothing more to wait for
        store.upsert("m", [(t, v, "h") for t, v in zip(ids[60:79], new[60:79])])
        assert store.dim("m") == 8  # one to go
        store.upsert("m", [(ids[79], new[79], "h")])
        assert store.dim("m") == DIM and "searches use them now, and emb_m is dropped" in caplog.text
        index = set() if mirror else set(index_names("emb_m_D13"))  # the space's vectors, for reads without a mirror
        assert set(store.client.list_collections()) == {"emb_m_D13", segments_name("m")} | index
        kept = ids[:50] + ids[60:]
        assert sorted(store.track_ids("m")) == sorted(kept + ["extra" + "0" * 27])
        q = store.get_vectors("m", [ids[5]])[ids[5]]
        assert len(q) == DIM and store.search("m", q, 1)[0][0] == ids[5]
        assert store.segment_ids("m", ids[0]) == [f"{ids[0]}:0", f"{ids[0]}:1"]
    finally:
        store.close()
    store = VectorStore(path, mirror=mirror)
    try:
        store.ensure_collection("m", DIM, space=BLOCKS)
        assert store.dim("m") == DIM and store.size("m") == 71
    finally:
        store.close()
