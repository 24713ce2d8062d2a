"""Classic signal-processing analysis: tempo, key, loudness, brightness... and a small timbre/rhythm vector.

No weights and no network: `prepare` and `load` do nothing. Everything is derived from one short-time
Fourier transform (Hann window 2048 samples = 93 ms, hop 512 = 23 ms, at 22050 Hz) and from the samples
themselves: about 0.25 s of one core for a 3-minute track (measured on a 196 s OGG, BLAS limited to one
thread; decoding and resampling it cost more than the analysis).

Scalar features (`EmbedResult.features`)
---------------------------------------
``tempo_bpm``
    Global tempo, estimated the way librosa's ``tempo`` does it, with a few changes. The onset strength
    (spectral flux of the 128-band log-mel spectrogram, librosa ``onset_strength``) has trends slower than
    2 s removed and is blurred by a one-frame Gaussian; it is cut into 8.9 s windows (384 frames, one every
    32 frames), each with its mean removed, Hann-weighted, autocorrelated and normalised by its lag-0 value.
    The mean of these local autocorrelations is weighted by librosa's tempo prior (log-normal around 120 BPM,
    one octave wide); the best lag between 30 and 300 BPM is refined by parabolic interpolation, so the
    result is not quantised to whole frames. 0 for audio with no onsets at all (silence, a steady tone).
``pulse_clarity``
    Height of that mean local autocorrelation at the tempo lag: 0 (no periodic pulse) to about 1 (a
    metronome); 0.3-0.6 for the demo music. A cheap rhythm-regularity measure, *not* a trained danceability
    model.
``key``, ``scale``, ``key_strength``
    Krumhansl-Schmuckler: the mean chroma (12 pitch classes from the STFT magnitude with librosa's chroma
    filter bank, tuning assumed A440, each active frame normalised to max 1) is Pearson-correlated with the
    24 rotations of the Krumhansl-Kessler major and minor profiles. ``key`` is the winner's tonic ("C", "C#",
    ... "B"), ``scale`` "major"/"minor", ``key_strength`` the winning correlation (-1..1; the lower, the
    more doubtful the key). Audio with no pitch content at all gives "C", "major", 0.0.
``energy``
    Mean energy per sample, ``mean(y**2)`` over the whole track (as AudioMuse defines it); 0..1.
``loudness_db``
    The same as a level: RMS of the whole track in dBFS, ``10*log10(mean(y**2))``, unweighted and ungated
    (a full-scale square wave is 0 dB, a full-scale sine -3.01 dB; floored at -120 dB). It is *not* LUFS.
``dynamics_db``
    Loudness range in the spirit of EBU R128 LRA, but on unweighted RMS: RMS level in 3 s windows every 1 s,
    windows below -70 dBFS dropped, then those more than 20 dB below their mean level dropped; the 95th minus
    the 10th percentile of what is left, in dB. 0 when fewer than two windows remain.
``brightness``
    Mean spectral centroid in Hz (magnitude-weighted mean frequency of each frame), over active frames.
``percussiveness``
    Share of the energy in the percussive part, 0..1: harmonic/percussive separation (median filters of
    0.42 s across time and 17 bands across frequency, soft masks with power 2, as librosa's ``hpss``) on the
    128-band mel power spectrogram of the active frames, with pairs of frames summed (46 ms frames) to save
    time; sum(percussive part) / sum(all). An approximation of HPSS on the full spectrogram: cheaper, and
    coarser in frequency, so it reads somewhat higher than librosa's ``hpss`` on the STFT would.
``loudness_contour``
    The level of 0.25 s windows every 0.125 s over the first two minutes (``loudness_contour`` below): what
    recognises the same recording in another file, trimmed, re-encoded or at another gain. Text (base64); the
    catalog keeps it apart from the other features.
``onset_rate``
    Onsets per second (peaks picked in the onset strength, librosa ``onset_detect``), over the time from
    the first to the last active frame.

"Active frames" are the STFT frames whose RMS (from the frame's spectrum by Parseval, Hann-weighted) is at
least -60 dBFS (all frames when fewer than two are), so that silence before, after and inside a track does
not drag averages towards zero.

The vector (`EmbedResult.vector`, ``dim`` = 52)
----------------------------------------------
Each raw value ``x`` becomes ``tanh((x - centre) / spread)`` with a fixed centre and spread per component
(``_CENTRE``/``_SPREAD`` below: typical values set by hand and checked on the demo library, not fitted to a
large corpus), so that components are centred near 0, lie in (-1, 1) and cosine similarity behaves like a
correlation rather than being dominated by offsets that every track shares. Each slice is then
multiplied by ``weight / sqrt(len(slice))`` so that every slice carries about the same weight in a cosine,
whatever its length. Slices, in order:

====  =====  =========================================================================  ======
from  to     content                                                                    weight
====  =====  =========================================================================  ======
0     13     MFCC 1-13 means (DCT-II ortho of the 128-band log-mel; MFCC 0, the level,   1.0
             is left out, so the vector does not depend on gain)
13    26     MFCC 1-13 standard deviations over time                                    0.75
26    33     spectral contrast means, 6 octave bands from 200 Hz + the rest (dB)        0.75
33    45     key-relative mean chroma: the L1-normalised mean chroma rotated so that    0.5
             index 0 is the detected tonic, minus 1/12 (tonality, not the key itself)
45    52     rhythm and dynamics: log2(tempo/120), pulse clarity, log2(onset rate/3),   1.0
             percussiveness, log2(brightness/1500 Hz), dynamics_db, mean onset
             strength (dB of spectral flux per frame)
====  =====  =========================================================================  ======

Tracks longer than 10 minutes are analysed (except ``energy``, ``loudness_db`` and ``dynamics_db``, which
use every sample) on ten evenly spaced one-minute excerpts, to bound time and memory.
"""
from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from schemas.embedding import EmbedResult
from sidecar.plugins import Block, Embedder

SR = 22050
N_FFT = 2048
HOP = 512
N_MELS = 128
N_MFCC = 13  # coefficients 1..13
MIN_SECONDS = 1.0
MAX_ANALYSIS_S = 600.0
EXCERPTS = 10
EXCERPT_S = 60.0
ACTIVE_DB = -60.0  # frame gate for averages
TEMPO_WIN = 384  # onset frames per local autocorrelation window (8.9 s)
TEMPO_STEP = 32
TEMPO_DETREND = 87  # onset frames (2 s)
MIN_ONSET_STD = 0.01  # dB of spectral flux; below it the onset envelope is numerical ripple
TEMPO_MIN, TEMPO_MAX = 30.0, 300.0
HPSS_TIME_KERNEL = 9  # frames of 46 ms: 0.42 s
HPSS_FREQ_KERNEL = 17  # mel bands
CONTRAST_STEP = 4  # spectral contrast is averaged over every 4th active frame
BLOCK_FRAMES = 2048  # STFT frames at a time (48 s of audio): about 50 MB of spectra, whatever the track's length
MEDIAN_BLOCK = 1 << 22  # values the HPSS median filters sort at a time (16 MB)
EPS = 1e-10

PITCHES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Krumhansl & Kessler (1982) probe-tone profiles, tonic first
KK_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
KK_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])

# Centre and spread of each raw vector component, before tanh. MFCC values are in dB-like units of the
# ortho DCT of a 128-band log-mel spectrogram.
_MFCC_MEAN_CENTRE = np.array([100.0, 0, 20, 0, 10, 0, 5, 0, 5, 0, 0, 0, 0])
_MFCC_MEAN_SPREAD = np.array([60.0, 40, 30, 20, 20, 15, 15, 12, 12, 10, 10, 10, 10])
_MFCC_STD_CENTRE = np.array([36.0, 24, 18, 14, 12, 11, 10, 9, 8, 8, 7, 7, 7])
_MFCC_STD_SPREAD = _MFCC_STD_CENTRE * 0.6
_CONTRAST_CENTRE = np.array([18.0, 16, 18, 18, 18, 18, 48])
_CONTRAST_SPREAD = np.array([6.0, 5, 5, 5, 5, 6, 10])
_CHROMA_SPREAD = 0.015
# log2(tempo/120), pulse clarity, log2(onset rate/3), percussiveness, log2(centroid/1500), dynamics, onset mean
_RHYTHM_CENTRE = np.array([0.0, 0.4, 0.0, 0.3, 0.0, 8.0, 1.5])
_RHYTHM_SPREAD = np.array([0.6, 0.25, 1.0, 0.2, 1.0, 6.0, 0.7])

_SLICES = (  # (name, length, weight)
    ("mfcc_mean", N_MFCC, 1.0),
    ("mfcc_std", N_MFCC, 0.75),
    ("contrast", 7, 0.75),
    ("chroma_rel", 12, 0.5),
    ("rhythm", 7, 1.0),
)
DIM = sum(n for _, n, _ in _SLICES)


def _db(power: float | np.ndarray, floor: float = -120.0):
    return np.maximum(10.0 * np.log10(np.maximum(power, EPS * EPS)), floor)


# The loudness contour, which tells one recording from another (sidecar/data/recordings.py compares two): the level of
# 0.25 s windows every 0.125 s over the first 2 minutes, relative to the median window (a gain change drops out),
# floored 25 dB below it, in 0.25 dB steps, as base64 of signed bytes (960 bytes for 2 minutes)
CONTOUR_WINDOW, CONTOUR_HOP, CONTOUR_SECONDS = SR // 4, SR // 8, 120


def loudness_contour(y: np.ndarray) -> str:
    y = y[: CONTOUR_SECONDS * SR + CONTOUR_WINDOW].astype(np.float64)
    sums = np.concatenate([[0.0], np.cumsum(y * y)])
    starts = np.arange(0, len(y) - CONTOUR_WINDOW + 1, CONTOUR_HOP)
    level = _db((sums[starts + CONTOUR_WINDOW] - sums[starts]) / CONTOUR_WINDOW, floor=-200.0)
    steps = np.clip(np.round((level - np.median(level)) * 4), -100, 127) if len(level) else level
    return base64.b64encode(steps.astype(np.int8).tobytes()).decode("ascii")


def _excerpts(y: np.ndarray) -> np.ndarray:
    if len(y) <= MAX_ANALYSIS_S * SR:
        return y
    n = int(EXCERPT_S * SR)
    starts = np.linspace(0, len(y) - n, EXCERPTS).astype(int)
    return np.concatenate([y[s : s + n] for s in starts])


def _median_filter(x: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Running median of odd length k along axis 0 or 1 of a 2-d array (edges mirrored).

    np.partition over a sliding view of a contiguous copy; several times faster than scipy's median_filter.
    """
    if axis == 0:
        return np.ascontiguousarray(_median_filter(np.ascontiguousarray(x.T), k, 1).T)
    padded = np.pad(x, ((0, 0), (k // 2, k // 2)), mode="symmetric")
    out = np.empty(x.shape, x.dtype)
    rows = max(1, MEDIAN_BLOCK // max(1, x.shape[1] * k))  # partition copies the view: k values per input value
    for i in range(0, len(x), rows):
        out[i : i + rows] = np.partition(sliding_window_view(padded[i : i + rows], k, axis=1), k // 2, axis=-1)[..., k // 2]
    return out


def _spectral_contrast(S: np.ndarray, freqs: np.ndarray, bands: list[np.ndarray], quantile: float = 0.02):
    """librosa's spectral contrast (6 octave bands from 200 Hz + the rest), with partial sorts."""
    out = np.empty((len(bands), S.shape[1]))
    for k, idx in enumerate(bands):
        sub = S[idx]
        q = max(1, int(np.rint(quantile * len(idx))))
        part = np.partition(sub, (q - 1, len(idx) - q), axis=0)
        valley = part[:q].mean(axis=0)
        peak = part[-q:].mean(axis=0)
        out[k] = _db(peak) - _db(valley)
    return out


def _contrast_bands(freqs: np.ndarray, fmin: float = 200.0, n_bands: int = 6) -> list[np.ndarray]:
    octa = np.zeros(n_bands + 2)
    octa[1:] = fmin * (2.0 ** np.arange(0, n_bands + 1))
    bands = []
    for k, (lo, hi) in enumerate(zip(octa[:-1], octa[1:])):
        band = (freqs >= lo) & (freqs <= hi)
        idx = np.flatnonzero(band)
        if k > 0:
            band[idx[0] - 1] = True
        if k == n_bands:
            band[idx[-1] + 1 :] = True
        idx = np.flatnonzero(band)
        if k < n_bands:
            idx = idx[:-1]
        bands.append(idx)
    return bands


def _tempo(onset: np.ndarray) -> tuple[float, float]:
    """(tempo in BPM, pulse clarity) from the mean local autocorrelation of the onset envelope."""
    from scipy.ndimage import gaussian_filter1d, uniform_filter1d

    env = onset.astype(np.float64)
    # drop trends slower than 2 s (crescendos, sections), and blur by one frame so that a pulse whose period
    # is not a whole number of frames is not split between two lags
    env = env - uniform_filter1d(env, TEMPO_DETREND, mode="nearest")
    env = gaussian_filter1d(env, 1.0, mode="nearest")
    if env.std() < MIN_ONSET_STD:  # silence or a steady tone: no pulse to measure
        return 0.0, 0.0
    win = min(TEMPO_WIN, len(env))
    frames = sliding_window_view(env, win)[::TEMPO_STEP]
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames * np.hanning(win + 1)[:-1]
    spec = np.fft.rfft(frames, n=2 * win, axis=1)
    ac = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :win]
    zero = ac[:, :1]
    ok = zero[:, 0] > EPS
    if not ok.any():
        return 0.0, 0.0
    ac = (ac[ok] / zero[ok]).mean(axis=0)

    lags = np.arange(1, win - 1)
    bpm = 60.0 * SR / (HOP * lags)
    valid = (bpm >= TEMPO_MIN) & (bpm <= TEMPO_MAX)
    prior = np.exp(-0.5 * (np.log2(bpm) - np.log2(120.0)) ** 2)
    score = np.where(valid, np.maximum(ac[lags], 0.0) * prior, -np.inf)
    best = int(lags[np.argmax(score)])
    a, b, c = ac[best - 1], ac[best], ac[best + 1]
    denom = a - 2 * b + c
    shift = 0.5 * (a - c) / denom if denom < 0 else 0.0
    shift = float(np.clip(shift, -0.5, 0.5))
    tempo = 60.0 * SR / (HOP * (best + shift))
    clarity = float(np.clip(b - 0.25 * (a - c) * shift, 0.0, 1.0))
    return float(np.clip(tempo, TEMPO_MIN, TEMPO_MAX)), clarity


def _key(chroma_mean: np.ndarray) -> tuple[int, str, float]:
    """Krumhansl-Schmuckler: (tonic pitch class, "major"/"minor", correlation)."""
    c = chroma_mean - chroma_mean.mean()
    if np.sqrt(np.sum(c * c)) < 1e-6:
        return 0, "major", 0.0
    c = c / np.linalg.norm(c)
    best = (0, "major", -2.0)
    for scale, profile in (("major", KK_MAJOR), ("minor", KK_MINOR)):
        p = profile - profile.mean()
        p = p / np.linalg.norm(p)
        for tonic in range(12):
            r = float(np.dot(c, np.roll(p, tonic)))
            if r > best[2]:
                best = (tonic, scale, r)
    return best


class DspEmbedder(Embedder):
    name = "dsp"
    version = "2"  # 2: + loudness_contour (the same recording in other files is found by it)
    dim = DIM
    sample_rate = SR
    # compared z-scored over the library (which undoes the slices' fixed weights: the benchmark found that better)
    space = (Block("dsp", DIM),)
    # beside MusiCNN, a quarter of its weight: the benchmark's best DSP weight (0.5 on the unit block, so 0.25 of
    # the cosine; .cache/quality/REPORT.md: "MSD z + DSP(z)"); more lowered style precision
    fusion_weight = 0.25

    def __init__(self) -> None:
        import librosa

        super().__init__()  # no options: an option set for dsp is an error naming it
        self._freqs = librosa.fft_frequencies(sr=SR, n_fft=N_FFT)
        self._freqs32 = self._freqs.astype(np.float32)
        self._mel_fb = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)
        self._chroma_fb = librosa.filters.chroma(sr=SR, n_fft=N_FFT, tuning=0.0).astype(np.float32)
        self._bands = _contrast_bands(self._freqs)
        self._window = librosa.filters.get_window("hann", N_FFT, fftbins=True).astype(np.float32)
        self._win_power = float(np.sum(self._window.astype(np.float64) ** 2))

    def prepare(self, models_dir: Path) -> None:  # no weights
        return None

    def load(self, models_dir: Path) -> None:  # no weights
        return None

    def _magnitudes(self, frames: np.ndarray) -> np.ndarray:
        """|STFT| of these frames of samples: (N_FFT // 2 + 1, frames), float32."""
        return np.abs(scipy.fft.rfft(frames * self._window, axis=1)).T

    def embed(self, audio: np.ndarray) -> EmbedResult:
        import librosa

        y = np.asarray(audio, dtype=np.float32)
        if y.ndim != 1:
            raise ValueError(f"expected mono audio (1-d), got shape {y.shape}")
        if len(y) < MIN_SECONDS * SR:
            raise ValueError(f"audio too short for DSP analysis: {len(y) / SR:.2f} s < {MIN_SECONDS} s")
        if not np.isfinite(y).all():
            y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)

        # ---- whole-track level features, from the samples (1 s blocks of summed squares)
        n_blocks = len(y) // SR
        blocks = y[: n_blocks * SR].reshape(n_blocks, SR)
        block_energy = np.einsum("ij,ij->i", blocks, blocks, dtype=np.float64)
        tail = y[n_blocks * SR :].astype(np.float64)
        energy = float((block_energy.sum() + np.dot(tail, tail)) / len(y))
        loudness_db = float(_db(energy))
        # 3 s windows every 1 s, gated at -70 dBFS absolute, then 20 dB below the mean of what is left
        if n_blocks >= 3:
            lev = _db(np.convolve(block_energy, np.ones(3), mode="valid") / (3 * SR), floor=-200.0)
        else:
            lev = _db(block_energy / SR, floor=-200.0)
        lev = lev[lev > -70.0]
        if len(lev):
            lev = lev[lev > _db(np.mean(10 ** (lev / 10))) - 20.0]
        dynamics_db = float(np.percentile(lev, 95) - np.percentile(lev, 10)) if len(lev) >= 2 else 0.0

        # ---- one STFT (librosa's: centred, zero-padded), everything spectral derives from it, a block of frames at
        # a time: a 10-minute track's whole spectrogram would hold about 0.4 GB at once
        x = _excerpts(y)
        frames = sliding_window_view(np.pad(x, N_FFT // 2), N_FFT)[::HOP]  # a view: (1 + len(x) // HOP, N_FFT)
        n = len(frames)
        frame_ms, mag, centroid_sum = np.empty(n), np.empty(n, np.float32), np.empty(n, np.float32)
        mel = np.empty((N_MELS, n), np.float32)  # power
        chroma = np.empty((12, n), np.float32)
        for i in range(0, n, BLOCK_FRAMES):
            block = slice(i, min(i + BLOCK_FRAMES, n))
            S = self._magnitudes(frames[block])
            P = S * S
            # frame mean square of the (Hann-weighted) samples, by Parseval, as librosa.feature.rms does
            frame_ms[block] = (2.0 * P.sum(axis=0) - P[0] - P[-1]) / (N_FFT * self._win_power)
            mel[:, block] = self._mel_fb @ P
            mag[block] = S.sum(axis=0)
            centroid_sum[block] = self._freqs32 @ S
            chroma[:, block] = self._chroma_fb @ S
        active = _db(frame_ms) >= ACTIVE_DB
        if active.sum() < 2:
            active[:] = True

        log_mel = librosa.power_to_db(mel, ref=1.0, amin=EPS, top_db=80.0)
        mfcc = scipy.fft.dct(log_mel, type=2, axis=0, norm="ortho")[1 : 1 + N_MFCC][:, active]
        mfcc_mean, mfcc_std = mfcc.mean(axis=1), mfcc.std(axis=1)

        mag, centroid = mag[active], centroid_sum[active] / np.maximum(mag[active], EPS)
        brightness = float(np.mean(centroid[mag > EPS])) if np.any(mag > EPS) else 0.0
        # spectral contrast of every CONTRAST_STEP-th active frame: their spectra again, a quarter of the frames
        picked = np.flatnonzero(active)[::CONTRAST_STEP]
        contrast = np.zeros(len(self._bands))
        for i in range(0, len(picked), BLOCK_FRAMES):
            contrast += _spectral_contrast(self._magnitudes(frames[picked[i : i + BLOCK_FRAMES]]), self._freqs, self._bands).sum(axis=1)
        contrast /= len(picked)

        chroma = chroma[:, active]
        chroma = chroma / np.maximum(chroma.max(axis=0, keepdims=True), EPS)
        chroma_mean = chroma.mean(axis=1)
        tonic, scale, key_strength = _key(chroma_mean)
        total = chroma_mean.sum()
        chroma_rel = np.roll(chroma_mean / total if total > EPS else np.full(12, 1 / 12), -tonic) - 1 / 12

        onset = librosa.onset.onset_strength(S=log_mel, sr=SR, hop_length=HOP)
        tempo, clarity = _tempo(onset)
        if onset.std() >= MIN_ONSET_STD:
            peaks = librosa.onset.onset_detect(onset_envelope=onset, sr=SR, hop_length=HOP, units="frames")
            span = np.flatnonzero(active)  # from the first to the last active frame
            onset_rate = float(len(peaks) / max((span[-1] - span[0] + 1) * HOP / SR, 1.0))
        else:
            onset_rate = 0.0
        onset_mean = float(onset[active].mean())

        ma = mel[:, active]
        ma = ma[:, : ma.shape[1] // 2 * 2].reshape(N_MELS, -1, 2).sum(axis=2)  # 46 ms frames
        if ma.shape[1] == 0:
            ma = mel[:, active]
        harm = _median_filter(ma, HPSS_TIME_KERNEL, axis=1)
        perc = _median_filter(ma, HPSS_FREQ_KERNEL, axis=0)
        h2, p2 = harm * harm, perc * perc
        mask_p = np.where(h2 + p2 > EPS * EPS, p2 / np.maximum(h2 + p2, EPS * EPS), 0.5)
        mel_total = ma.sum()
        percussiveness = float((mask_p * ma).sum() / mel_total) if mel_total > EPS else 0.0

        rhythm = np.array([
            np.log2(tempo / 120.0) if tempo > 0 else 0.0,
            clarity,
            np.log2(max(onset_rate, 1 / 64) / 3.0),
            percussiveness,
            np.log2(max(brightness, 20.0) / 1500.0),
            dynamics_db,
            onset_mean,
        ])
        parts = {
            "mfcc_mean": (mfcc_mean - _MFCC_MEAN_CENTRE) / _MFCC_MEAN_SPREAD,
            "mfcc_std": (mfcc_std - _MFCC_STD_CENTRE) / _MFCC_STD_SPREAD,
            "contrast": (contrast - _CONTRAST_CENTRE) / _CONTRAST_SPREAD,
            "chroma_rel": chroma_rel / _CHROMA_SPREAD,
            "rhythm": (rhythm - _RHYTHM_CENTRE) / _RHYTHM_SPREAD,
        }
        vector = np.concatenate(
            [np.tanh(parts[name]) * (weight / np.sqrt(n)) for name, n, weight in _SLICES]
        ).astype(np.float32)
        vector = np.nan_to_num(vector, nan=0.0, posinf=0.0, neginf=0.0)

        features: dict[str, float | str] = {
            "tempo_bpm": round(tempo, 2),
            "pulse_clarity": round(clarity, 4),
            "key": PITCHES[tonic],
            "scale": scale,
            "key_strength": round(float(key_strength), 4),
            "energy": energy,
            "loudness_db": round(loudness_db, 2),
            "dynamics_db": round(dynamics_db, 2),
            "brightness": round(brightness, 1),
            "percussiveness": round(percussiveness, 4),
            "onset_rate": round(onset_rate, 3),
            "loudness_contour": loudness_contour(y),
        }
        for k, v in features.items():
            if isinstance(v, float) and not np.isfinite(v):
                features[k] = 0.0
        return EmbedResult(vector=vector, features=features)
