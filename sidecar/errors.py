"""What a request can run into, said once. Domain code raises these with a message for the user and the
request field at fault; the HTTP layer turns each into its status (sidecar/http/common.py), the CLI into a
message and an exit code. Domain code never raises HTTP errors."""
from __future__ import annotations


class DomainError(Exception):
    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class BadInput(DomainError):
    """The request asks for something impossible or names what does not exist as an option."""


class NotFound(DomainError):
    """A track, artist, job... the request names is not known."""


class Conflict(DomainError):
    """Not possible in the current state: no vector yet, a job already running, nothing to cancel."""


class Unavailable(DomainError):
    """A part this needs is not configured or not ready (text search, the media server)."""


class UpstreamError(DomainError):
    """The media server answered with an error."""
