"""The aiohttp application: middlewares (latency metrics, errors as JSON, access control) and every route
module's routes. Handlers live in sidecar/http/routes/, one module per area of the API."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from schemas.api import ErrorBody
from sidecar import metrics
from sidecar.errors import DomainError
from sidecar.http.access import access_control
from sidecar.http.common import SIDECAR, ApiError, json_response, status_of
from sidecar.http.routes import ROUTE_MODULES, service

if TYPE_CHECKING:
    from sidecar.service import Sidecar

log = logging.getLogger(__name__)


@web.middleware
async def timed(request: web.Request, handler):
    """Request latency per route pattern (not per path: ids would make a series each)."""
    t0 = time.perf_counter()
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    metrics.REQUEST_SECONDS.labels(request.method, route, str(response.status)).observe(time.perf_counter() - t0)
    return response


@web.middleware
async def errors_as_json(request: web.Request, handler):
    try:
        return await handler(request)
    except DomainError as e:
        return json_response(ErrorBody(error=str(e), field=e.field), status_of(e))
    except ApiError as e:
        return json_response(e.body, e.status)
    except web.HTTPException as e:  # 404 for unknown routes, 405...
        if e.status < 400:
            raise
        response = json_response(ErrorBody(error=e.reason), e.status)
        if "Allow" in e.headers:  # a 405 must say which methods the path takes (RFC 9110)
            response.headers["Allow"] = e.headers["Allow"]
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return json_response(ErrorBody(error="internal error; see the sidecar's log"), 500)


def make_app(sc: "Sidecar", *, only_service: bool = False) -> web.Application:
    """The API; with `only_service`, just health, status and metrics (an ingest worker's)."""
    app = web.Application(middlewares=[timed, errors_as_json, access_control], client_max_size=1 << 20)
    app[SIDECAR] = sc
    for module in (service,) if only_service else ROUTE_MODULES:
        app.router.add_routes(module.routes)
    return app
