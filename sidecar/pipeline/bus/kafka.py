"""The event bus on Kafka (aiokafka): any broker that speaks the Kafka protocol.

- The producer uses acks="all" and no idempotence or transactions (some Kafka-protocol brokers, Tansu among
  them, lack them). Events keep their order per key: the default partitioner sends a key to one partition.
- start() creates the topic and the dead-letter topic when missing (an existing topic is fine).
- Consumers use `group_id`, manual commits (`enable_auto_commit=False`), and `auto_offset_reset` earliest
  (from_beginning) or latest. Consumer.start() waits until the group has assigned partitions to the member,
  then fixes its starting positions, so that events published after start() returns are seen even by a
  "latest" consumer.
- lag() uses the highwater mark learnt from fetches (the broker's ListOffsets answer is not trusted: Tansu
  answers it with a count of record batches), minus the group's committed offset.
- Dead letters go to the dead-letter topic, with the reason in the header `reason`; dead_letters() reads
  that topic from the start with a throwaway consumer (no group).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from sidecar.pipeline.bus.base import Consumer, Delivery, EventBus

log = logging.getLogger(__name__)

T = TypeVar("T")

_TOPIC_ALREADY_EXISTS = 36


class KafkaUnavailableError(ConnectionError):
    """The broker could not be reached within the connect timeout."""


def _retriable(e: BaseException) -> bool:
    if isinstance(e, (KafkaConnectionError, OSError, asyncio.TimeoutError)):
        return True
    return isinstance(e, KafkaError) and bool(getattr(e, "retriable", False))


class KafkaBus(EventBus):
    def __init__(
        self,
        bootstrap: str,
        topic: str,
        dead_letter_topic: str,
        *,
        client_id: str = "sidecar",
        consumer_options: dict[str, Any] | None = None,
        partitions: int = 4,
        connect_timeout_s: float = 30.0,
    ):
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.client_id = client_id
        self.consumer_options = dict(consumer_options or {})
        self.partitions = partitions
        self.connect_timeout_s = connect_timeout_s
        self._producer: AIOKafkaProducer | None = None

    # -- connecting -------------------------------------------------------------------------------------

    async def _retry(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, backing off, for at most connect_timeout_s."""
        t0 = time.monotonic()
        deadline = t0 + self.connect_timeout_s
        delay = 0.1
        while True:
            try:
                return await attempt()
            except Exception as e:  # noqa: BLE001 - filtered just below
                if not _retriable(e):
                    raise
                last = e
            if time.monotonic() + delay > deadline:
                raise KafkaUnavailableError(
                    f"Kafka broker at {self.bootstrap} is not reachable ({what}); "
                    f"gave up after {time.monotonic() - t0:.1f}s: {last}"
                ) from last
            log.warning("Kafka broker at %s not reachable (%s): %s; retrying in %.1fs", self.bootstrap, what, last, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.client_id}-admin")
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            wanted = [
                NewTopic(self.topic, num_partitions=self.partitions, replication_factor=1),
                NewTopic(self.dead_letter_topic, num_partitions=1, replication_factor=1),
            ]
            missing = [t for t in wanted if t.name not in existing]
            if missing:
                response = await admin.create_topics(missing)
                for name, code, *rest in response.topic_errors:
                    if code not in (0, _TOPIC_ALREADY_EXISTS):
                        msg = rest[0] if rest else ""
                        raise KafkaError(f"could not create topic {name!r} on {self.bootstrap}: error {code} {msg}")
        finally:
            await admin.close()

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id=self.client_id,
            acks="all",
            enable_idempotence=False,
            max_request_size=self.max_event_bytes + (64 << 10),  # room for the batch's own headers
        )
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def _start_consumer(self, *topics: str, **options: Any) -> AIOKafkaConsumer:
        async def attempt() -> AIOKafkaConsumer:
            # room to fetch a message somewhat over the limit (another producer's), so that it can be read and
            # dead-lettered rather than leave its partition stuck behind it
            room = 2 * self.max_event_bytes + (64 << 10)
            sizes = {"max_partition_fetch_bytes": room, "fetch_max_bytes": max(room, 50 << 20)}
            consumer = AIOKafkaConsumer(
                *topics, bootstrap_servers=self.bootstrap, client_id=self.client_id, **{**sizes, **options}
            )
            try:
                await consumer.start()
            except BaseException:
                await consumer.stop()
                raise
            return consumer

        return await self._retry("consumer", attempt)

    # -- EventBus ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._producer is not None:
            return
        await self._retry("create topics", self._ensure_topics)
        self._producer = await self._retry("producer", self._start_producer)

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def _need_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaBus is not started (call start() first)")
        return self._producer

    async def publish_raw(self, key: bytes | None, value: bytes) -> None:
        self.check_size(key, value)
        await self._need_producer().send_and_wait(self.topic, value=bytes(value), key=None if key is None else bytes(key))

    def consumer(self, group: str, *, from_beginning: bool = True) -> "KafkaConsumer":
        return KafkaConsumer(self, group, from_beginning=from_beginning)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        headers = [
            ("reason", reason.encode()),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(delivery.partition).encode()),
            ("source_offset", str(delivery.offset).encode()),
        ]
        await self._need_producer().send_and_wait(
            self.dead_letter_topic, value=bytes(delivery.value), key=delivery.key, headers=headers
        )

    async def dead_letters(self, limit: int = 100) -> list[tuple[bytes, str]]:
        if limit <= 0:
            return []
        consumer = await self._start_consumer(
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
        )
        try:
            partitions = consumer.partitions_for_topic(self.dead_letter_topic)
            if partitions is None:
                await consumer.topics()  # refreshes metadata
                partitions = consumer.partitions_for_topic(self.dead_letter_topic)
            if not partitions:
                return []
            tps = [TopicPartition(self.dead_letter_topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            found: list[tuple[int, int, int, bytes, str]] = []
            deadline = time.monotonic() + max(10.0, self.connect_timeout_s)
            while True:
                batch = await consumer.getmany(*tps, timeout_ms=200, max_records=1000)
                for tp, records in batch.items():
                    for r in records:
                        reason = dict(r.headers or ()).get("reason", b"")
                        found.append((r.timestamp, tp.partition, r.offset, r.value or b"", reason.decode(errors="replace")))
                done = True
                for tp in tps:
                    hw = consumer.highwater(tp)
                    if hw is None or await consumer.position(tp) < hw:
                        done = False
                        break
                if done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reading dead letters from {self.dead_letter_topic!r} on {self.bootstrap} took too long")
            if len(tps) > 1:
                found.sort(key=lambda f: (f[0], f[1], f[2]))
            return [(value, reason) for *_, value, reason in found[-limit:]]
        finally:
            await consumer.stop()


class KafkaConsumer(Consumer):
    def __init__(self, bus: KafkaBus, group: str, *, from_beginning: bool = True):
        self._bus = bus
        self.group = group
        self.from_beginning = from_beginning
        self._consumer: AIOKafkaConsumer | None = None
        self._start_positions: dict[TopicPartition, int] = {}

    def _need(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError(f"consumer for group {self.group!r} is not started")
        return self._consumer

    async def start(self) -> None:
        if self._consumer is not None:
            return
        bus = self._bus
        options: dict[str, Any] = dict(bus.consumer_options)
        options.update(
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
        )
        consumer = await bus._start_consumer(bus.topic, **options)
        self._consumer = consumer
        try:
            # aiokafka's start() returns once the group has assigned partitions to this member. Fix the
            # starting positions (committed offset, or the earliest/latest reset) now rather than at the
            # first fetch, so that a "latest" member sees every event published after start() returns.
            for tp in consumer.assignment():
                self._start_positions[tp] = await consumer.position(tp)
        except BaseException:
            self._consumer = None
            await consumer.stop()
            raise

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()

    async def getmany(self, timeout_s: float = 1.0, max_records: int = 100) -> list[Delivery]:
        consumer = self._need()
        batch = await consumer.getmany(timeout_ms=int(max(0.0, timeout_s) * 1000), max_records=max(1, max_records))
        out: list[Delivery] = []
        for tp in sorted(batch, key=lambda tp: tp.partition):
            for r in batch[tp]:
                out.append(Delivery(tp.partition, r.offset, r.key, r.value if r.value is not None else b""))
        return out

    async def commit(self, offsets: dict[int, int]) -> None:
        consumer = self._need()
        if not offsets:
            return
        topic = self._bus.topic
        await consumer.commit({TopicPartition(topic, p): int(o) for p, o in offsets.items()})

    async def seek_to_beginning(self) -> None:
        consumer = self._need()
        tps = list(consumer.assignment())
        if tps:
            await consumer.seek_to_beginning(*tps)

    async def lag(self) -> int:
        consumer = self._need()
        total = 0
        for tp in sorted(consumer.assignment(), key=lambda tp: tp.partition):
            highwater = consumer.highwater(tp)
            deadline = time.monotonic() + 2.0
            while highwater is None and time.monotonic() < deadline:  # the background fetcher learns it soon
                await asyncio.sleep(0.02)
                highwater = consumer.highwater(tp)
            if highwater is None:
                highwater = await consumer.position(tp)
            committed = await consumer.committed(tp)
            if committed is None:
                committed = self._start_positions.get(tp, 0)
            total += max(0, highwater - committed)
        return total
