"""This API's own description: OpenAPI 3.1 at /openapi.json and a readable page at /docs."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from sidecar.http.openapi import build, documented, render

routes = web.RouteTableDef()


@routes.get("/openapi.json")
@documented("This API's OpenAPI 3.1 description", response=dict[str, Any])
async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(build(request.app))


@routes.get("/docs")
@documented("This API's description as a page", response={"text/html": str})
async def docs_page(request: web.Request) -> web.Response:
    return web.Response(text=render(build(request.app)), content_type="text/html")
