"""What every route shares: the app's typed keys, parsing requests into pydantic models, JSON responses, and
the one place domain errors become HTTP statuses. Bad input gets a 4xx with a JSON body naming the field,
never a traceback."""
from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from schemas.api import ErrorBody
from sidecar.errors import BadInput, Conflict, DomainError, NotFound, Unavailable, UpstreamError

if TYPE_CHECKING:
    from sidecar.service import Sidecar

M = TypeVar("M", bound=BaseModel)
SIDECAR = web.AppKey("sidecar", object)
STATUS = {BadInput: 400, NotFound: 404, Conflict: 409, Unavailable: 503, UpstreamError: 502}


class ApiError(Exception):
    """An answer only the HTTP layer gives (a secret missing, a body too large); domain code raises DomainError."""

    def __init__(self, status: int, error: str, field: str | None = None):
        self.status, self.body = status, ErrorBody(error=error, field=field)


def status_of(e: DomainError) -> int:
    return next(code for cls, code in STATUS.items() if isinstance(e, cls))


def sidecar_of(request: web.Request) -> "Sidecar":
    return request.app[SIDECAR]


def json_response(model: BaseModel | list, status: int = 200) -> web.Response:
    if isinstance(model, list):
        text = "[" + ",".join(m.model_dump_json() for m in model) + "]"
    else:
        text = model.model_dump_json()
    return web.Response(text=text, status=status, content_type="application/json")


def _invalid(e: ValidationError) -> BadInput:
    err = e.errors()[0]
    field = ".".join(str(x) for x in err["loc"]) or None
    return BadInput(f"{field}: {err['msg']}" if field else err["msg"], field)


def parse_query(request: web.Request, model: type[M]) -> M:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as e:
        raise _invalid(e) from None


async def parse_body(request: web.Request, model: type[M]) -> M:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "request body too large") from None
    if not raw:
        raise BadInput("a JSON body is required", "body")
    try:  # strict: JSON has types, so `"use_llm": 0` or `"n": "5"` is a client's mistake, named, not guessed at
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        raise _invalid(e) from None
