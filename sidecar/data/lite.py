"""Milvus Lite, served privately: the embedded default vector store's server, on a Unix socket only this user
can reach (see LiteServer)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

REST_AFTER_S = 60.0  # a resting collection (LiteServer.rest) is closed again this long after its last call


class LiteError(RuntimeError):
    pass


class LiteServer:
    """A Milvus Lite file served on a Unix socket that only this user can reach.

    Given a `*.db` URI, pymilvus starts Lite's gRPC server on a random loopback TCP port with no
    authentication, where any local user could read or delete the vectors. Here the same server listens
    only on a socket inside a 0700 folder, and pymilvus connects to it as `unix:<path>`.
    """

    def __init__(self, path: Path, lock: threading.RLock | None = None):
        """`lock`: the one every call on this server is made under (Milvus.lock); resting collections close under it."""
        from milvus_lite.db import MilvusLite

        path.parent.mkdir(parents=True, exist_ok=True)
        # Lite's in-process gRPC server logs an error for AllocTimestamp, which pymilvus 3 calls and Lite
        # does not implement; the client falls back by itself, so the traceback is noise.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # "failed to get mvccTs": the same fallback
        self.server, self.folder = None, None
        self.lock = lock or threading.RLock()
        self._resting: dict[str, float] = {}  # collection -> when last called (time.monotonic)
        self._closed: set[str] = set()  # resting collections Lite holds nothing of now
        self._timer: threading.Timer | None = None
        self._stopped = False
        _arrow_pool()
        self.db = MilvusLite(str(path))  # takes the file's lock first: a second process stops here
        try:
            self.folder = _private_folder(path.parent / ".milvus-lite")
            socket = self.folder / "grpc.sock"
            self.server = _grpc_server(self.db)
            if not self.server.add_insecure_port(f"unix:{socket}"):
                raise LiteError(f"cannot listen on the Unix socket {socket} for {path}")
            self.server.start()
        except BaseException:
            self.close()
            raise
        self.uri = f"unix:{socket}"

    def close(self) -> None:
        with self.lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()
        for stop in (lambda: self.server and self.server.stop(grace=2), self.db.close):
            try:
                stop()
            except Exception:  # best effort: process exit releases the lock too
                log.debug("closing Milvus Lite", exc_info=True)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    # ---- resting collections: read from elsewhere (the mirrors), written here
    def rest(self, name: str) -> None:
        """Close Lite's copy of the collection now, and again REST_AFTER_S after the calls that open it next.

        Lite holds an open collection whole in memory: every segment read into Arrow (0.43 GB at 100k x
        1,012-d), and Arrow's pool keeps 0.7 GB more of the read until released. Closing it is what closing the
        file does (the write-ahead log flushed first); the next call on it opens it again (about 1 s at that size)."""
        with self.lock:
            self._resting[name] = time.monotonic()
            self._close(name)
        release_arrow()

    def touched(self, name: str) -> None:
        """A call on the collection was made (under the lock): if it opened a resting one, it closes again when idle."""
        if name not in self._resting:
            return
        self._resting[name] = time.monotonic()
        if name in self._closed:
            self._closed.discard(name)
            release_arrow()  # opening it read every segment through Arrow's pool
        self._arm()

    def forget(self, name: str) -> None:
        """The collection is dropped."""
        self._resting.pop(name, None)
        self._closed.discard(name)

    def _close(self, name: str) -> None:
        try:
            from milvus_lite.db import DEFAULT_DATABASE_NAME

            col = self.db._collections.pop((DEFAULT_DATABASE_NAME, name), None)  # as drop_collection closes one
        except (AttributeError, ImportError):
            log.warning("this Milvus Lite cannot close one collection: it keeps %s in memory", name, exc_info=True)
            self._resting.pop(name, None)
            return
        self._closed.add(name)
        try:
            if col is not None:
                col.close()
        except Exception:  # it is out of Lite's cache all the same; opening it again replays its write-ahead log
            log.warning("closing Milvus Lite's copy of %s", name, exc_info=True)

    def _arm(self) -> None:
        open_ = [t for n, t in self._resting.items() if n not in self._closed]
        if self._timer is None and open_ and not self._stopped:
            self._timer = threading.Timer(max(0.0, min(open_) + REST_AFTER_S - time.monotonic()), self._rest_idle)
            self._timer.daemon = True
            self._timer.start()

    def _rest_idle(self) -> None:
        with self.lock:
            self._timer = None
            if self._stopped:
                return
            now = time.monotonic()
            idle = [n for n, t in self._resting.items() if n not in self._closed and now - t >= REST_AFTER_S]
            for name in idle:
                self._close(name)
            self._arm()
        if idle:
            release_arrow()

    def rows(self, name: str, vector_field: str | None, batch_size: int,
             below: str | None = None) -> Iterator[tuple[list[str], np.ndarray | None]] | None:
        """Every live row of collection `name` (with `below`, those whose primary key sorts before it) as (primary
        keys, their vectors as one float32 array, or None without `vector_field`), a batch at a time in primary-key
        order: what pymilvus's query iterator gives, read from Lite's engine in this process.

        Through gRPC every page of that iterator costs Lite a pass over the whole collection (it stacks all its
        vectors and sorts all its keys again) and pymilvus a Python float per number: 40 s for 100k 1,012-d
        vectors, and 0.8 GB more at the peak. Here: one pass, and a numpy copy of each batch's rows.

        It uses Lite's read path (segments, MemTable, tombstones and upserts resolved as its own queries do it),
        which is not public API: None when this Lite has no such path, and the caller uses the iterator."""
        try:
            from milvus_lite.search.bitmap import build_valid_mask

            col = self.db.get_collection(name)
            segments, tombstones = col._read_snapshot()
            memtable = col._memtable
            pks: list = []
            seqs, sources = [], []  # sources: each part's vectors, or None
            for seg in segments:
                if seg.num_rows:
                    pks += seg.pks
                    seqs.append(np.asarray(seg.seqs, np.uint64))
                    sources.append(seg.vector_data(vector_field)[0] if vector_field else None)
            mt_pks, mt_seqs, mt_vecs, _, _ = memtable.to_search_snapshot(vector_field=vector_field)
            if mt_pks:
                pks += mt_pks
                seqs.append(np.asarray(mt_seqs, np.uint64))
                sources.append(np.asarray(mt_vecs, np.float32).reshape(len(mt_pks), -1) if vector_field else None)
            live = np.flatnonzero(build_valid_mask(pks, np.concatenate(seqs or [np.zeros(0, np.uint64)]), tombstones,
                                                   memtable=memtable)).tolist()
        except (AttributeError, ImportError, TypeError):  # another Lite's internals
            log.warning("this Milvus Lite has no read path the sidecar knows: reading %s through its query iterator",
                        name, exc_info=True)
            return None
        if below is not None:
            live = [i for i in live if pks[i] < below]
        live.sort(key=pks.__getitem__)
        return _batches(pks, live, sources, np.cumsum([0] + [len(s) for s in seqs]), batch_size)


def _arrow_pool() -> None:
    """Lite reads whole Parquet files through Arrow (1.1 GB at once to read 0.4 GB of vectors). Arrow's default
    pool, mimalloc, keeps what each of its reading threads freed, and release_unused gives back only the calling
    thread's: in 3 of 4 runs of the query benchmark 0.6 to 1 GB stayed. jemalloc with no decay gives pages back as
    they are freed (in each of 3 runs, 0.15 GB more held than mimalloc's good runs)."""
    import pyarrow

    try:
        pool = pyarrow.jemalloc_memory_pool()
        pyarrow.jemalloc_set_decay_ms(0)
    except NotImplementedError:  # a pyarrow built without it
        return
    pyarrow.set_memory_pool(pool)


def release_arrow() -> None:
    """What Arrow's pool still keeps of the pages freed since (Lite's reads), given back."""
    import pyarrow

    pyarrow.default_memory_pool().release_unused()


def _batches(pks: list, rows: list[int], sources: list, starts: np.ndarray, size: int) -> Iterator[tuple[list, np.ndarray | None]]:
    """`rows` (indices into `pks`), `size` at a time, with their vectors from the part each lies in (parts begin
    at `starts`)."""
    for b in range(0, len(rows), size):
        idx = np.asarray(rows[b : b + size], np.int64)
        if sources and sources[0] is None:
            yield [pks[i] for i in idx], None
            continue
        part = np.searchsorted(starts, idx, side="right") - 1
        out = np.empty((len(idx), sources[0].shape[1]), np.float32)
        for p in np.unique(part):
            at = part == p
            out[at] = sources[p][idx[at] - starts[p]]
        yield [pks[i] for i in idx], out


def _grpc_server(db):
    """Lite's gRPC service over `db`, as Lite builds it, plus a keepalive policy that admits pymilvus's pings
    (every 10 s, even when idle): with gRPC's default policy the server answers them with GOAWAY
    "too_many_pings", and a call in flight at that moment fails."""
    from concurrent import futures

    import grpc
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from pymilvus.grpc_gen import milvus_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=[
        ("grpc.max_receive_message_length", 256 << 20),
        ("grpc.max_send_message_length", 256 << 20),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.http2.max_ping_strikes", 0),
    ])
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
    return server


def _private_folder(wanted: Path) -> Path:
    """A fresh 0700 folder for the socket: `wanted` when its socket path fits the OS limit (108 bytes on
    Linux), else a private temporary folder."""
    if len(str(wanted / "grpc.sock")) < 100:
        shutil.rmtree(wanted, ignore_errors=True)  # left by a killed process (this one holds the lock now)
        wanted.mkdir(mode=0o700)
        os.chmod(wanted, 0o700)  # mkdir's mode is masked by the umask
        return wanted
    return Path(tempfile.mkdtemp(prefix="sidecar-milvus-"))
