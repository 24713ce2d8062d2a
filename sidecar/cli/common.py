"""What every `sidecar` command shares: the app, the common options, settings with clear errors, logging."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from sidecar.config import CONFIG_FILE_ENV

app = typer.Typer(
    help="Music recommendation sidecar for Navidrome and other Subsonic servers: watches your music, embeds each "
    "track with real audio models, stores vectors in Milvus and answers recommendation requests over HTTP.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

MusicDirOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--music-dir", "-m", help="music folder to watch; repeat for several (env SIDECAR_MUSIC_DIR, ':'-separated)"),
]
DataDirOpt = Annotated[Optional[Path], typer.Option(help="where the catalog, event log, vectors and weights live (env SIDECAR_DATA_DIR; default ./data)")]
HostOpt = Annotated[Optional[str], typer.Option(help="address to listen on (env SIDECAR_HOST; default 127.0.0.1)")]
PortOpt = Annotated[Optional[int], typer.Option(help="HTTP port (env SIDECAR_PORT; default 8765)")]
BusOpt = Annotated[Optional[str], typer.Option(help="event bus: embedded (no server) or kafka (env SIDECAR_BUS)")]
EmbeddersOpt = Annotated[Optional[str], typer.Option(help="comma-separated embedders to run (env SIDECAR_EMBEDDERS; default musicnn,dsp)")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")]


@app.callback()
def _global(
    config: Annotated[Optional[Path], typer.Option(
        "--config", "-c", help=f"TOML settings file (env {CONFIG_FILE_ENV}; default ./sidecar.toml when present). "
        "Keys are the setting names in lower case, e.g. music_dir = [\"/music\"]; environment variables and flags override it.",
    )] = None,
):
    if config is not None:
        os.environ[CONFIG_FILE_ENV] = str(config)


def _settings(**overrides):
    from sidecar.config import Settings, SettingsFileError, closest_setting, config_file

    unknown = Settings.unknown_env(os.environ)
    if unknown:
        console.print(f"[red]error:[/] unknown setting {', '.join(unknown)}; `sidecar config show` lists them all")
        raise typer.Exit(2)
    given = {k: v for k, v in overrides.items() if v not in (None, [])}
    try:
        return Settings(**given)
    except SettingsFileError as e:
        _fail(str(e), 2)
    except ValidationError as e:
        source = config_file()
        for err in e.errors():
            where = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                close = closest_setting(str(err["loc"][0]))
                hint = f" (did you mean {close}?)" if close else ""
                console.print(f"[red]error:[/] unknown setting [bold]{where}[/] in {source or 'the arguments'}{hint}")
            else:
                console.print(f"[red]error:[/] setting [bold]{where}[/]: {err['msg']} (got {err.get('input')!r})")
        raise typer.Exit(2)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    for noisy in ("aiokafka", "pymilvus", "milvus_lite", "watchdog", "numba", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(message: str, code: int = 1):
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)
