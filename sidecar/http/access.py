"""Who may call what.

- Admin and mutating endpoints (starting or cancelling a re-embed or a clustering job, retrying failures,
  writing playlists, syncing the media server) need the token SIDECAR_API_TOKEN, sent as
  `Authorization: Bearer <token>` or `X-Api-Token`. With no token configured they answer only callers on
  this machine (loopback): fine for the default 127.0.0.1 bind, closed for a sidecar bound to 0.0.0.0.
- Webhooks need SIDECAR_WEBHOOK_SECRET (as `X-Webhook-Secret` or `Authorization: Bearer`); with none
  configured, only loopback callers.
- Read endpoints are open, or loopback-only with SIDECAR_READ_ACCESS=localhost (a token opens them too).
Secrets are compared in constant time and never echoed.
"""
from __future__ import annotations

import hmac
import ipaddress
import re

from aiohttp import web

from sidecar.http.common import ApiError, sidecar_of

ADMIN_PATHS = re.compile(r"^/api/(batch/(start|cancel)|failures/retry|playlists|clustering|mediaserver/sync)\b")
OPEN_PATHS = {"/health", "/"}  # the web page holds no data: it asks for the token when the API wants one
OPEN_PREFIXES = ("/static/",)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address((request.remote or "").split("%")[0]).is_loopback
    except ValueError:
        return False


def _presented(request: web.Request, header: str) -> str:
    given = request.headers.get(header, "")
    auth = request.headers.get("Authorization", "")
    if not given and auth[:7].lower() == "bearer ":
        given = auth[7:].strip()
    return given


def _matches(given: str, secret: str) -> bool:
    return bool(secret) and hmac.compare_digest(given.encode("utf-8", "replace"), secret.encode("utf-8"))


def check_webhook_secret(request: web.Request) -> None:
    secret = sidecar_of(request).settings.webhook_secret
    if not secret:
        if not is_loopback(request):
            raise ApiError(403, "webhooks from other machines need SIDECAR_WEBHOOK_SECRET set here and sent as X-Webhook-Secret")
        return
    if not _matches(_presented(request, "X-Webhook-Secret"), secret):
        raise ApiError(401, "missing or wrong webhook secret (send X-Webhook-Secret or Authorization: Bearer)", "X-Webhook-Secret")


def check_admin(request: web.Request) -> None:
    token = sidecar_of(request).settings.api_token
    if not token:
        if not is_loopback(request):
            raise ApiError(403, "this endpoint changes things: set SIDECAR_API_TOKEN here and send it as Authorization: Bearer")
        return
    if not _matches(_presented(request, "X-Api-Token"), token):
        raise ApiError(401, "missing or wrong API token (send Authorization: Bearer <SIDECAR_API_TOKEN>)", "Authorization")


def guard(method: str, path: str) -> str:
    """Which check a request faces: open, webhook, admin or read (also what /openapi.json says of each route)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return "open"
    if path.startswith("/webhooks/"):
        return "webhook"
    if method not in SAFE_METHODS and ADMIN_PATHS.match(path):
        return "admin"
    return "read"


@web.middleware
async def access_control(request: web.Request, handler):
    check = guard(request.method, request.path)
    if check == "webhook":
        check_webhook_secret(request)
    elif check == "admin":
        check_admin(request)
    elif check == "read" and sidecar_of(request).settings.read_access == "localhost" and not is_loopback(request):
        if not _matches(_presented(request, "X-Api-Token"), sidecar_of(request).settings.api_token):
            raise ApiError(403, "this sidecar answers only local callers (SIDECAR_READ_ACCESS=localhost), or with its API token")
    return await handler(request)
