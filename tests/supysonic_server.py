"""A real Subsonic server for the tests: supysonic (a dev dependency, installed with `.[dev]`; nothing is
installed at test time), headless on SQLite, on a free 127.0.0.1 port.

Load it with `pytest_plugins = ["tests.supysonic_server"]` (or `-p tests.supysonic_server`). The session
fixture `supysonic` starts the web app (Flask's threaded server: supysonic ships no WSGI server of its own)
and `supysonic-daemon` (needed by startScan and getScanStatus), creates an admin user and a music folder
holding real music (excerpts from Debian's game soundtracks, in two sub-folders), scans it, and yields a
`SupysonicServer`. supysonic reads its configuration only from fixed places, so both processes run with HOME
and the working directory set to a private work folder holding supysonic.conf. They are stopped by PID.

Measured facts this relies on (../shared/FACTS.md): no token auth (use p= or enc:), createPlaylist returns
no id, scrobble changes no play count, song paths are relative to the music folder.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.servers import free_port

BIN = Path(sys.executable).parent
USER = "alice"
PASSWORD = "correct horse&battery"  # a space and an '&': must survive URL encoding, and never be logged


@dataclass
class SupysonicServer:
    url: str
    user: str
    password: str
    music: Path  # the server's music folder (song paths are relative to it)
    work: Path
    env: dict
    procs: list[subprocess.Popen] = field(default_factory=list)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(
            [str(BIN / "supysonic-cli"), *args], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=120,
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"supysonic-cli {' '.join(args)} failed: {r.stdout}{r.stderr}")
        return r

    def scan(self) -> str:
        """Scan the music folder in the foreground (blocks until done)."""
        return self.cli("folder", "scan", "-f").stdout

    def call(self, endpoint: str, **params) -> dict:
        """A Subsonic call straight over HTTP (independent of the adapter under test)."""
        query = [("u", self.user), ("p", self.password), ("v", "1.16.1"), ("c", "tests"), ("f", "json")]
        for k, v in params.items():
            for item in v if isinstance(v, (list, tuple)) else [v]:
                query.append((k, str(item)))
        with urllib.request.urlopen(f"{self.url}/rest/{endpoint}?{urllib.parse.urlencode(query)}", timeout=10) as r:
            return json.loads(r.read())["subsonic-response"]

    def log(self) -> str:
        return "".join((self.work / n).read_text(errors="replace") for n in ("web.log", "daemon.log") if (self.work / n).exists())

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def _wait(predicate, timeout: float, what: str, server: SupysonicServer) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in server.procs):
            break
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"supysonic: {what} did not happen in {timeout} s:\n{server.log()}")


def start_supysonic(work: Path, tracks: list[Path]) -> SupysonicServer:
    """Set up and start a server in `work` with `tracks` in its music folder (two sub-folders)."""
    work.mkdir(parents=True, exist_ok=True)
    music = work / "music"
    for i, t in enumerate(tracks):
        folder = music / ("first" if i % 2 == 0 else "second")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(t, folder / t.name)
    (work / "supysonic.conf").write_text(
        "[base]\n"
        f"database_uri = sqlite:///{work / 'supysonic.db'}\n"
        "[webapp]\n"
        f"cache_dir = {work / 'cache'}\n"
        "log_level = WARNING\n"
        "[daemon]\n"
        f"socket = {work / 'daemon.sock'}\n"
        "run_watcher = no\n"
        "wait_delay = 1\n"
        "log_level = WARNING\n"
        "[lastfm]\n[listenbrainz]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASK_", "SUPYSONIC"))}
    env.update(HOME=str(work), PYTHONUNBUFFERED="1")
    port = free_port()
    server = SupysonicServer(f"http://127.0.0.1:{port}", USER, PASSWORD, music, work, env)
    server.cli("user", "add", USER, "-p", PASSWORD)
    server.cli("user", "setroles", "-A", USER)  # admin: startScan and getScanStatus need it
    server.cli("folder", "add", "library", str(music))
    server.scan()
    with open(work / "daemon.log", "w") as dlog:
        server.procs.append(subprocess.Popen(
            [str(BIN / "supysonic-daemon")], cwd=work, env=env, stdout=dlog, stderr=subprocess.STDOUT,
        ))
    with open(work / "web.log", "w") as wlog:
        server.procs.append(subprocess.Popen(
            [str(BIN / "python"), "-m", "flask", "--app", "supysonic.web:create_application()", "run",
             "--host", "127.0.0.1", "--port", str(port), "--no-reload", "--no-debugger", "--with-threads"],
            cwd=work, env=env, stdout=wlog, stderr=subprocess.STDOUT,
        ))
    _wait(lambda: (work / "daemon.sock").exists(), 20, "the daemon's socket", server)
    _wait(lambda: server.call("ping")["status"] == "ok", 30, "an answer to ping", server)
    return server


@pytest.fixture(scope="session")
def supysonic(tmp_path_factory, excerpts) -> SupysonicServer:
    """A running supysonic with 6 real excerpts (first/ and second/ sub-folders), scanned."""
    server = start_supysonic(tmp_path_factory.mktemp("supysonic"), list(excerpts[:6]))
    yield server
    server.stop()
