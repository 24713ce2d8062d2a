"""A vector store without Milvus for tests that measure or check our code over synthetic libraries:
VectorStore's own read methods over real in-memory Mirrors (they use only its lock and mirrors)."""
from __future__ import annotations

import threading

import numpy as np

from sidecar.data.mirror import Mirror
from sidecar.data.store import VectorStore


class MirrorStore:
    get_vectors, stacked, search, similarities = VectorStore.get_vectors, VectorStore.stacked, VectorStore.search, VectorStore.similarities
    size, snapshot, track_ids, _check_query = VectorStore.size, VectorStore.snapshot, VectorStore.track_ids, VectorStore._check_query
    held_stamp = VectorStore.held_stamp

    def __init__(self, vectors: dict[str, tuple[list[str], np.ndarray]]):
        """vectors: model -> (track ids, their vectors)."""
        self._lock = threading.Lock()
        self.mirrors = {}
        for model, (ids, matrix) in vectors.items():
            self.mirrors[model] = Mirror(matrix.shape[1])
            self.mirrors[model].put(list(ids), matrix)

    def put(self, model: str, ids: list[str], vectors: np.ndarray) -> None:
        with self._lock:
            self.mirrors[model].put(ids, vectors)

    def remove(self, model: str, ids: list[str]) -> None:
        with self._lock:
            self.mirrors[model].remove(ids)
