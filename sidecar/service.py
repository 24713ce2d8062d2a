"""The sidecar put together: catalog, vector store, bus, embedders, ingest worker, sources and HTTP API.

One process can play one of three roles (`sidecar serve`, `sidecar worker`, `sidecar api`):
- serve: everything on one box (the default);
- worker: consume library events in the shared consumer group, analyse, store; HTTP only /health, /api/status
  and /metrics; with `watch`, also watch the music folders and walk them (one worker per music mount);
- api: HTTP only; its in-memory vectors follow what the workers write (the catalog's vector log).
Several workers and API processes share one Kafka, one PostgreSQL catalog and one Milvus server.
"""
from __future__ import annotations

import asyncio
import logging

from sidecar.pipeline.bus import EventBus
from sidecar.pipeline.bus import make_bus
from sidecar.clustering.jobs import ClusteringJobs
from sidecar.data.catalog import Catalog
from sidecar.data.sql import DatabaseError
from sidecar.config import Settings
from sidecar.explore.state import ExploreCaches
from sidecar.instant.index import IndexCache
from sidecar.pipeline.ingest import IngestWorker
from sidecar.plugins import LoadedEmbedders, load_embedders
from sidecar.pipeline.sources import FolderWatcher, Reconciler
from sidecar.data.store import VectorStore

log = logging.getLogger(__name__)


class SidecarError(RuntimeError):
    """A start-up problem the user must fix; the message says what."""


ROLES = ("serve", "worker", "api")


class Sidecar:
    def __init__(self, settings: Settings, role: str = "serve"):
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}")
        self.settings, self.role = settings, role
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
        self.instant_index = IndexCache()  # the instant playlists' view of the library, rebuilt when it changes
        self.explore_caches = ExploreCaches()  # maps, artist vectors, parsed tags of the exploration endpoints
        self.clustering_jobs = ClusteringJobs()  # the running clustering job and the last few's results
        self.idle = asyncio.Event()  # the ingest consumer has nothing in flight and saw no lag
        self.reconciled = asyncio.Event()  # the start-up reconcile walk has published its events
        self.consumer = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

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
        try:
            self.catalog = await asyncio.to_thread(Catalog, s.catalog_target, allow_duplicate_recordings=s.allow_duplicate_recordings)
        except (DatabaseError, RuntimeError) as e:  # unreachable, or a schema newer than this sidecar
            raise SidecarError(str(e)) from None
        self.embedders = await asyncio.to_thread(load_embedders, s.embedders, s.models_dir, s.plugins)
        for name, why in self.embedders.unavailable.items():
            log.error("embedder %s is unavailable: %s", name, why)
        if not self.embedders.ready:
            raise SidecarError("no embedder could be loaded: " + "; ".join(f"{k}: {v}" for k, v in self.embedders.unavailable.items()))
        # an API process follows the vector log from before its mirrors load: what is written meanwhile comes twice
        self._followed = self.catalog.vector_log_head() if self.role == "api" else 0
        try:
            mirror = s.vector_mirror and self.role != "worker"  # a worker only writes: no copy to keep
            self.store = await asyncio.to_thread(VectorStore, s.milvus_target, s.milvus_token, mirror=mirror)
            for name, emb in self.embedders.ready.items():
                await asyncio.to_thread(self.store.ensure_collection, name, emb.dim, segments=emb.store_segments, space=emb.space)
        except Exception as e:
            raise SidecarError(str(e)) from None
        if self.role == "worker":
            self.text_unavailable = "an ingest worker answers no queries"
        else:
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

    async def start(self, *, watch: bool | None = None) -> None:
        """Run what the role does: watcher, start-up and periodic reconcile (serve; a worker with `watch`),
        ingest consumer (serve, worker), vector-log follower (api). The HTTP server is sidecar.run's."""
        await self.open()
        s = self.settings
        # serve walks its folders (at start and every reconcile_interval_s) and watches them unless told not to; a
        # worker does both only when told to (one worker per music mount); an API process never does
        walk = self.role == "serve" or (self.role == "worker" and bool(watch))
        watch = walk and (watch is None or watch)
        if watch and self.roots:
            self.watcher = FolderWatcher(self.bus, self.reconciler, self.roots, s.debounce_s)
            await self.watcher.start()
        if self.role == "api":
            self._tasks.append(asyncio.create_task(self._follow_vectors(), name="follow"))
        else:
            self._tasks.append(asyncio.create_task(self._consume(), name="ingest"))
        if walk and self.roots:
            self._tasks.append(asyncio.create_task(self._reconcile_loop(), name="reconcile"))
        else:
            self.reconciled.set()  # nothing of ours to walk
        if self.role != "api":
            self.worker.replays.resume()
        if s.media_server_url and self.role != "worker":
            from sidecar.mediaserver.service import MediaServerService

            self.media = MediaServerService(self)
            await self.media.start()  # returns at once; a server that is down is retried in the background

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

    async def _follow_vectors(self) -> None:
        """API role: apply the vectors other processes wrote or deleted (the catalog's vector log) to the mirrors."""
        interval = self.settings.follow_interval_s
        seen: set[int] = set()
        while True:
            try:
                # look back a little: on a shared catalog a write can commit after one with a higher number
                changes = await asyncio.to_thread(self.catalog.vector_changes, max(self._followed - 200, 0))
                fresh = [c for c in changes if c["seq"] not in seen]
                for model in {c["model"] for c in fresh}:
                    ups = [c["track_id"] for c in fresh if c["model"] == model and c["op"] == "upsert"]
                    downs = [c["track_id"] for c in fresh if c["model"] == model and c["op"] == "delete"]
                    await asyncio.to_thread(self.store.follow, model, ups, downs)
                if changes:
                    self._followed = max(self._followed, changes[-1]["seq"])
                    seen = {c["seq"] for c in changes if c["seq"] > self._followed - 200}
            except Exception:
                log.exception("following the vector log failed; trying again")
            await asyncio.sleep(interval)

    async def _reconcile_loop(self) -> None:
        interval = self.settings.reconcile_interval_s
        while True:
            try:
                await self.reconciler.run(self.roots)
                await asyncio.to_thread(self.catalog.prune_vector_log)
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
        if self.media is not None:
            await self.media.close()
        if self.watcher is not None:
            await self.watcher.stop()
        if self.worker is not None:
            await self.worker.replays.stop()
        self.clustering_jobs.cancel_all()
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
