"""The `sidecar` command explains itself and refuses settings it does not know."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from sidecar.cli import app

SUBCOMMANDS = ["serve", "setup", "scan", "replay", "rescan", "status", "doctor", "train-text", "config"]


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


# ---- the TOML settings file


@pytest.fixture(autouse=True)
def _restore_config_env(monkeypatch):
    """`--config` sets SIDECAR_CONFIG for the process; registering it here makes monkeypatch remove it after."""
    monkeypatch.setenv("SIDECAR_CONFIG", "")


def _show(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*args, "config", "show", "--json"])
    return result.exit_code, " ".join(result.output.split()) if result.exit_code else result.output


def test_a_settings_file_is_read_and_environment_and_flags_override_it(tmp_path, monkeypatch):
    conf = tmp_path / "etc" / "sidecar.toml"
    conf.parent.mkdir()
    conf.write_text('''
music_dir = ["music", "/srv/more"]   # relative paths are taken from the file's folder
data_dir = "state"
port = 9000
api_token = "token-from-the-file"
embedders = ["musicnn"]

[plugins.mert]
checkpoint = "/models/mert"
''')
    code, out = _show("--config", str(conf))
    assert code == 0, out
    shown = json.loads(out)
    assert shown["music_dir"] == [str(conf.parent / "music"), "/srv/more"] and shown["data_dir"] == str(conf.parent / "state")
    assert shown["port"] == 9000 and shown["embedders"] == ["musicnn"] and shown["plugins"] == {"mert": {"checkpoint": "/models/mert"}}
    assert shown["api_token"] == "***" and "token-from-the-file" not in out
    monkeypatch.setenv("SIDECAR_PORT", "9100")  # the environment beats the file
    assert json.loads(_show("--config", str(conf))[1])["port"] == 9100
    monkeypatch.delenv("SIDECAR_PORT")
    monkeypatch.chdir(conf.parent)  # ./sidecar.toml is found without being named
    assert json.loads(_show()[1])["port"] == 9000


def test_a_bad_settings_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = _show("--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in out and "does not exist" in out
    bad = tmp_path / "bad.toml"
    bad.write_text("port = \n")
    code, out = _show("--config", str(bad))
    assert code == 2 and "bad.toml cannot be read" in out
    typo = tmp_path / "typo.toml"
    typo.write_text('musik_dir = ["/music"]\n')
    code, out = _show("--config", str(typo))
    assert code == 2 and "musik_dir" in out and "did you mean music_dir" in out
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('port = "eighty"\n')
    code, out = _show("--config", str(wrong))
    assert code == 2 and "port" in out and "eighty" in out


# ---- sidecar doctor


def _doctor(*args: str) -> tuple[int, dict[str, dict]]:
    result = CliRunner().invoke(app, ["doctor", "--json", *args])
    start = result.output.index("[")
    return result.exit_code, {c["name"]: c for c in json.loads(result.output[start:result.output.rindex("]") + 1])}


def test_doctor_passes_on_a_working_setup_and_names_what_is_wrong(copy_library, analysed_library, tmp_path, monkeypatch):
    from tests.servers import free_port

    monkeypatch.setenv("SIDECAR_PORT", str(free_port()))
    music = str(analysed_library["music"])
    code, checks = _doctor("--data-dir", str(copy_library), "-m", music)
    assert code == 0, checks
    assert {c["status"] for c in checks.values()} <= {"ok", "skip"}
    assert "51" in checks["vector store"]["detail"] and checks["model musicnn"]["status"] == "ok"

    # a fresh data dir without weights, a missing music folder and a broker that is not there
    code, checks = _doctor("--data-dir", str(tmp_path / "fresh"), "-m", str(tmp_path / "nowhere"),
                           "--bus", "kafka", "--embedders", "musicnn")
    assert code == 1
    failed = {name for name, c in checks.items() if c["status"] == "fail"}
    assert failed == {f"music {tmp_path / 'nowhere'}", "event bus", "model musicnn"}, checks
    assert "sidecar setup" in checks["model musicnn"]["fix"] + checks["model musicnn"]["detail"]
    assert "SIDECAR_KAFKA_BOOTSTRAP" in checks["event bus"]["fix"]


def test_doctor_reaches_a_real_broker_and_media_server(copy_library, analysed_library, kafka_bootstrap, supysonic, monkeypatch):
    from tests.servers import free_port

    monkeypatch.setenv("SIDECAR_PORT", str(free_port()))
    monkeypatch.setenv("SIDECAR_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("SIDECAR_MEDIA_SERVER_URL", supysonic.url)
    monkeypatch.setenv("SIDECAR_MEDIA_SERVER_USER", supysonic.user)
    monkeypatch.setenv("SIDECAR_MEDIA_SERVER_PASSWORD", supysonic.password)
    monkeypatch.setenv("SIDECAR_MEDIA_SERVER_AUTH", "password")
    args = ("--data-dir", str(copy_library), "-m", str(analysed_library["music"]), "--bus", "kafka")
    code, checks = _doctor(*args)
    assert checks["event bus"]["status"] == "ok" and kafka_bootstrap in checks["event bus"]["detail"]
    assert checks["media server"]["status"] == "ok" and "API" in checks["media server"]["detail"]
    assert checks["webhooks"]["status"] == "warn"  # a media server but no webhook secret
    assert code == 0, checks

    monkeypatch.setenv("SIDECAR_MEDIA_SERVER_PASSWORD", "wrong password")
    code, checks = _doctor(*args)
    assert code == 1 and checks["media server"]["status"] == "fail"
    assert "SIDECAR_MEDIA_SERVER_USER" in checks["media server"]["fix"] and "wrong password" not in json.dumps(checks)


def test_doctor_reaches_a_shared_catalog_and_names_a_wrong_one(copy_library, analysed_library, postgres_db, monkeypatch):
    from sidecar.data.catalog import Catalog
    from tests.servers import free_port

    monkeypatch.setenv("SIDECAR_PORT", str(free_port()))
    args = ("--data-dir", str(copy_library), "-m", str(analysed_library["music"]))
    monkeypatch.setenv("SIDECAR_CATALOG_URL", postgres_db)
    assert _doctor(*args)[1]["catalog"]["detail"].endswith("empty: its tables are made on first start")
    Catalog(postgres_db).close()  # migrated
    code, checks = _doctor(*args)
    assert code == 0 and checks["catalog"]["status"] == "ok" and "schema version" in checks["catalog"]["detail"]
    wrong = postgres_db.rsplit("/", 1)[0] + "/no_such_database"
    monkeypatch.setenv("SIDECAR_CATALOG_URL", wrong.replace("postgres@", "postgres:secret@"))
    code, checks = _doctor(*args)
    assert code == 1 and checks["catalog"]["status"] == "fail" and "SIDECAR_CATALOG_URL" in checks["catalog"]["fix"]
    assert "no_such_database" in checks["catalog"]["detail"] and "secret" not in json.dumps(checks)
