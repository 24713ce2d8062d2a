"""Plugin options (sidecar.plugins.api.PluginOptions) and the loader that gives each plugin its own.

Fast: no model is loaded. The installed plugins are used where they show the rule (their own option classes);
`Demo` is a small plugin declared here to reach every kind of field."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import Field

from sidecar.plugins import CaseInsensitive, EmbedderUnavailable, Plugin, PluginNotInstalled, PluginOptions
from sidecar.plugins.api import MediaServerOptions
from sidecar.plugins.loader import EMBEDDERS, TEXT_ENCODERS, create_plugin, discover, load_embedders, load_text_encoder


class Demo(Plugin):
    name = "demo"

    class Options(PluginOptions):
        window_s: float = Field(10.0, ge=1.0, le=60.0, allow_inf_nan=False, description="seconds per window")
        max_windows: int = Field(6, ge=1, description="windows per track")
        pooling: Annotated[Literal["meanstd", "mean"], CaseInsensitive] = Field("meanstd", description="statistics kept")
        checkpoint: Path | None = Field(None, description="a local checkpoint")


def test_defaults_apply_when_an_option_is_unset_or_empty():
    d = Demo()
    assert (d.options.window_s, d.options.max_windows, d.options.pooling, d.options.checkpoint) == (10.0, 6, "meanstd", None)
    d.configure({"window_s": "  ", "checkpoint": ""})  # an empty variable means the default
    assert (d.options.window_s, d.options.checkpoint) == (10.0, None)


def test_values_are_typed_names_and_choices_case_insensitive():
    d = Demo()
    d.configure({"WINDOW_S": " 2.5 ", "Max_Windows": "3", "pooling": " MEAN ", "checkpoint": "/models/x"})
    assert d.options.window_s == 2.5 and d.options.max_windows == 3 and d.options.pooling == "mean"
    assert d.options.checkpoint == Path("/models/x")
    with pytest.raises(Exception):  # frozen: options change only through configure
        d.options.max_windows = 9


@pytest.mark.parametrize(
    "option,value,says",
    [
        ("window_s", "0.5", "greater than or equal to 1"),
        ("window_s", "61", "less than or equal to 60"),
        ("window_s", "nan", "finite"),
        ("max_windows", "1.5", "integer"),
        ("max_windows", "many", "integer"),
        ("pooling", "max", "'meanstd' or 'mean'"),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_the_rule(option, value, says):
    with pytest.raises(EmbedderUnavailable) as ei:
        Demo().configure({option: value})
    message = str(ei.value)
    assert message.startswith(f"SIDECAR_PLUGINS__DEMO__{option.upper()}={value!r}: ")
    assert says in message and Demo.Options.model_fields[option].description in message


def test_an_unknown_option_names_the_closest_and_lists_the_others():
    with pytest.raises(EmbedderUnavailable) as ei:
        Demo().configure({"max_window": "3"})
    message = str(ei.value)
    assert message.startswith("SIDECAR_PLUGINS__DEMO__MAX_WINDOW='3': the demo plugin has no option 'max_window'")
    assert "did you mean SIDECAR_PLUGINS__DEMO__MAX_WINDOWS?" in message
    assert "(its options: checkpoint, max_windows, pooling, window_s)" in message
    with pytest.raises(EmbedderUnavailable) as ei:
        Demo().configure({"colour": "blue"})  # nothing close: no guess, still the list
    assert "did you mean" not in str(ei.value) and "its options: checkpoint" in str(ei.value)


def test_every_wrong_option_is_reported_at_once_and_the_old_options_stay():
    d = Demo()
    d.configure({"max_windows": "2"})
    with pytest.raises(EmbedderUnavailable) as ei:
        d.configure({"window_s": "0", "pooling": "max", "layers": "1"})
    found = re.findall(r"SIDECAR_PLUGINS__DEMO__(\w+)=", str(ei.value))
    assert sorted(found) == ["LAYERS", "POOLING", "WINDOW_S"]
    assert d.options.max_windows == 2


def test_an_option_without_default_or_description_is_refused_where_it_is_declared():
    with pytest.raises(TypeError, match="Bad.threads: a plugin option needs a default and a description"):

        class Bad(PluginOptions):
            threads: int = 1

    with pytest.raises(TypeError, match="a default"):

        class NoDefault(PluginOptions):
            threads: int = Field(description="threads")


def test_installed_plugins_declare_their_options():
    """Each installed plugin starts with its declared defaults; a typo in one of its options names the right one."""
    seen = 0
    for group in (EMBEDDERS, TEXT_ENCODERS):
        for name, cls in discover(group).items():
            fields = cls.Options.model_fields
            plugin = cls()
            assert plugin.options == cls.Options()
            for option in fields:
                with pytest.raises(EmbedderUnavailable, match=f"did you mean SIDECAR_PLUGINS__{name.upper()}__{option.upper()}\\?"):
                    plugin.configure({option + "x": "1"})
                seen += 1
    assert seen >= 10  # musicnn, mert, clap, muq... have options
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__DSP__WINDOW_S='5': the dsp plugin takes no options"):
        create_plugin(EMBEDDERS, "dsp", {"dsp": {"window_s": "5"}})


def test_mert_layers_are_parsed_by_the_option():
    mert = create_plugin(EMBEDDERS, "mert", {"mert": {"layers": " 1, 4-9 ,ALL", "pooling": "Mean"}})
    assert mert.options.layers == ("1", "4-9", "all") and mert.options.pooling == "mean"
    with pytest.raises(EmbedderUnavailable, match=r"SIDECAR_PLUGINS__MERT__LAYERS='1,1': a block is named twice"):
        mert.configure({"layers": "1,1"})


def test_the_loader_gives_each_plugin_its_own_options_and_keeps_the_reasons(tmp_path):
    options = {"dsp": {}, "musicnn": {"patchs": "8"}, "mert": {"checkpoint": str(tmp_path / "none")}}
    out = load_embedders(["dsp", "musicnn", "mert", "mertt"], tmp_path, options, prepare=False)
    assert list(out.ready) == ["dsp"]
    assert "did you mean SIDECAR_PLUGINS__MUSICNN__PATCHES?" in out.unavailable["musicnn"]
    assert f"SIDECAR_PLUGINS__MERT__CHECKPOINT={tmp_path / 'none'}: no such directory" in out.unavailable["mert"]
    assert "no embedder plugin named 'mertt' is installed; did you mean 'mert'?" in out.unavailable["mertt"]
    with pytest.raises(EmbedderUnavailable, match=r"MINILM__CHECKPONT='/x'.*did you mean SIDECAR_PLUGINS__MINILM__CHECKPOINT\?"):
        load_text_encoder("minilm", tmp_path, {"minilm": {"checkpont": "/x"}})
    with pytest.raises(LookupError, match="no text encoder plugin named 'nope'") as ei:
        create_plugin(TEXT_ENCODERS, "nope")
    assert isinstance(ei.value, PluginNotInstalled) and isinstance(ei.value, EmbedderUnavailable)


@pytest.mark.parametrize(
    "options,says",
    [
        ({"retry_min_s": "soon"}, "SIDECAR_PLUGINS__SUBSONIC__RETRY_MIN_S='soon': input should be a valid number"),
        ({"retries": "0"}, "SIDECAR_PLUGINS__SUBSONIC__RETRIES='0': input should be greater than or equal to 1"),
        ({"method": "PUT"}, "input should be 'auto', 'get' or 'post'"),
        ({"retry_min_s": "600"}, "retry_min_s (600) is longer than retry_max_s (300)"),
        ({"evnts": "on"}, "did you mean SIDECAR_PLUGINS__SUBSONIC__EVENTS?"),
    ],
)
def test_media_server_options_are_checked_like_a_plugins(options, says):
    """SIDECAR_PLUGINS__SUBSONIC__*: the adapter's and the media-server service's options, typed and bounded."""

    class Settings:
        plugins = {"subsonic": options}

    with pytest.raises(ValueError, match=re.escape(says)):
        MediaServerOptions.of(Settings())
    Settings.plugins = {"subsonic": {"EVENTS": "on", "method": "POST", "retry_min_s": "0.5", "page_size": ""}}
    got = MediaServerOptions.of(Settings())
    assert (got.events, got.method, got.retry_min_s, got.page_size) == (True, "post", 0.5, 500)
