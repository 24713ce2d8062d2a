"""Plugins: the interfaces they implement (api) and the one loader that finds them through entry points."""
from sidecar.plugins.api import Block, CaseInsensitive, Embedder, EmbedderUnavailable, Plugin, PluginOptions, TextEncoder, option_env
from sidecar.plugins.loader import (
    LoadedEmbedders, PluginNotInstalled, create_plugin, discover, load_embedders, load_text_encoder, plugin_class,
)  # fmt: skip

__all__ = [
    "Block", "CaseInsensitive", "Embedder", "EmbedderUnavailable", "LoadedEmbedders", "Plugin", "PluginNotInstalled",
    "PluginOptions", "TextEncoder", "create_plugin", "discover", "load_embedders", "load_text_encoder", "option_env",
    "plugin_class",
]
