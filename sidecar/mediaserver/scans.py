"""Noticing library changes on the server: a finished scan (getScanStatus polled, or getIndexes' lastModified
where the server cannot say, e.g. supysonic without its daemon), and, when enabled, Navidrome's event stream
(/api/events: scanStatus, refreshResource, serverStart), which reports them sooner."""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from plugins.mediaserver import AuthError, MediaServerError, Unreachable

if TYPE_CHECKING:
    from sidecar.mediaserver.errorlog import ErrorLog
    from sidecar.plugins.api import MediaServer

log = logging.getLogger(__name__)


class ScanWatcher:
    """Calls `scan_finished(source)` when the server finished a scan and `changed(resources)` when Navidrome
    says something changed (its refreshResource payload; {"*": "*"} for everything)."""

    def __init__(
        self, adapter: "MediaServer", errors: "ErrorLog", scan_finished: Callable[[str], Awaitable[Any]],
        changed: Callable[[Any], None], backoff: tuple[float, float] = (5, 300),
    ):
        self.adapter, self.errors = adapter, errors
        self.scan_finished, self.changed = scan_finished, changed
        self.backoff = backoff
        self.watch: str | None = None  # how scans are noticed: getScanStatus, getIndexes or off
        self.events_state = "off"  # Navidrome's event stream: off, connecting or connected

    async def signature(self) -> tuple[tuple | None, bool]:
        """(what identifies the library's last scan, scanning now?)."""
        status = None
        if self.watch != "getIndexes":
            try:
                status = await self.adapter.scan_status()
                self.watch = "getScanStatus"
            except (AuthError, Unreachable):
                raise
            except MediaServerError as e:
                log.info(
                    "media server %s: getScanStatus is not available (%s); watching getIndexes' lastModified instead", self.adapter.url, e
                )
                self.watch = "getIndexes"
        if status is not None and status.scanning:
            return None, True
        last_modified = None
        if status is None or status.last_scan is None:
            last_modified = await self.adapter.indexes_last_modified()
        if status is None:
            return (last_modified,), False
        return (status.last_scan, status.count, status.folder_count, last_modified), False

    async def poll(self, every: float) -> None:
        """Every `every` seconds (0: never), ask whether a scan finished since the last time."""
        if not every:
            self.watch = "off"
            return
        previous: tuple | None = None
        was_scanning = False
        while True:
            try:
                signature, scanning = await self.signature()
                self.errors.recovered("scan")
                if scanning:
                    was_scanning = True
                else:
                    changed = previous is not None and (was_scanning or signature != previous)
                    if changed and self.events_state != "connected":  # the event stream reports it sooner
                        await self.scan_finished("subsonic-poll")
                    previous, was_scanning = signature, False
            except MediaServerError as e:
                self.errors.record(f"{e} (watching for scans)", source="scan")
            except Exception:
                log.exception("watching the media server's scans failed")
            await asyncio.sleep(every)

    async def follow_events(self) -> None:
        """Navidrome's server-sent events: scanStatus (scanning -> not scanning means a scan finished),
        refreshResource (something changed) and serverStart (a new start time: it restarted, refresh all)."""
        lo, hi = self.backoff
        delay = lo
        scanning = False
        server_start = None
        while True:
            self.events_state = "connecting"
            try:
                token = await self.adapter.navidrome_login()
                async for name, data in self.adapter.events(token):
                    if self.events_state != "connected":
                        self.errors.recovered("events")
                    self.events_state, delay = "connected", lo
                    if name == "scanStatus" and isinstance(data, dict):
                        if data.get("scanning"):
                            scanning = True
                        elif scanning:
                            scanning = False
                            await self.scan_finished("navidrome-events")
                    elif name == "refreshResource":
                        self.changed(data)
                    elif name == "serverStart":
                        started = data.get("startTime") if isinstance(data, dict) else None
                        if server_start is not None and started != server_start:
                            self.changed({"*": "*"})
                        server_start = started
            except MediaServerError as e:
                self.errors.record(f"{e} (event stream)", f"; retrying in {delay:g} s", source="events")
            except Exception:
                log.exception("Navidrome's event stream failed")
            self.events_state = "connecting"
            await asyncio.sleep(delay)
            delay = min(delay * 2, hi)
