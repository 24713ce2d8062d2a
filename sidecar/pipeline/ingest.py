"""The ingest worker: the live consumer and the replays, over one set of event handlers."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable

from sidecar.data import Catalog, VectorStore
from sidecar.pipeline import runtime
from sidecar.pipeline.bus import Consumer, EventBus
from sidecar.pipeline.handlers import EventHandlers, Force
from sidecar.pipeline.replay import Replays
from sidecar.pipeline.runtime import IngestStats
from sidecar.plugins import LoadedEmbedders


class IngestWorker:
    def __init__(
        self, bus: EventBus, catalog: Catalog, store: VectorStore, embedders: LoadedEmbedders, roots: list[Path], *,
        concurrency: int = 2, reconcile: Callable[[list[Path]], Awaitable[int]] | None = None, nice: int = 0,
    ):
        self.bus, self.concurrency = bus, concurrency
        self.stats = IngestStats()  # the live consumer's
        self.replays = Replays(bus, catalog, [Path(r) for r in roots], self._consume_replay)
        self.handlers = EventHandlers(
            catalog, store, embedders, roots, concurrency=concurrency, nice=nice, on_scan=reconcile, on_replay=self.replays.start,
        )

    def close(self) -> None:
        self.handlers.close()

    async def consume(
        self, consumer: Consumer, stop: asyncio.Event, *, until_caught_up: bool = False, idle: asyncio.Event | None = None,
        on_progress: Callable[[IngestStats], None] | None = None,
    ) -> None:
        """The live consumer: every event as it comes (see runtime.consume)."""
        await runtime.consume(
            self.bus, consumer, self.handlers.handle, stop, concurrency=self.concurrency, stats=self.stats,
            until_caught_up=until_caught_up, idle=idle, on_progress=on_progress,
        )

    async def _consume_replay(self, consumer: Consumer, force: Force, stats: IngestStats) -> None:
        await runtime.consume(
            self.bus, consumer, lambda event: self.handlers.handle(event, force), asyncio.Event(),
            concurrency=self.concurrency, stats=stats, until_caught_up=True,
        )
