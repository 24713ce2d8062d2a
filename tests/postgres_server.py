"""A real PostgreSQL server for tests: Debian's `postgresql` package, one throw-away cluster per session.

Fixtures:
- `postgres_server` (session): a running PostgresServer (initdb + postgres on a free 127.0.0.1 port, its Unix
  socket in its own folder). `.url` is a libpq URI of a database made for the session.
- `postgres_url` (session): that URI, "postgresql://postgres@127.0.0.1:PORT/sidecar_test".
- `postgres_db`: a fresh, empty database for one test (dropped after it), so tests never see each other's rows.

The binaries come from the newest /usr/lib/postgresql/*/bin (or $PG_BIN_DIR). initdb, pg_ctl and postgres
refuse to run as root, so under root they run as Debian's `postgres` user, in a temp folder owned by it.
postgres runs in the foreground as our child (not daemonised by `pg_ctl start`), so that PR_SET_PDEATHSIG
ends it even when pytest is killed. Stop: `pg_ctl stop -m immediate`, then SIGKILL by PID.
Missing binaries or psycopg skip these tests, except under CI (CI=true), where a skip would hide a broken
set-up: there they fail.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.servers import die_with_parent, free_port, tail

_START_TIMEOUT_S = 60.0
_SUPERUSER = "postgres"  # the cluster's superuser (trust auth: tests on 127.0.0.1 only)
_SERVICE_USER = "postgres"  # the OS user the server runs as when we are root (Debian's package creates it)


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (Debian puts each major version in its own)."""
    if os.environ.get("PG_BIN_DIR"):
        path = Path(os.environ["PG_BIN_DIR"])
        return path if (path / "initdb").is_file() else None
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").is_file()]
    found.sort(key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    return found[-1] if found else None


def _missing(reason: str):
    """Skip locally; fail under CI, where a missing server means a broken install step."""
    if os.environ.get("CI"):
        pytest.fail(reason + " (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


class PostgresServer:
    """One PostgreSQL cluster in a temp folder. start() / stop(); new_database() for a fresh empty database."""

    def __init__(self, base_dir: Path | None = None):
        self.bin = pg_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed: apt-get install -y --no-install-recommends postgresql")
        # As root, run everything as `postgres`: initdb/pg_ctl/postgres exit with "cannot be run as root".
        self.run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.run_as = pwd.getpwnam(_SERVICE_USER)
            except KeyError:
                raise RuntimeError(f"running as root, but there is no {_SERVICE_USER!r} user to run PostgreSQL as") from None
        # Not under pytest's tmp dir: that is mode 0700 and owned by us, so `postgres` could not enter it.
        self.base = Path(base_dir) if base_dir else Path(tempfile.mkdtemp(prefix="pg-test-"))
        self.data_dir = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.log_path = self.base / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.url = ""

    # -- helpers -------------------------------------------------------------------------------------------
    def _popen_kwargs(self) -> dict:
        kw: dict = {"cwd": self.base, "stdin": subprocess.DEVNULL}
        if self.run_as is not None:
            kw.update(user=self.run_as.pw_uid, group=self.run_as.pw_gid, extra_groups=[],
                      env=dict(os.environ, HOME=str(self.base), USER=_SERVICE_USER, LOGNAME=_SERVICE_USER))
        return kw

    def _run(self, *args: str, timeout: float = 60) -> None:
        """Run a PostgreSQL tool (as `postgres` under root); its output goes to the log."""
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(args)}\n".encode())
            log.flush()
            rc = subprocess.run([str(self.bin / args[0]), *args[1:]], stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout, **self._popen_kwargs()).returncode
        if rc != 0:
            raise RuntimeError(f"{args[0]} exited {rc}; log {self.log_path}:\n{tail(self.log_path)}")

    def connect(self, dbname: str = "postgres", **kw):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user=_SUPERUSER, dbname=dbname, **kw)

    def uri(self, dbname: str) -> str:
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # -- life cycle ----------------------------------------------------------------------------------------
    def start(self, dbname: str = "sidecar_test") -> str:
        """initdb (once), start postgres, wait until psycopg can connect, create `dbname`; returns its URI."""
        t0 = time.monotonic()
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.touch()
        if self.run_as is not None:
            for p in (self.base, self.socket_dir, self.log_path):
                os.chown(p, self.run_as.pw_uid, self.run_as.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            # trust auth, no locale fuss (C.UTF-8 exists everywhere), no fsync of the fresh cluster
            self._run("initdb", "-D", str(self.data_dir), "-U", _SUPERUSER, "--auth=trust", "--encoding=UTF8",
                      "--locale=C.UTF-8", "--no-sync", timeout=120)
        problems: list[str] = []
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    die_with_parent([str(self.bin / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                     "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.socket_dir}",
                     # durability is worthless in a throw-away test cluster; speed is not
                     "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                     "-c", "max_connections=100", "-c", "shared_buffers=32MB"], signal.SIGQUIT),
                    stdout=log, stderr=subprocess.STDOUT, **self._popen_kwargs(),
                )
            if self._wait_ready(problems):
                break
            self._kill()
        else:
            raise RuntimeError(f"PostgreSQL did not start; log {self.log_path}:\n" + "\n".join(problems[-3:])
                               + "\n" + tail(self.log_path))
        self.create_database(dbname)
        self.url = self.uri(dbname)
        self.start_seconds = time.monotonic() - t0
        return self.url

    def _wait_ready(self, problems: list[str]) -> bool:
        """Ready = a real psycopg connection runs SELECT 1 (the port accepting is not enough during recovery)."""
        deadline = time.monotonic() + _START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                problems.append(f"postgres exited {self.proc.returncode} (port {self.port} taken?)")
                return False
            try:
                with self.connect(connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return True
            except Exception as e:  # noqa: BLE001 - not up yet
                last = repr(e)
            time.sleep(0.05)
        problems.append(f"no connection within {_START_TIMEOUT_S} s: {last}")
        return False

    def create_database(self, name: str) -> str:
        from psycopg import sql

        with self.connect(autocommit=True) as conn:  # CREATE DATABASE cannot run in a transaction
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.uri(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect(autocommit=True) as conn:  # FORCE (PostgreSQL 13+): a test may leave a connection open
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def new_database(self) -> tuple[str, str]:
        """A fresh empty database: (name, URI)."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        return name, self.create_database(name)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL, as root or as the same user: both may signal the server
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Immediate shutdown (no checkpoint: nothing here is worth keeping), SIGKILL if that hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-t", "10", timeout=20)
            except Exception:  # noqa: BLE001 - fall back to the PID
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL for the whole session (PostgresServer; .url is its session database)."""
    if pg_bin_dir() is None:
        _missing("PostgreSQL is not installed (apt-get install -y --no-install-recommends postgresql)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed (pip install 'psycopg[binary]>=3.1')")
    server = PostgresServer()
    try:
        server.start()
    except Exception:
        server.stop()  # keep the folder: the error names its log
        raise
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """libpq URI of the session's database: postgresql://postgres@127.0.0.1:PORT/sidecar_test."""
    return postgres_server.url


@pytest.fixture
def postgres_db(postgres_server):
    """libpq URI of a fresh, empty database for this test; dropped afterwards."""
    name, url = postgres_server.new_database()
    try:
        yield url
    finally:
        postgres_server.drop_database(name)
