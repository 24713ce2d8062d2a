"""A small pure-torch stand-in for the few torchaudio pieces that the `muq` package imports.

Why: muq 0.1.0 does `import torchaudio` (MelSpectrogram and AmplitudeToDB, its input features) and
`from torchaudio.transforms import Spectrogram, TimeStretch, FrequencyMasking, TimeMasking` (the training-only
spectrogram transformer of MuQ-MuLan). No torchaudio build works with the CPU torch 2.13.0 used here, and a
broken torchaudio that is merely installed breaks `import transformers` (see shared/FACTS.md). So torchaudio is
never installed; this module provides the same transforms, computed the way torchaudio 2.x computes them:

- `melscale_fbanks` = torchaudio.functional.melscale_fbanks (HTK or Slaney mel scale, optional Slaney
  area normalisation, triangular filters over `linspace(0, sample_rate // 2, n_freqs)`).
- `Spectrogram` = torchaudio.transforms.Spectrogram: torch.stft with a periodic Hann window (win_length,
  zero-padded to n_fft when shorter), centred frames with `pad_mode` padding, magnitude ** power
  (power=None returns the complex STFT), optional "window" normalisation, optional constant `pad`.
- `MelScale`, `MelSpectrogram` = Spectrogram followed by `spec^T @ fbanks` (torchaudio's MelScale).
- `AmplitudeToDB` = torchaudio.functional.amplitude_to_DB: multiplier * log10(clamp(x, amin)) minus the
  reference, and, with top_db, a floor at (max - top_db) per spectrogram (over the last 3 dims for batched
  input, like torchaudio).

MuQ uses MelSpectrogram(sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128) with every other argument
at torchaudio's default (win_length=n_fft, f_min=0, f_max=sr/2, power=2, center=True, pad_mode="reflect",
norm=None, mel_scale="htk") and AmplitudeToDB() (stype="power", top_db=None). tests/test_muq_m2l.py checks
these against librosa (htk=True, norm=None; and the Slaney variants) since torchaudio itself cannot run here.

TimeStretch, FrequencyMasking and TimeMasking (SpecAugment) are only used while *training* MuQ-MuLan's
non-pretrained spectrogram transformer; they can be constructed but raise NotImplementedError when called.

`torchaudio_standin()` puts this module in `sys.modules` as `torchaudio` (and `torchaudio.transforms`,
`torchaudio.functional`) only while the caller imports muq, then removes it again, so that nothing else in the
process (transformers probes `importlib.util.find_spec("torchaudio")`) ever sees a torchaudio. Modules imported
during that window keep their references to these classes, which is all muq needs at run time.
"""
from __future__ import annotations

import contextlib
import importlib.machinery
import math
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

__all__ = [
    "melscale_fbanks", "spectrogram", "amplitude_to_DB", "Spectrogram", "MelScale", "MelSpectrogram",
    "AmplitudeToDB", "TimeStretch", "FrequencyMasking", "TimeMasking", "torchaudio_standin",
]  # fmt: skip

# ------------------------------------------------------------------------------------------------- functional


def _hz_to_mel(freq: float, mel_scale: str = "htk") -> float:
    if mel_scale not in ("slaney", "htk"):
        raise ValueError('mel_scale should be one of "htk" or "slaney".')
    if mel_scale == "htk":
        return 2595.0 * math.log10(1.0 + (freq / 700.0))
    f_min, f_sp = 0.0, 200.0 / 3
    mels = (freq - f_min) / f_sp
    min_log_hz = 1000.0
    min_log_mel = (min_log_hz - f_min) / f_sp
    logstep = math.log(6.4) / 27.0
    if freq >= min_log_hz:
        mels = min_log_mel + math.log(freq / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: Tensor, mel_scale: str = "htk") -> Tensor:
    if mel_scale not in ("slaney", "htk"):
        raise ValueError('mel_scale should be one of "htk" or "slaney".')
    if mel_scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_min, f_sp = 0.0, 200.0 / 3
    freqs = f_min + f_sp * mels
    min_log_hz = 1000.0
    min_log_mel = (min_log_hz - f_min) / f_sp
    logstep = math.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * torch.exp(logstep * (mels[log_t] - min_log_mel))
    return freqs


def _create_triangular_filterbank(all_freqs: Tensor, f_pts: Tensor) -> Tensor:
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_filter + 1)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_filter + 2)
    zero = torch.zeros(1)
    down_slopes = (-1.0 * slopes[:, :-2]) / f_diff[:-1]  # (n_freqs, n_filter)
    up_slopes = slopes[:, 2:] / f_diff[1:]  # (n_freqs, n_filter)
    return torch.max(zero, torch.min(down_slopes, up_slopes))


def melscale_fbanks(
    n_freqs: int,
    f_min: float,
    f_max: float,
    n_mels: int,
    sample_rate: int,
    norm: str | None = None,
    mel_scale: str = "htk",
) -> Tensor:
    """(n_freqs, n_mels) triangular mel filters, as torchaudio.functional.melscale_fbanks."""
    if norm is not None and norm != "slaney":
        raise ValueError('norm must be one of None or "slaney"')
    all_freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min = _hz_to_mel(f_min, mel_scale=mel_scale)
    m_max = _hz_to_mel(f_max, mel_scale=mel_scale)
    m_pts = torch.linspace(m_min, m_max, n_mels + 2)
    f_pts = _mel_to_hz(m_pts, mel_scale=mel_scale)
    fb = _create_triangular_filterbank(all_freqs, f_pts)
    if norm is not None and norm == "slaney":
        enorm = 2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])
        fb *= enorm.unsqueeze(0)
    if (fb.max(dim=0).values == 0.0).any():
        warnings.warn(
            "At least one mel filterbank has all zero values. "
            f"The value for `n_mels` ({n_mels}) may be set too high. "
            f"Or, the value for `n_freqs` ({n_freqs}) may be set too low."
        )
    return fb


def _get_spec_norms(normalized: bool | str) -> tuple[bool, bool]:
    frame_length_norm, window_norm = False, False
    if isinstance(normalized, str):
        if normalized not in ("frame_length", "window"):
            raise ValueError(f"Invalid normalized parameter: {normalized}")
        if normalized == "frame_length":
            frame_length_norm = True
        else:
            window_norm = True
    elif isinstance(normalized, bool):
        window_norm = normalized
    else:
        raise TypeError("Input type not supported")
    return frame_length_norm, window_norm


def spectrogram(
    waveform: Tensor,
    pad: int,
    window: Tensor,
    n_fft: int,
    hop_length: int,
    win_length: int,
    power: float | None,
    normalized: bool | str,
    center: bool = True,
    pad_mode: str = "reflect",
    onesided: bool = True,
) -> Tensor:
    """(..., time) -> (..., n_fft // 2 + 1, frames), as torchaudio.functional.spectrogram."""
    frame_length_norm, window_norm = _get_spec_norms(normalized)
    if pad > 0:
        waveform = torch.nn.functional.pad(waveform, (pad, pad), "constant")
    shape = waveform.size()
    waveform = waveform.reshape(-1, shape[-1])
    spec = torch.stft(
        input=waveform,
        n_fft=n_fft,
        hop_length=hop_length,
        win_length=win_length,
        window=window,
        center=center,
        pad_mode=pad_mode,
        normalized=frame_length_norm,
        onesided=onesided,
        return_complex=True,
    )
    spec = spec.reshape(shape[:-1] + spec.shape[-2:])
    if window_norm:
        spec /= window.pow(2.0).sum().sqrt()
    if power is not None:
        if power == 1.0:
            return spec.abs()
        return spec.abs().pow(power)
    return spec


def amplitude_to_DB(x: Tensor, multiplier: float, amin: float, db_multiplier: float, top_db: float | None = None) -> Tensor:
    """As torchaudio.functional.amplitude_to_DB."""
    x_db = multiplier * torch.log10(torch.clamp(x, min=amin))
    x_db -= multiplier * db_multiplier
    if top_db is not None:
        # expand batch
        shape = x_db.size()
        packed_channels = shape[-3] if x_db.dim() > 2 else 1
        x_db = x_db.reshape(-1, packed_channels, shape[-2], shape[-1])
        x_db = torch.max(x_db, (x_db.amax(dim=(-3, -2, -1)) - top_db).view(-1, 1, 1, 1))
        x_db = x_db.reshape(shape)
    return x_db


# ------------------------------------------------------------------------------------------------- transforms


class Spectrogram(nn.Module):
    """As torchaudio.transforms.Spectrogram (the window is a buffer, so `.to(device)` moves it)."""

    __constants__ = ["n_fft", "win_length", "hop_length", "pad", "power", "normalized"]

    def __init__(
        self,
        n_fft: int = 400,
        win_length: int | None = None,
        hop_length: int | None = None,
        pad: int = 0,
        window_fn: Callable[..., Tensor] = torch.hann_window,
        power: float | None = 2.0,
        normalized: bool | str = False,
        wkwargs: dict | None = None,
        center: bool = True,
        pad_mode: str = "reflect",
        onesided: bool = True,
        return_complex: bool | None = None,
    ) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        window = window_fn(self.win_length) if wkwargs is None else window_fn(self.win_length, **wkwargs)
        self.register_buffer("window", window)
        self.pad = pad
        self.power = power
        self.normalized = normalized
        self.center = center
        self.pad_mode = pad_mode
        self.onesided = onesided

    def forward(self, waveform: Tensor) -> Tensor:
        return spectrogram(
            waveform, self.pad, self.window, self.n_fft, self.hop_length, self.win_length, self.power,
            self.normalized, self.center, self.pad_mode, self.onesided,
        )  # fmt: skip


class MelScale(nn.Module):
    """As torchaudio.transforms.MelScale: (..., n_stft, time) -> (..., n_mels, time)."""

    __constants__ = ["n_mels", "sample_rate", "f_min", "f_max"]

    def __init__(
        self,
        n_mels: int = 128,
        sample_rate: int = 16000,
        f_min: float = 0.0,
        f_max: float | None = None,
        n_stft: int = 201,
        norm: str | None = None,
        mel_scale: str = "htk",
    ) -> None:
        super().__init__()
        self.n_mels = n_mels
        self.sample_rate = sample_rate
        self.f_max = f_max if f_max is not None else float(sample_rate // 2)
        self.f_min = f_min
        self.n_stft = n_stft
        self.norm = norm
        self.mel_scale = mel_scale
        if f_min > self.f_max:
            raise ValueError(f"Require f_min: {f_min} <= f_max: {self.f_max}")
        fb = melscale_fbanks(n_stft, self.f_min, self.f_max, self.n_mels, self.sample_rate, self.norm, self.mel_scale)
        self.register_buffer("fb", fb)

    def forward(self, specgram: Tensor) -> Tensor:
        return torch.matmul(specgram.transpose(-1, -2), self.fb).transpose(-1, -2)


class MelSpectrogram(nn.Module):
    """As torchaudio.transforms.MelSpectrogram: (..., time) -> (..., n_mels, frames)."""

    __constants__ = ["sample_rate", "n_fft", "win_length", "hop_length", "pad", "n_mels", "f_min"]

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 400,
        win_length: int | None = None,
        hop_length: int | None = None,
        f_min: float = 0.0,
        f_max: float | None = None,
        pad: int = 0,
        n_mels: int = 128,
        window_fn: Callable[..., Tensor] = torch.hann_window,
        power: float = 2.0,
        normalized: bool = False,
        wkwargs: dict | None = None,
        center: bool = True,
        pad_mode: str = "reflect",
        onesided: bool | None = None,
        norm: str | None = None,
        mel_scale: str = "htk",
    ) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.n_fft = n_fft
        self.win_length = win_length if win_length is not None else n_fft
        self.hop_length = hop_length if hop_length is not None else self.win_length // 2
        self.pad = pad
        self.power = power
        self.normalized = normalized
        self.n_mels = n_mels
        self.f_max = f_max
        self.f_min = f_min
        self.spectrogram = Spectrogram(
            n_fft=self.n_fft, win_length=self.win_length, hop_length=self.hop_length, pad=self.pad,
            window_fn=window_fn, power=self.power, normalized=self.normalized, wkwargs=wkwargs,
            center=center, pad_mode=pad_mode, onesided=True,
        )  # fmt: skip
        self.mel_scale = MelScale(
            self.n_mels, self.sample_rate, self.f_min, self.f_max, self.n_fft // 2 + 1, norm, mel_scale
        )

    def forward(self, waveform: Tensor) -> Tensor:
        return self.mel_scale(self.spectrogram(waveform))


class AmplitudeToDB(nn.Module):
    """As torchaudio.transforms.AmplitudeToDB (stype "power": 10 log10, "magnitude": 20 log10)."""

    __constants__ = ["multiplier", "amin", "ref_value", "db_multiplier"]

    def __init__(self, stype: str = "power", top_db: float | None = None) -> None:
        super().__init__()
        self.stype = stype
        if top_db is not None and top_db < 0:
            raise ValueError("top_db must be positive value")
        self.top_db = top_db
        self.multiplier = 10.0 if stype == "power" else 20.0
        self.amin = 1e-10
        self.ref_value = 1.0
        self.db_multiplier = math.log10(max(self.amin, self.ref_value))

    def forward(self, x: Tensor) -> Tensor:
        return amplitude_to_DB(x, self.multiplier, self.amin, self.db_multiplier, self.top_db)


class _TrainingOnly(nn.Module):
    """SpecAugment transforms: only MuQ-MuLan's *training* path uses them; constructible, not callable."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()
        self.args, self.kwargs = args, kwargs

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} is not part of the torchaudio stand-in (training-time augmentation only)"
        )


class TimeStretch(_TrainingOnly):
    pass


class FrequencyMasking(_TrainingOnly):
    pass


class TimeMasking(_TrainingOnly):
    pass


# ------------------------------------------------------------------------------------------------- sys.modules

_LOCK = threading.RLock()
_NAMES = ("torchaudio", "torchaudio.transforms", "torchaudio.functional")


def _standin_modules() -> dict[str, types.ModuleType]:
    pkg = types.ModuleType("torchaudio", "stand-in for the torchaudio pieces muq uses (plugins.embedders._torchaudio_compat)")
    pkg.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None, is_package=True)
    pkg.__path__ = []
    pkg.__version__ = "0.0.0+sidecar-standin"
    transforms = types.ModuleType("torchaudio.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchaudio.transforms", loader=None)
    for cls in (Spectrogram, MelScale, MelSpectrogram, AmplitudeToDB, TimeStretch, FrequencyMasking, TimeMasking):
        setattr(transforms, cls.__name__, cls)
    functional = types.ModuleType("torchaudio.functional")
    functional.__spec__ = importlib.machinery.ModuleSpec("torchaudio.functional", loader=None)
    for fn in (melscale_fbanks, spectrogram, amplitude_to_DB):
        setattr(functional, fn.__name__, fn)
    pkg.transforms, pkg.functional = transforms, functional
    return {"torchaudio": pkg, "torchaudio.transforms": transforms, "torchaudio.functional": functional}


@contextlib.contextmanager
def torchaudio_standin() -> Iterator[types.ModuleType]:
    """Make `import torchaudio` give the stand-in inside the block only; restore sys.modules afterwards.

    A real torchaudio that is already imported is left alone (and used). Serialised with a lock, so two
    threads loading plugins do not interleave; other threads importing torchaudio during the block would
    see the stand-in, so keep the block to the muq import.
    """
    with _LOCK:
        if "torchaudio" in sys.modules and not getattr(sys.modules["torchaudio"], "__version__", "").endswith("standin"):
            yield sys.modules["torchaudio"]
            return
        saved = {n: sys.modules.get(n) for n in _NAMES}
        mods = _standin_modules()
        sys.modules.update(mods)
        try:
            yield mods["torchaudio"]
        finally:
            for n in _NAMES:
                if saved[n] is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = saved[n]
            importlib.invalidate_caches()
