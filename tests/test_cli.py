"""The `sidecar` command explains itself and refuses settings it does not know."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sidecar.cli import app

SUBCOMMANDS = ["serve", "setup", "scan", "replay", "rescan", "status", "train-text", "config"]


def test_every_subcommand_has_help():
    top = CliRunner().invoke(app, ["--help"])
    assert top.exit_code == 0 and all(c in top.output for c in SUBCOMMANDS)
    for command in SUBCOMMANDS:
        result = CliRunner().invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output and len(result.output) > 300, command


def test_an_unknown_setting_is_an_error_with_a_suggestion(monkeypatch):
    monkeypatch.setenv("SIDECAR_MUSICDIR", "/music")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2 and "SIDECAR_MUSICDIR" in result.output and "SIDECAR_MUSIC_DIR" in result.output


def test_an_invalid_setting_names_it(monkeypatch):
    monkeypatch.setenv("SIDECAR_PORT", "eighty")
    result = CliRunner().invoke(app, ["config", "show"])
    assert result.exit_code == 2 and "port" in result.output


def test_config_show_masks_secrets_and_takes_plugin_options(monkeypatch):
    monkeypatch.setenv("SIDECAR_API_TOKEN", "very-secret-token")
    monkeypatch.setenv("SIDECAR_PLUGINS__MERT__CHECKPOINT", "/models/mert")
    result = CliRunner().invoke(app, ["config", "show", "--json"])
    assert result.exit_code == 0 and "very-secret-token" not in result.output
    shown = json.loads(result.output)
    assert shown["api_token"] == "***" and shown["media_server_password"] == ""  # unset secrets show as empty
    assert shown["plugins"] == {"mert": {"checkpoint": "/models/mert"}} and shown["port"] == 8765
