"""Prometheus metrics, one registry for the process."""
from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter("sidecar_events_total", "library events consumed", ["type"])
MALFORMED = Counter("sidecar_events_malformed_total", "messages that failed validation and went to the dead letters")
EMBEDDED = Counter("sidecar_tracks_embedded_total", "tracks embedded", ["model"])
SKIPPED = Counter("sidecar_tracks_skipped_total", "upserts that needed no model run", ["reason"])
FAILURES = Counter("sidecar_failures_total", "tracks or files that failed", ["stage"])
STAGE_SECONDS = Histogram(
    "sidecar_stage_seconds", "time per track and stage", ["stage"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
IN_FLIGHT = Gauge("sidecar_ingest_in_flight", "events being processed now")
QUEUE_DEPTH = Gauge("sidecar_queue_depth", "library events waiting on the bus (consumer lag), read at each scrape")
REQUEST_SECONDS = Histogram(
    "sidecar_http_request_seconds", "HTTP request latency by route", ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
