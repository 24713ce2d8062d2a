"""An embedded durable event log: one SQLite file, no server, for one machine.

Layout: one partition (0). `events.seq` is SQLite's AUTOINCREMENT rowid (1, 2, ...); the offset a consumer
sees is `seq - 1`, so offsets start at 0 as in Kafka, and a committed offset ("the next offset to read")
equals the seq of the last event read.

Durability: WAL journal with synchronous=FULL, and every publish, commit and dead letter is its own
committed transaction before the call returns, so it survives SIGKILL of the process (and power loss).

Several processes may open the same file (the server consumes while an operator CLI publishes): writers
take SQLite's write lock (busy_timeout waits for it), and consumers poll the file every `poll_interval_s`
(one indexed query) and also wake at once on publishes made through the same EmbeddedBus object.

All SQLite work runs on one dedicated thread with its own connection, off the event loop. Concurrent
publishes are committed together (group commit) in call order.

Not Kafka: there is no group membership. Two members of one group opened at the same time both read the
partition from the group's committed offset; run one member per group.
"""
from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from sidecar.pipeline.bus.base import Consumer, Delivery, EventBus

PARTITION = 0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    key   BLOB,
    value BLOB NOT NULL,
    ts    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS group_offsets (
    grp         TEXT PRIMARY KEY,
    next_offset INTEGER NOT NULL,
    ts          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    src_partition INTEGER,
    src_offset    INTEGER,
    key           BLOB,
    value         BLOB NOT NULL,
    reason        TEXT NOT NULL,
    ts            REAL NOT NULL
);
"""


class EventLogClosedError(RuntimeError):
    pass


class EmbeddedBus(EventBus):
    def __init__(self, path: Path | str, *, poll_interval_s: float = 0.15, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.poll_interval_s = poll_interval_s
        self.busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used only on the executor's thread
        self._pending: list[tuple[bytes | None, bytes, asyncio.Future]] = []
        self._flusher: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._started = False
        self._closed = False

    # -- plumbing -------------------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise EventLogClosedError(f"event log {self.path} is not open")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _check_open(self) -> None:
        if not self._started or self._closed:
            raise EventLogClosedError(f"event log {self.path} is not open (call start() first)")

    def _notify(self) -> None:
        """Wake every consumer waiting in getmany (in this process)."""
        ev, self._wakeup = self._wakeup, asyncio.Event()
        if ev is not None:
            ev.set()

    # Everything below named _db_* runs on the executor thread.

    def _db_open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout_s, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise RuntimeError(f"event log {self.path}: could not enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _db_close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _db_tx(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    def _db_append(self, batch: list[tuple[bytes | None, bytes]]) -> None:
        now = time.time()
        self._db_tx(lambda c: c.executemany(
            "INSERT INTO events (key, value, ts) VALUES (?, ?, ?)", [(k, v, now) for k, v in batch]
        ))

    def _db_read(self, position: int, limit: int) -> list[tuple[int, bytes | None, bytes]]:
        assert self._conn is not None
        return self._conn.execute(
            "SELECT seq - 1, key, value FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (position, limit)
        ).fetchall()

    def _db_end(self) -> int:
        """The offset the next published event will get (= last offset + 1)."""
        assert self._conn is not None
        return self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]

    def _db_begin(self) -> int:
        assert self._conn is not None
        row = self._conn.execute("SELECT MIN(seq) - 1 FROM events").fetchone()
        return row[0] if row[0] is not None else self._db_end()

    def _db_committed(self, group: str) -> int | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT next_offset FROM group_offsets WHERE grp = ?", (group,)).fetchone()
        return None if row is None else row[0]

    def _db_commit(self, group: str, next_offset: int) -> None:
        self._db_tx(lambda c: c.execute(
            "INSERT INTO group_offsets (grp, next_offset, ts) VALUES (?, ?, ?) "
            "ON CONFLICT(grp) DO UPDATE SET next_offset = excluded.next_offset, ts = excluded.ts",
            (group, next_offset, time.time()),
        ))

    def _db_dead_letter(self, d: Delivery, reason: str) -> None:
        self._db_tx(lambda c: c.execute(
            "INSERT INTO dead_letters (src_partition, src_offset, key, value, reason, ts) VALUES (?, ?, ?, ?, ?, ?)",
            (d.partition, d.offset, d.key, bytes(d.value), reason, time.time()),
        ))

    def _db_dead_letters(self, limit: int) -> list[tuple[bytes, str]]:
        assert self._conn is not None
        rows = self._conn.execute(
            "SELECT value, reason FROM (SELECT id, value, reason FROM dead_letters ORDER BY id DESC LIMIT ?) "
            "ORDER BY id",
            (limit,),
        ).fetchall()
        return [(bytes(v), r) for v, r in rows]

    # -- EventBus ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self._closed:
            raise EventLogClosedError(f"event log {self.path} was closed; make a new EmbeddedBus")
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="event-log")
        try:
            await self._run(self._db_open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise
        self._started = True

    async def close(self) -> None:
        if self._closed or not self._started:
            self._closed = True
            return
        if self._flusher is not None:
            try:
                await self._flusher
            except BaseException:
                pass
        self._closed = True
        self._notify()
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._db_close)
            executor.shutdown(wait=True)

    async def publish_raw(self, key: bytes | None, value: bytes) -> None:
        self._check_open()
        self.check_size(key, value)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((None if key is None else bytes(key), bytes(value), fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_pending())
        await fut

    async def _flush_pending(self) -> None:
        """Commit every pending publish, in call order, a batch per transaction."""
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._run(self._db_append, [(k, v) for k, v, _ in batch])
            except asyncio.CancelledError:
                for *_, fut in batch + self._pending:
                    fut.cancel()
                self._pending = []
                raise
            except BaseException as e:
                for *_, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for *_, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            self._notify()

    def consumer(self, group: str, *, from_beginning: bool = True) -> "EmbeddedConsumer":
        return EmbeddedConsumer(self, group, from_beginning=from_beginning)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._check_open()
        await self._run(self._db_dead_letter, delivery, reason)

    async def dead_letters(self, limit: int = 100) -> list[tuple[bytes, str]]:
        self._check_open()
        if limit <= 0:
            return []
        return await self._run(self._db_dead_letters, limit)


class EmbeddedConsumer(Consumer):
    def __init__(self, bus: EmbeddedBus, group: str, *, from_beginning: bool = True):
        self._bus = bus
        self.group = group
        self.from_beginning = from_beginning
        self._position: int | None = None  # next offset to read
        self._start_position = 0  # stands for the committed offset until the group commits

    def _check(self) -> int:
        if self._position is None:
            raise RuntimeError(f"consumer for group {self.group!r} is not started")
        self._bus._check_open()
        return self._position

    async def start(self) -> None:
        bus = self._bus
        bus._check_open()
        committed = await bus._run(bus._db_committed, self.group)
        if committed is not None:
            self._start_position = committed
        elif self.from_beginning:
            self._start_position = await bus._run(bus._db_begin)
        else:
            self._start_position = await bus._run(bus._db_end)
        self._position = self._start_position

    async def close(self) -> None:
        self._position = None

    async def getmany(self, timeout_s: float = 1.0, max_records: int = 100) -> list[Delivery]:
        bus = self._bus
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        while True:
            position = self._check()
            wakeup = bus._wakeup  # taken before the query, so a publish in between still wakes us
            rows = await bus._run(bus._db_read, position, max(1, max_records))
            if self._position != position:  # closed or sought meanwhile
                if self._position is None:
                    return []
                continue
            if rows:
                self._position = rows[-1][0] + 1
                return [Delivery(PARTITION, off, None if k is None else bytes(k), bytes(v)) for off, k, v in rows]
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            assert wakeup is not None
            try:
                await asyncio.wait_for(wakeup.wait(), min(remaining, bus.poll_interval_s))
            except asyncio.TimeoutError:
                pass

    async def commit(self, offsets: dict[int, int]) -> None:
        self._check()
        if not offsets:
            return
        bad = set(offsets) - {PARTITION}
        if bad:
            raise ValueError(f"the embedded event log has only partition {PARTITION}; got {sorted(bad)}")
        await self._bus._run(self._bus._db_commit, self.group, int(offsets[PARTITION]))

    async def seek_to_beginning(self) -> None:
        self._check()
        self._position = await self._bus._run(self._bus._db_begin)

    async def lag(self) -> int:
        self._check()
        bus = self._bus
        end = await bus._run(bus._db_end)
        committed = await bus._run(bus._db_committed, self.group)
        base = committed if committed is not None else self._start_position
        return max(0, end - base)
