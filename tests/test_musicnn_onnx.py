"""MusiCNN on ONNX Runtime (SIDECAR_PLUGINS__MUSICNN__BACKEND=onnx) against the TensorFlow reference outputs
and against the PyTorch backend. The ONNX files (MSD_musicnn, MTT_vgg) are exported by the plugin's own
`prepare` into the shared models cache, next to the converted weights."""
from __future__ import annotations

import concurrent.futures
import os
import shutil

import numpy as np
import onnx
import pytest

from plugins.embedders.musicnn import MSD_TAGS, MTT_TAGS, MusicnnEmbedder, weights_path
from plugins.embedders.musicnn import onnx_backend
from plugins.embedders.musicnn.onnx_backend import EXPORT_REVISION, META_EXPORT, META_NETWORK, OUTPUTS, VGG_OUTPUTS, onnx_path
from plugins.embedders.musicnn.preprocess import PATCH_FRAMES
from plugins.embedders.musicnn.recipe import MSD, VGG
from sidecar.plugins import EmbedderUnavailable
from tests.conftest import MUSICNN_REFERENCE
from tests.test_musicnn import vgg_ref

CLIPS = ("mix", "heavy", "soft")
TOL = 1e-4


def ref(clip: str, what: str) -> np.ndarray:
    return np.load(MUSICNN_REFERENCE / f"test_{clip}_{what}.npy")


def onnx_embedder(**options: str) -> MusicnnEmbedder:
    e = MusicnnEmbedder()
    e.configure({"backend": "onnx", **options})
    return e


@pytest.fixture(scope="session")
def musicnn_onnx(models_dir) -> MusicnnEmbedder:
    e = onnx_embedder()
    e.prepare(models_dir)
    e.load(models_dir)
    return e


@pytest.fixture(scope="session")
def musicnn_torch(models_dir) -> MusicnnEmbedder:
    e = MusicnnEmbedder()
    e.configure({"backend": "torch"})
    e.prepare(models_dir)
    e.load(models_dir)
    return e


@pytest.fixture(scope="session")
def excerpt_audio(excerpts) -> np.ndarray:
    from sidecar.pipeline.audio import decode

    return decode(excerpts[0]).at(16000)


# ------------------------------------------------------------------------------------------ configuration
def test_backend_defaults_to_onnx():
    e = MusicnnEmbedder()
    e.configure({})
    assert (e.options.backend, e.options.threads) == ("onnx", 1)
    e.configure({"BACKEND": " TORCH ", "threads": "2"})
    assert (e.options.backend, e.options.threads) == ("torch", 2)


@pytest.mark.parametrize("value", ["tensorflow", "onnx-int8", "cuda"])
def test_unknown_backend_is_refused_naming_the_setting(value):
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSICNN__BACKEND") as ei:
        MusicnnEmbedder().configure({"backend": value})
    assert value in str(ei.value) and "torch" in str(ei.value) and "onnx" in str(ei.value)


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_thread_count_is_refused_naming_the_setting(value):
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSICNN__THREADS"):
        MusicnnEmbedder().configure({"backend": "onnx", "threads": value})


def test_configured_threads_reach_the_session(musicnn_onnx, models_dir):
    e = onnx_embedder(threads="2")
    e.load(models_dir)
    for net in (MSD, VGG):
        opts = e._sessions[net].get_session_options()
        assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
        assert musicnn_onnx._sessions[net].get_session_options().intra_op_num_threads == 1


def test_both_backends_share_the_version(musicnn_onnx, musicnn_torch):
    assert musicnn_onnx.version == musicnn_torch.version
    assert not musicnn_onnx._models and not musicnn_torch._sessions
    assert set(musicnn_onnx._sessions) == set(musicnn_torch._models) == {MSD, VGG}


# ------------------------------------------------------------------------------------------ the exported file
@pytest.mark.parametrize(("network", "outputs", "convs"), [(MSD, OUTPUTS, 8), (VGG, VGG_OUTPUTS, 5)])
def test_exported_file_is_valid_with_metadata_and_a_dynamic_batch(musicnn_onnx, models_dir, network, outputs, convs):
    path = onnx_path(models_dir, network)
    assert path == models_dir / "musicnn" / f"{network.lower()}.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_NETWORK] == network and meta[META_EXPORT] == EXPORT_REVISION
    assert [o.name for o in model.graph.output] == list(outputs)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [PATCH_FRAMES, 96]
    # MSD_musicnn: the sign flips of the fast front-end are folded into the stored conv weights (no run-time Mul)
    initializers = {t.name for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(nodes) == convs and all(n.input[1] in initializers for n in nodes)
    assert not list(path.parent.glob("*.tmp"))  # the temporary file of the atomic write is gone


def test_prepare_again_does_not_export_again(musicnn_onnx, models_dir, monkeypatch):
    paths = [onnx_path(models_dir, net) for net in (MSD, VGG)]
    before = [p.stat().st_mtime_ns for p in paths]

    def no_export(*a, **k):
        raise AssertionError("prepare() exported again although the ONNX file is current")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    onnx_embedder().prepare(models_dir)
    onnx_embedder(vgg_patches="0").prepare(models_dir)  # another vector, the same networks' files
    assert [p.stat().st_mtime_ns for p in paths] == before


@pytest.fixture
def models_copy(musicnn_onnx, models_dir, tmp_path):
    """A models folder of its own holding copies (with their times) of the weights and the ONNX files."""
    (tmp_path / "musicnn").mkdir()
    for net in (MSD, VGG):
        shutil.copy2(weights_path(models_dir, net), weights_path(tmp_path, net))
        shutil.copy2(onnx_path(models_dir, net), onnx_path(tmp_path, net))
    return tmp_path


def test_an_onnx_file_older_than_the_weights_is_exported_again(models_copy):
    w, o = weights_path(models_copy), onnx_path(models_copy)
    old = w.stat().st_mtime_ns - 10**9
    os.utime(o, ns=(old, old))
    with pytest.raises(EmbedderUnavailable, match="sidecar setup"):
        onnx_embedder().load(models_copy)  # a stale file is not used
    e = onnx_embedder()
    e.prepare(models_copy)
    assert o.stat().st_mtime_ns >= w.stat().st_mtime_ns
    e.load(models_copy)
    np.testing.assert_allclose(e.infer(ref("mix", "logmel_patches"))["taggram"], ref("mix", "tf_taggram"), atol=TOL)


def test_an_onnx_file_of_another_network_or_export_is_exported_again(models_copy):
    o = onnx_path(models_copy)
    model = onnx.load(str(o))
    for p in model.metadata_props:
        if p.key == META_NETWORK:
            p.value = VGG
    onnx.save(model, str(o))
    with pytest.raises(EmbedderUnavailable, match="another network"):
        onnx_embedder().load(models_copy)
    e = onnx_embedder()
    e.prepare(models_copy)
    assert {p.key: p.value for p in onnx.load(str(o)).metadata_props}[META_NETWORK] == MSD
    e.load(models_copy)
    # a file of the previous plugin version (stamped with the embedder version, not the network) is exported again
    v = onnx_path(models_copy, VGG)
    model = onnx.load(str(v))
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "sidecar.musicnn.version", "msd-musicnn-1"
    onnx.save(model, str(v))
    with pytest.raises(EmbedderUnavailable, match="sidecar setup"):
        onnx_embedder().load(models_copy)
    e.prepare(models_copy)
    e.load(models_copy)


def test_a_corrupt_onnx_file_is_exported_again(models_copy):
    o = onnx_path(models_copy)
    o.write_bytes(o.read_bytes()[:1000])
    with pytest.raises(EmbedderUnavailable, match="sidecar setup"):
        onnx_embedder().load(models_copy)
    e = onnx_embedder()
    e.prepare(models_copy)
    e.load(models_copy)


def test_an_export_that_fails_validation_leaves_nothing_behind(models_copy, monkeypatch):
    for net in (MSD, VGG):
        onnx_path(models_copy, net).unlink()
    monkeypatch.setattr(onnx_backend, "CHECK_TOL", -1.0)  # no export can agree with PyTorch now
    with pytest.raises(EmbedderUnavailable, match="differs from PyTorch"):
        onnx_embedder().prepare(models_copy)
    assert sorted(p.name for p in (models_copy / "musicnn").iterdir()) == ["msd_musicnn.safetensors", "mtt_vgg.safetensors"]


def test_load_without_the_onnx_file_says_run_setup(models_copy):
    onnx_path(models_copy).unlink()
    with pytest.raises(EmbedderUnavailable, match="sidecar setup") as ei:
        onnx_embedder().load(models_copy)
    assert str(onnx_path(models_copy)) in str(ei.value)
    e = MusicnnEmbedder()
    e.configure({"backend": "torch"})
    e.load(models_copy)  # the torch backend does not need it


# ------------------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("clip", CLIPS)
def test_onnx_matches_tensorflow(musicnn_onnx, clip):
    out = musicnn_onnx.infer(ref(clip, "logmel_patches"))
    assert set(out) == set(OUTPUTS)
    for ours, theirs in [
        ("taggram", "tf_taggram"),
        ("dense_preact", "tf_dense_preact"),
        ("logits", "tf_logits"),
        ("penultimate", "tf_penultimate"),
    ]:
        expected = ref(clip, theirs)
        assert out[ours].shape == expected.shape and out[ours].dtype == np.float32
        np.testing.assert_allclose(out[ours], expected, rtol=0, atol=TOL, err_msg=f"{clip}: {ours}")


@pytest.mark.parametrize("clip", CLIPS)
def test_onnx_mtt_vgg_matches_tensorflow(musicnn_onnx, clip):
    out = musicnn_onnx.infer(ref(clip, "logmel_patches"), VGG)
    assert set(out) == set(VGG_OUTPUTS)
    for k in VGG_OUTPUTS:
        assert out[k].dtype == np.float32
        np.testing.assert_allclose(out[k], vgg_ref(clip, k), rtol=0, atol=TOL, err_msg=f"{clip}: {k}")


@pytest.mark.parametrize("network", [MSD, VGG])
def test_onnx_batching_does_not_change_results(musicnn_onnx, network):
    x = np.concatenate([ref(c, "logmel_patches") for c in CLIPS])[:17]  # one more than a batch
    key = "pool5" if network == VGG else "dense_preact"
    whole = musicnn_onnx.infer(x, network)[key]
    one_by_one = np.concatenate([musicnn_onnx.infer(x[i : i + 1], network)[key] for i in range(len(x))])
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=1e-5)


def assert_same_vector(a: np.ndarray, b: np.ndarray) -> None:
    """Within TOL, but the tag logits within TOL relative: the logit of a tag as unlikely as 1e-5 is about -11.5,
    and float32 agreement there is relative (7e-4 absolute was seen, 6e-5 relative)."""
    np.testing.assert_allclose(a[:912], b[:912], rtol=0, atol=TOL)
    np.testing.assert_allclose(a[912:], b[912:], rtol=TOL, atol=TOL)


def test_onnx_embed_equals_torch_on_real_music(musicnn_onnx, musicnn_torch, excerpt_audio):
    a, b = musicnn_onnx.embed(excerpt_audio), musicnn_torch.embed(excerpt_audio)  # ~30 s: 10 patches
    assert a.vector.shape == (1012,) and a.vector.dtype == np.float32
    assert_same_vector(a.vector, b.vector)
    assert list(a.tags) == list(b.tags) == list(MSD_TAGS) + [f"mtt:{t}" for t in MTT_TAGS]
    np.testing.assert_allclose(list(a.tags.values()), list(b.tags.values()), rtol=0, atol=TOL)


def test_onnx_and_torch_agree_on_a_full_length_track(musicnn_onnx, musicnn_torch, demo_tracks):
    """A whole track: 24 spread patches through MSD_musicnn, 12 of them through MTT_vgg, in batches."""
    import soundfile as sf

    from sidecar.pipeline.audio import decode

    track = next(t for t in demo_tracks if sf.info(t).duration > 100)
    y = decode(track).at(16000)
    a, b = musicnn_onnx.embed(y), musicnn_torch.embed(y)
    assert_same_vector(a.vector, b.vector)
    np.testing.assert_allclose(list(a.tags.values()), list(b.tags.values()), rtol=0, atol=TOL)


def test_onnx_embed_is_thread_safe(musicnn_onnx, excerpt_audio):
    n = len(excerpt_audio)
    clips = [excerpt_audio[: n // 2], excerpt_audio[n // 2 :], excerpt_audio[n // 4 :], excerpt_audio]
    expected = [musicnn_onnx.embed(y).vector for y in clips]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda y: musicnn_onnx.embed(y).vector, clips))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_onnx_embed_before_load_is_refused():
    with pytest.raises(EmbedderUnavailable, match="load"):
        onnx_embedder().embed(np.zeros(48000, np.float32))
