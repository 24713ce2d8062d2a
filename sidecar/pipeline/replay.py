"""Replay: the library's events consumed again from the start by a consumer group of its own. It is how a
re-embed runs (with `models` forced) and how a part of the library is reprocessed (`scope`); the HTTP API
calls it a batch (/api/batch/*), the CLI `sidecar replay`. One runs at a time.

Search keeps answering from the stored vectors throughout: each track's new vector replaces the old one (an
upsert by track id); nothing is dropped first. A run interrupted by a crash stays 'running' in the catalog
and is resumed at the next start from its group's committed offset.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

from schemas.events import ReplayRequested
from sidecar.data import Catalog
from sidecar.errors import BadInput, Conflict
from sidecar.pipeline.bus import Consumer, EventBus
from sidecar.pipeline.handlers import Force
from sidecar.pipeline.runtime import IngestStats

log = logging.getLogger(__name__)
RunConsumer = Callable[[Consumer, Force, IngestStats], Awaitable[None]]


class ReplayBusy(Conflict):
    def __init__(self, replay_id: str):
        super().__init__(f"replay {replay_id} is running; cancel it or wait for it", "replay_id")
        self.replay_id = replay_id


@dataclass
class ReplayRun:
    """A replay in progress, with its own counters."""

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


class Replays:
    """The runs since this process started; `request` is the one way to start one."""

    def __init__(self, bus: EventBus, catalog: Catalog, roots: list[Path], run_consumer: RunConsumer):
        self.bus, self.catalog, self.roots, self._run_consumer = bus, catalog, roots, run_consumer
        self.runs: dict[str, ReplayRun] = {}

    def running(self) -> ReplayRun | None:
        return next((r for r in self.runs.values() if r.status == "running"), None)

    def latest(self) -> ReplayRun | None:
        """The running run, else the last one."""
        return self.running() or (list(self.runs.values())[-1] if self.runs else None)

    async def request(self, models: list[str], scope: str | None = None, source: str = "operator") -> ReplayRun:
        """Start a replay now and log the request on the bus. BadInput for a scope outside the music roots;
        ReplayBusy (a Conflict) names the running one."""
        if scope is not None:
            p = Path(scope)
            if not p.is_absolute() or ".." in p.parts or not any(p.is_relative_to(r) for r in self.roots):
                raise BadInput("scope must be a folder inside a music root", "scope")
        if (running := self.running()) is not None:
            raise ReplayBusy(running.replay_id)
        event = ReplayRequested(models=models, scope=scope, source=source)
        await self.bus.publish(event)
        return self.start(event)

    def start(self, event: ReplayRequested) -> ReplayRun | None:
        """Start the replay this event asks for (once: the event may be seen again on the bus)."""
        row = self.catalog.start_replay(event.event_id, f"replay-{event.event_id[:12]}", event.models, event.scope)
        if row["status"] != "running" or event.event_id in self.runs:
            return self.runs.get(event.event_id)
        return self._launch(row)

    def resume(self) -> None:
        """Go on with the runs a crash or a shutdown interrupted."""
        for row in self.catalog.replays("running"):
            if row["replay_id"] not in self.runs:
                self._launch(row)

    def _launch(self, row: dict) -> ReplayRun:
        run = ReplayRun(row["replay_id"], row["models"], row["scope"], row["started_at"])
        self.runs[run.replay_id] = run
        run.task = asyncio.create_task(self._replay(run, row["consumer_group"]), name=f"replay-{run.replay_id}")
        return run

    async def _replay(self, run: ReplayRun, group: str) -> None:
        force = Force(tuple(run.models), run.started_at, run.scope)
        log.info("replay %s started (re-embedding: %s)", run.replay_id, ", ".join(run.models) or "nothing forced")
        try:
            async with self.bus.consumer(group, from_beginning=True) as consumer:
                run.total = await consumer.lag()
                await self._run_consumer(consumer, force, run.stats)
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

    async def cancel(self, replay_id: str | None = None) -> ReplayRun:
        """Cancel the running run (or the one named); Conflict when none is running."""
        run = self.runs.get(replay_id) if replay_id else self.running()
        if run is None or run.status != "running":
            raise Conflict("no re-embed is running")
        run.status = "cancelling"
        run.task.cancel()
        await asyncio.gather(run.task, return_exceptions=True)
        return run

    async def wait(self) -> None:
        tasks = [r.task for r in self.runs.values() if r.task]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """At shutdown: stop without marking them finished, so the next start resumes them."""
        for run in self.runs.values():
            if run.task and not run.task.done():
                run.task.cancel()
        await self.wait()
