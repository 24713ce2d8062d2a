"""What the tests' real servers (Tansu, PostgreSQL, Milvus, the sidecar itself) share: a free port, a readiness
probe, the tail of a log for an error message, and dying with the test process."""
from __future__ import annotations

import signal
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def die_with_parent(sig: int = signal.SIGTERM):
    """A preexec_fn: in the child, before exec, get `sig` when the test process dies, even by SIGKILL (Linux)."""

    def setup() -> None:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # PR_SET_PDEATHSIG
        except Exception:  # noqa: BLE001 - best effort; the fixtures stop their servers anyway
            pass

    return setup
