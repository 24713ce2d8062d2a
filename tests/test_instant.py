"""Instant playlists from a sentence: the deterministic parser (table-driven), the filters and ranking on a small
catalog of known tracks and on real music whose kind is known, and the optional LLM path against a fake
OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from schemas.instant import FeatureRange, InstantQuery
from sidecar.config import Settings
from sidecar.data.catalog import Catalog
from sidecar.instant.index import IndexCache, apply_filters, rank_tracks
from sidecar.instant.llm import LlmConfig, chat_url, llm_config
from sidecar.instant.parser import parse_instant
from sidecar.text.vocabulary import MSD_TAGS

TEMPO_120 = {"feature": "tempo_bpm", "min": 110.0, "max": 130.0, "percentile": False}

PARSES = [
    ("upbeat rock from the 90s, no vocals, around 120 bpm", {
        "include_tags": ["rock", "instrumental"], "include_concepts": ["upbeat"], "exclude_concepts": ["vocals"],
        "features": [TEMPO_120], "year_min": 1990, "year_max": 1999, "genres": ["rock"], "text": "",
    }),
    ("calm orchestral music, no drums", {
        "include_concepts": ["calm", "orchestral"], "exclude_concepts": ["percussive"], "features": [], "genres": [], "text": "",
    }),
    ("fast electronic dance music around 120 bpm", {"include_concepts": ["electronic_dance"], "features": [TEMPO_120], "text": ""}),
    ("sad piano songs in a minor", {"include_tags": ["sad"], "key": "A", "scale": "minor", "text": "piano"}),
    ("something in a minor key", {"key": None, "scale": "minor"}),
    ("in the key of Eb, with strings", {"key": "D#", "scale": None, "include_concepts": ["orchestral"]}),
    ("minor key jazz from 1995 to 1999", {"include_tags": ["jazz"], "scale": "minor", "year_min": 1995, "year_max": 1999, "text": ""}),
    ("songs from the 1980s", {"year_min": 1980, "year_max": 1989}),
    ("late nineties trip hop", {"year_min": 1995, "year_max": 1999, "genres": ["trip hop"]}),
    ("early 2000s", {"year_min": 2000, "year_max": 2004}),
    ("anything before 1970", {"year_min": None, "year_max": 1969}),
    ('loud metal by Iron Maiden from the album "Powerslave"', {
        "include_tags": ["metal"], "artist": "Iron Maiden", "album": "Powerslave",
        "features": [{"feature": "loudness_db", "min": 0.6, "max": None, "percentile": True}],
    }),
    ("songs from the album Kind of Blue by Miles Davis", {"artist": "Miles Davis", "album": "Kind of Blue"}),
    ("quiet acoustic folk without drums, not too fast", {
        "include_tags": ["acoustic", "folk"], "exclude_concepts": ["percussive"],
        "features": [{"feature": "tempo_bpm", "min": None, "max": 120.0, "percentile": False},
                     {"feature": "loudness_db", "min": None, "max": 0.4, "percentile": True}],
    }),
    ("between 100 and 110 bpm, happy pop", {"include_tags": ["happy", "pop"],
                                            "features": [{"feature": "tempo_bpm", "min": 100.0, "max": 110.0, "percentile": False}]}),
    ("over 140 bpm, driven by drums", {"include_concepts": ["percussive"], "artist": None,
                                        "features": [{"feature": "tempo_bpm", "min": 140.0, "max": None, "percentile": False}]}),
    ("instrumental, not electronic, slow", {
        "include_tags": ["instrumental"], "exclude_tags": ["electronic"],
        "features": [{"feature": "tempo_bpm", "min": None, "max": 90.0, "percentile": False}],
    }),
    ("hip hop and rnb with female vocalists", {"include_tags": ["Hip-Hop", "rnb", "female vocalists"]}),
    ("dark ambient without synth or vocals", {
        "include_concepts": ["dark"], "include_tags": ["ambient", "instrumental"], "exclude_tags": ["electronic"], "exclude_concepts": ["vocals"],
    }),
    ("music for a rainy day in paris", {"text": "rainy day paris", "include_tags": [], "include_concepts": []}),
    ("not instrumental please", {"include_concepts": ["vocals"], "exclude_tags": []}),
]


@pytest.mark.parametrize("sentence, expected", PARSES, ids=[s for s, _ in PARSES])
def test_rules_parse(sentence, expected):
    got = parse_instant(sentence).query.model_dump()
    assert {k: got[k] for k in expected} == expected


def test_parse_notes_conflicts_and_always_fits_the_schema():
    p = parse_instant("fast songs around 90 bpm")
    assert p.query.features == [FeatureRange(feature="tempo_bpm", min=80, max=100)] and "explicit BPM" in p.notes[0]
    p = parse_instant("rock, no rock")
    assert p.query.exclude_tags == ["rock"] and p.query.include_tags == [] and "exclusion wins" in p.notes[0]
    every_tag = ", ".join(t.lower() for t in MSD_TAGS)
    for s in [
        "", "   ", "!!!", "by", "in the key of", "bpm", "x" * 500, "SELECT * FROM tracks; DROP TABLE tracks", "90s 80s 1999-2001",
        every_tag, "no " + every_tag.replace(", ", " or "), "no " + "verylongword " * 40, ", no ".join(f"w{i}" for i in range(30)),
        "by " + "z" * 300, "songs by a, by b, by c",
    ]:
        InstantQuery.model_validate(parse_instant(s).query.model_dump())  # never anything but a valid query


def test_the_query_schema_is_closed():
    assert InstantQuery.model_validate({"include_tags": ["mellow", "hip-hop"], "key": "Bb"}).model_dump(exclude_defaults=True) == {
        "include_tags": ["Mellow", "Hip-Hop"], "key": "A#",
    }
    for bad in [
        {"include_tags": ["polka"]}, {"include_concepts": ["loud noises"]}, {"sql": "SELECT 1"}, {"key": "H"},
        {"features": [{"feature": "tempo_bpm"}]}, {"features": [{"feature": "tempo_bpm", "min": 130, "max": 110}]},
        {"features": [{"feature": "valence", "min": 0.5}]}, {"features": [{"feature": "energy", "min": 2, "percentile": True}]},
        {"year_min": 2000, "year_max": 1990}, {"genres": [""]}, {"scale": "dorian"},
    ]:
        with pytest.raises(ValidationError):
            InstantQuery.model_validate(bad)


def test_llm_settings_are_read_from_configuration_only():
    assert llm_config(Settings()) is None
    assert llm_config(Settings(llm_url="  ")) is None
    cfg = llm_config(Settings(llm_url="http://127.0.0.1:11434", llm_model="m", llm_api_key="k", llm_api="ollama"))
    assert cfg == LlmConfig(url="http://127.0.0.1:11434", model="m", api_key="k", api="ollama", timeout_s=30.0)
    assert chat_url(cfg) == "http://127.0.0.1:11434/api/chat"
    assert chat_url(LlmConfig(url="http://h/v1", model="m")) == "http://h/v1/chat/completions"
    assert chat_url(LlmConfig(url="http://h/", model="m")) == "http://h/v1/chat/completions"
    assert chat_url(LlmConfig(url="http://h/api/chat", model="m", api="ollama")) == "http://h/api/chat"
    s = Settings(llm_url="http://127.0.0.1:1", llm_model="m", llm_api_key="secret-key")
    assert llm_config(s).api_key == "secret-key" and "secret-key" not in repr(s)


# ------------------------------------------------------------------------------- on a small catalog
# title: artist, album, genre, year (as tagged); tempo (BPM), key, loudness (dBFS); MusiCNN tags well above the noise
SMALL = {
    "a1": ("Iron Maiden", "Powerslave", "Heavy Metal", "1984-09-03", (150, "E minor", -6), {"metal": 0.9, "rock": 0.8}),
    "a2": ("Iron Maiden", "Somewhere in Time", "Metal", "1986", (120, "E minor", -7), {"metal": 0.85}),
    "b1": ("Miles Davis", "Kind of Blue", "Jazz", "1959", (95, "D minor", -20), {"jazz": 0.9}),
    "b2": ("Miles Davis", "Kind of Blue", "Jazz", "1959", (125, "F major", -18), {"jazz": 0.8}),
    "c1": ("Orbital", "In Sides", "Electronic", "1996", (122, "A minor", -9), {"electronic": 0.9}),
    "c2": ("Orbital", None, "Electronic", "1993", (117, "A minor", -10), {"electronic": 0.8}),
    "d1": (None, None, None, None, (70, "C major", -25), {"ambient": 0.9}),
    "d2": (None, None, None, None, (100, "G major", -15), {"ambient": 0.7}),
}


def add_track(catalog: Catalog, title: str, artist, album, genre, year, features: dict | None, tags: dict, noise: np.random.Generator) -> str:
    """A track as the ingest leaves it: its file's tags, MusiCNN's 50 tag probabilities and (if given) the DSP analysis."""
    info = {"title": title, "artist": artist, "album": album, "genre": genre, "year": year}
    track_id, _ = catalog.resolve_track(f"/music/{title}.ogg", f"hash-{title}", 1000, 1, info)
    probs = {t: float(noise.uniform(0, 0.1)) for t in MSD_TAGS} | tags
    catalog.record_embedding(track_id, "musicnn", "1", f"hash-{title}", tags=probs)
    if features is not None:
        catalog.record_embedding(track_id, "dsp", "1", f"hash-{title}", features=features)
    return track_id


@pytest.fixture
def small_catalog(tmp_path):
    catalog = Catalog(tmp_path / "catalog.db")
    noise = np.random.default_rng(0)
    for title, (artist, album, genre, year, (tempo, key, loudness), tags) in SMALL.items():
        features = {"tempo_bpm": tempo, "key": key.split()[0], "scale": key.split()[1], "loudness_db": loudness}
        add_track(catalog, title, artist, album, genre, year, features, tags, noise)
    yield catalog
    catalog.close()


def titles(idx, rows) -> list[str]:
    return [idx.meta[r]["title"] for r in rows]


def test_metadata_filters_apply_or_step_aside_with_a_note(small_catalog):
    idx = IndexCache().current(small_catalog)
    assert len(idx.track_ids) == 8 and sorted(m["year"] for m in idx.meta if m["year"])[:3] == [1959, 1959, 1984]
    for query, kept in [
        (InstantQuery(artist="iron MAIDEN"), {"a1", "a2"}),
        (InstantQuery(album="kind of"), {"b1", "b2"}),
        (InstantQuery(year_min=1990, year_max=1999), {"c1", "c2"}),  # "1984-09-03" is 1984
        (InstantQuery(year_max=1969), {"b1", "b2"}),
        (InstantQuery(genres=["metal"]), {"a1", "a2"}),  # "Heavy Metal" and "Metal"
        (InstantQuery(key="A", scale="minor"), {"c1", "c2"}),
        (InstantQuery(scale="major"), {"b2", "d1", "d2"}),
    ]:
        ap = apply_filters(idx, query, 10)
        assert set(titles(idx, ap.candidates)) == kept and ap.notes == [], query
        assert ap.query == query and ap.library == 8

    ap = apply_filters(idx, InstantQuery(year_min=1970, year_max=1979), 10)  # no track: MusiCNN's decade tag stands in
    assert (ap.query.year_min, ap.query.year_max, ap.query.include_tags) == (None, None, ["70s"])
    assert "no track's year is in 1970–1979" in ap.notes[0] and "'70s' tag" in ap.notes[0]
    ap = apply_filters(idx, InstantQuery(artist="Nobody", text="rainy"), 10)  # left to the text search
    assert ap.query.artist is None and ap.query.text == "rainy Nobody" and len(ap.candidates) == 8 and "Nobody" in ap.notes[0]
    ap = apply_filters(idx, InstantQuery(genres=["metal", "polka"]), 10)
    assert ap.query.genres == ["metal"] and set(titles(idx, ap.candidates)) == {"a1", "a2"} and "'polka'" in ap.notes[0]


def test_feature_ranges_are_hard_filters_and_their_centre_ranks(small_catalog):
    idx = IndexCache().current(small_catalog)
    ap = apply_filters(idx, InstantQuery(features=[FeatureRange(feature="tempo_bpm", min=110, max=130)]), 10)
    ranked = rank_tracks(idx, ap, 10, None, None)
    assert [t.title for t in ranked.tracks] == ["a2", "c1", "c2", "b2"]  # 120, 122, 117, 125 BPM: nearest 120 first
    assert ranked.ranked_by == ["closeness to the feature ranges"] and ranked.tracks[0].reasons == ["tempo_bpm 120"]
    assert ranked.tracks[0].tempo_bpm == 120 and ranked.tracks[0].score == 1.0 and ranked.tracks[-1].score == pytest.approx(0.5)
    # relative words: percentile ranks of this library (the three loudest of eight are at or above 0.6)
    ap = apply_filters(idx, InstantQuery(features=[FeatureRange(feature="loudness_db", min=0.6, percentile=True)]), 10)
    assert set(titles(idx, ap.candidates)) == {"a1", "a2", "c1"}


def test_tag_thresholds_relax_when_too_few_tracks_pass(small_catalog):
    idx = IndexCache().current(small_catalog)
    ap = apply_filters(idx, InstantQuery(include_tags=["metal"]), 2)
    assert ap.threshold == 0.5 and len(ap.candidates) == 4 and ap.notes == []  # at least the median track's score
    ranked = rank_tracks(idx, ap, 2, None, None)
    assert [t.title for t in ranked.tracks] == ["a1", "a2"] and ranked.ranked_by == ["tags and concepts"]
    assert ranked.tracks[0].reasons == ["metal 1.00"]
    ap = apply_filters(idx, InstantQuery(include_tags=["metal"]), 5)
    assert ap.threshold == 0.4 and len(ap.candidates) == 5 and "relaxed" in ap.notes[0]
    ap = apply_filters(idx, InstantQuery(exclude_tags=["metal"], include_concepts=["quiet"]), 10)
    assert {"a1", "a2"}.isdisjoint(titles(idx, ap.candidates)) and ap.constraints == [("tag", "metal", False), ("concept", "quiet", True)]
    ranked = rank_tracks(idx, apply_filters(idx, InstantQuery(include_concepts=["quiet"]), 2), 2, None, None)
    assert [(t.title, t.reasons) for t in ranked.tracks] == [("d1", ["quiet 1.00"]), ("b1", ["quiet 0.86"])]  # the quietest two


def test_without_a_text_search_left_over_words_are_noted_and_the_library_order_ranks(small_catalog):
    idx = IndexCache().current(small_catalog)
    ap = apply_filters(idx, InstantQuery(text="rainy day"), 3)
    ranked = rank_tracks(idx, ap, 3, None, None, "no text encoder")
    assert ranked.notes == ["text search is unavailable (no text encoder): 'rainy day' was not used"]
    assert ranked.ranked_by == ["artist, album, title"] and [t.title for t in ranked.tracks] == ["d1", "d2", "a1"]


def test_the_index_follows_the_catalog(small_catalog):
    cache = IndexCache()
    first = cache.current(small_catalog)
    assert cache.current(small_catalog) is first  # nothing changed: no rebuild
    add_track(small_catalog, "e1", "Someone", None, None, None, None, {"rock": 0.9}, np.random.default_rng(1))  # no DSP analysis
    again = cache.current(small_catalog)
    assert again is not first and len(again.track_ids) == 9
    e1 = again.meta.index(next(m for m in again.meta if m["title"] == "e1"))
    assert np.isnan(again.raw["tempo_bpm"][e1]) and again.pct["tempo_bpm"][e1] == 0.5  # unknown: no evidence either way
    ap = apply_filters(again, InstantQuery(features=[FeatureRange(feature="tempo_bpm", max=200)]), 10)
    assert "e1" not in titles(again, ap.candidates)


# ------------------------------------------------------------------------------------ on real music
def kinds_of(library, body) -> list[str]:
    return [library["kinds"][t["title"]] for t in body["tracks"]]


@pytest.mark.slow
async def test_instant_playlists_on_real_music(open_sidecar, analysed_library):
    from sidecar.http.app import make_app

    sc = await open_sidecar()
    async with TestClient(TestServer(make_app(sc))) as client:
        r = await client.post("/api/instant_playlist", json={"text": "calm orchestral music, no drums", "limit": 10})
        body = await r.json()
        assert r.status == 200 and body["parsed_by"] == "rules" and body["llm_error"] is None
        assert body["query"]["include_concepts"] == ["calm", "orchestral"] and body["query"]["exclude_concepts"] == ["percussive"]
        assert len(body["tracks"]) == 10 and body["library"] == 51 and body["tag_threshold"] == 0.5
        assert kinds_of(analysed_library, body).count("orchestral") >= 9, kinds_of(analysed_library, body)
        assert any("not percussive" in w for w in body["tracks"][0]["reasons"])

        r = await client.post("/api/instant_playlist", json={"text": "fast electronic dance music around 120 bpm", "limit": 5})
        body = await r.json()
        assert r.status == 200 and body["query"]["features"] == [TEMPO_120] and body["query"]["include_concepts"] == ["electronic_dance"]
        assert any("explicit BPM" in n for n in body["notes"])
        assert len(body["tracks"]) == 5 and all(110 <= t["tempo_bpm"] <= 130 for t in body["tracks"])  # a hard filter
        assert kinds_of(analysed_library, body).count("electronic") >= 4, kinds_of(analysed_library, body)

        # metadata this library lacks (no years, no genre tags) is dropped with a note; the decade tag stands in
        r = await client.post("/api/instant_playlist", json={"text": "upbeat rock from the 90s, no vocals", "limit": 5})
        body = await r.json()
        assert r.status == 200 and body["query"]["year_min"] == 1990 and body["query"]["genres"] == ["rock"]
        assert body["applied"]["year_min"] is None and body["applied"]["genres"] == [] and "90s" in body["applied"]["include_tags"]
        assert any("no track has a year" in n for n in body["notes"]) and any("genre" in n for n in body["notes"])
        # a key and scale are hard filters
        r = await client.post("/api/instant_playlist", json={"text": "in a minor", "limit": 50})
        body = await r.json()
        assert r.status == 200 and body["tracks"] and all((t["key"], t["scale"]) == ("A", "minor") for t in body["tracks"])
        # what the rules leave over goes to the text search
        r = await client.post("/api/instant_playlist", json={"text": "cinematic film score for a battle", "limit": 5, "model": "musicnn"})
        body = await r.json()
        assert r.status == 200 and body["query"]["text"] == "battle" and any("text search" in x for x in body["ranked_by"])
        assert kinds_of(analysed_library, body).count("orchestral") >= 4

        for bad, field in [
            ({"text": ""}, "text"), ({"text": "   "}, "text"), ({"text": "x" * 501}, "text"), ({}, "text"),
            ({"text": "rock", "limit": 0}, "limit"), ({"text": "rock", "limit": 10**6}, "limit"),
            ({"text": "rock", "model": "nope"}, "model"), ({"text": "rock", "sql": "SELECT 1"}, "sql"),
            ({"text": "rock", "use_llm": "perhaps"}, "use_llm"),
        ]:
            r = await client.post("/api/instant_playlist", json=bad)
            assert (r.status, (await r.json()).get("field")) == (400, field), bad
        r = await client.post("/api/instant_playlist", data=b"not json", headers={"Content-Type": "application/json"})
        assert r.status == 400
        # a sentence whose "by" names nobody is a request like any other (it was a 500: an empty artist)
        r = await client.post("/api/instant_playlist", json={"text": "BY ALBUM 0", "limit": 5})
        body = await r.json()
        assert r.status == 200 and body["query"]["album"] == "0" and body["query"]["artist"] is None


# ------------------------------------------------------------------------------------ the LLM path
LLM_QUERY = {"include_concepts": ["electronic_dance"], "exclude_concepts": ["orchestral"], "features": [TEMPO_120]}
ANSWERS = {
    "good": "```json\n" + json.dumps(LLM_QUERY) + "\n```",
    "garbage": "Sure! Here is your query: SELECT * FROM score WHERE mood = 'happy' LIMIT 25;",
    "off-schema": json.dumps({"include_tags": ["polka"], "sql": "DROP TABLE tracks"}),
}


@pytest.fixture
async def fake_llm():
    """A tiny OpenAI- and Ollama-compatible chat server on 127.0.0.1; the model name picks its answer."""
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"path": request.path, "auth": request.headers.get("Authorization"), "body": body})
        if body["model"] == "http-error":
            return web.json_response({"error": "overloaded"}, status=503)
        content = ANSWERS[body["model"]]
        if request.path == "/api/chat":
            return web.json_response({"model": body["model"], "message": {"role": "assistant", "content": content}, "done": True})
        return web.json_response({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/api/chat", chat)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("")).rstrip("/"), seen
    await server.close()


@pytest.mark.slow
async def test_llm_fills_the_same_query_and_anything_else_falls_back(open_sidecar, analysed_library, fake_llm):
    from sidecar.http.app import make_app

    url, seen = fake_llm
    sc = await open_sidecar()
    text = "music for dancing around 120 bpm, nothing orchestral"

    def configure(url: str = "", model: str = "", api_key: str = "", api: str = "openai", timeout_s: float = 30.0) -> None:
        """The running sidecar's LLM settings, read again by each request."""
        s = sc.settings
        s.llm_url, s.llm_model, s.llm_api_key, s.llm_api, s.llm_timeout_s = url, model, api_key, api, timeout_s

    async with TestClient(TestServer(make_app(sc))) as client:
        async def ask(**cfg) -> dict:
            if cfg:
                configure(url=url, **cfg)
            else:
                configure()
            r = await client.post("/api/instant_playlist", json={"text": text, "limit": 5, "use_llm": True})
            assert r.status == 200
            return await r.json()

        body = await ask(model="good", api_key="secret")
        assert body["parsed_by"] == "llm" and body["llm_error"] is None
        assert body["query"] == InstantQuery.model_validate(LLM_QUERY).model_dump(mode="json")
        assert kinds_of(analysed_library, body).count("electronic") >= 4 and all(110 <= t["tempo_bpm"] <= 130 for t in body["tracks"])
        req = seen[-1]
        assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer secret"
        assert req["body"]["messages"][-1] == {"role": "user", "content": text}
        assert req["body"]["response_format"]["json_schema"]["schema"] == InstantQuery.model_json_schema()
        assert "include_concepts" in req["body"]["messages"][0]["content"] and "no SQL" in req["body"]["messages"][0]["content"]

        body = await ask(model="good", api="ollama")
        assert body["parsed_by"] == "llm" and seen[-1]["path"] == "/api/chat" and seen[-1]["auth"] is None
        assert seen[-1]["body"]["format"] == InstantQuery.model_json_schema() and seen[-1]["body"]["stream"] is False

        rules = parse_instant(text).query.model_dump(mode="json")
        for model, why in [("garbage", "no JSON object"), ("off-schema", "does not fit the query schema"), ("http-error", "HTTP 503")]:
            body = await ask(model=model)
            assert body["parsed_by"] == "rules" and why in body["llm_error"] and "rules' parse" in body["llm_error"], body["llm_error"]
            assert body["query"]["features"] == rules["features"] and body["tracks"]
        configure(url="http://127.0.0.1:9", model="good", timeout_s=2)  # nothing listens there
        r = await client.post("/api/instant_playlist", json={"text": text, "use_llm": True})
        assert (await r.json())["llm_error"].startswith("cannot reach the LLM")

        body = await ask()  # use_llm without a configured LLM
        assert body["parsed_by"] == "rules" and "no LLM is configured" in body["llm_error"]
        n = len(seen)
        r = await client.post("/api/instant_playlist", json={"text": text})  # use_llm defaults to off
        assert (await r.json())["llm_error"] is None and len(seen) == n


def test_the_parser_never_fails_on_any_text():
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    words = st.sampled_from([
        "no", "not", "without", "or", "and", "by", "from", "the", "album", "in", "a", "minor", "major", "key", "of", "bpm", "120",
        "around", "90s", "1990", "-", "to", "fast", "slow", "loud", "quiet", "rock", "vocals", "drums", "calm", "orchestral", ",",
        "\"", "early", "late", "nineties", "between", "over", "under", "C#", "Eb", "x" * 120, "é", "'",
    ])

    # derandomize: the same 200 examples on every machine, so CI cannot fail at random; the examples are the
    # inputs hypothesis once found on other machines (a blank name after "by" was an empty artist, a 500)
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    @given(st.one_of(st.text(max_size=500), st.lists(words, max_size=60).map(" ".join)))
    @example("BY ALBUM 0")
    @example('by " " album \'\'')
    def check(text):
        InstantQuery.model_validate(parse_instant(text).query.model_dump())

    check()
