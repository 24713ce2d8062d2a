"""The web page at `/`: static HTML, CSS and JavaScript modules from sidecar/http/web, talking to the JSON API.
No front-end server and no build step: the files ship with the package."""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

from sidecar.http.openapi import documented

WEB_DIR = Path(__file__).parents[1] / "web"
routes = web.RouteTableDef()


@routes.get("/")
@documented("The web page", response={"text/html": str})
async def index(request: web.Request) -> web.FileResponse:
    """Plain HTML and JavaScript modules (served under /static/) that call this API; no data of its own."""
    # no-cache: the page and its modules change together, so a browser revalidates rather than mixing versions
    return web.FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})


routes.static("/static", WEB_DIR, append_version=False)
