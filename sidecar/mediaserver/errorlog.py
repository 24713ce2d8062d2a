"""The media server's last error, as GET /api/mediaserver shows it and the log says it: never with a secret,
logged once per source until it changes, cleared once every source answers again."""
from __future__ import annotations

import logging
import time

from plugins.mediaserver import redact

log = logging.getLogger(__name__)


class ErrorLog:
    def __init__(self, url: str, secrets: tuple[str, ...] = ()):
        self.url, self.secrets = url, secrets
        self.error: str | None = None
        self.error_at: float | None = None
        self._by_source: dict[str, str] = {}  # source (sync, scan, events, playlists) -> its last message

    def record(self, message: str, then: str = "", source: str = "sync") -> None:
        """Log an error once per source (again only when it changes); `then` says what happens next."""
        message, then = redact(message, *self.secrets), redact(then, *self.secrets)
        if message != self._by_source.get(source):
            log.error("%s%s", message, then)
        else:
            log.debug("%s%s (again)", message, then)
        self._by_source[source] = message
        self.error, self.error_at = message + then, time.time()

    def recovered(self, source: str = "sync") -> None:
        if self._by_source.pop(source, None) is not None:
            log.info("media server %s answers again", self.url)
        if not self._by_source:
            self.error = self.error_at = None
