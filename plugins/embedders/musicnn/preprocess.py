"""musicnn's input representation (musicnn/extractor.py: batch_data), reproduced for numpy 2.

librosa mel spectrogram (16 kHz, n_fft 512, hop 256, 96 mels, otherwise librosa defaults: Hann window,
center=True, power 2, Slaney mel scale and norm), time x mel, cast to float16, log10(10000 x + 1) computed in
float32 (the package multiplies in float16, which overflows under numpy 2), then non-overlapping 187-frame
(3 s) patches with the tail dropped.
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
MIN_SAMPLES = SAMPLE_RATE  # 1 s

_F16_MAX = float(np.finfo(np.float16).max)


def log_mel(audio: np.ndarray, center: bool = True) -> np.ndarray:
    """(frames, 96) float32 log-compressed mel spectrogram of mono 16 kHz audio; for (k, samples) spans,
    (k, 96, frames)."""
    import librosa

    y = np.ascontiguousarray(audio, dtype=np.float32)
    mel = librosa.feature.melspectrogram(y=y, sr=SAMPLE_RATE, n_fft=N_FFT, hop_length=HOP, n_mels=N_MELS, center=center)
    mel = mel.T if mel.ndim == 2 else mel
    # float16 as in the package; clip first so that an extremely loud input cannot become inf
    mel16 = np.minimum(mel, _F16_MAX).astype(np.float16)
    return np.log10(np.float32(10000) * mel16.astype(np.float32) + np.float32(1)).astype(np.float32, copy=False)


def to_patches(logmel: np.ndarray, pad_short: bool = True) -> np.ndarray:
    """Cut (frames, 96) into (n, 187, 96) non-overlapping patches, dropping the tail.

    With `pad_short`, fewer than 187 frames are zero-padded (log10(1) = 0: silence) to one patch.
    """
    n = logmel.shape[0] // PATCH_FRAMES
    if n == 0:
        if not pad_short:
            return np.zeros((0, PATCH_FRAMES, logmel.shape[1]), dtype=np.float32)
        out = np.zeros((1, PATCH_FRAMES, logmel.shape[1]), dtype=np.float32)
        out[0, : logmel.shape[0]] = logmel
        return out
    return np.ascontiguousarray(logmel[: n * PATCH_FRAMES].reshape(n, PATCH_FRAMES, logmel.shape[1]), dtype=np.float32)


def spread(n: int, budget: int) -> np.ndarray:
    """Indices of `budget` of `n` patches, the middle one of each of `budget` equal spans of the track; all
    of them when `budget` is 0 or at least `n`."""
    if budget <= 0 or n <= budget:
        return np.arange(n)
    return ((np.arange(budget) + 0.5) * n / budget).astype(np.int64)


def audio_to_patches(audio: np.ndarray, budget: int = 0) -> np.ndarray:
    """Track -> (n, 187, 96) float32 model input: every patch, or at most `budget` spread over the track (see
    `spread`). ValueError for unusable audio (< 1 s, not mono, NaN)."""
    a = np.asarray(audio)
    if a.ndim != 1:
        raise ValueError(f"MusiCNN expects mono audio as a 1-d array, got shape {a.shape}")
    if a.shape[0] < MIN_SAMPLES:
        raise ValueError(f"audio too short for MusiCNN: {a.shape[0] / SAMPLE_RATE:.2f} s (at least 1 s at 16 kHz)")
    if not np.all(np.isfinite(a)):
        raise ValueError("audio contains NaN or infinite samples")
    n = (1 + a.shape[0] // HOP) // PATCH_FRAMES  # librosa's frame count with center=True, in whole patches
    if budget <= 0 or n <= budget:
        return to_patches(log_mel(a))
    # Only the chosen patches' frames: librosa's centring pads N_FFT/2 zeros on each side, so frame j is
    # padded[j * HOP : j * HOP + N_FFT] and a patch's frames come out the same from its span alone.
    padded = np.pad(np.asarray(a, dtype=np.float32), N_FFT // 2)
    span = (PATCH_FRAMES - 1) * HOP + N_FFT
    starts = spread(n, budget) * PATCH_FRAMES * HOP
    spans = np.stack([padded[s : s + span] for s in starts])
    return np.ascontiguousarray(log_mel(spans, center=False).transpose(0, 2, 1))
