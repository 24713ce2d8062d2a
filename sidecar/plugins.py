"""Find embedder plugins through the `sidecar.embedders` entry-point group and load the enabled ones."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from sidecar.plugin_api import Embedder, EmbedderUnavailable

log = logging.getLogger(__name__)
GROUP = "sidecar.embedders"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def discover() -> dict[str, type[Embedder]]:
    found: dict[str, type[Embedder]] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
        except Exception as e:  # a broken third-party plugin must not take the service down
            log.error("embedder plugin %s failed to import: %s", ep.name, e)
            continue
        if not _NAME.match(ep.name):
            log.error("embedder plugin name %r is not lowercase letters, digits and underscores; skipped", ep.name)
            continue
        found[ep.name] = cls
    return found


@dataclass
class LoadedEmbedders:
    ready: dict[str, Embedder] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> why

    @property
    def versions(self) -> dict[str, str]:
        return {name: e.version for name, e in self.ready.items()}


def load_embedders(names: list[str], models_dir: Path, *, prepare: bool = True) -> LoadedEmbedders:
    """Instantiate, prepare (fetch/convert weights if missing) and load each named embedder."""
    available = discover()
    out = LoadedEmbedders()
    for name in names:
        cls = available.get(name)
        if cls is None:
            out.unavailable[name] = f"no embedder plugin named {name!r} is installed (installed: {', '.join(sorted(available)) or 'none'})"
            continue
        emb = cls()
        try:
            if prepare:
                emb.prepare(models_dir)
            emb.load(models_dir)
        except EmbedderUnavailable as e:
            out.unavailable[name] = str(e)
            continue
        out.ready[name] = emb
    return out
