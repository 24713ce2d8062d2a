"""One contract for every event bus: the embedded SQLite log and Kafka (a real Tansu broker).

Each test gets a fresh log file or fresh topics, and fresh group names.
"""
from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.events import TrackRemoved, TrackUpserted, decode_event
from sidecar.pipeline.bus import Delivery, EventBus, make_bus
from sidecar.pipeline.bus.embedded import EmbeddedBus
from tests.kafka_broker import KAFKA_TEST_CONSUMER_OPTIONS, unique_name

REPO = Path(__file__).resolve().parents[1]


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(params=["embedded", "kafka"])
def new_bus(request, tmp_path):
    """A factory of unstarted buses that all share this test's log (file, or topics on the broker)."""
    if request.param == "embedded":
        path = tmp_path / "events.sqlite3"
        return lambda: EmbeddedBus(path, poll_interval_s=0.1)
    from sidecar.pipeline.bus.kafka import KafkaBus

    bootstrap = request.getfixturevalue("kafka_bootstrap")
    topic, dead = unique_name("library"), unique_name("library-dead")
    return lambda: KafkaBus(bootstrap, topic, dead, consumer_options=KAFKA_TEST_CONSUMER_OPTIONS, connect_timeout_s=10)


@pytest.fixture
async def bus(new_bus):
    b = new_bus()
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def group():
    return unique_name("group")


# -- helpers -------------------------------------------------------------------------------------------


async def drain(consumer, n: int, timeout_s: float = 10.0) -> list[Delivery]:
    """At least n deliveries (fails if they do not come within timeout_s); keeps any extra it gets."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(got)} of {n} deliveries within {timeout_s}s"
        got += await consumer.getmany(timeout_s=min(left, 1.0), max_records=500)
    return got


async def assert_nothing_more(consumer, wait_s: float = 0.6) -> None:
    extra = await consumer.getmany(timeout_s=wait_s)
    assert extra == [], f"unexpected deliveries: {extra[:5]}"


def commit_offsets(deliveries: list[Delivery]) -> dict[int, int]:
    """{partition: next offset} after these deliveries."""
    out: dict[int, int] = {}
    for d in deliveries:
        out[d.partition] = max(out.get(d.partition, 0), d.offset + 1)
    return out


def events(n: int, prefix: str = "/music/a"):
    return [TrackUpserted(path=f"{prefix}/{i:04d}.ogg", size=i, source="test") for i in range(n)]


def ids(deliveries: list[Delivery]) -> list[str]:
    return [decode_event(d.value).event_id for d in deliveries]


def check_partition_order(deliveries: list[Delivery]) -> None:
    last: dict[int, int] = {}
    for d in deliveries:
        assert d.offset > last.get(d.partition, -1), f"offsets out of order in partition {d.partition}"
        last[d.partition] = d.offset


# -- the contract --------------------------------------------------------------------------------------


async def test_publish_then_consume_same_key_in_order(bus: EventBus, group):
    path = "/music/one.ogg"
    sent = [TrackUpserted(path=path, size=i) for i in range(5)] + [TrackRemoved(path=path)]
    for e in sent:
        await bus.publish(e)
    async with bus.consumer(group) as c:
        got = await drain(c, len(sent))
        await assert_nothing_more(c)
    assert [decode_event(d.value) for d in got] == sent
    assert all(d.key == path.encode() for d in got)
    check_partition_order(got)


async def test_uncommitted_events_are_delivered_again(bus: EventBus, group):
    sent = events(6)
    for e in sent:
        await bus.publish(e)
    async with bus.consumer(group) as c:
        first = await drain(c, 6)
    assert sorted(ids(first)) == sorted(e.event_id for e in sent)

    # not committed: a new member of the group starts over (at least once)
    async with bus.consumer(group) as c:
        again = await drain(c, 6)
        assert sorted(ids(again)) == sorted(ids(first))
        await assert_nothing_more(c)
        await c.commit(commit_offsets(again))

    # committed: nothing is delivered again; a later event is
    async with bus.consumer(group) as c:
        await assert_nothing_more(c)
        late = TrackRemoved(path="/music/late.ogg")
        await bus.publish(late)
        got = await drain(c, 1)
        assert ids(got) == [late.event_id]


async def test_partial_commit_resumes_after_the_committed_offset(bus: EventBus, group):
    path = "/music/same-key.ogg"  # one key: one partition, so "the first three" is well defined
    sent = [TrackUpserted(path=path, size=i) for i in range(5)]
    for e in sent:
        await bus.publish(e)
    async with bus.consumer(group) as c:
        got = await drain(c, 5)
        await c.commit(commit_offsets(got[:3]))
    async with bus.consumer(group) as c:
        rest = await drain(c, 2)
        await assert_nothing_more(c)
    assert ids(rest) == [e.event_id for e in sent[3:]]


async def test_groups_are_independent(bus: EventBus):
    sent = events(4)
    for e in sent:
        await bus.publish(e)
    g1, g2 = unique_name("g1"), unique_name("g2")
    async with bus.consumer(g1) as c1:
        got1 = await drain(c1, 4)
        await c1.commit(commit_offsets(got1))
    # g1's commit does not move g2
    async with bus.consumer(g2) as c2:
        got2 = await drain(c2, 4)
        await assert_nothing_more(c2)
    assert sorted(ids(got1)) == sorted(ids(got2)) == sorted(e.event_id for e in sent)
    async with bus.consumer(g1) as c1:
        await assert_nothing_more(c1)


async def test_new_group_replays_whole_history(bus: EventBus, group):
    sent = events(5)
    for e in sent[:3]:
        await bus.publish(e)
    async with bus.consumer(group) as c:
        got = await drain(c, 3)
        await c.commit(commit_offsets(got))
        for e in sent[3:]:
            await bus.publish(e)
        got += await drain(c, 2)
        await c.commit(commit_offsets(got))
    async with bus.consumer(unique_name("replay")) as r:
        replayed = await drain(r, 5)
        await assert_nothing_more(r)
    assert sorted(ids(replayed)) == sorted(e.event_id for e in sent)


async def test_from_beginning_false_starts_at_the_end(bus: EventBus, group):
    old = events(3, "/music/old")
    for e in old:
        await bus.publish(e)
    async with bus.consumer(group, from_beginning=False) as c:
        new = TrackUpserted(path="/music/new.ogg")
        await bus.publish(new)  # straight after start(): the consumer's position is already fixed
        got = await drain(c, 1)
        await assert_nothing_more(c, 0.3)
    assert ids(got) == [new.event_id]


async def test_seek_to_beginning(bus: EventBus, group):
    sent = events(4)
    for e in sent:
        await bus.publish(e)
    async with bus.consumer(group) as c:
        first = await drain(c, 4)
        await c.commit(commit_offsets(first))
        await assert_nothing_more(c, 0.3)
        await c.seek_to_beginning()
        again = await drain(c, 4)
        await assert_nothing_more(c, 0.3)
    assert sorted(ids(again)) == sorted(ids(first)) == sorted(e.event_id for e in sent)


async def test_lag_decreases_as_commits_happen(bus: EventBus, group):
    sent = events(12)
    await asyncio.gather(*(bus.publish(e) for e in sent))  # concurrent: Kafka batches them
    async with bus.consumer(group) as c:
        got = await drain(c, 12)
        assert await c.lag() == 12  # read, not committed
        for i, d in enumerate(got, 1):
            await c.commit({d.partition: d.offset + 1})
            assert await c.lag() == 12 - i
        await bus.publish(TrackRemoved(path="/music/x.ogg"))
        more = await drain(c, 1)
        assert await c.lag() == 1
        await c.commit(commit_offsets(more))
        assert await c.lag() == 0


async def test_malformed_message_is_delivered_raw_and_dead_lettered(bus: EventBus, group):
    good = TrackUpserted(path="/music/good.ogg")
    raw = b"\xff\x00{not json"
    await bus.publish_raw(b"junk-key", raw)
    await bus.publish_raw(None, b'{"type": "track.upserted"}')  # valid JSON, invalid event, no key
    await bus.publish(good)
    async with bus.consumer(group) as c:
        got = await drain(c, 3)
    by_value = {d.value: d for d in got}
    assert raw in by_value and by_value[raw].key == b"junk-key"
    assert by_value[b'{"type": "track.upserted"}'].key is None
    for d in got:
        if d.value == good.model_dump_json().encode():
            assert decode_event(d.value) == good
            continue
        with pytest.raises(ValidationError):
            decode_event(d.value)
        await bus.dead_letter(d, f"invalid event at offset {d.offset}")
    letters = await bus.dead_letters()
    assert sorted(v for v, _ in letters) == sorted([raw, b'{"type": "track.upserted"}'])
    reasons = dict(letters)
    assert reasons[raw] == f"invalid event at offset {by_value[raw].offset}"


async def test_dead_letters_newest_last_and_limited(bus: EventBus):
    assert await bus.dead_letters() == []
    for i in range(5):
        await bus.dead_letter(Delivery(0, i, b"k", b"bad-%d" % i), f"reason {i}")
    assert await bus.dead_letters(limit=3) == [(b"bad-2", "reason 2"), (b"bad-3", "reason 3"), (b"bad-4", "reason 4")]
    assert [v for v, _ in await bus.dead_letters()] == [b"bad-%d" % i for i in range(5)]


async def test_concurrent_publishes_arrive_exactly_once_per_group(bus: EventBus):
    n_tasks, per_task = 8, 25
    sent = [TrackUpserted(path=f"/music/{t}/{i}.ogg", size=i) for t in range(n_tasks) for i in range(per_task)]

    async def publisher(t: int):
        for e in sent[t * per_task:(t + 1) * per_task]:
            await bus.publish(e)

    await asyncio.gather(*(publisher(t) for t in range(n_tasks)))
    expected = sorted(e.event_id for e in sent)

    async def consume(group: str) -> list[str]:
        async with bus.consumer(group) as c:
            got = await drain(c, len(sent))
            await assert_nothing_more(c, 0.5)
            check_partition_order(got)
            return ids(got)

    got1, got2 = await asyncio.gather(consume(unique_name("ga")), consume(unique_name("gb")))
    assert sorted(got1) == expected  # exactly once: no loss, no duplicate
    assert sorted(got2) == expected


async def test_same_key_keeps_order_under_concurrency(bus: EventBus, group):
    keys = [f"/music/k{k}.ogg" for k in range(6)]

    async def publisher(path: str):
        for i in range(15):
            await bus.publish(TrackUpserted(path=path, size=i))

    await asyncio.gather(*(publisher(p) for p in keys))
    async with bus.consumer(group) as c:
        got = await drain(c, 6 * 15)
    check_partition_order(got)
    sizes: dict[str, list[int]] = {p: [] for p in keys}
    for d in got:
        e = decode_event(d.value)
        assert d.key == e.path.encode()
        sizes[e.path].append(e.size)
    assert sizes == {p: list(range(15)) for p in keys}


async def test_events_and_commits_survive_reopening_the_bus(new_bus, group):
    sent = [TrackUpserted(path="/music/reopen.ogg", size=i) for i in range(4)]  # one key: one partition
    async with new_bus() as b1:
        for e in sent:
            await b1.publish(e)
        async with b1.consumer(group) as c:
            got = await drain(c, 4)
            await c.commit(commit_offsets(got[:1]))
    async with new_bus() as b2:
        async with b2.consumer(unique_name("fresh")) as c:
            assert ids(await drain(c, 4)) == [e.event_id for e in sent]
        async with b2.consumer(group) as c:
            assert await c.lag() == 3
            assert ids(await drain(c, 3)) == [e.event_id for e in sent[1:]]


# -- embedded only -------------------------------------------------------------------------------------

_PUBLISH_SCRIPT = """
import asyncio, os, signal, sys
from schemas.events import TrackUpserted
from sidecar.pipeline.bus.embedded import EmbeddedBus

async def main():
    bus = EmbeddedBus(sys.argv[1])
    await bus.start()
    await bus.publish(TrackUpserted(event_id=sys.argv[2], path="/music/from-cli.ogg", source="cli"))
    if sys.argv[3] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no clean exit
    await bus.close()

asyncio.run(main())
"""


def _run_publisher(path: Path, event_id: str, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _PUBLISH_SCRIPT, str(path), event_id, mode],
        cwd=REPO, capture_output=True, timeout=30,
    )


async def test_embedded_sees_other_process_publishes_within_a_second(tmp_path, group):
    path = tmp_path / "events.sqlite3"
    async with EmbeddedBus(path) as bus:
        await bus.publish(TrackUpserted(path="/music/local.ogg"))
        async with bus.consumer(group) as c:
            assert len(await drain(c, 1)) == 1
            waiting = asyncio.create_task(c.getmany(timeout_s=30))  # one long wait: only polling can end it
            await asyncio.sleep(0.1)
            assert not waiting.done()
            proc = await asyncio.to_thread(_run_publisher, path, "cafe" * 8, "close")
            assert proc.returncode == 0, proc.stderr.decode()
            published_at = time.monotonic()
            got = await asyncio.wait_for(waiting, 5.0)  # polling would take 30 s; 5 s leaves room for a slow machine
            assert time.monotonic() - published_at < 5.0
    assert ids(got) == ["cafe" * 8]


async def test_embedded_publish_survives_sigkill(tmp_path, group):
    path = tmp_path / "events.sqlite3"
    proc = await asyncio.to_thread(_run_publisher, path, "beef" * 8, "kill")
    assert proc.returncode == -9, proc.stderr.decode()
    async with EmbeddedBus(path) as bus:
        async with bus.consumer(group) as c:
            got = await drain(c, 1)
    assert ids(got) == ["beef" * 8]


async def test_embedded_consumer_wakes_on_in_process_publish(tmp_path, group):
    async with EmbeddedBus(tmp_path / "events.sqlite3", poll_interval_s=30) as bus:  # polling cannot help
        async with bus.consumer(group) as c:
            waiting = asyncio.create_task(c.getmany(timeout_s=10))
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            await bus.publish(TrackUpserted(path="/music/wake.ogg"))
            got = await asyncio.wait_for(waiting, 5)  # polling would take 30 s
            assert time.monotonic() - t0 < 5
    assert len(got) == 1


# -- factory and connection errors ---------------------------------------------------------------------


def test_make_bus_picks_the_configured_bus(tmp_path):
    from sidecar.pipeline.bus.kafka import KafkaBus
    from sidecar.config import Settings

    embedded = make_bus(Settings(data_dir=tmp_path))
    assert isinstance(embedded, EmbeddedBus) and embedded.path == tmp_path / "events.sqlite3"
    kafka = make_bus(Settings(data_dir=tmp_path, bus="kafka", kafka_bootstrap="h:1", kafka_topic="a", kafka_dead_letter_topic="b"))
    assert isinstance(kafka, KafkaBus)
    assert (kafka.bootstrap, kafka.topic, kafka.dead_letter_topic) == ("h:1", "a", "b")


async def test_kafka_unreachable_broker_gives_a_clear_error():
    from sidecar.pipeline.bus.kafka import KafkaBus

    with socket_closed_port() as port:
        bus = KafkaBus(f"127.0.0.1:{port}", "t", "d", connect_timeout_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}"):
            await bus.start()
        assert 0.5 < time.monotonic() - t0 < 15  # it retried, for a bounded time (1 s asked; room for a slow machine)


class socket_closed_port:
    """A local port that nothing listens on (bound, so nothing else takes it, but not listening)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()
