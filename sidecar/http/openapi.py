"""The API's own description: OpenAPI 3.1 at /openapi.json and a readable page at /docs.

Each handler carries its description (`@documented`: summary, query and body models, responses); the
document is built from the app's router and those pydantic models, so it cannot drift from the routes.
Who needs which secret comes from sidecar.http.access, the place that enforces it.
"""
from __future__ import annotations

import html
import inspect
import json
import re
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Callable

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema

import sidecar
from schemas.api import ErrorBody

REF = "#/components/schemas/{model}"
ERRORS = {
    400: "bad input; `field` names the parameter or body field at fault",
    401: "missing or wrong secret",
    403: "not allowed from this caller (see the security schemes)",
    404: "not found",
    409: "conflicts with the current state",
    413: "request body too large",
    502: "the media server answered with an error",
    503: "unavailable: a part this endpoint needs is not configured or not ready",
}
# sidecar.http.access's guard -> the security schemes that satisfy it (alternatives)
SECURITY = {
    "admin": [{"apiToken": []}, {"apiTokenHeader": []}],
    "webhook": [{"webhookSecret": []}, {"webhookBearer": []}],
}
SECURITY_SCHEMES = {
    "apiToken": {"type": "http", "scheme": "bearer", "description": "SIDECAR_API_TOKEN as `Authorization: Bearer <token>`"},
    "apiTokenHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Token", "description": "SIDECAR_API_TOKEN"},
    "webhookSecret": {"type": "apiKey", "in": "header", "name": "X-Webhook-Secret", "description": "SIDECAR_WEBHOOK_SECRET"},
    "webhookBearer": {"type": "http", "scheme": "bearer", "description": "SIDECAR_WEBHOOK_SECRET as `Authorization: Bearer`"},
}


@dataclass(frozen=True)
class Doc:
    summary: str
    tag: str
    query: type[BaseModel] | None = None
    body: Any = None
    # status -> a type (its JSON body), {media type: type} for other or several bodies, or None for no body
    responses: dict[int, Any] = field(default_factory=dict)


def documented(
    summary: str, *, query: type[BaseModel] | None = None, body: Any = None, response: Any = None, status: int = 200,
    errors: tuple[int, ...] = (), responses: dict[int, Any] | None = None, tag: str | None = None,
) -> Callable:
    """Describe a handler for the OpenAPI document; its docstring becomes the description.
    `response` is the body at `status`; `errors` are statuses answered with an ErrorBody; `responses` adds
    or overrides any (e.g. {409: ClusteringConflict}). 400 (bad query or body), 413 (body too large) and
    the access statuses are added where they apply. `tag` groups it: by default the handler's module."""
    def attach(handler: Callable) -> Callable:
        out = {code: ErrorBody for code in errors} | {status: response} | (responses or {})
        handler.__openapi__ = Doc(summary, tag or handler.__module__.rsplit(".", 1)[-1], query, body, out)
        return handler
    return attach


def api_routes(app: web.Application) -> list[web.AbstractRoute]:
    """The routes the document must describe: every one but HEAD (aiohttp's twin of each GET) and static files."""
    return [r for r in app.router.routes() if r.method != "HEAD" and not isinstance(r.resource, web.StaticResource)]


def _media(spec: Any) -> dict[str, Any]:
    return spec if isinstance(spec, dict) else {"application/json": spec}


def _schemas(docs: list[Doc]) -> tuple[dict, dict]:
    """JSON schemas of every type the docs name, with shared definitions as components:
    ({(type, mode): schema}, {name: definition})."""
    wanted: dict[tuple, Any] = {}
    for d in docs:
        for t, mode in [(d.query, "validation"), (d.body, "validation")] + [
            (t, "serialization") for spec in d.responses.values() if spec is not None for t in _media(spec).values()
        ]:
            if t is not None:
                wanted[(t, mode)] = TypeAdapter(t).core_schema
    return GenerateJsonSchema(ref_template=REF).generate_definitions([(t, mode, cs) for (t, mode), cs in wanted.items()])


def _query_parameters(model_schema: dict, defs: dict) -> list[dict]:
    schema = defs[model_schema["$ref"].rsplit("/", 1)[-1]] if "$ref" in model_schema else model_schema
    out = []
    for name, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        options = [s for s in prop.pop("anyOf", []) if s.get("type") != "null"]  # absent is how a query says null
        if len(options) == 1:
            prop.update(options[0])
        elif options:
            prop["anyOf"] = options
        if prop.get("default", ...) is None:
            del prop["default"]
        param = {"name": name, "in": "query", "required": name in schema.get("required", ()), "schema": prop}
        if "description" in prop:
            param["description"] = prop["description"]
        out.append(param)
    return out


def _response(code: int, spec: Any, refs: dict) -> dict:
    out: dict[str, Any] = {"description": ERRORS.get(code) or HTTPStatus(code).phrase}
    if spec is not None:
        out["content"] = {media: {"schema": refs[(t, "serialization")]} for media, t in _media(spec).items()}
    return out


def build(app: web.Application) -> dict:
    """The OpenAPI 3.1 document of `app`'s routes. A route without @documented is an error."""
    from sidecar.http.access import guard

    found = []
    for route in api_routes(app):
        doc = getattr(route.handler, "__openapi__", None)
        if doc is None:
            raise LookupError(f"{route.method} {route.resource.canonical} has no @documented description")
        found.append((route, doc))
    refs, defs = _schemas([d for _, d in found])
    paths: dict[str, dict] = {}
    tags: dict[str, str | None] = {}
    for route, doc in found:
        path, method, handler = route.resource.canonical, route.method, route.handler
        module = handler.__module__.rsplit(".", 1)[-1]
        if doc.tag == module:  # a module's own tag: its docstring's first line says what it is
            tags[doc.tag] = (inspect.getmodule(handler).__doc__ or "").strip().split("\n")[0]
        tags.setdefault(doc.tag, None)
        guarded = guard(method, path)
        params = [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}} for n in re.findall(r"\{(\w+)\}", path)]
        if doc.query is not None:
            params += _query_parameters(refs[(doc.query, "validation")], defs)
        statuses = dict(doc.responses)
        if doc.query is not None or doc.body is not None:
            statuses.setdefault(400, ErrorBody)
        if doc.body is not None:
            statuses.setdefault(413, ErrorBody)
        if guarded in SECURITY:
            statuses.setdefault(401, ErrorBody)
        if guarded != "open":
            statuses.setdefault(403, ErrorBody)
        op: dict[str, Any] = {
            "operationId": f"{module}.{handler.__name__}",
            "summary": doc.summary,
            "tags": [doc.tag],
            "responses": {str(code): _response(code, spec, refs) for code, spec in sorted(statuses.items())},
        }
        if handler.__doc__:
            op["description"] = inspect.cleandoc(handler.__doc__)
        if params:
            op["parameters"] = params
        if doc.body is not None:
            op["requestBody"] = {"required": True, "content": {"application/json": {"schema": refs[(doc.body, "validation")]}}}
        if guarded in SECURITY:
            op["security"] = SECURITY[guarded]
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "music-sidecar",
            "version": sidecar.__version__,
            "description": (
                "Music recommendations for Navidrome and other Subsonic servers. Bad input gets a 4xx with a JSON body "
                "`{error, field}` naming the field. Admin endpoints need SIDECAR_API_TOKEN (without one configured, they "
                "answer only local callers); webhooks need SIDECAR_WEBHOOK_SECRET; reads are open unless "
                "SIDECAR_READ_ACCESS=localhost."
            ),
        },
        "tags": [{"name": n, **({"description": d} if d else {})} for n, d in tags.items()],
        "paths": paths,
        "components": {"schemas": defs, "securitySchemes": SECURITY_SCHEMES},
    }


# ---- the page: rendered here from the document, so it needs no script and no network
def _type(s: dict) -> str:
    """A schema in a few words, with links to named schemas."""
    if "$ref" in s:
        name = s["$ref"].rsplit("/", 1)[-1]
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    if "anyOf" in s:
        return " | ".join(_type(x) for x in s["anyOf"])
    if "enum" in s or "const" in s:
        return "one of " + ", ".join(html.escape(json.dumps(v)) for v in s.get("enum", [s.get("const")]))
    kind = s.get("type", "any")
    if kind == "array" and "prefixItems" in s:
        return "[" + ", ".join(_type(x) for x in s["prefixItems"]) + "]"
    if kind == "array":
        return f"array of {_type(s.get('items', {}))}"
    if kind == "object" and isinstance(s.get("additionalProperties"), dict):
        return f"object of {_type(s['additionalProperties'])}"
    limits = [f"{k} {s[k]}" for k in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength", "maxLength", "maxItems") if k in s]
    return html.escape(kind + (f" ({', '.join(limits)})" if limits else ""))


def _row(*cells: str) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _table(head: tuple[str, ...], rows: list[str]) -> str:
    return f"<table><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{''.join(rows)}</table>" if rows else ""


def render(spec: dict) -> str:
    esc = html.escape
    ops: dict[str, list[tuple[str, str, dict]]] = {t["name"]: [] for t in spec["tags"]}
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            ops[op["tags"][0]].append((method.upper(), path, op))
    toc, body = [], []
    for tag in spec["tags"]:
        name = tag["name"]
        toc.append(f'<li><a href="#tag-{esc(name)}">{esc(name)}</a><ul>' + "".join(
            f'<li><a href="#{esc(op["operationId"])}"><code>{m} {esc(p)}</code></a> {esc(op["summary"])}</li>' for m, p, op in ops[name]
        ) + "</ul></li>")
        body.append(f'<h2 id="tag-{esc(name)}">{esc(name)}</h2>' + (f"<p>{esc(tag['description'])}</p>" if tag.get("description") else ""))
        for method, path, op in ops[name]:
            secured = " or ".join(next(iter(s)) for s in op.get("security", []))
            body.append(
                f'<section id="{esc(op["operationId"])}"><h3><code>{method} {esc(path)}</code></h3><p><b>{esc(op["summary"])}</b></p>'
                + (f'<pre>{esc(op["description"])}</pre>' if "description" in op else "")
                + (f"<p>Needs {esc(secured)} (see security schemes).</p>" if secured else "")
                + _table(("parameter", "in", "type", "required", "description"), [
                    _row(f"<code>{esc(p['name'])}</code>", p["in"], _type(p["schema"]), "yes" if p["required"] else "", esc(p.get("description", "")))
                    for p in op.get("parameters", [])
                ])
                + (f"<p>Body: {_type(op['requestBody']['content']['application/json']['schema'])}</p>" if "requestBody" in op else "")
                + _table(("status", "meaning", "body"), [
                    _row(code, esc(r["description"]), "<br>".join(f"{esc(mt)}: {_type(c['schema'])}" for mt, c in r.get("content", {}).items()))
                    for code, r in op["responses"].items()
                ])
                + "</section>"
            )
    schemas = [
        f'<section id="schema-{esc(name)}"><h3>{esc(name)}</h3>' + (f"<p>{esc(s['description'])}</p>" if "description" in s else "")
        + _table(("field", "type", "required", "description"), [
            _row(f"<code>{esc(f)}</code>", _type(p), "yes" if f in s.get("required", ()) else "", esc(p.get("description", "")))
            for f, p in s.get("properties", {}).items()
        ]) + "</section>"
        for name, s in spec["components"]["schemas"].items()
    ]
    auth = _table(("scheme", "send", "what"), [
        _row(esc(n), f"<code>{esc(s['name'] if s['type'] == 'apiKey' else 'Authorization: Bearer')}</code>", esc(s["description"]))
        for n, s in spec["components"]["securitySchemes"].items()
    ])
    info = spec["info"]
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(info["title"])} API</title><style>'
        "body{font:15px/1.45 system-ui,sans-serif;max-width:70em;margin:auto;padding:1em}code,pre{font-size:13px}h3 code{font-size:inherit}"
        "pre{white-space:pre-wrap;background:#f4f4f4;padding:.5em}table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left;vertical-align:top}section{margin-bottom:1.5em}"
        "</style></head><body>"
        f'<h1>{esc(info["title"])} {esc(info["version"])}</h1><p>{esc(info["description"])}</p>'
        '<p>The machine-readable description: <a href="/openapi.json">/openapi.json</a> (OpenAPI 3.1).</p>'
        f"<h2>Endpoints</h2><ul>{''.join(toc)}</ul>{''.join(body)}<h2>Security schemes</h2>{auth}"
        f"<h2>Schemas</h2>{''.join(schemas)}</body></html>"
    )
