"""The exploration features without a server: song paths, alchemy, the fingerprint's seeds, the map's cache,
word search and the caches of parsed tags, on a real catalog (SQLite in a temporary folder) and synthetic
vectors in two clear clusters, read through VectorStore's own read methods (tests/mirror_store.py)."""
from __future__ import annotations

import time

import numpy as np
import pytest

from schemas.explore import AlchemyRequest, SearchTracksQuery
from sidecar.data.catalog import Catalog
from sidecar.data.recordings import Recordings
from sidecar.errors import NotFound
from sidecar.explore.alchemy import alchemy
from sidecar.explore.common import resolve, unit
from sidecar.explore.fingerprint import fingerprint_seeds
from sidecar.explore.maps import Projection, refresh_projection
from sidecar.explore.path import song_path
from sidecar.explore.plane import pca_2d, top2_eigenvectors
from sidecar.explore.search import search_tracks
from sidecar.explore.state import ParsedTags, dominant_tag
from tests.mirror_store import MirrorStore
from tests.test_catalog import dsp_features

DIM, PER_KIND = 16, 30
DAY = 86400.0


class Library:
    """Two kinds of track, A around e0 and B around e1, in a real catalog and a store of their vectors."""

    def __init__(self, tmp_path, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.catalog = Catalog(tmp_path / "catalog.sqlite3")
        centres = np.eye(DIM, dtype=np.float32)[:2]
        self.kind: dict[str, str] = {}
        vectors = []
        for k, centre in zip("AB", centres):
            for i in range(PER_KIND):
                tid = self.add(f"{k}{i}", title=f"{k} song {i}", artist=f"Artist {k}{i % 3}")
                self.kind[tid] = k
                vectors.append(centre + 0.15 * rng.normal(size=DIM).astype(np.float32))
        self.ids = list(self.kind)
        self.store = MirrorStore({"m": (self.ids, np.stack(vectors))})
        # each kind's most typical track: the highest mean similarity to its kind
        unit_v = unit(np.stack(vectors))
        typical = {k: unit_v @ unit_v[[self.kind[t] == k for t in self.ids]].mean(0) for k in "AB"}
        self.central = {k: max((t for t in self.ids if self.kind[t] == k), key=lambda t: typical[k][self.ids.index(t)]) for k in "AB"}

    def add(self, name: str, **info) -> str:
        tid, _ = self.catalog.resolve_track(f"/music/{name}.ogg", f"hash-{name}", 1, 1, {"duration_s": 60.0, **info})
        return tid

    def unit(self, tid: str) -> np.ndarray:
        return unit(self.store.get_vectors("m", [tid])[tid])


@pytest.fixture
def lib(tmp_path) -> Library:
    lib = Library(tmp_path)
    yield lib
    lib.catalog.close()


# ------------------------------------------------------------------------------------------ song path
def test_a_song_path_walks_from_one_kind_to_the_other_without_repeats(lib):
    start, end = lib.central["A"], lib.central["B"]
    path, total = song_path(lib.store, lib.catalog, "m", start, end, 12)
    got = [t for t, _ in path]
    assert got[0] == start and got[-1] == end and len(got) == len(set(got)) == 12
    kinds = [lib.kind[t] for t in got]
    assert kinds[:4] == ["A"] * 4 and kinds[-4:] == ["B"] * 4 and sum(a != b for a, b in zip(kinds, kinds[1:])) == 1, kinds
    to_end = [float(lib.unit(t) @ lib.unit(end)) for t in got]
    assert np.corrcoef(np.arange(12), to_end)[0, 1] > 0.8, to_end
    assert all(0 <= d < 1 for _, d in path) and path[0][1] == path[-1][1] == 0.0
    steps = [1 - float(lib.unit(a) @ lib.unit(b)) for a, b in zip(got, got[1:])]
    assert total == pytest.approx(sum(steps), rel=1e-4)
    # two steps: just the ends; more steps than tracks: every track at most once
    assert [t for t, _ in song_path(lib.store, lib.catalog, "m", start, end, 2)[0]] == [start, end]
    every = [t for t, _ in song_path(lib.store, lib.catalog, "m", start, end, 200)[0]]
    assert len(every) == len(set(every)) == 2 * PER_KIND


def test_a_song_path_holds_one_file_of_a_recording_and_one_of_the_same_song(lib):
    start, end = lib.central["A"], lib.central["B"]
    before = [t for t, _ in song_path(lib.store, lib.catalog, "m", start, end, 10)[0]]
    x = before[3]
    # another file of x: its vector changed by a hair, and the same DSP descriptors (the catalog groups the two)
    twin = lib.add("twin", title="twin of x")
    noise = np.random.default_rng(1).normal(size=DIM).astype(np.float32)
    lib.store.put("m", [twin], (lib.unit(x) + 0.01 * noise / np.linalg.norm(noise))[None])
    for tid in (x, twin):
        lib.catalog.record_embedding(tid, "dsp", "1", lib.catalog.track(tid)["content_hash"], features=dsp_features(recording=7))
    assert lib.catalog.track(twin)["duplicate_of"] == x
    got = [t for t, _ in song_path(lib.store, lib.catalog, "m", start, end, 10)[0]]
    assert len(got) == len(set(got)) == 10 and (x in got) != (twin in got), got
    # the same title and artist, normalised (case, punctuation, spacing), is the same song: a file retagged
    u, v = [t for t in got[1:-1] if t != twin][1:3]
    for tid, title, artist in ((u, "Same Song!", "The Band"), (v, "same  song", "the band")):
        lib.catalog.resolve_track(lib.catalog.tracks_brief([tid])[tid]["path"], lib.catalog.track(tid)["content_hash"], 1, 1,
                                  {"title": title, "artist": artist})
    again = [t for t, _ in song_path(lib.store, lib.catalog, "m", start, end, 10)[0]]
    assert len(again) == len(set(again)) == 10 and not {u, v} <= set(again), again


# ---------------------------------------------------------------------------------------------- alchemy
def test_alchemy_keeps_away_from_every_subtracted_track(lib):
    adds = {t: lib.unit(t) for t in [t for t in lib.ids if lib.kind[t] == "A"][:3]}
    sub = lib.central["B"]
    subs = {sub: lib.unit(sub)}
    radius = 0.3
    near_sub = {t for t in lib.ids if t != sub and 1 - float(lib.unit(t) @ subs[sub]) <= radius}
    assert near_sub and all(lib.kind[t] == "B" for t in near_sub)
    req = AlchemyRequest(add=list(adds), subtract=[sub], n=55, temperature=0, subtract_radius=radius)  # room for every candidate
    out = alchemy(lib.store, "m", adds, subs, set(adds) | {sub}, req, None, Recordings.of(lib.catalog))
    chosen = [t for t, _ in out["chosen"]]
    assert len(chosen) == 2 * PER_KIND - 4 - len(near_sub) and not set(chosen) & (set(adds) | {sub} | near_sub)
    assert [lib.kind[t] for t in chosen[: PER_KIND - 3]] == ["A"] * (PER_KIND - 3)  # the added kind first
    sims = [s for _, s in out["chosen"]]
    assert sims == sorted(sims, reverse=True)
    # each track near the subtracted one is filtered, and said why
    assert {f[0] for f in out["filtered"]} == near_sub and all(f[2] == sub and 1 - f[3] <= radius for f in out["filtered"])
    assert max(abs(float(c)) for xy in out["coords"].values() for c in xy) <= 1.0001
    # sampling: the seed decides, and a different seed draws differently
    warm = AlchemyRequest(add=list(adds), n=5, temperature=0.5)
    draw = lambda seed: [t for t, _ in alchemy(lib.store, "m", adds, {}, set(adds), warm, seed, Recordings())["chosen"]]  # noqa: E731
    assert draw(1) == draw(1) and any(draw(s) != draw(1) for s in range(2, 6))


# ------------------------------------------------------------------------------------- fingerprint seeds
def test_fingerprint_seeds_decay_by_age_boost_favourites_and_drop_low_ratings(lib):
    now = time.time()
    a, b, c, d = lib.ids[:4]
    lib.catalog.add_listen("u", a, now)
    lib.catalog.add_listen("u", a, now - 30 * DAY)
    lib.catalog.add_listen("u", b, now - 30 * DAY)
    lib.catalog.add_listen("u", c, now - DAY)
    lib.catalog.add_listen("u", d, now - 1000 * DAY, submission=False)  # a "now playing" report is no play
    lib.catalog.set_rating("u", c, rating=1)
    seeds = fingerprint_seeds(lib.catalog, "u", half_life_days=30, max_listens=100, favorite_weight=2.0, now=now)
    assert set(seeds) == {a, b}
    assert seeds[a]["plays"] == 2 and seeds[a]["weight"] == pytest.approx(1.5, rel=1e-3)
    assert seeds[b]["weight"] == pytest.approx(0.5, rel=1e-3)
    lib.catalog.set_rating("u", b, starred=True)
    starred = fingerprint_seeds(lib.catalog, "u", half_life_days=30, max_listens=100, favorite_weight=2.0, now=now)
    assert starred[b]["favorite"] and starred[b]["weight"] == pytest.approx(2 * (0.5 + 1.0), rel=1e-2)
    # only the most recent plays count (favourites count whenever they were starred)
    newest = fingerprint_seeds(lib.catalog, "u", half_life_days=30, max_listens=1, favorite_weight=1.0, now=now)
    assert set(newest) == {a, b} and newest[a]["plays"] == 1 and newest[b]["plays"] == 0
    assert fingerprint_seeds(lib.catalog, "nobody", half_life_days=30, max_listens=100, favorite_weight=2.0) == {}


# ------------------------------------------------------------------------------------------------ caches
def test_parsed_tags_parse_again_only_what_was_rewritten(lib):
    for i, t in enumerate(lib.ids[:3]):
        lib.catalog.record_embedding(t, "musicnn", "1", f"hash-{i}", tags={"rock": 0.9, "jazz": 0.1})
    asked: list[list[str]] = []
    read = lib.catalog.musicnn_tags
    lib.catalog.musicnn_tags = lambda ids: asked.append(sorted(ids)) or read(ids)
    cache = ParsedTags(dominant_tag)
    assert cache.current(lib.catalog) == {t: "rock" for t in lib.ids[:3]}
    assert cache.current(lib.catalog) == {t: "rock" for t in lib.ids[:3]} and len(asked) == 1
    time.sleep(0.01)
    lib.catalog.record_embedding(lib.ids[1], "musicnn", "1", "hash-1", tags={"rock": 0.2, "jazz": 0.7, "mtt:rock": 0.9})
    assert cache.current(lib.catalog)[lib.ids[1]] == "jazz" and asked[-1] == [lib.ids[1]]  # an MSD tag, the legend's
    assert cache.current(lib.catalog, [lib.ids[0], lib.ids[5]]) == {lib.ids[0]: "rock"}  # an untagged track has none


def test_the_map_is_patched_for_small_changes_and_refitted_for_large_ones(lib):
    pca = refresh_projection(lib.store, "m", "pca", None, 1)
    assert pca.method == "pca" and len(pca.ids) == 2 * PER_KIND and np.abs(pca.coords).max() <= 1.0001
    assert refresh_projection(lib.store, "m", "pca", pca, 2) is pca  # nothing changed
    src = lib.central["B"]
    new = lib.add("new")
    lib.store.put("m", [new], lib.store.get_vectors("m", [src])[src][None] * 2)
    patched = refresh_projection(lib.store, "m", "pca", pca, 2)
    assert patched.fitted == pca.fitted and patched.version == 2
    assert all(np.allclose(patched.coords[patched.pos[t]], pca.coords[pca.pos[t]]) for t in pca.ids)
    assert np.linalg.norm(patched.coords[patched.pos[new]] - patched.coords[patched.pos[src]]) < 1e-4  # same direction
    # a map without a transform (t-SNE's; its fit is left to the tests on real music): a new track is placed
    # among its nearest placed neighbours
    tsne = Projection("tsne", patched.ids, patched.coords, patched.fitted, None, patched.sig, 3, time.time())
    near_b = lib.add("near b")
    lib.store.put("m", [near_b], lib.store.get_vectors("m", [src])[src][None] * 1.01)
    placed = refresh_projection(lib.store, "m", "tsne", tsne, 4)
    xy = lambda proj, kind: np.stack([proj.coords[proj.pos[t]] for t in proj.ids if lib.kind.get(t) == kind])  # noqa: E731
    at = placed.coords[placed.pos[near_b]]
    assert np.linalg.norm(at - xy(placed, "B").mean(0)) < 0.5 * np.linalg.norm(at - xy(placed, "A").mean(0))
    assert all(np.allclose(placed.coords[placed.pos[t]], tsne.coords[tsne.pos[t]]) for t in tsne.ids)
    lib.store.remove("m", [t for t in lib.ids if lib.kind[t] == "A"][:5])  # 6 changes of 61: past the drift allowed
    refit = refresh_projection(lib.store, "m", "pca", placed, 5)
    assert refit.fitted == frozenset(refit.ids) and len(refit.ids) == 2 * PER_KIND + 2 - 5 and refit.version == 5
    # the space refitted (its held vectors on other axes): one new track is enough for a new fit, not a patch
    lib.store.put("m", [lib.add("one more")], lib.store.get_vectors("m", [src])[src][None])
    lib.store.held_stamp = lambda model: "refitted"
    again = refresh_projection(lib.store, "m", "pca", refit, 6)
    assert again.fitted == frozenset(again.ids) != refit.fitted and again.sig[-1] == "refitted"


def test_the_pca_eigenvectors_are_the_leading_ones():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(300, 20)) * np.linspace(3, 0.1, 20)
    cov = np.cov(x.T)
    got = top2_eigenvectors(cov)
    want = np.linalg.eigh(cov)[1][:, ::-1][:, :2]
    assert np.allclose(np.abs(got.T @ want), np.eye(2), atol=1e-6)


def test_a_pca_of_fewer_rows_than_dimensions_projects_as_the_full_one():
    """Alchemy fits its plot on a few dozen 1,012-d vectors: through their Gram matrix, the same plane."""
    rng = np.random.default_rng(8)
    few = (rng.normal(size=(40, 300)) * np.linspace(3, 0.1, 300)).astype(np.float32)
    centred = (few - few.mean(axis=0)).astype(np.float64)
    want = np.linalg.eigh(centred.T @ centred)[1][:, ::-1][:, :2]
    plane = centred @ want  # each axis up to its sign
    assert np.allclose(np.abs(pca_2d(few)(few)), np.abs(plane), atol=1e-4 * np.abs(plane).max())


# -------------------------------------------------------------------------------------- ids and search
def test_ids_resolve_in_order_and_unknown_ones_are_named(lib):
    a, b = lib.ids[:2]
    lib.catalog.set_external_id("subsonic", "nd-b", b)
    assert resolve(lib.catalog, [b, "nd-b", a], "add") == [b, a]
    with pytest.raises(NotFound) as e:
        resolve(lib.catalog, [a, "x", "y"], "add")
    assert e.value.field == "add" and "'x' (and 1 more)" in str(e.value)


def test_word_search_needs_every_word_ignores_case_and_takes_wildcards_literally(lib):
    odd = lib.add("odd", title="100%_done", artist="Wild Card")
    lib.catalog.set_external_id("subsonic", "nd-odd", odd)

    def find(text: str, **kw) -> list:
        return search_tracks(lib.catalog, SearchTracksQuery(search_query=text, **kw))

    hits = find("artist b2 song")
    assert len(hits) == PER_KIND // 3 and {h.author for h in hits} == {"Artist B2"}
    assert [h.title for h in hits] == sorted(h.title for h in hits) and {h.album for h in hits} == {"unknown"}
    assert [h.item_id for h in find("ARTIST B2 SONG")] == [h.item_id for h in hits]
    assert [(h.item_id, h.title) for h in find("100%_")] == [("nd-odd", "100%_done")]  # the media server's id where known
    assert find("100__") == [] and find("1%0") == []  # % and _ are letters here, not wildcards
    assert find("ab") == [] and find("song", start=5, end=5) == []  # too short, as AudioMuse-AI; an empty page
    assert [h.item_id for h in find("song", start=5, end=8)] == [h.item_id for h in find("song", end=8)][5:]


def test_the_artist_index_holds_vectors_as_the_mirror_does_with_the_spaces_cosines(tmp_path, monkeypatch):
    """A wide space is held projected (fewer numbers); the artists' cosines and the artist vector alchemy adds
    are those of the model's space all the same."""
    from sidecar.data import space as space_module
    from sidecar.data.mirror import Mirror
    from sidecar.data.space import Space
    from sidecar.explore.artists import artist_index, artist_vector
    from sidecar.explore.state import ExploreCaches
    from tests.test_vector_space import BLOCKS, library

    monkeypatch.setattr(space_module, "PROJECT", 6)
    raw = library(400, seed=5)
    catalog = Catalog(tmp_path / "catalog.sqlite3")
    ids = [catalog.resolve_track(f"/music/{i}.ogg", f"h{i}", 1, 1, {"duration_s": 60.0, "artist": f"Artist {i % 20}"})[0]
           for i in range(400)]  # fmt: skip
    store = MirrorStore({})
    store.mirrors["m"] = Mirror(raw.shape[1], Space.of(BLOCKS, raw.shape[1]))
    store.mirrors["m"].put(ids, raw)
    index = artist_index(catalog, store, ExploreCaches(), "m")
    assert index.unit.shape == (400, 6) and index.centroids.shape == (20, 6)  # held: 6 numbers, not 13
    _, full = store.stacked("m", index.track_ids)  # in the model's space
    assert full.shape == (400, raw.shape[1])
    u = unit(full)
    centroids = unit(np.stack([u[m].mean(axis=0) for m in index.members]))
    assert np.allclose(index.centroids @ index.centroids.T, centroids @ centroids.T, atol=1e-5)
    row = index.by_key["artist 3"]
    assert np.allclose(artist_vector(store, index, row, "m"), centroids[row], atol=1e-5)
    catalog.close()
