"""Where library events come from: the reconcile walk and the folder watcher. (Kafka producers publish
straight onto the bus; the Navidrome webhook and `sidecar replay` publish through the service.)"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from schemas.events import LibraryEvent, TrackMoved, TrackRemoved, TrackUpserted
from sidecar.pipeline.bus import EventBus
from sidecar.data.catalog import Catalog

log = logging.getLogger(__name__)


async def publish_all(bus: EventBus, events: list[LibraryEvent]) -> int:
    for event in events:
        await bus.publish(event)
    return len(events)


def is_utf8(path: str) -> bool:
    """Linux allows any bytes in a name; one that is not UTF-8 (held as surrogates) cannot go in an event."""
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


class Reconciler:
    """Walks the music roots and emits events only for what changed since the catalog last saw it.

    A file that vanished while another appeared with the same size and nanosecond mtime was moved (a rename
    or `mv` keeps both): that becomes one TrackMoved, so its identity follows it and no model runs. Other
    changes become upserts and removals, upserts first.
    """

    def __init__(self, bus: EventBus, catalog: Catalog, extensions: list[str]):
        self.bus, self.catalog = bus, catalog
        self.extensions = {e.lower() for e in extensions}

    def is_audio(self, path: str | Path) -> bool:
        return os.path.splitext(str(path))[1].lower() in self.extensions

    def reject_name(self, path: str) -> str | None:
        """A name that no event can carry is listed among the failures: returns it as listed (else None)."""
        if is_utf8(path):
            return None
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        log.warning("cannot analyse %s: its name is not valid UTF-8", shown)
        self.catalog.record_failure(shown, None, None, "file name is not valid UTF-8: rename it (e.g. with convmv)")
        return shown

    def changes(self, roots: list[Path]) -> list[LibraryEvent]:
        events: list[LibraryEvent] = []
        for root in roots:
            known = self.catalog.files_under(str(root))
            seen: dict[str, tuple[int, int]] = {}
            for dirpath, _dirs, files in os.walk(root):  # followlinks=False: a symlink loop cannot trap the walk
                for name in files:
                    if self.is_audio(name):
                        path = os.path.join(dirpath, name)
                        if (listed := self.reject_name(path)) is not None:
                            seen[listed] = (None, None)  # as its failure was recorded: neither new nor gone
                            continue
                        try:
                            st = os.stat(path)
                        except FileNotFoundError:  # vanished (a broken link is announced, for the worker to report)
                            if not os.path.islink(path):
                                continue
                            st = None
                        except OSError:  # a symlink loop, no permission: the worker reports it
                            st = None
                        seen[path] = (st.st_size, st.st_mtime_ns) if st else (None, None)
            gone = {known[p]: p for p in sorted(set(known) - set(seen))}
            for path, stat in seen.items():
                if known.get(path) == stat:
                    continue
                if path not in known and stat[0] is not None and (src := gone.pop(stat, None)) is not None:
                    events.append(TrackMoved(src_path=src, dest_path=path, source="reconcile"))
                else:
                    events.append(TrackUpserted(path=path, size=stat[0], mtime_ns=stat[1], source="reconcile"))
            events += [TrackRemoved(path=p, source="reconcile") for p in sorted(gone.values())]
        return events

    async def run(self, roots: list[Path]) -> int:
        events = await asyncio.to_thread(self.changes, roots)
        sent = await publish_all(self.bus, events)
        log.info("reconcile of %s: %d change(s)", ", ".join(map(str, roots)), sent)
        return sent


class FolderWatcher:
    """Watchdog on the music roots. A created or modified file is announced once it has stopped changing for
    `debounce_s` (a copy in progress is not decoded half-written); deletes and moves go out at once."""

    POLL_S = 0.2

    def __init__(self, bus: EventBus, reconciler: Reconciler, roots: list[Path], debounce_s: float):
        self.bus, self.reconciler, self.roots, self.debounce_s = bus, reconciler, roots, debounce_s
        self._pending: dict[str, tuple[float, tuple[int, int] | None]] = {}  # path -> (last change, last stat)
        self._queue: asyncio.Queue[LibraryEvent | list[Path]] = asyncio.Queue()
        self._observer = Observer()
        self._tasks: list[asyncio.Task] = []
        self._sending = False  # an event taken from the queue, not yet published (the bus may be away)

    @property
    def busy(self) -> bool:
        """Files waiting to settle, or events not yet published."""
        return bool(self._pending) or not self._queue.empty() or self._sending

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:  # watchdog's thread
                loop.call_soon_threadsafe(watcher._on_event, event)

        for root in self.roots:
            self._observer.schedule(Handler(), str(root), recursive=True)
        self._observer.start()
        self._tasks = [asyncio.create_task(self._settle()), asyncio.create_task(self._send())]

    async def stop(self) -> None:
        self._observer.stop()
        await asyncio.to_thread(self._observer.join, 5)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_event(self, event: FileSystemEvent) -> None:
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(getattr(event, "dest_path", "") or "")
        audio = self.reconciler.is_audio
        if event.is_directory:
            if event.event_type in ("deleted", "moved"):  # files inside got no events of their own: walk
                self._queue.put_nowait(self.roots)
            return
        if event.event_type in ("created", "modified", "closed"):
            if audio(src):
                self._pending[src] = (time.monotonic(), None)
        elif event.event_type == "deleted":
            self._pending.pop(src, None)
            if audio(src) and is_utf8(src):  # a name that is not UTF-8 never reached the catalog
                self._queue.put_nowait(TrackRemoved(path=src, source="watcher"))
        elif event.event_type == "moved":
            self._pending.pop(src, None)
            if audio(src) and audio(dest) and is_utf8(src) and is_utf8(dest):
                self._queue.put_nowait(TrackMoved(src_path=src, dest_path=dest, source="watcher"))
            else:
                if audio(dest):  # e.g. a download renamed from .part: a new file (a bad name is reported on settling)
                    self._pending[dest] = (time.monotonic(), None)
                if audio(src) and is_utf8(src):
                    self._queue.put_nowait(TrackRemoved(path=src, source="watcher"))

    async def _settle(self) -> None:
        while True:
            await asyncio.sleep(self.POLL_S)
            now = time.monotonic()
            for path, (changed_at, last) in list(self._pending.items()):
                try:
                    st = os.stat(path)
                except OSError as e:
                    del self._pending[path]
                    if (os.path.islink(path) or not isinstance(e, FileNotFoundError)) and self.reconciler.reject_name(path) is None:
                        self._queue.put_nowait(TrackUpserted(path=path, source="watcher"))  # a link loop: the worker reports it
                    continue
                current = (st.st_size, st.st_mtime_ns)
                if current != last:
                    self._pending[path] = (now if last is not None else changed_at, current)
                elif now - changed_at >= self.debounce_s:
                    del self._pending[path]
                    if self.reconciler.reject_name(path) is None:
                        self._queue.put_nowait(TrackUpserted(path=path, size=st.st_size, mtime_ns=st.st_mtime_ns, source="watcher"))

    async def _send(self) -> None:
        while True:
            item = await self._queue.get()
            self._sending, delay = True, 0.5
            while True:  # the same item until it goes out, so that one file's events keep their order
                try:
                    if isinstance(item, list):
                        await self.reconciler.run(item)
                    else:
                        await publish_all(self.bus, [item])
                    self._sending = False
                    break
                except Exception as e:  # the bus being away (a broker restart) must not lose or reorder events
                    log.warning("watcher could not publish (%s); retrying in %.1f s", e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
