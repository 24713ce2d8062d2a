"""The small interface every embedder plugin implements.

Plugins are found through the `sidecar.embedders` entry-point group (see pyproject.toml), so a third party
can add one by installing a package; nothing in the core names them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from schemas.embedding import EmbedResult


class EmbedderUnavailable(RuntimeError):
    """The plugin cannot run here; the message says what to fix (a missing checkpoint, a setting...)."""


class Embedder(ABC):
    #: collection-safe name: lowercase letters, digits and underscores
    name: str
    #: bump when the output changes; tracks embedded with an older version are embedded again
    version: str
    #: length of `EmbedResult.vector`
    dim: int
    #: the sample rate `embed` expects (mono float32)
    sample_rate: int

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
