"""Commands over the library: scan, replay (the re-embed), rescan, train-text."""
from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Annotated, Optional

import typer

from sidecar.cli.common import (
    BusOpt, DataDirOpt, EmbeddersOpt, HostOpt, MusicDirOpt, PortOpt, VerboseOpt, _fail, _logging, _settings, app, console,
)


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
    from sidecar.pipeline.bus import make_bus

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
        sc.worker.replays.resume()
        run = sc.worker.replays.running()
        if run is not None:
            console.print(f"resuming replay {run.replay_id}, interrupted earlier")
        else:
            run = await sc.worker.replays.request(body["models"], body["scope"], source="cli")
        with _progress_bar() as bar:
            task = bar.add_task("re-embed", total=None, eta="-")
            try:
                while not run.task.done():
                    _show(bar, task, run.progress())
                    await asyncio.sleep(0.5)
            except asyncio.CancelledError:  # Ctrl-C
                await sc.worker.replays.cancel(run.replay_id)
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

    from sidecar.text import projection as tp
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
