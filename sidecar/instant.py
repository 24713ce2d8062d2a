"""HTTP routes for instant; see the functions below."""
from __future__ import annotations

from aiohttp import web

routes = web.RouteTableDef()
