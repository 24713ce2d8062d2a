"""The event-bus interface. Delivery is at least once: a consumer sees an event again after a restart unless
its offset was committed, and the ingest worker commits only after the event's results are stored.

Values travel as raw bytes: a bus does not parse them, so that a malformed message from another producer
reaches the consumer, which validates it and sends it to the dead letters.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from schemas.events import LibraryEvent


MAX_EVENT_BYTES = 1 << 20  # the default of Settings.max_event_bytes


class EventTooLargeError(ValueError):
    """An event over the bus's size limit: refused when published (the consumer dead-letters one that got in)."""


@dataclass(frozen=True)
class Delivery:
    partition: int
    offset: int
    key: bytes | None
    value: bytes


class Consumer(ABC):
    """One member of a consumer group. Use as `async with bus.consumer(group) as c:`."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> "Consumer":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @abstractmethod
    async def getmany(self, timeout_s: float = 1.0, max_records: int = 100) -> list[Delivery]:
        """Next deliveries, in offset order within each partition; [] after timeout_s with nothing new."""

    @abstractmethod
    async def commit(self, offsets: dict[int, int]) -> None:
        """Record progress: {partition: offset of the next event to read}. Durable when it returns."""

    @abstractmethod
    async def seek_to_beginning(self) -> None:
        """Read this member's partitions again from the first retained event."""

    @abstractmethod
    async def lag(self) -> int:
        """Events published but not yet committed by this group (for this member's partitions)."""


class EventBus(ABC):
    max_event_bytes: int = MAX_EVENT_BYTES  # key and value together

    def check_size(self, key: bytes | None, value: bytes) -> None:
        size = len(value) + len(key or b"")
        if size > self.max_event_bytes:
            raise EventTooLargeError(f"event of {size} bytes is over the bus's limit of {self.max_event_bytes} bytes (max_event_bytes)")

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> "EventBus":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def publish(self, event: LibraryEvent) -> None:
        """Append one event, keyed by event.key; durable when it returns."""
        await self.publish_raw(event.key.encode(), event.model_dump_json().encode())

    @abstractmethod
    async def publish_raw(self, key: bytes | None, value: bytes) -> None:
        """Append raw bytes as they are (used for forwarding, and by tests to send malformed messages).
        Raises EventTooLargeError over max_event_bytes."""

    @abstractmethod
    def consumer(self, group: str, *, from_beginning: bool = True) -> Consumer:
        """A member of `group`. A group with no committed offset starts at the beginning when
        from_beginning, else at the end. A new group name therefore replays the whole log."""

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Keep a message that could not be used, with its reason, where an operator can read it."""

    @abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[tuple[bytes, str]]:
        """The most recent dead letters as (value, reason), newest last."""
