"""Clustering as a cancellable background job: a thread runs the search and builds the playlists into the job
(job.py). One sidecar's jobs (Sidecar.clustering_jobs): at most one running, the last few kept for their results."""
from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict

from schemas.clustering import ClusteringStart
from sidecar.clustering.job import Cancelled, Job
from sidecar.clustering.library import Library, load_library
from sidecar.clustering.playlists import build_playlists
from sidecar.clustering.search import MAX_PLAYLISTS, SPECTRAL_MAX, search
from sidecar.data import Catalog, VectorStore
from sidecar.errors import BadInput, Conflict, NotFound

log = logging.getLogger(__name__)

MIN_TRACKS = 4
KEEP_JOBS = 20


def run_job(job: Job, lib: Library, req: ClusteringStart) -> None:
    """The job's thread: search, then build the playlists; the outcome lands in the job."""
    try:
        best, feats, pcs = search(lib, req, job)
        if job.cancel.is_set():
            raise Cancelled
        if best is None:
            raise RuntimeError(f"all {job.failures} clustering runs failed; the last: {job.last_failure}")
        playlists = build_playlists(lib, best, feats, pcs, req)[0]
        with job.lock:
            job.playlists, job.status = playlists, "done"
    except Cancelled:
        with job.lock:
            job.status = "cancelled"
    except Exception as e:
        log.exception("clustering job %s failed", job.job_id)
        with job.lock:
            job.status, job.error = "failed", str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
    finally:
        with job.lock:
            job.finished_at = time.time()


def library_for(catalog: Catalog, store: VectorStore, model: str, req: ClusteringStart) -> Library:
    """The library a job for `req` clusters; Conflict when it has too few tracks, BadInput when the request
    cannot run on it (blocking)."""
    lib = load_library(catalog, store, model)
    need = max(MIN_TRACKS, 2 * req.min_songs_per_playlist)
    if len(lib) < need:
        raise Conflict(f"{len(lib)} tracks have both a {model} vector and MusiCNN tags; clustering needs at least {need}", "model")
    if math.ceil(len(lib) / req.max_songs_per_playlist) > MAX_PLAYLISTS:
        raise BadInput(
            f"{len(lib)} tracks in playlists of at most {req.max_songs_per_playlist} would make more than {MAX_PLAYLISTS} "
            f"playlists; raise max_songs_per_playlist to at least {math.ceil(len(lib) / MAX_PLAYLISTS)}", "max_songs_per_playlist",
        )
    per_run = req.sample_size if 0 < req.sample_size < len(lib) else len(lib)
    if "spectral" in req.algorithms and per_run > SPECTRAL_MAX:
        raise BadInput(
            f"spectral clustering of {per_run} tracks per run is too slow; set sample_size to at most {SPECTRAL_MAX} "
            "or leave spectral out", "algorithms",
        )
    return lib


class ClusteringJobs:
    """One sidecar's clustering jobs, oldest first: at most one running, the last KEEP_JOBS kept."""

    def __init__(self):
        self.jobs: OrderedDict[str, Job] = OrderedDict()

    @property
    def running(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.status == "running"), None)

    def reserve(self, model: str, req: ClusteringStart) -> Job:
        """A new running job for `req` (not started yet): from now on `running` is this one."""
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        job = Job(job_id=uuid.uuid4().hex, model=model, algorithms=req.algorithms, seed=seed, total=req.iterations)
        self.jobs[job.job_id] = job
        while len(self.jobs) > KEEP_JOBS:
            oldest = next((k for k, j in self.jobs.items() if j.status != "running"), None)
            if oldest is None:
                break
            del self.jobs[oldest]
        return job

    def start(self, job: Job, lib: Library, req: ClusteringStart) -> None:
        """Run a reserved job on `lib` in its own thread."""
        job.tracks = len(lib)
        job.thread = threading.Thread(target=run_job, args=(job, lib, req), name=f"clustering-{job.job_id[:8]}", daemon=True)
        job.thread.start()

    def drop(self, job: Job) -> None:
        """Forget a reserved job that could not start."""
        self.jobs.pop(job.job_id, None)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no clustering job {job_id!r}", "job_id")
        return job

    def newest_first(self) -> list[Job]:
        return list(reversed(self.jobs.values()))

    def cancel_all(self) -> None:
        for j in self.jobs.values():
            j.cancel.set()
