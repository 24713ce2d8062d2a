"""What each library event does, one handler per event type (`EventHandlers.table`).

For an upserted file: stat (skip if unchanged) -> decode once (content hash, tags) -> attach to a track in
the catalog -> run only the models whose result is missing or stale -> upsert the vectors -> record the
result in the catalog. The runtime commits the event's offset only after that, and the upserts keyed by track
id leave one row per model, so an event seen twice changes nothing.
"""
from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

from schemas.events import LibraryEvent, ReplayRequested, ScanCompleted, TrackMoved, TrackRemoved, TrackUpserted
from sidecar import metrics
from sidecar.data import Catalog, VectorStore
from sidecar.pipeline.audio import DecodedAudio, DecodeError, decode
from sidecar.pipeline.runtime import Rejected, stats
from sidecar.plugins import LoadedEmbedders

log = logging.getLogger(__name__)
MODEL_ATTEMPTS = 3  # a model that raises is tried this often (with backoff) before the failure is recorded
MODEL_BACKOFF_S = 0.5


@dataclass(frozen=True)
class Force:
    """Models to re-embed even if current, unless re-embedded after `before` (a replay's start time); and,
    for a replay limited to part of the library, the folder it covers."""

    models: tuple[str, ...] = ()
    before: float = 0.0
    scope: str | None = None

    def covers(self, path: str | Path) -> bool:
        path = str(path)
        return self.scope is None or path == self.scope or path.startswith(self.scope.rstrip("/") + "/")


NO_FORCE = Force()


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


class EventHandlers:
    """The library events' effects on the catalog and the vector store. Decoding and the models run in a
    pool of `concurrency` threads at a lower priority, never on the event loop."""

    def __init__(
        self, catalog: Catalog, store: VectorStore, embedders: LoadedEmbedders, roots: list[Path], *, concurrency: int = 2,
        nice: int = 0, on_scan: Callable[[list[Path]], Awaitable[int]] | None = None,
        on_replay: Callable[[ReplayRequested], object] | None = None,
    ):
        self.catalog, self.store, self.embedders = catalog, store, embedders
        self.roots = [Path(r) for r in roots]
        self._real_roots = [r.resolve() for r in self.roots]  # where a symlink in the library may point
        self.on_scan, self.on_replay = on_scan, on_replay
        self.executor = ThreadPoolExecutor(concurrency, thread_name_prefix="ingest", initializer=_lower_priority, initargs=(nice,))
        self.table: dict[type[LibraryEvent], Callable[[LibraryEvent, Force], Awaitable[None]]] = {
            TrackUpserted: self.upserted, TrackRemoved: self.removed, TrackMoved: self.moved,
            ScanCompleted: self.scan_completed, ReplayRequested: self.replay_requested,
        }

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    async def handle(self, event: LibraryEvent, force: Force = NO_FORCE) -> None:
        if not force.covers(getattr(event, "path", None) or getattr(event, "src_path", None) or force.scope or ""):
            return  # a replay of part of the library passes over the rest
        await self.table[type(event)](event, force)

    # ---- one handler per event type
    async def upserted(self, event: TrackUpserted, force: Force) -> None:
        await self._upsert(self.confined(event.path), force)

    async def removed(self, event: TrackRemoved, force: Force) -> None:
        await self._remove(str(self.confined(event.path)))

    async def moved(self, event: TrackMoved, force: Force) -> None:
        src = self.confined(event.src_path)
        try:
            dest = self.confined(event.dest_path)
        except Rejected:  # moved out of the library: a removal
            await self._remove(str(src))
            return
        try:
            st = dest.stat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:  # gone again, or unreadable: the upsert below sorts it out
            size = mtime = None
        if self.catalog.move_file(str(src), str(dest), size, mtime) is None or size is None:
            await self._upsert(dest, force)  # unknown source: treat the destination as new

    async def scan_completed(self, event: ScanCompleted, force: Force) -> None:
        roots = [self.confined(r) for r in event.roots] or self.roots
        if self.on_scan is not None:
            await self.on_scan(roots)

    async def replay_requested(self, event: ReplayRequested, force: Force) -> None:
        if force.before == 0.0 and self.on_replay is not None:  # a replay does not start replays of itself
            self.on_replay(event)

    # ---- the work
    def confined(self, path: str) -> Path:
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
            stats().skipped += 1
            return
        stats().current = key
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
            stats().skipped += 1
            return
        results = await self._run(self.embed, audio, todo)
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
        stats().embedded += 1

    def _failed(self, key: str, size: int | None, mtime_ns: int | None, reason: str) -> None:
        """A file that cannot be analysed: listed with its reason (GET /api/failures) until it changes."""
        log.warning("cannot analyse %s: %s", key, reason)
        self.catalog.record_failure(key, size, mtime_ns, reason)
        metrics.FAILURES.labels("decode").inc()
        stats().failed += 1

    def embed(self, audio: DecodedAudio, models: list[str]) -> dict[str, tuple]:
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
