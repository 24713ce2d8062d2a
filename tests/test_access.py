"""Who may call what: admin endpoints need the API token (or, with none configured, a local caller);
webhooks need their secret; reads can be limited to local callers. Secrets are never echoed."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request

from sidecar.http.access import access_control
from sidecar.http.app import make_app
from sidecar.http.common import SIDECAR, ApiError
from sidecar.config import Settings

TOKEN, SECRET = "t0ken-that-must-not-leak", "s3cret-that-must-not-leak"


def request_from(ip: str, method: str, path: str, headers: dict | None = None, **settings) -> web.Request:
    """A request as it would arrive from another machine (the test client can only be local)."""
    app = web.Application()
    app[SIDECAR] = SimpleNamespace(settings=Settings(**settings))
    transport = MagicMock()
    transport.get_extra_info.side_effect = lambda key, default=None: (ip, 40000) if key == "peername" else default
    return make_mocked_request(method, path, headers=headers or {}, app=app, transport=transport)


async def ok(request):
    return web.Response(text="ok")


@pytest.mark.parametrize("method,path,settings,headers,expected", [
    ("POST", "/api/batch/start", {}, {}, 403),  # no token configured: not from another machine
    ("POST", "/api/playlists", {}, {}, 403),
    ("DELETE", "/api/playlists/p1", {"api_token": TOKEN}, {"Authorization": "Bearer wrong"}, 401),
    ("POST", "/api/clustering/start", {"api_token": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}, 200),
    ("POST", "/api/failures/retry", {"api_token": TOKEN}, {"X-Api-Token": TOKEN}, 200),
    ("POST", "/webhooks/scrobble", {}, {}, 403),  # no secret configured: not from another machine
    ("POST", "/webhooks/navidrome", {"webhook_secret": SECRET}, {"X-Webhook-Secret": SECRET}, 200),
    ("GET", "/api/status", {}, {}, 200),  # reads are open by default
    ("POST", "/api/recommendations", {}, {}, 200),  # a read, though POSTed
    ("GET", "/api/status", {"read_access": "localhost"}, {}, 403),
    ("GET", "/api/status", {"read_access": "localhost", "api_token": TOKEN}, {"Authorization": f"Bearer {TOKEN}"}, 200),
    ("GET", "/health", {"read_access": "localhost"}, {}, 200),
    ("GET", "/", {"read_access": "localhost"}, {}, 200),  # the web page holds no data; it asks for the token
    ("GET", "/static/js/app.js", {"read_access": "localhost"}, {}, 200),
])
async def test_access_from_another_machine(method, path, settings, headers, expected):
    req = request_from("192.168.1.20", method, path, headers, **settings)
    try:
        resp = await access_control(req, ok)
        status = resp.status
    except ApiError as e:
        status = e.status
        assert TOKEN not in e.body.error and SECRET not in e.body.error
    assert status == expected


async def test_tokens_and_secrets_over_http(open_sidecar, copy_library, caplog):
    sc = await open_sidecar(copy_library, api_token=TOKEN, webhook_secret=SECRET)
    track = sc.store.mirrors["musicnn"].ids[0]
    async with TestClient(TestServer(make_app(sc))) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"X-Api-Token": "nope"}):
            r = await client.post("/api/batch/cancel", headers=headers)
            body = await r.text()
            assert r.status == 401 and TOKEN not in body
        r = await client.post("/api/batch/cancel", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 409  # let in: nothing to cancel
        assert (await client.get("/api/status")).status == 200
        r = await client.post("/webhooks/scrobble", json={"user": "u", "track_id": track})
        assert r.status == 401 and SECRET not in await r.text()
        r = await client.post("/webhooks/scrobble", json={"user": "u", "track_id": track}, headers={"X-Webhook-Secret": SECRET})
        assert r.status == 202
    assert TOKEN not in caplog.text and SECRET not in caplog.text
    assert TOKEN not in repr(sc.settings) and SECRET not in repr(sc.settings)


def _listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from /proc (no ss or lsof needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def test_the_vectors_are_reachable_only_through_a_private_unix_socket(copy_library, analysed_library, models_dir, tmp_path):
    """Milvus Lite, left to itself, listens on an unauthenticated loopback TCP port; the sidecar binds it to a
    Unix socket in a 0700 folder instead, so only its own user reaches the vectors."""
    from tests.sidecar_process import SidecarProcess

    proc = SidecarProcess(analysed_library["music"], copy_library, models_dir, tmp_path / "serve.log").start()
    try:
        assert _listening_tcp_ports(proc.proc.pid) == {proc.port}, proc.log()
        folder = copy_library / ".milvus-lite"
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and (folder / "grpc.sock").is_socket()
        some = proc.get("/api/tracks", limit=1)["tracks"][0]["track_id"]
        assert len(proc.get("/api/similar_tracks", item_id=some, n=5)) == 5  # served, with the vectors behind the socket
    finally:
        proc.stop()
    assert not (copy_library / ".milvus-lite").exists()  # removed on a clean stop
