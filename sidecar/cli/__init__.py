"""The `sidecar` command. Every flag can also be set by an environment variable SIDECAR_<NAME>.

common: the app and what every command shares; service: serve, setup, status, doctor, config show;
library: scan, replay, rescan, train-text."""
from sidecar.cli import service, library  # noqa: F401, I001 - each registers its commands on the app, in this order
from sidecar.cli.common import app


def main() -> None:  # pragma: no cover - entry point
    app()
