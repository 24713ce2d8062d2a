"""Run the real `sidecar serve` as a subprocess, as a user would, and talk to it over HTTP."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.servers import free_port


class SidecarProcess:
    """`sidecar serve` by default; `command` runs another role ("worker", "api", or with flags: ["worker", "--watch"])."""

    def __init__(self, music_dir: Path, data_dir: Path, models_dir: Path, log_path: Path, *, command: str | list[str] = "serve", **env: str):
        self.command = [command] if isinstance(command, str) else list(command)
        self.port = free_port()
        self.log_path = log_path
        self.env = dict(
            os.environ,
            SIDECAR_MUSIC_DIR=str(music_dir),
            SIDECAR_DATA_DIR=str(data_dir),
            SIDECAR_PORT=str(self.port),
            SIDECAR_DEBOUNCE_S="0.5",
            PYTHONUNBUFFERED="1",
            **env,
        )
        # share the prepared weights instead of converting them again for every data dir
        (data_dir).mkdir(parents=True, exist_ok=True)
        if not (data_dir / "models").exists():
            (data_dir / "models").symlink_to(models_dir)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> "SidecarProcess":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sidecar.cli", *self.command], env=self.env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.get("/health")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"sidecar did not answer within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def get(self, path: str, **params):
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def get_status(self, path: str, **params) -> tuple[int, dict]:
        try:
            return 200, self.get(path, **params)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    def wait_idle(self, timeout: float = 180) -> dict:
        """Until the start-up reconcile is done, nothing is in flight and the bus has no lag."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.get("/api/status")
            if st["ingest"]["idle"]:
                return st
            time.sleep(0.3)
        raise TimeoutError(f"not idle after {timeout} s:\n{self.log()}")

    def tracks(self) -> dict[str, dict]:
        """path -> track brief"""
        return {t["path"]: t for t in self.get("/api/tracks", limit=500)["tracks"]}

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
