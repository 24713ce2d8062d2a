"""Milvus Lite, served privately: the embedded default vector store's server, on a Unix socket only this user
can reach (see LiteServer)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class LiteError(RuntimeError):
    pass


class LiteServer:
    """A Milvus Lite file served on a Unix socket that only this user can reach.

    Given a `*.db` URI, pymilvus starts Lite's gRPC server on a random loopback TCP port with no
    authentication, where any local user could read or delete the vectors. Here the same server listens
    only on a socket inside a 0700 folder, and pymilvus connects to it as `unix:<path>`.
    """

    def __init__(self, path: Path):
        from milvus_lite.db import MilvusLite

        path.parent.mkdir(parents=True, exist_ok=True)
        # Lite's in-process gRPC server logs an error for AllocTimestamp, which pymilvus 3 calls and Lite
        # does not implement; the client falls back by itself, so the traceback is noise.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)
        logging.getLogger("pymilvus").setLevel(logging.ERROR)  # "failed to get mvccTs": the same fallback
        self.server, self.folder = None, None
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
        for stop in (lambda: self.server and self.server.stop(grace=2), self.db.close):
            try:
                stop()
            except Exception:  # best effort: process exit releases the lock too
                log.debug("closing Milvus Lite", exc_info=True)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


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
