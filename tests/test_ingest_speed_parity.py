"""The ingest speed-ups keep the numbers: the patch budgets stay within the cosine bounds of the whole-track
analysis, its patches are the whole analysis's (to float16 rounding), the fast front end equals the literal graph order,
and the faster stereo mix leaves the decoded samples (and so the content hash) as they were.

Real full-length tracks from the demo library; scripts/bench_ingest.py measures the same over 59 tracks.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from plugins.embedders.musicnn import PATCHES, VGG_PATCHES, MusicnnEmbedder, weights_path
from plugins.embedders.musicnn.model import MusicnnMSD, load_state
from plugins.embedders.musicnn.preprocess import PATCH_FRAMES, audio_to_patches, spread
from plugins.embedders.musicnn.recipe import VGG, track_vector
from sidecar.pipeline.audio import decode
from sidecar.plugins import EmbedderUnavailable

COSINE_BOUND = 0.99  # issue 8: the MSD patch mean within cosine 0.99 of full-track float32 analysis
#: issue 13's vector in the store's space (z-scored over a library, blocks weighted) against the whole-track
#: analysis: its patch spreads (std) come from 24 and 12 patches, noisier than a mean, so the bound is lower
#: (measured 0.966-0.971 on these three tracks; 0.91-0.97 on longer ones, see docs/PERFORMANCE.md)
SPACE_BOUND = 0.95


@pytest.fixture(scope="module")
def long_tracks(demo_tracks) -> list[np.ndarray]:
    """16 kHz audio of the three demo tracks longer than the default budget (24 patches = 72 s), shortest first."""
    long = [t for t in demo_tracks if sf.info(t).duration > 3 * PATCHES + 10]
    long.sort(key=lambda t: sf.info(t).duration)
    assert len(long) >= 3
    return [decode(t).at(16000) for t in long[:3]]


@pytest.fixture(scope="module")
def musicnn(models_dir) -> MusicnnEmbedder:
    e = MusicnnEmbedder()
    e.configure({})  # the defaults: ONNX Runtime, the default patch budget
    e.prepare(models_dir)
    e.load(models_dir)
    return e


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def library_space(musicnn, genre_excerpts):
    """The store's space for the plugin's vectors, with the statistics of a library of 32 real 30-s excerpts
    (16 orchestral, 16 electronic; 10 patches each, so whole-track analyses whatever the budgets)."""
    from sidecar.data.space import Space

    raw = np.stack([musicnn.embed(decode(p).at(16000)).vector for kind in ("orchestral", "electronic") for p in genre_excerpts[kind][:16]])
    return Space.of(musicnn.space, musicnn.dim).fitted(raw, len(raw))


def test_defaults_are_the_measured_ones(musicnn):
    o = musicnn.options
    assert (o.backend, o.threads, o.patches, o.vgg_patches) == ("onnx", 1, PATCHES, VGG_PATCHES) and 0 < PATCHES <= 32
    assert VGG_PATCHES == PATCHES // 2  # every other patch: what the quality benchmark measured


def test_spread_picks_the_middle_of_equal_spans():
    assert spread(10, 0).tolist() == list(range(10)) == spread(10, 10).tolist() == spread(10, 50).tolist()
    assert spread(100, 4).tolist() == [12, 37, 62, 87]
    picked = spread(81, 24)
    assert len(set(picked.tolist())) == 24 and picked.min() >= 0 and picked.max() < 81


def test_budgeted_patches_are_the_whole_analysis_patches(long_tracks):
    # The budgeted path computes each patch's mel from its own span, so the FFTs run in another order: the
    # float32 sums may differ in the last bit, and a last-bit change can round the float16 cast (the
    # package's own step) one float16 step the other way, 2e-4 after the log. A wrong patch or frame
    # offset differs by whole units, so a tolerance of 1e-3 on a few values still catches it.
    for y in long_tracks:
        whole = audio_to_patches(y)
        for budget in (1, 7, PATCHES):
            part = audio_to_patches(y, budget)
            expected = whole[spread(len(whole), budget)]
            assert part.shape == (budget, PATCH_FRAMES, 96)
            np.testing.assert_allclose(part, expected, rtol=0, atol=1e-3)
            assert np.mean(part != expected) < 1e-3  # almost every value is bit-identical
        np.testing.assert_array_equal(audio_to_patches(y, len(whole) + 5), whole)  # no budget: the same code path


def test_budgeted_vector_is_within_the_cosine_bounds_of_the_whole_track(musicnn, long_tracks, library_space):
    def in_space(a: np.ndarray, b: np.ndarray) -> float:
        x = library_space.transform(np.stack([a, b]))
        return cosine(x[0], x[1])

    for y in long_tracks:
        patches = audio_to_patches(y)  # every patch, float32, through both networks
        msd, vgg = musicnn.infer(patches), musicnn.infer(patches, VGG)
        whole = track_vector(msd, vgg)
        res = musicnn.embed(y)
        assert len(patches) > PATCHES
        assert cosine(res.vector[:200], msd["dense_preact"].mean(axis=0)) >= COSINE_BOUND
        assert in_space(res.vector, whole) >= SPACE_BOUND
        tags = np.array(list(res.tags.values()))
        assert np.abs(tags[:50] - msd["taggram"].mean(axis=0)).max() < 0.05
        assert np.abs(tags[50:] - vgg["taggram"].mean(axis=0)).max() < 0.1  # MTT_vgg: half as many patches
    # and a budget of one patch is not within either bound (they are not met trivially)
    y = long_tracks[-1]
    one = MusicnnEmbedder()
    one.configure({"patches": "1"})
    one._sessions = musicnn._sessions
    patches = audio_to_patches(y)
    msd = musicnn.infer(patches)
    whole, v = track_vector(msd, musicnn.infer(patches, VGG)), one.embed(y).vector
    assert cosine(v[:200], msd["dense_preact"].mean(axis=0)) < COSINE_BOUND and in_space(v, whole) < SPACE_BOUND


def test_budget_zero_analyses_every_patch(musicnn, long_tracks):
    e = MusicnnEmbedder()
    e.configure({"patches": "0", "vgg_patches": "1000"})
    e._sessions = musicnn._sessions
    y = long_tracks[0]
    patches = audio_to_patches(y)
    np.testing.assert_allclose(e.embed(y).vector, track_vector(musicnn.infer(patches), musicnn.infer(patches, VGG)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value", ["-1", "many", "1.5", "100001"])
def test_a_bad_patch_budget_is_refused_naming_the_setting(value):
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSICNN__PATCHES") as ei:
        MusicnnEmbedder().configure({"patches": value})
    assert repr(value) in str(ei.value)


def test_fast_front_end_equals_the_literal_graph_order_on_real_music(models_dir, long_tracks):
    from safetensors.torch import load_file

    state = load_file(str(weights_path(models_dir)))
    fast, literal = load_state(MusicnnMSD(), state), load_state(MusicnnMSD(literal=True), state)
    # the sign flip matters: some batch-norm scales of the front end are negative
    assert any((getattr(fast, f"{n}_bn").weight < 0).any() for n in ("timbral74", "timbral77", "temporal128"))
    x = torch.from_numpy(np.concatenate([audio_to_patches(y, 2) for y in long_tracks]))
    with torch.inference_mode():
        a, b = literal(x), fast(x)
    for name in a._fields:
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=1e-5, msg=name)


def test_decoded_stereo_is_the_mean_of_the_channels_bit_for_bit(demo_tracks):
    track = next(t for t in demo_tracks if sf.info(t).channels == 2)
    data, _ = sf.read(track, dtype="float32", always_2d=True)
    np.testing.assert_array_equal(decode(track).samples, data.mean(axis=1, dtype=np.float32))
