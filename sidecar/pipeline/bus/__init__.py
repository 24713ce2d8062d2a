"""Event buses: one interface (base.EventBus), an embedded durable log and Kafka."""
from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.pipeline.bus.base import Consumer, Delivery, EventBus

if TYPE_CHECKING:
    from sidecar.config import Settings

__all__ = ["Consumer", "Delivery", "EventBus", "make_bus"]


def make_bus(settings: "Settings") -> EventBus:
    """The bus the settings name: the embedded log in the data dir, or Kafka. Not started yet."""
    if settings.bus == "embedded":
        from sidecar.pipeline.bus.embedded import EmbeddedBus

        bus = EmbeddedBus(settings.event_log_path)
    elif settings.bus == "kafka":
        from sidecar.pipeline.bus.kafka import KafkaBus

        bus = KafkaBus(
            settings.kafka_bootstrap, settings.kafka_topic, settings.kafka_dead_letter_topic,
            consumer_options={
                "session_timeout_ms": settings.kafka_session_timeout_ms,
                "heartbeat_interval_ms": settings.kafka_heartbeat_interval_ms,
                "fetch_max_wait_ms": settings.kafka_fetch_max_wait_ms,
            },
        )
    else:
        raise ValueError(f"unknown bus {settings.bus!r}")
    bus.max_event_bytes = settings.max_event_bytes
    return bus
