"""Instant playlists from a sentence: the deterministic parser (table-driven), the filters and ranking on real
music whose kind is known, and the optional LLM path against a fake OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from schemas.instant import FeatureRange, InstantQuery
from sidecar import instant
from sidecar.instant import LlmConfig, llm_config, parse_instant
from sidecar.text.zero_shot import MSD_TAGS

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
    assert llm_config(SimpleNamespace()) is None
    assert llm_config(SimpleNamespace(llm_url="  ")) is None
    cfg = llm_config(SimpleNamespace(llm_url="http://127.0.0.1:11434", llm_model="m", llm_api_key="k", llm_api="ollama"))
    assert cfg == LlmConfig(url="http://127.0.0.1:11434", model="m", api_key="k", api="ollama", timeout_s=30.0)
    assert instant._endpoint(cfg) == "http://127.0.0.1:11434/api/chat"
    assert instant._endpoint(LlmConfig(url="http://h/v1", model="m")) == "http://h/v1/chat/completions"
    assert instant._endpoint(LlmConfig(url="http://h/", model="m")) == "http://h/v1/chat/completions"
    from sidecar.config import Settings

    if "llm_url" in Settings.model_fields:  # once the settings carry them
        s = Settings(llm_url="http://127.0.0.1:1", llm_model="m")
        assert llm_config(s).url == "http://127.0.0.1:1" and "llm_api_key" not in repr(s).replace("llm_api_key=''", "")


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
async def test_llm_fills_the_same_query_and_anything_else_falls_back(open_sidecar, analysed_library, fake_llm, monkeypatch):
    from sidecar.http.app import make_app

    url, seen = fake_llm
    sc = await open_sidecar()
    use = {"cfg": None}
    monkeypatch.setattr(instant, "llm_config", lambda settings: use["cfg"])
    text = "music for dancing around 120 bpm, nothing orchestral"
    async with TestClient(TestServer(make_app(sc))) as client:
        async def ask(**cfg) -> dict:
            use["cfg"] = LlmConfig(url=url, **cfg) if cfg else None
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
        use["cfg"] = LlmConfig(url="http://127.0.0.1:9", model="good", timeout_s=2)  # nothing listens there
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
