"""The API's OpenAPI description (/openapi.json) and its page (/docs): a valid OpenAPI 3.1 document that
lists every route the app serves, with schemas that exist, and a page that names every endpoint.
(That the running server answers as described is tests/test_fuzz.py's job.)"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate

from sidecar.http.access import guard
from sidecar.http.app import make_app
from sidecar.config import Settings
from sidecar.http.openapi import build, documented

METHODS = {"get", "post", "put", "patch", "delete"}


def app() -> web.Application:
    # the description comes from the routes alone; the Sidecar is only needed by the handlers, not called here
    return make_app(SimpleNamespace(settings=Settings()))


@pytest.fixture(scope="module")
def spec() -> dict:
    return build(app())


def served_routes(a: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path template) of every route, except aiohttp's HEAD twin of each GET and static files."""
    return {
        (r.method, r.resource.canonical) for r in a.router.routes()
        if r.method != "HEAD" and not isinstance(r.resource, web.StaticResource)
    }


def operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                yield method.upper(), path, op


def test_the_description_is_valid_openapi_3_1(spec):
    validate(spec)  # raises on any error
    assert spec["openapi"].startswith("3.1")


def test_every_route_is_described_with_its_method_and_nothing_else(spec):
    documented_ops = {(m, p) for m, p, _ in operations(spec)}
    routes = served_routes(app())
    assert documented_ops == routes
    for must in [("GET", "/api/similar_tracks"), ("POST", "/api/recommendations"), ("GET", "/api/tracks/{track_id}"),
                 ("DELETE", "/api/playlists/{playlist_id}"), ("GET", "/openapi.json"), ("GET", "/docs")]:
        assert must in routes


def test_a_route_added_without_a_description_is_refused():
    a = app()

    async def undocumented(request):
        return web.json_response({})

    a.router.add_get("/api/new-thing", undocumented)
    with pytest.raises(LookupError, match="GET /api/new-thing has no @documented"):
        build(a)
    b = app()  # described: it appears, with its summary
    b.router.add_get("/api/new-thing", documented("A new thing", tag="misc")(undocumented))
    assert build(b)["paths"]["/api/new-thing"]["get"]["summary"] == "A new thing"


def _refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_every_reference_names_an_existing_schema_and_every_json_body_has_one(spec):
    names = set(spec["components"]["schemas"])
    refs = set(_refs(spec))
    assert refs and all(r.startswith("#/components/schemas/") for r in refs)
    assert {r.rsplit("/", 1)[1] for r in refs} <= names
    for method, path, op in operations(spec):
        bodies = [op["requestBody"]["content"]] if "requestBody" in op else []
        bodies += [r["content"] for r in op["responses"].values() if "content" in r]
        for content in bodies:
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                assert schema, (method, path)
        for code, r in op["responses"].items():
            if int(code) >= 400:  # every error is the one error body: {error, field}
                assert r["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody") or code == "409", (method, path, code)


def test_models_beside_the_handlers_are_what_is_described(spec):
    similar = spec["paths"]["/api/similar_tracks"]["get"]
    params = {p["name"]: p for p in similar["parameters"]}
    assert params["item_id"]["required"] and params["item_id"]["in"] == "query"
    assert params["n"]["schema"]["maximum"] == 500 and not params["n"]["required"]
    assert "null" not in str(params["model"]["schema"])  # a query has no null: absent is how it says so
    assert similar["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/SimilarTrack"},
    }
    assert {"400", "404", "409"} <= set(similar["responses"])
    track = spec["paths"]["/api/tracks/{track_id}"]["get"]
    assert track["parameters"] == [{"name": "track_id", "in": "path", "required": True, "schema": {"type": "string"}}]
    recs = spec["paths"]["/api/recommendations"]["post"]
    assert recs["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/RecommendationRequest"}
    assert {"400", "413"} <= set(recs["responses"])
    conflict = spec["paths"]["/api/clustering/start"]["post"]["responses"]
    assert conflict["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/ClusteringJob")
    assert conflict["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ClusteringConflict")
    progress = spec["paths"]["/api/batch/progress"]["get"]["responses"]["200"]["content"]
    assert set(progress) == {"application/json", "text/event-stream"}
    assert "204" in spec["paths"]["/api/playlists/{playlist_id}"]["delete"]["responses"]
    assert "content" not in spec["paths"]["/api/playlists/{playlist_id}"]["delete"]["responses"]["204"]
    # the handler's docstring is the description
    assert "server-sent" not in str(recs) and "event-stream" in spec["paths"]["/api/batch/progress"]["get"]["description"]


def test_secured_operations_are_those_sidecar_access_guards(spec):
    for method, path, op in operations(spec):
        kind = guard(method, path)
        schemes = {name for alternative in op.get("security", []) for name in alternative}
        if kind == "admin":
            assert schemes == {"apiToken", "apiTokenHeader"} and {"401", "403"} <= set(op["responses"]), (method, path)
        elif kind == "webhook":
            assert schemes == {"webhookSecret", "webhookBearer"} and {"401", "403"} <= set(op["responses"]), (method, path)
        else:
            assert not schemes, (method, path)
    admin = {(m, p) for m, p, op in operations(spec) if "security" in op and "apiToken" in op["security"][0]}
    assert {("POST", "/api/batch/start"), ("POST", "/api/clustering/{job_id}/cancel"), ("DELETE", "/api/playlists/{playlist_id}")} <= admin
    assert ("GET", "/api/clustering/{job_id}") not in admin and ("POST", "/api/recommendations") not in admin
    assert set(spec["components"]["securitySchemes"]) == {"apiToken", "apiTokenHeader", "webhookSecret", "webhookBearer"}


class Anchors(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.links, self.text = set(), [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])

    def handle_data(self, data):
        self.text.append(data)


async def test_openapi_json_and_the_docs_page_are_served(spec):
    async with TestClient(TestServer(app())) as client:
        r = await client.get("/openapi.json")
        assert r.status == 200 and r.content_type == "application/json"
        assert await r.json() == spec
        r = await client.get("/docs")
        assert r.status == 200 and r.content_type == "text/html"
        page = Anchors()
        page.feed(await r.text())
    text = re.sub(r"\s+", " ", "".join(page.text))
    for method, path, op in operations(spec):  # every endpoint is named, with its summary and its section
        assert f"{method} {path}" in text and op["summary"] in text and op["operationId"] in page.ids
    for name in spec["components"]["schemas"]:
        assert f"schema-{name}" in page.ids
    assert page.links and set(page.links) <= page.ids  # every link on the page lands somewhere
    assert "item_id" in text and "SimilarTrack" in text and "X-Api-Token" in text
