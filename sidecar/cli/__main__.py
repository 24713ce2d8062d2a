"""`python -m sidecar.cli`: the same as the `sidecar` command."""
from sidecar.cli import app

app()
