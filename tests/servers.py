"""What the tests' real servers (Tansu, PostgreSQL, Milvus, the sidecar itself) share: a free port, a readiness
probe, the tail of a log for an error message, and dying with the test process."""
from __future__ import annotations

import shutil
import signal
import socket
import sys
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


def die_with_parent(cmd: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """`cmd`, made to get `sig` when the test process dies, even by SIGKILL (Linux: util-linux's setpriv sets
    PR_SET_PDEATHSIG and execs it, so the pid is the server's). Not a preexec_fn: Python code between fork and
    exec can deadlock in a process with threads (gRPC's, Milvus Lite's), and did (a moto_server child hung
    before exec, a test failed at set-up). Elsewhere `cmd` as it is: the fixtures stop their servers anyway."""
    setpriv = shutil.which("setpriv")
    if not sys.platform.startswith("linux") or setpriv is None:
        return cmd
    return [setpriv, f"--pdeathsig={signal.Signals(sig).name}", "--", *cmd]
