"""Plugins: the interfaces they implement (api) and the one loader that finds them through entry points."""
from sidecar.plugins.api import Embedder, EmbedderUnavailable, TextEncoder, option_env
from sidecar.plugins.loader import LoadedEmbedders, discover, load_embedders, load_text_encoder

__all__ = [
    "Embedder", "EmbedderUnavailable", "LoadedEmbedders", "TextEncoder", "discover", "load_embedders", "load_text_encoder",
    "option_env",
]
