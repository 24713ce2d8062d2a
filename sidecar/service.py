"""The sidecar put together: catalog, vector store, bus, embedders, ingest worker, sources and HTTP API."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web

from sidecar.pipeline.bus import EventBus
from sidecar.pipeline.bus import make_bus
from sidecar.data.catalog import Catalog
from sidecar.config import Settings
from sidecar.pipeline.ingest import IngestWorker
from sidecar.plugins import LoadedEmbedders, load_embedders
from sidecar.pipeline.sources import FolderWatcher, Reconciler
from sidecar.data.store import VectorStore

log = logging.getLogger(__name__)


class SidecarError(RuntimeError):
    """A start-up problem the user must fix; the message says what."""


class Sidecar:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.roots = list(settings.music_dir)
        self.catalog: Catalog | None = None
        self.store: VectorStore | None = None
        self.bus: EventBus | None = None
        self.embedders = LoadedEmbedders()
        self.worker: IngestWorker | None = None
        self.reconciler: Reconciler | None = None
        self.watcher: FolderWatcher | None = None
        self.text = None  # TextRecommender, when a text encoder loads
        self.engine = None
        self.media = None  # MediaServerService, when a media server is configured
        self.text_unavailable: str | None = None
        self.idle = asyncio.Event()  # the ingest consumer has nothing in flight and saw no lag
        self.reconciled = asyncio.Event()  # the start-up reconcile walk has published its events
        self.consumer = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._http: web.AppRunner | None = None

    @property
    def default_model(self) -> str:
        return next(iter(self.embedders.ready))

    async def open(self) -> None:
        """Open the stores, load the models and connect the bus; start nothing yet."""
        s = self.settings
        for root in self.roots:
            if not root.is_dir():
                raise SidecarError(f"music folder {root} does not exist or is not a folder")
        s.data_dir.mkdir(parents=True, exist_ok=True)
        import torch
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(s.torch_threads)
        # numpy's BLAS on one thread: a search is a matrix-vector product bound by memory, and two BLAS threads
        # on two busy cores took four times as long (16 ms against 3.8 ms at 100k tracks; docs/PERFORMANCE.md)
        threadpool_limits(1, user_api="blas")
        self.catalog = Catalog(s.catalog_path)
        self.embedders = await asyncio.to_thread(load_embedders, s.embedders, s.models_dir, s.plugins)
        for name, why in self.embedders.unavailable.items():
            log.error("embedder %s is unavailable: %s", name, why)
        if not self.embedders.ready:
            raise SidecarError("no embedder could be loaded: " + "; ".join(f"{k}: {v}" for k, v in self.embedders.unavailable.items()))
        try:
            self.store = await asyncio.to_thread(VectorStore, s.milvus_target, s.milvus_token)
            for name, emb in self.embedders.ready.items():
                await asyncio.to_thread(self.store.ensure_collection, name, emb.dim, segments=emb.store_segments)
        except Exception as e:
            raise SidecarError(str(e)) from None
        await asyncio.to_thread(self._open_text)
        from sidecar.recommend.engine import Engine

        self.engine = Engine(self.catalog, self.store, self.embedders, self.text)
        self.bus = make_bus(s)
        try:
            await self.bus.start()
        except Exception as e:
            raise SidecarError(f"cannot connect the event bus ({s.bus}): {e}") from None
        self.reconciler = Reconciler(self.bus, self.catalog, s.audio_extensions)
        self.worker = IngestWorker(
            self.bus, self.catalog, self.store, self.embedders, self.roots,
            concurrency=s.ingest_workers, reconcile=self.reconciler.run, nice=s.ingest_nice,
        )

    def _open_text(self) -> None:
        from sidecar.plugins import EmbedderUnavailable
        from sidecar.plugins import load_text_encoder
        from sidecar.text.recommender import TextRecommender

        s = self.settings
        try:
            encoder = load_text_encoder(s.text_encoder, s.models_dir, s.plugins)
        except EmbedderUnavailable as e:
            self.text_unavailable = str(e)
            log.error("text search is unavailable: %s", e)
            return
        self.text = TextRecommender(self.catalog, self.store, self.embedders, encoder, s.data_dir)

    async def start(self, *, http: bool = True, watch: bool = True) -> None:
        """Run everything: watcher, start-up reconcile, ingest consumer, periodic reconcile, HTTP."""
        await self.open()
        s = self.settings
        if watch and self.roots:
            self.watcher = FolderWatcher(self.bus, self.reconciler, self.roots, s.debounce_s)
            await self.watcher.start()
        self._tasks.append(asyncio.create_task(self._consume(), name="ingest"))
        if self.roots:
            self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))
        self.worker.replays.resume()
        if s.media_server_url:
            from sidecar.mediaserver import MediaServerService

            self.media = MediaServerService(self)
            await self.media.start()  # returns at once; a server that is down is retried in the background
        if http:
            from sidecar.http.app import make_app

            # max_line_size: a query at its documented limits, in 4-byte characters percent-encoded (12 bytes
            # each), is about 21 kB; aiohttp's default (8 kB) would refuse it before the API could answer
            self._http = web.AppRunner(make_app(self), access_log=None, max_line_size=65536)
            await self._http.setup()
            site = web.TCPSite(self._http, s.host, s.port)
            try:
                await site.start()
            except OSError as e:
                await self.close()
                raise SidecarError(f"cannot listen on {s.host}:{s.port}: {e.strerror}") from None
            log.info("serving on http://%s:%d", s.host, s.port)

    async def _consume(self) -> None:
        while not self._stop.is_set():
            try:
                async with self.bus.consumer(self.settings.kafka_group) as consumer:
                    self.consumer = consumer
                    await self.worker.consume(consumer, self._stop, idle=self.idle)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker went away: wait and reconnect; uncommitted events come back
                log.exception("ingest consumer failed; reconnecting in 2 s")
                await asyncio.sleep(2)

    async def _reconcile_loop(self) -> None:
        interval = self.settings.reconcile_interval_s
        while True:
            try:
                await self.reconciler.run(self.roots)
            except Exception:
                log.exception("reconcile failed")
            self.reconciled.set()
            if not interval:
                return
            await asyncio.sleep(interval)

    async def lag(self) -> int:
        """Events not yet processed by the ingest consumer; -1 while it is (re)connecting."""
        try:
            return await self.consumer.lag() if self.consumer is not None else -1
        except Exception:
            return -1

    async def is_idle(self) -> bool:
        """Nothing to do: the start-up walk is done, the watcher holds nothing back, no event waits."""
        return (
            self.reconciled.is_set() and self.idle.is_set() and not (self.watcher and self.watcher.busy)
            and await self.lag() == 0
        )

    async def close(self) -> None:
        self._stop.set()
        if self._http is not None:
            await self._http.cleanup()
        if self.media is not None:
            await self.media.close()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.worker is not None:
            await self.worker.replays.stop()
        from sidecar.clustering import jobs_of

        jobs_of(self).cancel_all()
        for t in self._tasks:
            if t.get_name() == "ingest":  # let it finish in-flight events and commit
                try:
                    await asyncio.wait_for(t, 30)
                except (asyncio.TimeoutError, asyncio.CancelledError):
                    pass
            else:
                t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.worker is not None:
            self.worker.close()
        if self.bus is not None:
            await self.bus.close()
        if self.store is not None:
            self.store.close()
        if self.catalog is not None:
            self.catalog.close()


async def run_forever(settings: Settings) -> None:
    sidecar = Sidecar(settings)
    await sidecar.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await sidecar.close()


def demo_music_dir(data_dir: Path) -> Path:
    """The demo library's folder, fetched if needed (used when no music folder is configured)."""
    from sidecar.demo import fetch_demo_library

    root = data_dir / "demo-music"
    fetch_demo_library(root)
    return root
