"""One clustering job: its progress, the best solution its search found so far, and its outcome; a snapshot of
it is what the API answers. The search (search.py) writes into it; the registry (jobs.py) runs it."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.clustering import ClusteringJob, ClusterPlaylist, Progress
from sidecar.errors import Conflict


@dataclass
class Best:
    score: float
    purity: float
    diversity: float
    params: dict[str, Any]
    rows: np.ndarray | None  # the sample clustered; None: all tracks
    labels: np.ndarray
    seed: int


class Cancelled(Exception):
    """The job's cancel flag was seen: the search stops between two runs."""


@dataclass
class Job:
    job_id: str
    model: str
    algorithms: list[str]
    seed: int
    total: int
    tracks: int = 0
    status: str = "running"
    done: int = 0
    failures: int = 0
    last_failure: str | None = None
    best: Best | None = None
    started_at: float = field(default_factory=time.time)
    started_mono: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    error: str | None = None
    playlists: list[ClusterPlaylist] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None

    def snapshot(self) -> ClusteringJob:
        with self.lock:
            best = self.best
            elapsed = (time.monotonic() - self.started_mono) if self.finished_at is None else (self.finished_at - self.started_at)
            eta = None
            if self.status == "running" and self.done:
                eta = round(elapsed / self.done * (self.total - self.done), 3)
            return ClusteringJob(
                job_id=self.job_id, status=self.status, model=self.model, algorithms=self.algorithms, tracks=self.tracks,
                seed=self.seed, progress=Progress(done=self.done, total=self.total),
                best_score=round(best.score, 6) if best else None, best_purity=round(best.purity, 6) if best else None,
                best_diversity=round(best.diversity, 6) if best else None, best_params=dict(best.params) if best else None,
                started_at=self.started_at, finished_at=self.finished_at, elapsed_s=round(elapsed, 3), eta_s=eta,
                cancel_requested=self.cancel.is_set(), error=self.error, playlists=self.playlists,
            )

    def stop(self) -> None:
        """Ask the search to stop after its current run; Conflict when the job is not running."""
        if self.status != "running":
            raise Conflict(f"clustering job {self.job_id} is {self.status}; nothing to cancel", "job_id")
        self.cancel.set()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout)
