"""`sidecar doctor`: check the configuration and everything the sidecar depends on, and say what to fix.

Each check is independent and bounded in time: one that cannot reach its service says so and the others
still run. Nothing here changes the library, the store or the bus.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from sidecar.config import Settings, config_file

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
MIN_FREE_BYTES = 1 << 30
CONNECT_TIMEOUT_S = 5.0


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def running_sidecar(s: Settings) -> dict | None:
    """The running sidecar's /api/status on the configured address, or None if nothing answers there."""
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::", "") else s.host
    try:
        with urllib.request.urlopen(f"http://{host}:{s.port}/api/status", timeout=3) as r:
            return json.load(r)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def check_settings(s: Settings) -> Check:
    path = config_file()
    where = f"settings file {path}" if path else "no settings file (environment and defaults)"
    return Check("settings", OK, f"{where}; `sidecar config show` prints them")


def check_music(s: Settings) -> list[Check]:
    if not s.music_dir:
        return [Check("music folders", WARN, "none configured: `sidecar serve` will fetch a demo library",
                      "set SIDECAR_MUSIC_DIR (or music_dir in the settings file) to your music")]
    out = []
    exts = {e.lower() for e in s.audio_extensions}
    for root in s.music_dir:
        if not root.is_dir():
            out.append(Check(f"music {root}", FAIL, "does not exist or is not a folder", "fix the path, or mount the folder"))
        elif not os.access(root, os.R_OK | os.X_OK):
            out.append(Check(f"music {root}", FAIL, "not readable by this user", f"give user {os.getuid()} read access"))
        else:
            seen = _audio_files(root, exts, limit=1000)
            if seen:
                out.append(Check(f"music {root}", OK, f"readable; {seen}{'+' if seen >= 1000 else ''} audio files"))
            else:
                out.append(Check(f"music {root}", WARN, f"readable, but no audio files ({', '.join(sorted(exts))})",
                                 "check the path, or SIDECAR_AUDIO_EXTENSIONS"))
    return out


def _audio_files(root: Path, exts: set[str], limit: int) -> int:
    n = 0
    for _, _, files in os.walk(root):
        n += sum(1 for f in files if os.path.splitext(f)[1].lower() in exts)
        if n >= limit:
            return n
    return n


def check_data_dir(s: Settings) -> Check:
    d = s.data_dir
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK | os.X_OK):
        return Check("data folder", FAIL, f"{d}: {probe} is not writable", "choose a writable SIDECAR_DATA_DIR")
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        return Check("data folder", WARN, f"{d}: only {free / 2**20:.0f} MiB free", "free some disk space")
    return Check("data folder", OK, f"{d}{'' if d.exists() else ' (created on first start)'}; {free / 2**30:.1f} GiB free")


def check_http(s: Settings, status: dict | None) -> Check:
    if status is not None:
        return Check("http", OK, f"a sidecar answers on {s.host}:{s.port} ({status.get('tracks', '?')} tracks)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET) as sock:
            sock.bind((s.host, s.port))
    except OSError as e:
        return Check("http", FAIL, f"cannot listen on {s.host}:{s.port}: {e.strerror or e}",
                     "another program holds the port: set SIDECAR_PORT, or stop it")
    return Check("http", OK, f"nothing runs on {s.host}:{s.port} yet; the port is free")


def check_access(s: Settings) -> list[Check]:
    out = []
    local = s.host in ("127.0.0.1", "::1", "localhost")
    if not s.api_token:
        detail = "no API token: admin and mutating endpoints answer loopback callers only"
        out.append(Check("access", OK if local else WARN, detail, "" if local else "set SIDECAR_API_TOKEN to manage it from other hosts"))
    else:
        out.append(Check("access", OK, "admin and mutating endpoints need the API token"))
    if s.media_server_url and not s.webhook_secret:
        out.append(Check("webhooks", WARN, "no webhook secret: the webhooks are refused",
                         "set SIDECAR_WEBHOOK_SECRET and give the same secret to the media server's webhook"))
    return out


def check_store(s: Settings, running: bool) -> Check:
    from sidecar.data.store import StoreError, VectorStore

    target = s.milvus_target
    if not s.milvus_uri and running:
        return Check("vector store", OK, f"Milvus Lite {target}: open in the running sidecar")
    if not s.milvus_uri and not Path(target).exists():
        return Check("vector store", OK, f"Milvus Lite {target}: created on first start")
    try:
        store = VectorStore(target, s.milvus_token)
    except StoreError as e:
        fix = "stop the other process, or use a Milvus server (SIDECAR_MILVUS_URI)" if "another process" in str(e) else \
            "check SIDECAR_MILVUS_URI and SIDECAR_MILVUS_TOKEN, and that the server is up"
        return Check("vector store", FAIL, str(e), fix)
    try:
        counts = {}
        for name in store.milvus.names():  # Lite's from its folder: its gRPC listing opens every collection
            counts[name] = len(store.milvus.ids(name)) if store.is_lite else store.client.get_collection_stats(name).get("row_count")
            store.milvus.rest(name)  # Lite holds an open collection whole in memory: one at a time (no-op on a server)
    except Exception as e:  # a server that accepts the connection but not the calls
        return Check("vector store", FAIL, f"{target}: {e}", "check the Milvus server's health and the token")
    finally:
        store.close()
    kind = "Milvus Lite" if store.is_lite else "Milvus"
    shown = ", ".join(f"{n} {c}" for n, c in sorted(counts.items())) or "no collections yet"
    return Check("vector store", OK, f"{kind} {target}: {shown}")


def check_catalog(s: Settings) -> Check:
    """Reach the catalog and read its schema version, writing nothing (a new one is made on first start)."""
    from sidecar.data.schema import LATEST, stored_version
    from sidecar.data.sql import DatabaseError, open_database

    if not s.catalog_url:
        where = s.catalog_path
        return Check("catalog", OK, f"SQLite {where}" + ("" if where.exists() else " (created on first start)"))
    try:
        db = open_database(s.catalog_url)
    except DatabaseError as e:
        return Check("catalog", FAIL, str(e), "check SIDECAR_CATALOG_URL, and that PostgreSQL is up and lets this user in")
    try:
        version = stored_version(db)
    finally:
        db.close()
    if version is not None and version > LATEST:
        return Check("catalog", FAIL, f"PostgreSQL catalog at schema version {version}, newer than this sidecar ({LATEST})",
                     "upgrade this sidecar to the version the other processes run")
    state = "empty: its tables are made on first start" if version is None else f"schema version {version}"
    return Check("catalog", OK, f"PostgreSQL {db.url.split('@')[-1]}: {state}")


async def check_bus(s: Settings) -> Check:
    if s.bus == "embedded":
        return Check("event bus", OK, f"embedded log {s.event_log_path}{'' if s.event_log_path.exists() else ' (created on first start)'}")
    import logging

    from aiokafka.admin import AIOKafkaAdminClient

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the check reports the failure itself
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap, request_timeout_ms=int(CONNECT_TIMEOUT_S * 1000))
    try:
        await asyncio.wait_for(admin.start(), CONNECT_TIMEOUT_S)
        topics = set(await asyncio.wait_for(admin.list_topics(), CONNECT_TIMEOUT_S))
    except Exception as e:
        return Check("event bus", FAIL, f"Kafka at {s.kafka_bootstrap} is not reachable: {e or type(e).__name__}",
                     "start the broker (compose.yaml has one), or fix SIDECAR_KAFKA_BOOTSTRAP")
    finally:
        await admin.close()
    missing = [t for t in (s.kafka_topic, s.kafka_dead_letter_topic) if t not in topics]
    if missing:
        return Check("event bus", OK, f"Kafka at {s.kafka_bootstrap}; topics {', '.join(missing)} are created on first start")
    return Check("event bus", OK, f"Kafka at {s.kafka_bootstrap}; topics {s.kafka_topic}, {s.kafka_dead_letter_topic} exist")


async def check_media_server(s: Settings) -> Check:
    if not s.media_server_url:
        return Check("media server", SKIP, "none configured (playlists are kept here only)",
                     "set SIDECAR_MEDIA_SERVER_URL and credentials to use Navidrome")
    from plugins.mediaserver import AuthError, MediaServerError, redact
    from sidecar.plugins.api import MediaServerOptions
    from sidecar.plugins.loader import load_media_server

    try:
        adapter = load_media_server(MediaServerOptions.of(s).adapter, s, retries=1, timeout_s=CONNECT_TIMEOUT_S)
    except (ValueError, LookupError, TypeError) as e:
        fix = "fix that option" if "SIDECAR_PLUGINS__" in str(e) else "fix SIDECAR_MEDIA_SERVER_URL"
        return Check("media server", FAIL, str(e), fix)
    try:
        info = await adapter.ping()
    except AuthError as e:
        return Check("media server", FAIL, redact(e, *adapter.secrets),
                     "check SIDECAR_MEDIA_SERVER_USER and _PASSWORD (or _API_KEY), and SIDECAR_MEDIA_SERVER_AUTH")
    except MediaServerError as e:
        return Check("media server", FAIL, redact(e, *adapter.secrets), "check that the server is up and the URL is right")
    finally:
        await adapter.close()
    kind = " ".join(x for x in (info.type, info.server_version) if x) or "Subsonic server"
    return Check("media server", OK, f"{redact(s.media_server_url)}: {kind}, API {info.api_version}")


def check_models(s: Settings) -> list[Check]:
    """Load each enabled model from its prepared weights, as `serve` would, without fetching or converting."""
    from sidecar.plugins import EmbedderUnavailable
    from sidecar.plugins import load_embedders, load_text_encoder

    loaded = load_embedders(s.embedders, s.models_dir, s.plugins, prepare=False)
    out = [Check(f"model {n}", OK, f"version {e.version}, {e.dim}-d") for n, e in loaded.ready.items()]
    for name, why in loaded.unavailable.items():
        out.append(Check(f"model {name}", FAIL, why, "run `sidecar setup`, or set the option the message names"))
    try:
        load_text_encoder(s.text_encoder, s.models_dir, s.plugins)
        out.append(Check(f"text {s.text_encoder}", OK, "loads: text search and prompts work"))
    except EmbedderUnavailable as e:
        out.append(Check(f"text {s.text_encoder}", WARN, f"text search is off: {e}", "install the text encoder's package"))
    return out


async def diagnose(s: Settings) -> list[Check]:
    status = await asyncio.to_thread(running_sidecar, s)
    checks = [check_settings(s), *check_music(s), check_data_dir(s), check_http(s, status), *check_access(s)]
    checks.append(await asyncio.to_thread(check_catalog, s))
    checks.append(await asyncio.to_thread(check_store, s, status is not None))
    checks.append(await check_bus(s))
    checks.append(await check_media_server(s))
    checks.extend(await asyncio.to_thread(check_models, s))
    return checks


def as_dicts(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
