"""Every setting in one place. Highest first: CLI flags, environment variables (prefix SIDECAR_), the TOML
settings file (SIDECAR_CONFIG, or ./sidecar.toml when there is one), defaults."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, NoDecode, SettingsConfigDict

CONFIG_FILE_ENV = "SIDECAR_CONFIG"
DEFAULT_CONFIG_FILE = Path("sidecar.toml")
_PATH_SETTINGS = ("music_dir", "data_dir")


class SettingsFileError(ValueError):
    """The settings file is missing or is not valid TOML."""


def config_file() -> Path | None:
    """The TOML settings file in effect: SIDECAR_CONFIG if set (it must exist), else ./sidecar.toml if present."""
    given = os.environ.get(CONFIG_FILE_ENV)
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise SettingsFileError(f"settings file {path} ({CONFIG_FILE_ENV}) does not exist or is not a file")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def read_config_file(path: Path) -> dict[str, Any]:
    """The file's settings, with relative paths taken from the file's folder (as a reader of the file expects)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsFileError(f"settings file {path} cannot be read: {e}") from None
    base = path.resolve().parent
    for key in _PATH_SETTINGS:
        value = data.get(key)
        if isinstance(value, str):
            value = value.split(os.pathsep) if key == "music_dir" else value
        if isinstance(value, list):
            data[key] = [str(base / Path(v).expanduser()) if isinstance(v, str) else v for v in value]
        elif isinstance(value, str):
            data[key] = str(base / Path(value).expanduser())
    return data


def closest_setting(name: str) -> str | None:
    import difflib

    close = difflib.get_close_matches(name.lower(), list(Settings.model_fields), n=1)
    return close[0] if close else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SIDECAR_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    music_dir: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="music roots to watch; several are separated by ':' in SIDECAR_MUSIC_DIR",
    )
    data_dir: Path = Field(default=Path("data"), description="catalog, event log, Milvus Lite file, model weights")
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)

    bus: Literal["embedded", "kafka"] = Field(default="embedded", description="embedded durable log, or Kafka")
    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_topic: str = "sidecar.library"
    kafka_dead_letter_topic: str = "sidecar.library.dead"
    kafka_group: str = "sidecar-ingest"
    kafka_session_timeout_ms: int = Field(default=10000, ge=1000, description="a dead worker's partitions move after this")
    kafka_heartbeat_interval_ms: int = Field(default=3000, ge=100)
    kafka_fetch_max_wait_ms: int = Field(default=100, ge=0, le=10000, description="low, so new files are picked up at once")
    max_event_bytes: int = Field(
        default=1 << 20, ge=1024, le=64 << 20, description="largest event (key and value) a bus accepts; a larger one "
        "is refused when published and sent to the dead letters when consumed",
    )

    milvus_uri: str = Field(default="", description="Milvus server URI; empty: a Milvus Lite file in the data dir")
    milvus_token: str = Field(default="", repr=False)
    vector_mirror: bool = Field(
        default=True, description="answer searches from an exact in-memory copy of the vectors (fast); false: from "
        "Milvus itself (a server's HNSW index), for libraries whose vectors do not fit in memory",
    )
    catalog_url: str = Field(
        default="", repr=False, description="PostgreSQL URL of a catalog shared by several workers and API processes "
        "(postgresql://user:password@host/db); empty: an SQLite file in the data dir",
    )
    follow_interval_s: float = Field(default=0.5, gt=0, le=60, description="how often an API process looks for vectors the workers wrote")

    embedders: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["musicnn", "dsp"])
    media_server_url: str = Field(default="", description="Navidrome or another Subsonic server, e.g. http://navidrome:4533; empty: none")
    media_server_user: str = ""
    media_server_password: str = Field(default="", repr=False, description="password, or enc:<hex> for servers without token auth")
    media_server_api_key: str = Field(default="", repr=False, description="API key instead of user and password (OpenSubsonic)")
    media_server_auth: Literal["token", "password"] = Field(
        default="token", description="token: salted md5 token (Navidrome); password: p= (servers without token auth)"
    )
    media_server_path_prefix: str = Field(
        default="", description="SERVER_PREFIX=LOCAL_PREFIX: how the server's song paths map to this sidecar's music mount"
    )
    media_server_sync_interval_s: float = Field(default=900, ge=0, description="stars, ratings and play counts; 0 disables")
    media_server_scan_poll_s: float = Field(default=60, ge=0, description="poll getScanStatus; 0 disables")
    webhook_secret: str = Field(default="", repr=False, description="shared secret the webhooks must present")
    api_token: str = Field(default="", repr=False, description="token for admin and mutating endpoints; empty: loopback callers only")
    read_access: Literal["any", "localhost"] = Field(default="any", description="localhost: read endpoints answer only local callers")
    llm_url: str = Field(default="", description="OpenAI-compatible or Ollama base URL for the instant playlist; empty: none")
    llm_model: str = ""
    llm_api_key: str = Field(default="", repr=False)
    llm_api: Literal["openai", "ollama"] = Field(default="openai", description="the protocol llm_url speaks")
    llm_timeout_s: float = Field(default=30, gt=0, le=600)
    plugins: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per-plugin options: SIDECAR_PLUGINS__MERT__CHECKPOINT=/path sets plugins['mert']['checkpoint']",
    )
    text_encoder: str = Field(default="minilm", description="sentence encoder for text search")
    allow_duplicate_recordings: bool = Field(
        default=False, description="let one playlist hold the same recording twice (another format, bit rate, trim or "
        "master of a track: its duplicate_of); false: the best-ranked copy stays and the list fills from further down",
    )
    ingest_workers: int = Field(default=2, ge=1, le=64, description="tracks analysed at once")
    torch_threads: int = Field(default=1, ge=1, le=64, description="intra-op threads per analysis")
    ingest_nice: int = Field(
        default=10, ge=0, le=19, description="analysis threads run this much below the API's CPU priority (Linux); 0: same"
    )
    debounce_s: float = Field(default=1.0, ge=0, le=60, description="a file must stay unchanged this long")
    reconcile_interval_s: float = Field(default=3600, ge=0, description="periodic reconcile walk; 0 disables")
    audio_extensions: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [".ogg", ".oga", ".opus", ".mp3", ".flac", ".wav", ".m4a", ".aiff", ".aif"]
    )

    @field_validator("music_dir", mode="before")
    @classmethod
    def _split_dirs(cls, v):
        if isinstance(v, (str, Path)):
            v = [p for p in str(v).split(os.pathsep) if p]
        return [Path(p).expanduser().resolve() for p in v]

    @field_validator("embedders", "audio_extensions", mode="before")
    @classmethod
    def _split_list(cls, v):
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("data_dir")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        path = config_file()
        if path is None:
            return init_settings, env_settings
        return init_settings, env_settings, InitSettingsSource(settings_cls, read_config_file(path))

    @classmethod
    def unknown_env(cls, environ) -> list[str]:
        """SIDECAR_* variables that name no setting (a typo would otherwise be ignored), each with a
        suggestion where one is close."""
        prefix = cls.model_config["env_prefix"]
        out = []
        for key in environ:
            if not key.upper().startswith(prefix) or key.upper() == CONFIG_FILE_ENV:
                continue
            name = key[len(prefix):].lower().split("__", 1)[0]
            if name not in cls.model_fields:
                close = closest_setting(name)
                out.append(f"{key}" + (f" (did you mean {prefix}{close.upper()}?)" if close else ""))
        return sorted(out)

    def shown(self) -> dict:
        """The effective settings, secrets masked: for `sidecar config show`."""
        secret = {n for n, f in type(self).model_fields.items() if f.repr is False}
        data = self.model_dump(mode="json")
        return {k: ("***" if k in secret and v else v) for k, v in data.items()}

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.sqlite3"

    @property
    def catalog_target(self) -> str | Path:
        return self.catalog_url or self.catalog_path

    @property
    def event_log_path(self) -> Path:
        return self.data_dir / "events.sqlite3"

    @property
    def milvus_target(self) -> str:
        return self.milvus_uri or str(self.data_dir / "milvus.db")
