"""The DSP embedder: known answers on synthetic signals, sanity on real music."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import soundfile as sf
import soxr

from plugins.embedders import dsp as dsp_module
from plugins.embedders.dsp import PITCHES, DspEmbedder
from schemas.embedding import EmbedResult

SR = 22050


@pytest.fixture(scope="module")
def dsp() -> DspEmbedder:
    e = DspEmbedder()
    e.prepare(None)
    e.load(None)
    return e


def tone(midi: int, seconds: float, amp: float = 0.1) -> np.ndarray:
    """A note with five decaying harmonics and short fades."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    x = sum(0.6**k * np.sin(2 * np.pi * f0 * (k + 1) * t) for k in range(5) if f0 * (k + 1) < SR / 2)
    env = np.minimum(1, t / 0.02) * np.minimum(1, (seconds - t) / 0.05)
    return (amp * x * env).astype(np.float32)


def progression(chords: list[list[int]], repeats: int = 4, seconds: float = 1.0) -> np.ndarray:
    return np.concatenate([sum(tone(n, seconds) for n in chord) for chord in chords * repeats])


# I-IV-V-I in C major (C, F, G, C with bass) and i-iv-V-i in A harmonic minor (Am, Dm, E, Am)
C_MAJOR = progression([[48, 60, 64, 67], [53, 60, 65, 69], [55, 59, 62, 67], [48, 60, 64, 67]])
A_MINOR = progression([[45, 57, 60, 64], [50, 57, 62, 65], [52, 56, 59, 64], [45, 57, 60, 64]])


def clicks(bpm: float, seconds: float = 30.0) -> np.ndarray:
    """A metronome: a 12 ms noise burst on every beat."""
    x = np.zeros(int(seconds * SR), np.float32)
    burst = np.random.default_rng(0).standard_normal(256) * np.exp(-np.arange(256) / 40) * 0.5
    for t in np.arange(0, seconds - 0.1, 60.0 / bpm):
        i = int(round(t * SR))
        x[i : i + 256] += burst.astype(np.float32)
    return x


def sine(freq: float, seconds: float = 5.0, amp: float = 0.1) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)).astype(np.float32)


def decode(path) -> np.ndarray:
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    return soxr.resample(y.mean(axis=1), sr, SR).astype(np.float32)


def test_class_attributes(dsp):
    assert dsp.name == "dsp" and dsp.version == "2" and dsp.sample_rate == SR
    assert isinstance(dsp.dim, int) and dsp.dim > 20


@pytest.mark.parametrize("bpm", [90, 120, 140])
def test_click_track_tempo(dsp, bpm):
    f = dsp.embed(clicks(bpm)).features
    assert abs(f["tempo_bpm"] - bpm) <= 2.0, f
    assert f["pulse_clarity"] > 0.8, f
    assert 0.9 * bpm / 60 <= f["onset_rate"] <= 1.1 * bpm / 60, f


def test_c_major(dsp):
    f = dsp.embed(C_MAJOR).features
    assert (f["key"], f["scale"]) == ("C", "major"), f
    assert f["key_strength"] > 0.6


def test_a_minor(dsp):
    f = dsp.embed(A_MINOR).features
    assert (f["key"], f["scale"]) == ("A", "minor"), f
    assert f["key_strength"] > 0.6


def test_key_follows_transposition(dsp):
    d_major = progression([[50, 62, 66, 69], [55, 62, 67, 71], [57, 61, 64, 69], [50, 62, 66, 69]])
    f = dsp.embed(d_major).features
    assert (f["key"], f["scale"]) == ("D", "major"), f


def test_louder_copy_is_louder_by_6_db_and_vector_is_gain_invariant(dsp):
    quiet, loud = dsp.embed(C_MAJOR * 0.5), dsp.embed(C_MAJOR)
    assert loud.features["energy"] == pytest.approx(4 * quiet.features["energy"], rel=1e-4)
    assert loud.features["loudness_db"] - quiet.features["loudness_db"] == pytest.approx(6.02, abs=0.05)
    # the vector leaves out the level (MFCC 0), so the same music at another gain embeds the same
    cos = float(np.dot(quiet.vector, loud.vector) / np.linalg.norm(quiet.vector) / np.linalg.norm(loud.vector))
    assert cos > 0.99


def test_loudness_is_rms_dbfs(dsp):
    f = dsp.embed(sine(1000.0, amp=1.0)).features
    assert f["loudness_db"] == pytest.approx(-3.01, abs=0.02)  # full-scale sine
    assert f["energy"] == pytest.approx(0.5, rel=1e-3)


def test_noise_is_brighter_than_a_low_sine(dsp):
    noise = (np.random.default_rng(1).standard_normal(5 * SR) * 0.1).astype(np.float32)
    bright, dark = dsp.embed(noise).features["brightness"], dsp.embed(sine(110.0)).features["brightness"]
    assert bright > 4000 and dark < 200, (bright, dark)


def test_clicks_are_more_percussive_than_chords(dsp):
    perc_clicks = dsp.embed(clicks(120)).features["percussiveness"]
    perc_chords = dsp.embed(C_MAJOR).features["percussiveness"]
    assert 0 <= perc_chords < 0.15 and perc_clicks > 0.3, (perc_chords, perc_clicks)


def test_dynamics(dsp):
    steady = dsp.embed(sine(440.0, seconds=20)).features["dynamics_db"]
    ramp = sine(440.0, seconds=20) * np.geomspace(0.01, 1.0, 20 * SR).astype(np.float32)  # +40 dB
    rising = dsp.embed(ramp).features["dynamics_db"]
    assert steady < 0.5 and 10 < rising < 40, (steady, rising)


def test_vector_finite_sized_and_deterministic(dsp):
    x = C_MAJOR + clicks(120, seconds=len(C_MAJOR) / SR)[: len(C_MAJOR)]
    a, b = dsp.embed(x), dsp.embed(x.copy())
    assert isinstance(a, EmbedResult)
    assert a.vector.dtype == np.float32 and a.vector.shape == (dsp.dim,)
    assert np.all(np.isfinite(a.vector)) and np.all(np.abs(a.vector) <= 1.0)
    assert np.array_equal(a.vector, b.vector) and a.features == b.features


def test_different_music_gives_different_vectors(dsp):
    a, b = dsp.embed(C_MAJOR).vector, dsp.embed(clicks(120, seconds=16)).vector
    assert float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) < 0.9


@pytest.mark.parametrize("signal", ["silence", "dc", "low_noise", "nan"])
def test_degenerate_audio_gives_finite_results(dsp, signal):
    x = {
        "silence": np.zeros(3 * SR, np.float32),
        "dc": np.full(3 * SR, 0.25, np.float32),
        "low_noise": (np.random.default_rng(2).standard_normal(3 * SR) * 1e-5).astype(np.float32),
        "nan": np.where(np.arange(3 * SR) % 100 == 0, np.nan, 0.1 * np.sin(np.arange(3 * SR) / 7)).astype(np.float32),
    }[signal]
    r = dsp.embed(x)
    assert np.all(np.isfinite(r.vector))
    for k, v in r.features.items():
        assert isinstance(v, str) or np.isfinite(v), (k, v)
    if signal == "silence":
        assert r.features["tempo_bpm"] == 0.0 and r.features["key_strength"] == 0.0
        assert r.features["loudness_db"] == -120.0 and r.features["energy"] == 0.0


def test_rejects_short_or_multichannel_audio(dsp):
    with pytest.raises(ValueError):
        dsp.embed(np.zeros(SR // 2, np.float32))
    with pytest.raises(ValueError):
        dsp.embed(np.zeros((2, 3 * SR), np.float32))


def test_long_tracks_are_analysed_on_excerpts(dsp):
    x = clicks(120, seconds=11 * 60)
    x[: 30 * SR] = 0.0  # a silent intro still counts in the whole-track level
    started = time.perf_counter()
    f = dsp.embed(x).features
    assert abs(f["tempo_bpm"] - 120) <= 2.0, f
    assert f["energy"] == pytest.approx(float(np.mean(x.astype(np.float64) ** 2)), rel=1e-4)
    assert time.perf_counter() - started < 20  # bounded by the excerpts, not the length


def test_blocks_of_frames_give_what_one_block_gives(dsp, monkeypatch):
    """The STFT and the median filters work a block at a time (memory): block edges change nothing. A chord
    progression with clicks and a silent gap, so that active frames, every 4th of them and both filters'
    edges fall inside and across blocks."""
    x = np.concatenate([C_MAJOR + clicks(100, len(C_MAJOR) / SR), np.zeros(SR, np.float32), A_MINOR])
    whole = dsp.embed(x)
    monkeypatch.setattr(dsp_module, "BLOCK_FRAMES", 37)  # frames at a time, not a divisor of anything here
    monkeypatch.setattr(dsp_module, "MEDIAN_BLOCK", 5000)  # a few rows per partition
    blocked = dsp.embed(x)
    assert np.allclose(blocked.vector, whole.vector, rtol=0, atol=1e-5)
    words = {k for k, v in whole.features.items() if isinstance(v, str)}
    assert {k: blocked.features[k] for k in words} == {k: whole.features[k] for k in words}
    # rounded as stored (brightness to 0.1 Hz, the rest finer): equal, or one step apart where a sum in another
    # order crossed a rounding edge (the vector above is the close check)
    assert {k: v for k, v in blocked.features.items() if k not in words} == pytest.approx(
        {k: v for k, v in whole.features.items() if k not in words}, rel=0, abs=0.11)


def test_thread_safe(dsp):
    inputs = [C_MAJOR, A_MINOR, clicks(90), clicks(140)]
    expected = [dsp.embed(x).vector for x in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = dsp.embed(inputs[i % 4]).vector

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert np.array_equal(results[i], expected[i % 4])


def test_real_tracks_have_sane_features(dsp, demo_tracks):
    picks = [next(p for p in demo_tracks if p.suffix == ".ogg"), next(p for p in demo_tracks if p.suffix == ".mp3")]
    vectors = []
    for path in picks:
        y = decode(path)
        started = time.perf_counter()
        r = dsp.embed(y)
        elapsed = time.perf_counter() - started
        f = r.features
        assert 40 <= f["tempo_bpm"] <= 250, (path.name, f)
        assert -60 <= f["loudness_db"] <= 0, (path.name, f)
        assert 0 < f["energy"] < 1
        assert f["key"] in PITCHES and f["scale"] in ("major", "minor")
        assert -1 <= f["key_strength"] <= 1
        assert 200 <= f["brightness"] <= 8000
        assert 0 <= f["percussiveness"] <= 1 and 0 <= f["pulse_clarity"] <= 1
        assert 0 <= f["dynamics_db"] <= 40
        assert 0.2 <= f["onset_rate"] <= 15
        assert r.vector.shape == (dsp.dim,) and np.all(np.isfinite(r.vector))
        # generous: about 0.3 s for a 3-minute track on an idle core; leave room for a busy test machine
        assert elapsed < 0.03 * len(y) / SR + 1.0, (path.name, elapsed)
        vectors.append(r.vector)
    assert not np.array_equal(vectors[0], vectors[1])
