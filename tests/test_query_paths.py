"""The fast query paths give the answers of the straightforward ones: zero-shot text search (cached clause
vectors and concept scores, partial sort, cheap change stamp) against a plain recomputation on the real
analysed library, and the store's mirror (with Milvus Lite's collection released) against Milvus itself."""
from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from schemas.api import TextRecommendationRequest
from sidecar.text.vocabulary import FEATURES, LEXICON, MSD_TAGS, MTT_TAGS
from sidecar.text.zero_shot import METADATA_FIELDS, METADATA_MIN_SIMILARITY, REASON_MIN, top_k

pytestmark = pytest.mark.slow

PROMPTS = [
    ("orchestral", []), ("electronic dance", []), ("calm orchestral, no vocals", []), ("upbeat electronic dance", ["dark"]),
    ("dark ambient", []), ("bright happy rock with drums", ["orchestral"]), ("not loud, sparse piano", []),
]


def zscores(x: np.ndarray) -> np.ndarray:
    """Columns z-scored over their known values; unknown values stay NaN."""
    return (x - np.nanmean(x, axis=0)) / np.nanstd(x, axis=0)


def reference_search(sc, prompt: str, negatives: list[str]) -> dict[str, tuple[float, list[str]]]:
    """The zero-shot search as first written, for every track: the calibration recomputed from the rows (tag logits
    and features z-scored, a word both networks predict the mean of the two), every concept scored with no cache,
    the metadata compared track by track."""
    zs, rows = sc.text.zero_shot, sc.catalog.analysed_tracks()
    n = len(rows)
    columns: dict[str, list[np.ndarray]] = {}
    for key in MSD_TAGS + tuple("mtt:" + t for t in MTT_TAGS):
        p = np.array([r["tags"].get(key, np.nan) for r in rows], np.float64).clip(1e-6, 1 - 1e-6)
        if not np.isnan(p).all():
            columns.setdefault(key.removeprefix("mtt:").lower(), []).append(zscores(np.log(p / (1 - p))[:, None])[:, 0])
    for f in FEATURES:
        v = np.array([np.nan if not r["features"] else r["features"].get("scale") == "minor" if f == "minor" else r["features"].get(f, np.nan)
                      for r in rows], np.float64)
        if not np.isnan(v).all():
            columns[f] = [zscores((np.log(np.maximum(v, 1e-3)) if f in ("tempo_bpm", "onset_rate", "brightness") else v)[:, None])[:, 0]]
    columns = {k: np.nan_to_num(np.nanmean(np.stack(v), axis=0)) for k, v in columns.items()}
    matches, clauses = zs.match(prompt, negatives)
    by_name = {c.name: c for c in LEXICON}
    score, parts, total = np.zeros(n), [], 0.0
    for m in matches:
        c = by_name[m.concept]
        terms = [(columns[k.lower()], w) for k, w in (c.tags | c.features).items() if k.lower() in columns]
        s = np.average(np.stack([col if w > 0 else -col for col, w in terms]), axis=0, weights=[abs(w) for _, w in terms])
        way = s if m.weight > 0 else -np.maximum(s, 0)
        score += abs(m.weight) * way
        total += abs(m.weight)
        parts.append((f"{'not ' if m.weight < 0 else ''}{m.concept} (from '{m.clause}', {m.similarity:.2f})", abs(m.weight), s * np.sign(m.weight)))
    if total:
        score /= total
    positive = [c.text for c in clauses if not c.negative]
    values = sorted({str(r[k]) for r in rows for k in METADATA_FIELDS if r[k]})
    if positive and values:
        sim = dict(zip(values, (sc.text.encoder.encode(positive) @ sc.text.encoder.encode(values).T).max(axis=0)))
        carrying = {v: sum(v in {str(r[k]) for k in METADATA_FIELDS if r[k]} for r in rows) for v in values}
        told = {v: np.log(max(n, 2) / carrying[v]) / np.log(max(n, 2)) for v in values}  # a rare word tells more
        msim = np.array([max([sim[str(r[k])] * told[str(r[k])] if sim[str(r[k])] >= METADATA_MIN_SIMILARITY else 0.0
                              for k in METADATA_FIELDS if r[k]], default=0.0) for r in rows])
        lift = msim * ((score.max() - score.min()) or 1.0)
        score += lift
        parts.append(("metadata", 1.0, lift))
    out = {}
    for i, r in enumerate(rows):
        ways = sorted(((w * v[i], name) for name, w, v in parts if v[i] >= REASON_MIN), reverse=True)
        out[r["track_id"]] = (float(score[i]), [name for _, name in ways[:3]])
    return out


async def test_zero_shot_search_matches_a_plain_recomputation(open_sidecar, copy_library):
    sc = await open_sidecar(copy_library)
    zs = sc.text.zero_shot
    ids = sc.store.mirrors["musicnn"].ids
    for i, t in enumerate(ids[:6]):  # the excerpts carry no tags: give some tracks a genre, artist and album
        sc.catalog._q("UPDATE tracks SET genre = ?, artist = ?, album = ? WHERE track_id = ?",
                      ("Chiptune" if i < 3 else "Baroque", f"Composer {i % 2}", "Winter Songs" if i % 3 else None, t))
    for prompt, negatives in PROMPTS + [("chiptune", []), ("baroque winter songs", ["composer 1"])]:
        want = reference_search(sc, prompt, negatives)
        best = sorted((s for s, _ in want.values()), reverse=True)
        for attempt in range(2):  # the second time from the caches (clause vectors, concept scores)
            got, _ = zs.search(prompt, negatives, limit=20)
            assert [g.score for g in got] == pytest.approx([want[g.track_id][0] for g in got], abs=1e-4), (prompt, attempt)
            assert [g.score for g in got] == pytest.approx(best[:20], abs=1e-4)  # the best 20, best first
            assert [g.reasons for g in got] == [want[g.track_id][1] for g in got]
    assert "metadata" in zs.search("chiptune", [], 1)[0][0].reasons  # the metadata path was tested too
    clauses = ["calm orchestral", "vocals", "dark ambient"]  # cached vectors are the encoder's
    assert np.allclose(zs.clause_vectors(clauses), sc.text.encoder.encode(clauses), atol=1e-5)


async def test_text_index_follows_writes_from_this_and_other_connections(open_sidecar, copy_library):
    sc = await open_sidecar(copy_library)
    req = TextRecommendationRequest(text="chiptune", method="tags", limit=1)
    stamp = sc.catalog.analysis_stamp()
    sc.text.recommend(req)
    assert sc.catalog.analysis_stamp() == stamp  # reads change nothing
    first, second = sc.store.mirrors["musicnn"].ids[:2]
    later = "(SELECT MAX(updated_at) + 1 FROM tracks)"  # as the catalog stamps a change: now
    sc.catalog._q(f"UPDATE tracks SET genre = 'Chiptune', updated_at = {later} WHERE track_id = ?", (first,))
    assert sc.catalog.analysis_stamp() != stamp
    assert sc.text.recommend(req).tracks[0].track_id == first
    with sqlite3.connect(copy_library / "catalog.sqlite3") as other:  # e.g. another process on the same file
        other.execute(f"UPDATE tracks SET genre = NULL, updated_at = {later} WHERE track_id = ?", (first,))
        other.execute(f"UPDATE tracks SET genre = 'Chiptune', updated_at = {later} WHERE track_id = ?", (second,))
    other.close()
    assert sc.text.recommend(req).tracks[0].track_id == second


def test_top_k_is_a_stable_full_sort_cut_short():
    rng = np.random.default_rng(0)
    for n, k in [(1000, 25), (1000, 1), (30, 25), (25, 25), (10, 25)]:
        for values in (rng.random(n), rng.integers(0, 5, n).astype(np.float32), np.zeros(n)):  # many ties, all tied
            assert top_k(values, k).tolist() == np.argsort(-values, kind="stable")[:k].tolist()


async def test_mirror_serves_reads_and_writes_still_reach_milvus(open_sidecar, copy_library):
    from sidecar.data.store import collection_name

    sc = await open_sidecar(copy_library)
    store, mirror = sc.store, sc.store.mirrors["musicnn"]
    assert store.client.get_load_state(collection_name("musicnn"))["state"].name == "NotLoad"  # the mirror serves reads
    new = "f" * 32
    store.upsert("musicnn", [(new, np.arange(store.dim("musicnn"), dtype=np.float32), "h")])
    gone = mirror.ids[0]
    store.delete("musicnn", [gone])
    assert store.search("musicnn", store.get_vectors("musicnn", [new])[new], 1)[0][0] == new
    store.client.load_collection(collection_name("musicnn"))  # Milvus, the store of record, holds the raw vectors
    rows = store.client.query(collection_name("musicnn"), filter="", output_fields=["track_id", "vector"], limit=1000)
    assert sorted(r["track_id"] for r in rows) == sorted(mirror.ids) and new in mirror.ids and gone not in mirror.ids
    # the mirror holds them in the model's space (musicnn declares one), with the statistics of the library
    assert mirror.space is not None and mirror.space.fitted_on == 51
    raw = np.array([r["vector"] for r in rows], np.float32)
    assert np.allclose(mirror.space.transform(raw), np.stack([mirror.get([r["track_id"]])[r["track_id"]] for r in rows]), atol=1e-5)


def test_mirror_grows_again_after_compacting():
    from sidecar.data.mirror import Mirror

    m = Mirror(4)
    m.compact()  # empty: no spare rows left
    vectors = np.random.default_rng(0).standard_normal((3000, 4)).astype(np.float32)
    m.put([f"t{i}" for i in range(1500)], vectors[:1500])
    m.compact()
    assert m._mat.shape == (1500, 4)
    m.put([f"t{i}" for i in range(1500, 3000)], vectors[1500:])
    assert np.array_equal(m.vectors(), vectors)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(m.similarities(vectors[7]), unit @ unit[7], atol=1e-6)  # the norms kept in step too
