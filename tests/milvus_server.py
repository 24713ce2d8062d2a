"""A real Milvus standalone server for tests: the binary inside the PyPI package `milvus` (2.3.5, "embedded
Milvus"), with embedded etcd, local storage and rocksmq, so nothing else is needed.

Fixtures:
- `milvus_server` (session): a running MilvusStandalone; `.uri` is "http://127.0.0.1:PORT".
- `milvus_uri` (session): that URI, for MilvusClient(uri=...).
- `unique_collection`: a factory of fresh collection names (letters, digits, underscores only), so that tests
  sharing the server never see each other's data.

Why not the package's own MilvusServer class: it chdir()s the test process, scans for ports from fixed
starting points (19530, 9091...) and leaves the embedded etcd on the fixed ports 2379/2380, so two servers on
one machine clash. Here the config is rendered from the package's template with a free port for everything
(etcd through an etcd.config.path file), and the process is ours to kill. The binary still keeps a pid file
in /run/milvus (or /tmp/milvus) and server_id_PID files in /tmp/milvus: hard-coded, see _check_runtime_dir.

Milvus 2.3.5 quirks (see the report / FACTS.md): SIGTERM starts a "graceful stop" that waits for query nodes
that a standalone server never has (minutes): stop with SIGKILL, which loses nothing (even unflushed rows
come back from its rocksmq log when it starts again on the same folder; reuse the same MilvusStandalone so the
ports stay the same, and call load_collection() again: collections come back "Loading" and refuse queries).
Collections default to Bounded consistency: reads right after a write may not see it; create test
collections with consistency_level="Strong".
"""
from __future__ import annotations

import fcntl
import importlib.metadata
import importlib.util
import lzma
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.servers import die_with_parent, free_port, tail

REPO = Path(__file__).resolve().parents[1]
_START_TIMEOUT_S = 120.0  # about 2-5 s here; a loaded 2-core CI machine can be much slower


def milvus_package_dir() -> Path | None:
    """The installed `milvus` package's folder (found without importing it: its import builds server objects)."""
    spec = importlib.util.find_spec("milvus")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent
    return path if (path / "data" / "bin" / "milvus.lzma").is_file() else None


def _missing(reason: str):
    """Skip locally; fail under CI, where a missing server means a broken install step."""
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def milvus_binaries(pkg: Path, cache: Path | None = None) -> Path:
    """The server binary and its libraries, unpacked once from the wheel's .lzma files (57 MB -> 246 MB, about
    6 s) into .cache/milvus-server-VERSION/bin; later sessions reuse them. A lock keeps parallel runs apart."""
    version = importlib.metadata.version("milvus")
    root = cache or REPO / ".cache" / f"milvus-server-{version}"
    bindir = root / "bin"
    done = root / "unpacked"
    if done.is_file():
        return bindir
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            tmp = root / "bin.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            for packed in (pkg / "data" / "bin").glob("*.lzma"):
                target = tmp / packed.name[: -len(".lzma")]
                with lzma.open(packed) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                target.chmod(0o755)
            shutil.rmtree(bindir, ignore_errors=True)
            tmp.rename(bindir)
            done.write_text(version)
    return bindir


# Hard-coded in the binary: a pid file in /run/milvus, or /tmp/milvus where that is not writable (non-root),
# and server_id_PID files always in /tmp/milvus. TMPDIR and MILVUS_RUN_DIR change neither.
_RUNTIME_DIRS = ("/run/milvus", "/tmp/milvus")
_RUNTIME_FALLBACK = "/tmp/milvus"


def _check_runtime_dir() -> None:
    """Fail clearly where the binary would exit(-1): neither runtime folder writable (say /tmp/milvus left by
    root and the tests now run as another user)."""
    for d in _RUNTIME_DIRS:
        path = Path(d)
        if (path.is_dir() and os.access(path, os.W_OK | os.X_OK)) or (
            not path.exists() and os.access(path.parent, os.W_OK | os.X_OK)
        ):
            return
    raise RuntimeError("Milvus needs a writable /run/milvus or /tmp/milvus; /tmp/milvus belongs to another user "
                       "(remove it, or chmod 1777 it)")


def _share_runtime_dir() -> None:
    """As root, leave /tmp/milvus (which the binary made, mode 755) sticky and world-writable like /tmp, so that
    a later run as another user on this machine can still start Milvus; the files in it have unique names."""
    path = Path(_RUNTIME_FALLBACK)
    try:
        if os.geteuid() == 0 and path.is_dir() and path.stat().st_uid == 0:
            path.chmod(0o1777)
    except OSError:
        pass


class MilvusStandalone:
    """One Milvus standalone server with its data in `base_dir`. start() / kill(); start() again (same object:
    same folder and ports) keeps the collections and takes about 10 s."""

    def __init__(self, base_dir: Path, port: int | None = None):
        pkg = milvus_package_dir()
        if pkg is None:
            raise RuntimeError("the `milvus` package is not installed (pip install milvus==2.3.5)")
        self.pkg = pkg
        self.base = Path(base_dir)
        self.port = port or 0
        self.uri = ""
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "logs" / "milvus.log"
        # Internal ports are kept for restarts: the components find each other through sessions stored in etcd,
        # and after a SIGKILL the old ones (old addresses) live on until their 30 s lease ends.
        self._ports: dict[str, int] = {}

    def _port(self, key: str) -> int:
        if key not in self._ports:
            self._ports[key] = free_port()
        return self._ports[key]

    def _render_config(self) -> tuple[Path, int]:
        """milvus.yaml from the package's template: every port free, data and logs under base. Returns the
        config folder and the health-check (metrics) port."""
        conf = self.base / "configs"
        for sub in ("configs", "logs", "data"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        data, logs = self.base / "data", self.base / "logs"
        paths = {
            "etcd_data_dir": data / "etcd.data", "local_storage_dir": data, "rocksmq_data_dir": data / "rocksmq",
            "system_log_path": logs, "etcd_log_path": logs / "etcd.log",
        }

        def fill(m: re.Match) -> str:  # "{{ key(type): default }}"
            key, _, default = m.group(1).partition(":")
            key = key.split("(")[0].strip()
            if key == "proxy_port":
                return str(self.port)
            if key.endswith("_port"):
                return str(self._port(key))
            return str(paths[key]) if key in paths else default.strip()

        text = re.sub(r"\{\{(.*?)\}\}", fill, (self.pkg / "data" / "config.yaml.template").read_text())
        text = text.replace("  ip: #", "  ip: 127.0.0.1 #")  # advertise 127.0.0.1 (the gRPC ports still bind *)
        # A Strong read waits for the next time tick: 50 ms instead of 200 makes each one about 0.1 s, not 0.4 s
        text = text.replace("  timeTickInterval: 200 #", "  timeTickInterval: 50 #", 1)
        # Embedded etcd ignores etcd.endpoints and binds 2379/2380 unless given a config file of its own.
        client, peer = self._port("etcd_client"), self._port("etcd_peer")
        (conf / "etcd.yaml").write_text(
            f"listen-client-urls: http://127.0.0.1:{client}\nadvertise-client-urls: http://127.0.0.1:{client}\n"
            f"listen-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
            f"initial-cluster: default=http://127.0.0.1:{peer}\n"
        )
        text = re.sub(r"(\n  endpoints: )localhost:\d+", rf"\g<1>127.0.0.1:{client}", text, count=1)
        text = text.replace("\n  use:\n    embed: true",
                            f"\n  config:\n    path: {conf / 'etcd.yaml'}\n  use:\n    embed: true", 1)
        if f"path: {conf / 'etcd.yaml'}" not in text:
            raise RuntimeError("the milvus config template changed: cannot set etcd.config.path")
        (conf / "milvus.yaml").write_text(text)
        shutil.copy(self.pkg / "data" / "glog.conf", conf / "glog.conf")  # the binary exits without it
        return conf, self._port("metrics")

    def start(self) -> str:
        """Start the server and wait until a MilvusClient can list collections; returns the URI."""
        bindir = milvus_binaries(self.pkg)
        _check_runtime_dir()
        problems: list[str] = []
        fixed_port = self.port
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = fixed_port or free_port()
            _conf, metrics_port = self._render_config()
            env = dict(
                os.environ,
                DEPLOY_MODE="STANDALONE", METRICS_PORT=str(metrics_port),  # METRICS_PORT also serves /healthz
                LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(bindir), os.environ.get("LD_LIBRARY_PATH")])),
            )
            t0 = time.monotonic()
            with open(self.log_path, "ab") as log:
                # cwd = base: it reads configs/milvus.yaml relative to the working directory
                self.proc = subprocess.Popen(
                    # -alias: its pid file becomes /run/milvus/standalone-ALIAS.pid, one per server
                    die_with_parent([str(bindir / "milvus"), "run", "standalone", "-alias", f"test{self.port}"], signal.SIGKILL),
                    cwd=self.base, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                )
            if self._wait_ready(metrics_port, problems):
                self.start_seconds = time.monotonic() - t0
                _share_runtime_dir()
                self.uri = f"http://127.0.0.1:{self.port}"
                return self.uri
            self.kill()
            self._ports.clear()  # maybe one was taken meanwhile: choose them all again
        raise RuntimeError(f"Milvus did not start; log {self.log_path}:\n" + "\n".join(problems[-3:])
                           + "\n" + tail(self.log_path))

    def _wait_ready(self, metrics_port: int, problems: list[str]) -> bool:
        """/healthz says OK a moment before the proxy serves requests: also wait for list_collections()."""
        from pymilvus import MilvusClient

        deadline = time.monotonic() + _START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                problems.append(f"milvus exited {self.proc.returncode} (a port taken?)")
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/healthz", timeout=2) as r:
                    healthy = b"OK" in r.read()
            except OSError as e:
                healthy, last = False, repr(e)
            if healthy:
                try:
                    client = MilvusClient(uri=f"http://127.0.0.1:{self.port}", timeout=5)
                    try:
                        client.list_collections()
                        return True
                    finally:
                        client.close()
                except Exception as e:  # noqa: BLE001 - not serving yet
                    last = repr(e)
            time.sleep(0.2)
        problems.append(f"not ready within {_START_TIMEOUT_S} s: {last}")
        return False

    def kill(self) -> None:
        """SIGKILL: its SIGTERM handler waits minutes for a graceful stop. Flushed and logged data survive."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            for leftover in (Path(_RUNTIME_FALLBACK) / f"server_id_{self.proc.pid}",
                             *(Path(d) / f"standalone-test{self.port}.pid" for d in _RUNTIME_DIRS)):
                leftover.unlink(missing_ok=True)  # SIGKILL leaves them; tiny, but they pile up
            self.proc = None

    stop = kill


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """A running Milvus standalone server for the whole session (MilvusStandalone; .uri)."""
    if milvus_package_dir() is None:
        _missing("the `milvus` package (Milvus standalone binary) is not installed (pip install milvus==2.3.5)")
    base = tmp_path_factory.mktemp("milvus")
    server = MilvusStandalone(base)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        # the data folder is about 280 MB even when nearly empty (etcd and rocksmq preallocate): drop it
        # unless the server failed, when its log is wanted
        if server.uri:
            shutil.rmtree(base / "data", ignore_errors=True)


@pytest.fixture(scope="session")
def milvus_uri(milvus_server) -> str:
    """"http://127.0.0.1:PORT" of the session's Milvus server."""
    return milvus_server.uri


@pytest.fixture
def unique_collection():
    """Factory of fresh collection names: unique_collection("tracks") -> "tracks_3f9c0a1b2c3d"."""
    return lambda prefix="c": f"{prefix}_{uuid.uuid4().hex[:12]}"
