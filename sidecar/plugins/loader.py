"""Find plugins through entry points (`sidecar.embedders`, `sidecar.text_encoders`) and load the enabled ones."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from sidecar.errors import BadInput
from sidecar.plugins.api import Embedder, EmbedderUnavailable, TextEncoder

log = logging.getLogger(__name__)
EMBEDDERS, TEXT_ENCODERS = "sidecar.embedders", "sidecar.text_encoders"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")


def discover(group: str = EMBEDDERS) -> dict[str, type]:
    found: dict[str, type] = {}
    for ep in entry_points(group=group):
        if not _NAME.match(ep.name):
            log.error("plugin name %r is not lowercase letters, digits and underscores; skipped", ep.name)
            continue
        try:
            found[ep.name] = ep.load()
        except Exception as e:  # a broken third-party plugin must not take the service down
            log.error("plugin %s failed to import: %s", ep.name, e)
    return found


@dataclass
class LoadedEmbedders:
    ready: dict[str, Embedder] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # name -> why

    @property
    def versions(self) -> dict[str, str]:
        return {name: e.version for name, e in self.ready.items()}

    @property
    def default(self) -> str:
        """The model a request that names none uses: the first enabled one that loaded."""
        return next(iter(self.ready))

    def require(self, name: str | None, field: str = "model") -> str:
        """`name` (or the default when None) if it is ready; BadInput naming `field` if not."""
        model = name or self.default
        if model not in self.ready:
            raise BadInput(f"unknown or unavailable model {model!r}; available: {', '.join(self.ready)}", field)
        return model


def load_embedders(
    names: list[str], models_dir: Path, options: dict[str, dict[str, str]] | None = None, *, prepare: bool = True
) -> LoadedEmbedders:
    """Instantiate, configure, prepare (fetch/convert weights if missing) and load each named embedder."""
    available = discover(EMBEDDERS)
    out = LoadedEmbedders()
    for name in names:
        cls = available.get(name)
        if cls is None:
            out.unavailable[name] = f"no embedder plugin named {name!r} is installed (installed: {', '.join(sorted(available)) or 'none'})"
            continue
        emb: Embedder = cls()
        try:
            emb.configure((options or {}).get(name, {}))
            if prepare:
                emb.prepare(models_dir)
            emb.load(models_dir)
        except EmbedderUnavailable as e:
            out.unavailable[name] = str(e)
            continue
        out.ready[name] = emb
    return out


def load_text_encoder(name: str, models_dir: Path, options: dict[str, dict[str, str]] | None = None) -> TextEncoder:
    """Raises EmbedderUnavailable with the reason."""
    cls = discover(TEXT_ENCODERS).get(name)
    if cls is None:
        raise EmbedderUnavailable(f"no text encoder plugin named {name!r} is installed")
    enc: TextEncoder = cls()
    enc.configure((options or {}).get(name, {}))
    enc.load(models_dir)
    return enc
