"""Property-based fuzzing of the HTTP API from its own OpenAPI description (schemathesis), against the real
`sidecar serve` on the analysed library, with an API token and a webhook secret so that admin endpoints and
webhooks are reached too. Every operation gets valid and invalid requests; the checks: no 5xx, only
documented status codes and content types, bodies that match the documented schemas, invalid input
refused with a 4xx, and secured endpoints refusing requests without their secret."""
from __future__ import annotations

import shutil
from collections import Counter
from types import SimpleNamespace

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from sidecar.http.app import make_app
from sidecar.config import Settings
from sidecar.http.openapi import build
from tests.sidecar_process import SidecarProcess
from tests.supysonic_server import start_supysonic

TOKEN, SECRET = "fuzz-api-token", "fuzz-webhook-secret"
# Each admin endpoint reads X-Api-Token, each webhook X-Webhook-Secret: both on every request reach both.
AUTH = {"X-Api-Token": TOKEN, "X-Webhook-Secret": SECRET}


@pytest.fixture(scope="module")
def server(analysed_library, models_dir, tmp_path_factory):
    """The sidecar on a copy of the analysed library, connected to a real Subsonic server holding 6 of its
    tracks (a second music folder: the same audio, so the same track ids), so the media-server routes work."""
    root = tmp_path_factory.mktemp("fuzz")
    data = root / "data"
    shutil.copytree(analysed_library["data"], data, symlinks=True)  # fuzzing writes: listens, jobs, replays
    media = start_supysonic(root / "supysonic", sorted(analysed_library["music"].rglob("*.ogg"))[:6])
    try:
        proc = SidecarProcess(
            f"{analysed_library['music']}:{media.music}", data, models_dir, root / "sidecar.log",
            SIDECAR_API_TOKEN=TOKEN, SIDECAR_WEBHOOK_SECRET=SECRET, SIDECAR_MEDIA_SERVER_URL=media.url,
            SIDECAR_MEDIA_SERVER_USER=media.user, SIDECAR_MEDIA_SERVER_PASSWORD=media.password, SIDECAR_MEDIA_SERVER_AUTH="password",
        ).start()
        try:
            proc.wait_idle()
            KNOWN["ids"] = [t["track_id"] for t in proc.get("/api/tracks", limit=500)["tracks"]]
            KNOWN["models"] = [m["name"] for m in proc.get("/api/models")["models"] if m["kind"] == "embedder" and m["available"]]
            for track in KNOWN["ids"][:5]:
                r = requests.post(f"http://127.0.0.1:{proc.port}/webhooks/scrobble", json={"user": LISTENER, "track_id": track}, headers=AUTH, timeout=10)
                assert r.status_code == 202, r.text
            assert proc.get("/openapi.json") == schema.raw_schema
            yield proc
        finally:
            proc.stop()
        assert "Traceback" not in proc.log_path.read_text(errors="replace"), proc.log()
    finally:
        media.stop()


# The description is built here, from the same routes the server registers (the server fixture checks that it
# serves the same one): schemathesis.pytest.from_fixture does not work with pytest 9 (it sets Function._nodeid).
schema = schemathesis.openapi.from_dict(
    build(make_app(SimpleNamespace(settings=Settings()))),
    config=schemathesis.Config.from_dict({
        "headers": AUTH,
        # the token is given above; generated random tokens would only test the 401 path again and again
        "generation": {"with-security-parameters": False},
        # Off: "schema-valid data must be accepted". The API also checks what a schema cannot say (a model name
        # must be one that is loaded, a scope inside a music root...), and answers 400 naming the field.
        "checks": {"positive_data_acceptance": {"enabled": False}},
    }),
)


KNOWN: dict[str, list[str]] = {}  # the library's track ids and the loaded models, read by the server fixture
LISTENER = "fuzz-listener"  # a user with plays, for the sonic fingerprint
ID_KEYS = ("item_id", "start_song_id", "end_song_id", "song_id", "add", "subtract", "item_ids", "track_ids")


@schema.hook
def flatmap_case(context, case):
    """Random ids, model names and users only reach the 404 or the 400: half the valid requests name real
    tracks, loaded models and a user with plays instead, so that fuzzing goes on into the code that finds
    neighbours, paths, maps and playlists. Invalid requests are left as generated."""
    if case.meta is None or case.meta.generation.mode != GenerationMode.POSITIVE or not KNOWN:
        return st.just(case)
    return _with_known_values(case)


@st.composite
def _with_known_values(draw, case):
    if not draw(st.booleans()):
        return case
    ids = iter(draw(st.permutations(KNOWN["ids"])))  # distinct: a path's start and end, added and subtracted
    models = draw(st.lists(st.sampled_from(KNOWN["models"]), min_size=1, unique=True))
    known = {
        "model": lambda v: models[0], "models": lambda v: models, "model_priorities": lambda v: models, "user": lambda v: LISTENER,
        "navidrome_user": lambda v: LISTENER, "algorithms": lambda v: ["kmeans"],
        "seeds": lambda v: [{"track_id": next(ids)} for _ in range(draw(st.integers(1, 3)))],
        "event": lambda v: draw(st.sampled_from(["scan_finished", "ping", "refresh_resource", "scan_status"])),
    } | {
        key: lambda v: [next(ids) for _ in range(draw(st.integers(1, 3)))] if isinstance(v, list) else next(ids)
        for key in ID_KEYS
    }

    def swap(values: dict) -> dict:  # a field left out stays out: it may be an alternative to another one
        return {k: known[k](v) if k in known and v is not None else v for k, v in values.items()}

    if case.query:
        case.query = swap(case.query)
    if case.path_parameters and "track_id" in case.path_parameters:
        case.path_parameters = {**case.path_parameters, "track_id": next(ids)}
    if isinstance(case.body, dict):
        case.body = swap(case.body)
    return case


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)  # the same cases on every machine
def test_api_conforms_to_its_description(case, server):
    response = case.call(base_url=f"http://127.0.0.1:{server.port}")
    try:
        case.validate_response(response, headers=AUTH)
    finally:
        _stop_background_work(server, case, response)


def _stop_background_work(server: SidecarProcess, case, response) -> None:
    """A clustering job may run 100,000 iterations and a re-embed may analyse the whole library: both start
    in the background, which the fuzzing must not leave loading the machine. Cancel what was started."""
    base = f"http://127.0.0.1:{server.port}"
    if response.status_code != 202:
        return
    if case.path == "/api/clustering/start":
        r = requests.post(f"{base}/api/clustering/{response.json()['job_id']}/cancel", headers=AUTH, timeout=30)
        assert r.status_code in (200, 409), r.text  # 409: it had already finished
    elif case.path == "/api/batch/start":
        r = requests.post(f"{base}/api/batch/cancel", headers=AUTH, timeout=30)
        assert r.status_code in (200, 409), r.text


def test_every_operation_was_fuzzed_and_none_answered_5xx(server):
    """After the fuzzing above (pytest keeps the file's order), the server's own request metrics say that every
    documented operation was called many times, and that no request at all got a 5xx."""
    from prometheus_client.parser import text_string_to_metric_families

    calls: Counter = Counter()
    server_errors = []
    for family in text_string_to_metric_families(requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text):
        if family.name == "sidecar_http_request_seconds":
            for s in family.samples:
                if s.name.endswith("_count"):
                    calls[(s.labels["method"], s.labels["route"])] += s.value
                    if s.labels["status"].startswith("5") and s.value:
                        server_errors.append(s.labels)
    assert server_errors == []
    # an operation that takes nothing has little to vary: a few requests (valid, and with undeclared methods)
    few = {
        f"{method.upper()} {path}": calls[(method.upper(), path)]
        for path, methods in schema.raw_schema["paths"].items() for method, op in methods.items()
        if calls[(method.upper(), path)] < (20 if "parameters" in op or "requestBody" in op else 2)
    }
    assert few == {}
