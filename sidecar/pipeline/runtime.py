"""The bus consumer runtime: deliveries from a consumer group to an event handler.

Up to `concurrency` events are handled at once, one key's (one file's) events in order. An offset is
committed only once every event below it is done, so a crash anywhere makes the unfinished events come back.
An event too large or not valid becomes a dead letter with its reason; one the handler rejects too; an
unexpected error is retried with backoff, then dead-lettered.
"""
from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from pydantic import ValidationError

from schemas.events import LibraryEvent, decode_event
from sidecar import metrics
from sidecar.pipeline.bus import Consumer, Delivery, EventBus

log = logging.getLogger(__name__)
RETRIES = 3  # for unexpected errors (a store that is briefly away); then the event goes to the dead letters
Handler = Callable[[LibraryEvent], Awaitable[None]]


class Rejected(Exception):
    """An event that is valid JSON but must not be acted on (e.g. a path outside the music roots)."""


@dataclass
class IngestStats:
    processed: int = 0
    embedded: int = 0
    skipped: int = 0
    failed: int = 0
    current: str | None = None
    last_event_at: float | None = None


_STATS: contextvars.ContextVar[IngestStats] = contextvars.ContextVar("ingest_stats")  # the running consumer's counters


def stats() -> IngestStats:
    """The counters of the consumer this task works for (the live one, or a replay's)."""
    return _STATS.get()


@dataclass
class Offsets:
    """Which offsets may be committed: everything below the lowest one still in flight, per partition."""

    in_flight: dict[int, set[int]] = field(default_factory=lambda: defaultdict(set))
    next: dict[int, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)

    def start(self, d: Delivery) -> None:
        self.in_flight[d.partition].add(d.offset)
        self.next[d.partition] = max(self.next.get(d.partition, 0), d.offset + 1)

    def finish(self, d: Delivery) -> None:
        self.in_flight[d.partition].discard(d.offset)

    def to_commit(self) -> dict[int, int]:
        out = {}
        for p, nxt in self.next.items():
            upto = min(self.in_flight[p]) if self.in_flight[p] else nxt
            if self.committed.get(p) != upto:
                out[p] = upto
        return out


async def consume(
    bus: EventBus, consumer: Consumer, handle: Handler, stop: asyncio.Event, *, concurrency: int, stats: IngestStats,
    until_caught_up: bool = False, idle: asyncio.Event | None = None, on_progress: Callable[[IngestStats], None] | None = None,
) -> None:
    """Deliver events to `handle` until `stop` is set (or, with `until_caught_up`, the group has no lag). `idle`
    is set while nothing is in flight and the group has no lag. Counts go to `stats`."""
    _STATS.set(stats)  # this task's context, inherited by the tasks it starts
    offsets = Offsets()
    tasks: set[asyncio.Task] = set()
    last_of_key: dict[bytes | None, asyncio.Task] = {}
    limit = concurrency * 2  # one decoding while another runs the models

    async def commit() -> None:
        todo = offsets.to_commit()
        if todo:
            await consumer.commit(todo)
            offsets.committed.update(todo)

    try:
        while not stop.is_set():
            if len(tasks) >= limit:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                await commit()
                continue
            batch = await consumer.getmany(timeout_s=0.2, max_records=limit - len(tasks))
            for d in batch:
                offsets.start(d)
                task = asyncio.create_task(_in_order(bus, d, handle, last_of_key.get(d.key)))
                last_of_key[d.key] = task
                tasks.add(task)

                def done(t: asyncio.Task, d: Delivery = d) -> None:
                    offsets.finish(d)
                    tasks.discard(t)
                    if last_of_key.get(d.key) is t:
                        del last_of_key[d.key]
                    if on_progress:
                        on_progress(stats)

                task.add_done_callback(done)
            await commit()
            if batch or tasks:
                if idle is not None:
                    idle.clear()
            elif await consumer.lag() == 0:
                if idle is not None:
                    idle.set()
                if until_caught_up:
                    break
    except asyncio.CancelledError:  # cancelled (a replay's cancel, shutdown): stop what is in flight too;
        for t in tasks:  # their offsets stay uncommitted, so they come back if the run is resumed
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    except Exception:  # the bus failed (a broker outage): what is in flight finishes and is stored; its offsets,
        if tasks:  # uncommitted, come back after the reconnect and find it done, so nothing is analysed twice
            await asyncio.wait(tasks)
        raise
    if tasks:  # a graceful stop finishes what it started, so the commit covers it
        await asyncio.wait(tasks)
    await commit()


async def _in_order(bus: EventBus, d: Delivery, handle: Handler, previous: asyncio.Task | None) -> None:
    if previous is not None:
        await asyncio.wait([previous])
    metrics.IN_FLIGHT.inc()
    try:
        await _deliver(bus, d, handle)
    finally:
        metrics.IN_FLIGHT.dec()
        stats().processed += 1


async def _deliver(bus: EventBus, d: Delivery, handle: Handler) -> None:
    size, limit = len(d.value) + len(d.key or b""), bus.max_event_bytes
    if size > limit:  # from another producer: dead-lettered with a 1 KiB excerpt (the whole stays in the topic)
        metrics.MALFORMED.inc()
        excerpt = Delivery(d.partition, d.offset, (d.key or b"")[:256] or d.key, d.value[:1024])
        await bus.dead_letter(excerpt, f"event too large: {size} bytes, over the limit of {limit} (max_event_bytes)")
        return
    try:
        event = decode_event(d.value)
    except ValidationError as e:
        metrics.MALFORMED.inc()
        await bus.dead_letter(d, f"invalid event: {_short(e)}")
        return
    metrics.EVENTS.labels(event.type).inc()
    stats().last_event_at = time.time()
    for attempt in range(RETRIES + 1):
        try:
            await handle(event)
            return
        except Rejected as e:
            await bus.dead_letter(d, str(e))
            return
        except Exception as e:  # unexpected: maybe transient (store briefly away); retry, then dead-letter
            if attempt == RETRIES:
                log.exception("event %s failed after %d attempts", event.event_id, RETRIES + 1)
                metrics.FAILURES.labels("internal").inc()
                stats().failed += 1
                await bus.dead_letter(d, f"internal error: {type(e).__name__}: {e}")
            else:
                log.warning("event %s failed (%s); retrying", event.event_id, e)
                await asyncio.sleep(0.5 * 2**attempt)


def _short(e: ValidationError) -> str:
    errs = e.errors()
    first = errs[0] if errs else {}
    where = ".".join(str(x) for x in first.get("loc", ())) or "body"
    return f"{where}: {first.get('msg', str(e))}" + (f" (+{len(errs) - 1} more)" if len(errs) > 1 else "")
