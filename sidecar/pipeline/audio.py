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
# Bounds on what one decode may hold, whatever a (possibly lying) header declares: longer audio is analysed
# on its first MAX_DURATION_S; at most MAX_CHANNELS x BLOCK_FRAMES samples are read at a time.
MAX_DURATION_S = 3600.0
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 64
BLOCK_FRAMES = 1 << 16
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
        f = sf.SoundFile(path)
    except sf.LibsndfileError as e:
        why = str(e).split(": ", 1)[-1] if path.name in str(e) else str(e)
        if "not a regular file" in why:  # libsndfile says this of an existing file whose format it cannot read
            if not path.exists():  # deleted since the stat above
                raise FileNotFoundError(path) from None
            why = "not a recognised audio format"
        raise DecodeError(f"cannot decode audio: {why}") from None
    except (RuntimeError, ValueError, MemoryError) as e:
        raise DecodeError(f"cannot decode audio: {type(e).__name__}: {e}") from None
    with f:
        sr, channels = f.samplerate, f.channels
        if not 0 < sr <= MAX_SAMPLE_RATE or not 0 < channels <= MAX_CHANNELS:
            raise DecodeError(f"implausible header: {sr} Hz, {channels} channels")
        mono = _read_mono(f, int(MAX_DURATION_S * sr))
    if mono.size == 0:
        raise DecodeError("cannot decode audio: no samples (a truncated or empty stream)")
    if not np.all(np.isfinite(mono)):
        raise DecodeError("audio contains NaN or infinite samples")
    if len(mono) / sr < MIN_DURATION_S:
        raise DecodeError(f"too short: {len(mono) / sr:.2f} s (at least {MIN_DURATION_S:.0f} s needed)")
    return DecodedAudio(mono, int(sr), int(channels), content_hash(mono), read_tags(path))


def _read_mono(f: sf.SoundFile, limit: int) -> np.ndarray:
    """Up to `limit` frames, mixed to mono block by block: memory follows the audio actually there, never
    the length the header declares. A stream that breaks part-way fails, saying where."""
    blocks, n = [], 0
    while n < limit:
        try:
            block = f.read(min(BLOCK_FRAMES, limit - n), dtype="float32", always_2d=True)
        except sf.LibsndfileError as e:
            why = str(e).removeprefix("Error : ")
            raise DecodeError(f"damaged or truncated stream: decoding stopped at {n / f.samplerate:.2f} s ({why})") from None
        if not len(block):
            break
        blocks.append(_mix(block))
        n += len(block)
    return np.concatenate(blocks) if blocks else np.empty(0, np.float32)


def _mix(block: np.ndarray) -> np.ndarray:
    """Mono mix of (frames, channels) float32, the same numbers as `block.mean(axis=1)` (the content hash
    depends on them). Stereo is done by hand: numpy reduces a short inner axis slowly, and that was a third
    of the decode time of a stereo track."""
    if block.shape[1] == 1:
        return block[:, 0].copy()
    if block.shape[1] == 2:
        return (block[:, 0] + block[:, 1]) / np.float32(2)
    return block.mean(axis=1, dtype=np.float32)
