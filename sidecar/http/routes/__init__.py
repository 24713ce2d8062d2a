"""The API's handlers, one module per area (the OpenAPI tag of its routes is the module's name). Each parses
the request into its pydantic model, calls the domain code (off the event loop where it blocks) and answers
the result; domain errors become statuses in one place (sidecar/http/app.py)."""
from sidecar.http.routes import batch, clustering, docs, explore, instant, library, mediaserver, recommend, service, webhooks, webpage

# registration order: the fixed paths of an area before its patterns ("/api/clustering/start" before "{job_id}")
ROUTE_MODULES = (service, library, recommend, webhooks, batch, explore, clustering, instant, mediaserver, webpage, docs)
