"""The ingest worker: consumes library events, embeds what changed, stores vectors, then commits.

Order of work for one upserted file: stat (skip if unchanged) -> decode once (content hash, tags) ->
attach to a track in the catalog -> run only the models whose result is missing or stale -> upsert the
vectors -> record the result in the catalog. The event's offset is committed only after all of that, so a
crash anywhere makes the event come back, and the upserts keyed by track id leave one row per model.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from pydantic import ValidationError

from schemas.events import (
    LibraryEvent, ReplayRequested, ScanCompleted, TrackMoved, TrackRemoved, TrackUpserted, decode_event,
)
from sidecar import metrics
from sidecar.audio import DecodedAudio, DecodeError, decode
from sidecar.bus import Consumer, Delivery, EventBus
from sidecar.catalog import Catalog
from sidecar.plugins import LoadedEmbedders
from sidecar.store import VectorStore

log = logging.getLogger(__name__)
RETRIES = 3  # for unexpected errors (a store that is briefly away); then the event goes to the dead letters
MODEL_ATTEMPTS = 3  # a model that raises is tried this often (with backoff) before the failure is recorded
MODEL_BACKOFF_S = 0.5
_STATS: contextvars.ContextVar["IngestStats"] = contextvars.ContextVar("ingest_stats")  # the running consumer's counters


class Rejected(Exception):
    """An event that is valid JSON but must not be acted on (e.g. a path outside the music roots)."""


@dataclass
class Force:
    """Models to re-embed even if current, unless re-embedded after `before` (a replay's start time); and,
    for a replay limited to part of the library, the folder it covers."""

    models: tuple[str, ...] = ()
    before: float = 0.0
    scope: str | None = None

    def covers(self, path: str | Path) -> bool:
        path = str(path)
        return self.scope is None or path == self.scope or path.startswith(self.scope.rstrip("/") + "/")


@dataclass
class IngestStats:
    processed: int = 0
    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    current: str | None = None
    last_event_at: float | None = None


@dataclass
class ReplayRun:
    """A re-embed in progress: the library's events consumed again by its own consumer group."""

    replay_id: str
    models: list[str]
    scope: str | None
    started_at: float
    stats: IngestStats = field(default_factory=IngestStats)
    total: int | None = None  # events to go through, known once its consumer has joined
    status: str = "running"
    task: asyncio.Task | None = None

    def progress(self) -> dict:
        elapsed = max(time.time() - self.started_at, 1e-6)
        done = self.stats.processed
        rate = done / elapsed
        left = max((self.total or 0) - done, 0)
        return {
            "replay_id": self.replay_id, "status": self.status, "models": self.models, "scope": self.scope,
            "total": self.total, "processed": done, "embedded": self.stats.embedded, "skipped": self.stats.skipped,
            "failed": self.stats.failed, "current": self.stats.current, "rate_per_s": round(rate, 3),
            "eta_s": round(left / rate, 1) if rate > 0 and self.total is not None and self.status == "running" else None,
            "elapsed_s": round(elapsed, 1),
        }


@dataclass
class _Offsets:
    """Which offsets may be committed: everything below the lowest one still in flight, per partition."""

    in_flight: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    next: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)

    def start(self, d: Delivery) -> None:
        self.in_flight[d.partition].add(d.offset)
        self.next[d.partition] = max(self.next.get(d.partition, 0), d.offset + 1)

    def finish(self, d: Delivery) -> None:
        self.in_flight[d.partition].discard(d.offset)

    def to_commit(self) -> dict[int, int]:
        out = {}
        for p, nxt in self.next.items():
            upto = min(self.in_flight[p]) if self.in_flight[p] else nxt
            if self.committed.get(p) != upto:
                out[p] = upto
        return out


def _lower_priority(nice: int) -> None:
    """Run this analysis thread `nice` steps below the rest of the process, so that the threads answering
    requests get a core first while a re-embed keeps both busy. Linux sets the nice value of each thread on
    its own: this one only (and the threads it starts, e.g. torch's)."""
    if nice <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + nice))
    except (AttributeError, OSError) as e:  # not Linux, or not allowed: analyse at the normal priority
        log.debug("ingest thread priority unchanged: %s", e)


class IngestWorker:
    def __init__(
        self, bus: EventBus, catalog: Catalog, store: VectorStore, embedders: LoadedEmbedders, roots: list[Path], *,
        concurrency: int = 2, reconcile: Callable[[list[Path]], Awaitable[int]] | None = None, nice: int = 0,
    ):
        self.bus, self.catalog, self.store, self.embedders = bus, catalog, store, embedders
        self.roots = [Path(r) for r in roots]
        self._real_roots = [r.resolve() for r in self.roots]  # where a symlink in the library may point
        self.concurrency = concurrency
        self.reconcile = reconcile
        self.executor = ThreadPoolExecutor(concurrency, thread_name_prefix="ingest", initializer=_lower_priority, initargs=(nice,))
        self.stats = IngestStats()  # the live consumer's
        self.replays: dict[str, ReplayRun] = {}

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    # ---- consuming
    async def consume(
        self, consumer: Consumer, stop: asyncio.Event, *, force: Force = Force(), until_caught_up: bool = False,
        idle: asyncio.Event | None = None, on_progress: Callable[[IngestStats], None] | None = None,
        stats: IngestStats | None = None,
    ) -> None:
        """Process deliveries, up to `concurrency` at once; one key's events stay in order. `idle` is set
        while nothing is in flight and the group has no lag. Counts go to `stats` (default: the live ones)."""
        _STATS.set(stats or self.stats)  # this task's context, inherited by the tasks it starts
        offsets = _Offsets()
        tasks: set[asyncio.Task] = set()
        last_of_key: dict[bytes | None, asyncio.Task] = {}
        limit = self.concurrency * 2  # one decoding while another runs the models

        async def commit() -> None:
            todo = offsets.to_commit()
            if todo:
                await consumer.commit(todo)
                offsets.committed.update(todo)

        try:
            while not stop.is_set():
                if len(tasks) >= limit:
                    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    await commit()
                    continue
                batch = await consumer.getmany(timeout_s=0.2, max_records=limit - len(tasks))
                for d in batch:
                    offsets.start(d)
                    task = asyncio.create_task(self._process(d, last_of_key.get(d.key), force))
                    last_of_key[d.key] = task
                    tasks.add(task)

                    def done(t: asyncio.Task, d: Delivery = d) -> None:
                        offsets.finish(d)
                        tasks.discard(t)
                        if last_of_key.get(d.key) is t:
                            del last_of_key[d.key]
                        if on_progress:
                            on_progress(_STATS.get())

                    task.add_done_callback(done)
                await commit()
                if batch or tasks:
                    if idle is not None:
                        idle.clear()
                elif await consumer.lag() == 0:
                    if idle is not None:
                        idle.set()
                    if until_caught_up:
                        break
        except asyncio.CancelledError:  # cancelled (a replay's cancel, shutdown): stop what is in flight too;
            for t in tasks:  # their offsets stay uncommitted, so they come back if the run is resumed
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        except Exception:  # the bus failed (a broker outage): what is in flight finishes and is stored; its offsets,
            if tasks:  # uncommitted, come back after the reconnect and find it done, so nothing is analysed twice
                await asyncio.wait(tasks)
            raise
        if tasks:  # a graceful stop finishes what it started, so the commit covers it
            await asyncio.wait(tasks)
        await commit()

    async def _process(self, d: Delivery, previous: asyncio.Task | None, force: Force) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        metrics.IN_FLIGHT.inc()
        try:
            await self._process_one(d, force)
        finally:
            metrics.IN_FLIGHT.dec()
            _STATS.get().processed += 1

    async def _process_one(self, d: Delivery, force: Force) -> None:
        size, limit = len(d.value) + len(d.key or b""), self.bus.max_event_bytes
        if size > limit:  # from another producer: dead-lettered with a 1 KiB excerpt (the whole stays in the topic)
            metrics.MALFORMED.inc()
            excerpt = Delivery(d.partition, d.offset, (d.key or b"")[:256] or d.key, d.value[:1024])
            await self.bus.dead_letter(excerpt, f"event too large: {size} bytes, over the limit of {limit} (max_event_bytes)")
            return
        try:
            event = decode_event(d.value)
        except ValidationError as e:
            metrics.MALFORMED.inc()
            await self.bus.dead_letter(d, f"invalid event: {_short(e)}")
            return
        metrics.EVENTS.labels(event.type).inc()
        _STATS.get().last_event_at = time.time()
        for attempt in range(RETRIES + 1):
            try:
                await self.handle(event, force)
                return
            except Rejected as e:
                await self.bus.dead_letter(d, str(e))
                return
            except Exception as e:  # unexpected: maybe transient (store briefly away); retry, then dead-letter
                if attempt == RETRIES:
                    log.exception("event %s failed after %d attempts", event.event_id, RETRIES + 1)
                    metrics.FAILURES.labels("internal").inc()
                    _STATS.get().failed += 1
                    await self.bus.dead_letter(d, f"internal error: {type(e).__name__}: {e}")
                else:
                    log.warning("event %s failed (%s); retrying", event.event_id, e)
                    await asyncio.sleep(0.5 * 2**attempt)

    # ---- handling one event
    async def handle(self, event: LibraryEvent, force: Force = Force()) -> None:
        if not force.covers(getattr(event, "path", None) or getattr(event, "src_path", None) or force.scope or ""):
            return  # a replay of part of the library passes over the rest
        if isinstance(event, TrackUpserted):
            await self._upsert(self._confined(event.path), force)
        elif isinstance(event, TrackRemoved):
            await self._remove(str(self._confined(event.path)))
        elif isinstance(event, TrackMoved):
            await self._move(self._confined(event.src_path), event.dest_path, force)
        elif isinstance(event, ScanCompleted):
            roots = [self._confined(r) for r in event.roots] or self.roots
            if self.reconcile is not None:
                await self.reconcile(roots)
        elif isinstance(event, ReplayRequested):
            if force.before == 0.0:  # a replay does not start replays of itself
                self.start_replay(event)

    def _confined(self, path: str) -> Path:
        """Only files under the music roots are touched, whoever sent the event."""
        p = Path(path)
        if not p.is_absolute() or ".." in p.parts or not any(p.is_relative_to(r) for r in self.roots):
            raise Rejected(f"path is outside the music roots: {path}")
        return p

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _upsert(self, path: Path, force: Force) -> None:
        key = str(path)
        versions = self.embedders.versions
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            if path.is_symlink():
                return self._failed(key, None, None, "broken symbolic link: its target does not exist")
            metrics.SKIPPED.labels("missing").inc()  # deleted since; its removal event follows
            return
        except OSError as e:  # a symlink loop, no permission
            return self._failed(key, None, None, f"cannot read the file: {e.strerror}")
        real = path.resolve()
        if not any(real.is_relative_to(r) for r in self._real_roots):  # no escape through a symbolic link
            return self._failed(key, st.st_size, st.st_mtime_ns, f"a symbolic link to {real}, outside the music folders")
        force_kw = {"force": force.models, "force_before": force.before}
        if self.catalog.is_current(key, st.st_size, st.st_mtime_ns, versions, **force_kw) or (
            self.catalog.failed_unchanged(key, st.st_size, st.st_mtime_ns) and not force.models
        ):
            metrics.SKIPPED.labels("unchanged").inc()
            _STATS.get().skipped += 1
            return
        _STATS.get().current = key
        t0 = time.perf_counter()
        try:
            audio: DecodedAudio = await self._run(decode, path)
        except FileNotFoundError:
            metrics.SKIPPED.labels("missing").inc()
            return
        except DecodeError as e:
            return self._failed(key, st.st_size, st.st_mtime_ns, str(e))
        metrics.STAGE_SECONDS.labels("decode").observe(time.perf_counter() - t0)
        tags = audio.tags
        info = {
            "duration_s": round(audio.duration_s, 3), "sample_rate": audio.sample_rate, "channels": audio.channels,
            "title": tags.get("title") or path.stem, "artist": tags.get("artist"),
            "album": tags.get("album") or path.parent.name, "genre": tags.get("genre"), "year": tags.get("date"),
        }
        track_id, orphan = self.catalog.resolve_track(key, audio.content_hash, st.st_size, st.st_mtime_ns, info)
        if orphan:
            await self._delete_track(orphan)
        todo = self.catalog.models_to_run(track_id, audio.content_hash, versions, **force_kw)
        if not todo:
            metrics.SKIPPED.labels("same_audio").inc()  # a tag edit, a move the watcher missed, a duplicate
            _STATS.get().skipped += 1
            return
        results = await self._run(self._embed, audio, todo)
        for model, (result, seconds, error) in results.items():
            emb = self.embedders.ready[model]
            if error is not None:
                log.warning("%s failed on %s: %s", model, path, error)
                self.catalog.record_embedding(track_id, model, emb.version, audio.content_hash, error=error, seconds=seconds)
                metrics.FAILURES.labels(model).inc()
                continue
            t0 = time.perf_counter()
            await asyncio.to_thread(self.store.upsert, model, [(track_id, result.vector, audio.content_hash)])
            if emb.store_segments and result.segments is not None:
                await asyncio.to_thread(self.store.replace_segments, model, track_id, result.segments, audio.content_hash)
            metrics.STAGE_SECONDS.labels("store").observe(time.perf_counter() - t0)
            self.catalog.record_embedding(
                track_id, model, emb.version, audio.content_hash, tags=result.tags, features=result.features, seconds=seconds
            )
            metrics.EMBEDDED.labels(model).inc()
        _STATS.get().embedded += 1

    def _failed(self, key: str, size: int | None, mtime_ns: int | None, reason: str) -> None:
        """A file that cannot be analysed: listed with its reason (GET /api/failures) until it changes."""
        log.warning("cannot analyse %s: %s", key, reason)
        self.catalog.record_failure(key, size, mtime_ns, reason)
        metrics.FAILURES.labels("decode").inc()
        _STATS.get().failed += 1

    def _embed(self, audio: DecodedAudio, models: list[str]) -> dict[str, tuple]:
        """Runs in a worker thread: each model on the audio at its own rate. One model failing spares the rest."""
        out = {}
        for model in models:
            emb = self.embedders.ready[model]
            t0 = time.perf_counter()
            for attempt in range(MODEL_ATTEMPTS):
                try:
                    result, error = emb.embed(audio.at(emb.sample_rate)), None
                    break
                except ValueError as e:  # the plugin's word that this audio cannot be used: no point retrying
                    result, error = None, f"{type(e).__name__}: {e}"
                    break
                except Exception as e:  # maybe passing (memory, a device): retry, then record it on the track
                    result, error = None, f"{type(e).__name__}: {e} (after {attempt + 1} attempts)"
                    if attempt + 1 < MODEL_ATTEMPTS:
                        time.sleep(MODEL_BACKOFF_S * 2**attempt)
            seconds = time.perf_counter() - t0
            metrics.STAGE_SECONDS.labels(model).observe(seconds)
            out[model] = (result, seconds, error)
        return out

    async def _remove(self, path: str) -> None:
        orphan = self.catalog.remove_file(path)
        if orphan:
            await self._delete_track(orphan)

    async def _delete_track(self, track_id: str) -> None:
        """Vectors first, then the catalog row: a crash between them is repaired by the event coming back."""
        for model in self.catalog.embedded_models(track_id):
            if model in self.embedders.ready:
                await asyncio.to_thread(self.store.delete, model, [track_id])
        self.catalog.delete_track(track_id)

    async def _move(self, src: Path, dest: str, force: Force) -> None:
        try:
            dest_path = self._confined(dest)
        except Rejected:  # moved out of the library: a removal
            await self._remove(str(src))
            return
        try:
            st = dest_path.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # gone again, or unreadable: the upsert below sorts it out
            size = mtime = None
        if self.catalog.move_file(str(src), str(dest_path), size, mtime) is None or size is None:
            await self._upsert(dest_path, force)  # unknown source: treat the destination as new

    # ---- replay: the library's events consumed again from the start by a new consumer group
    def running_replay(self) -> ReplayRun | None:
        return next((r for r in self.replays.values() if r.status == "running"), None)

    def start_replay(self, event: ReplayRequested) -> ReplayRun | None:
        """Start the replay this event asks for (once: the event may be seen again). A replay interrupted by a
        crash is resumed by `resume_replays`; its consumer group's committed offset is where it goes on."""
        row = self.catalog.start_replay(event.event_id, f"replay-{event.event_id[:12]}", event.models, event.scope)
        if row["status"] != "running" or event.event_id in self.replays:
            return self.replays.get(event.event_id)
        return self._launch(row)

    def resume_replays(self) -> None:
        for row in self.catalog.replays("running"):
            if row["replay_id"] not in self.replays:
                self._launch(row)

    def _launch(self, row: dict) -> ReplayRun:
        run = ReplayRun(row["replay_id"], row["models"], row["scope"], row["started_at"])
        self.replays[run.replay_id] = run
        run.task = asyncio.create_task(self._replay(run, row["consumer_group"]), name=f"replay-{run.replay_id}")
        return run

    async def _replay(self, run: ReplayRun, group: str) -> None:
        force = Force(tuple(run.models), run.started_at, run.scope)
        log.info("replay %s started (re-embedding: %s)", run.replay_id, ", ".join(run.models) or "nothing forced")
        try:
            async with self.bus.consumer(group, from_beginning=True) as consumer:
                run.total = await consumer.lag()
                await self.consume(consumer, asyncio.Event(), force=force, until_caught_up=True, stats=run.stats)
            run.status = "done"
        except asyncio.CancelledError:
            run.status = "cancelled" if run.status == "cancelling" else "interrupted"
            raise
        except Exception:
            log.exception("replay %s failed", run.replay_id)
            run.status = "failed"
        finally:
            if run.status != "interrupted":  # an interrupted run (shutdown) stays 'running' in the catalog: resumed at start
                self.catalog.finish_replay(run.replay_id, run.status)
            log.info("replay %s %s: %s", run.replay_id, run.status, run.progress())

    async def cancel_replay(self, replay_id: str | None = None) -> ReplayRun | None:
        run = self.replays.get(replay_id) if replay_id else self.running_replay()
        if run is None or run.status != "running":
            return None
        run.status = "cancelling"
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
        return run

    async def wait_replays(self) -> None:
        tasks = [r.task for r in self.replays.values() if r.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop_replays(self) -> None:
        """At shutdown: stop without marking them finished, so the next start resumes them."""
        for run in self.replays.values():
            if run.task and not run.task.done():
                run.task.cancel()
        await self.wait_replays()


def _short(e: ValidationError) -> str:
    errs = e.errors()
    first = errs[0] if errs else {}
    where = ".".join(str(x) for x in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', str(e))}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else "")
