"""Find plugins through entry points (`sidecar.embedders`, `sidecar.text_encoders`, `sidecar.media_servers`) and
load the enabled ones: `discover(group)` finds a group's plugins, `plugin_class` picks one by name, and
`create_plugin` instantiates and configures it, for every group whose plugins are made with no arguments."""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from sidecar.errors import BadInput
from sidecar.plugins.api import Embedder, EmbedderUnavailable, MediaServer, TextEncoder

log = logging.getLogger(__name__)
EMBEDDERS, TEXT_ENCODERS = "sidecar.embedders", "sidecar.text_encoders"
MEDIA_SERVERS = "sidecar.media_servers"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
_KINDS = {EMBEDDERS: "embedder", TEXT_ENCODERS: "text encoder", MEDIA_SERVERS: "media-server adapter"}


class PluginNotInstalled(EmbedderUnavailable, LookupError):
    """No plugin of that name in the group: a model that cannot run (EmbedderUnavailable), a lookup that failed."""


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


def plugin_class(group: str, name: str, found: dict[str, type] | None = None) -> type:
    """The class of plugin `name` in entry-point `group` (`found`: what `discover(group)` already returned);
    PluginNotInstalled naming the installed ones, and the closest, if there is none."""
    found = discover(group) if found is None else found
    cls = found.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(found), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise PluginNotInstalled(
            f"no {_KINDS.get(group, group)} plugin named {name!r} is installed{hint} (installed: {', '.join(sorted(found)) or 'none'})"
        )
    return cls


def create_plugin(group: str, name: str, options: dict[str, dict[str, str]] | None = None, *, found: dict[str, type] | None = None):
    """Plugin `name` of `group`, instantiated and configured with its own options (`options[name]`: the settings'
    `plugins`); EmbedderUnavailable (PluginNotInstalled, or a wrong option) with the reason."""
    plugin = plugin_class(group, name, found)()
    plugin.configure((options or {}).get(name, {}))
    return plugin


def load_embedders(
    names: list[str], models_dir: Path, options: dict[str, dict[str, str]] | None = None, *, prepare: bool = True
) -> LoadedEmbedders:
    """Instantiate, configure, prepare (fetch/convert weights if missing) and load each named embedder."""
    available = discover(EMBEDDERS)
    out = LoadedEmbedders()
    for name in names:
        try:
            emb: Embedder = create_plugin(EMBEDDERS, name, options, found=available)
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
    enc: TextEncoder = create_plugin(TEXT_ENCODERS, name, options)
    enc.load(models_dir)
    return enc


def load_media_server(name: str, settings, **overrides) -> MediaServer:
    """The media-server adapter `name`, made from the settings (`overrides`: e.g. timeout_s for a quick check).
    LookupError names the installed adapters; ValueError (from the adapter) the setting that is wrong."""
    adapter = plugin_class(MEDIA_SERVERS, name).from_settings(settings, **overrides)
    if not isinstance(adapter, MediaServer):
        raise LookupError(f"media-server adapter {name!r} does not implement sidecar.plugins.api.MediaServer")
    return adapter
