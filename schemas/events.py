"""Library events: what flows on the bus. Versioned so that old log entries stay readable.

Every event is keyed by `key` (the file path for file events), so that one file's events keep their order
on a partitioned bus.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    occurred_at: datetime = Field(default_factory=_now)
    source: str = Field(default="unknown", max_length=64, description="who emitted it: watcher, reconcile, kafka, webhook, cli")

    @property
    def key(self) -> str:
        return self.event_id


class TrackUpserted(_Event):
    """A file appeared or changed. `size` and `mtime_ns` let the worker skip files it has already seen."""

    type: Literal["track.upserted"] = "track.upserted"
    path: str = Field(min_length=1, max_length=4096)
    size: int | None = Field(default=None, ge=0)
    mtime_ns: int | None = Field(default=None, ge=0)

    @property
    def key(self) -> str:
        return self.path


class TrackRemoved(_Event):
    type: Literal["track.removed"] = "track.removed"
    path: str = Field(min_length=1, max_length=4096)

    @property
    def key(self) -> str:
        return self.path


class TrackMoved(_Event):
    """A file was renamed or moved; its identity and vectors follow it, no model runs."""

    type: Literal["track.moved"] = "track.moved"
    src_path: str = Field(min_length=1, max_length=4096)
    dest_path: str = Field(min_length=1, max_length=4096)

    @property
    def key(self) -> str:
        return self.src_path


class ScanCompleted(_Event):
    """A media server (or the reconcile walk) finished a scan; the worker reconciles the roots it names."""

    type: Literal["scan.completed"] = "scan.completed"
    roots: list[str] = Field(default_factory=list, max_length=64)


class ReplayRequested(_Event):
    """An operator asked to re-consume the library's events from the start (the re-embed)."""

    type: Literal["replay.requested"] = "replay.requested"
    models: list[str] = Field(default_factory=list, max_length=32, description="re-embed these models even if unchanged; empty: only reprocess")
    scope: str | None = Field(default=None, max_length=4096, description="only files under this folder; default: the whole library")


LibraryEvent = Annotated[
    Union[TrackUpserted, TrackRemoved, TrackMoved, ScanCompleted, ReplayRequested],
    Field(discriminator="type"),
]
library_event_adapter: TypeAdapter[LibraryEvent] = TypeAdapter(LibraryEvent)


def encode_event(event: LibraryEvent) -> bytes:
    return event.model_dump_json().encode()


def decode_event(raw: bytes | str) -> LibraryEvent:
    """Parse and validate one event; raises pydantic.ValidationError on anything malformed."""
    return library_event_adapter.validate_json(raw)
