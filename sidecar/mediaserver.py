"""HTTP routes and background work for the media server (Navidrome / Subsonic); see below."""
from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
