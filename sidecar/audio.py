"""Decode a file once: mono float32 samples, a content hash of the audio itself, and its tags.

The content hash covers decoded samples only, so editing tags or moving a file keeps it, and the models
do not run again.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

MIN_DURATION_S = 1.0
TAG_KEYS = ("title", "artist", "album", "genre", "date", "tracknumber")


class DecodeError(ValueError):
    """The file is not usable audio; the message is the reason recorded for the user."""


@dataclass
class DecodedAudio:
    samples: np.ndarray  # mono float32
    sample_rate: int
    channels: int
    content_hash: str
    tags: dict[str, str] = field(default_factory=dict)
    _resampled: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate

    def at(self, sample_rate: int) -> np.ndarray:
        """The samples at another rate, computed once per rate (soxr HQ, as librosa.load uses)."""
        if sample_rate == self.sample_rate:
            return self.samples
        if sample_rate not in self._resampled:
            self._resampled[sample_rate] = soxr.resample(self.samples, self.sample_rate, sample_rate, quality="HQ").astype(
                np.float32, copy=False
            )
        return self._resampled[sample_rate]


def read_tags(path: Path) -> dict[str, str]:
    import mutagen

    try:
        f = mutagen.File(path, easy=True)
    except Exception:  # tags are optional; a broken tag block must not fail the track
        return {}
    if f is None or f.tags is None:
        return {}
    tags = {}
    for k in TAG_KEYS:
        v = f.tags.get(k)
        if v:
            tags[k] = str(v[0] if isinstance(v, list) else v)[:500]
    return tags


def content_hash(samples: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(samples).tobytes(), digest_size=16).hexdigest()


def decode(path: Path) -> DecodedAudio:
    """Decode with libsndfile (OGG/Vorbis, Opus, MP3, FLAC, WAV...). Raises DecodeError with a reason."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise
    if size == 0:
        raise DecodeError("empty file (0 bytes)")
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        why = str(e).split(": ", 1)[-1] if path.name in str(e) else str(e)
        if "not a regular file" in why:  # libsndfile says this of an existing file whose format it cannot read
            why = "not a recognised audio format"
        raise DecodeError(f"cannot decode audio: {why}") from None
    except (RuntimeError, ValueError, MemoryError) as e:
        raise DecodeError(f"cannot decode audio: {type(e).__name__}: {e}") from None
    if data.size == 0:
        raise DecodeError("cannot decode audio: no samples (a truncated or empty stream)")
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0].copy()
    if not np.all(np.isfinite(mono)):
        raise DecodeError("audio contains NaN or infinite samples")
    if len(mono) / sr < MIN_DURATION_S:
        raise DecodeError(f"too short: {len(mono) / sr:.2f} s (at least {MIN_DURATION_S:.0f} s needed)")
    return DecodedAudio(mono, int(sr), int(data.shape[1]), content_hash(mono), read_tags(path))
