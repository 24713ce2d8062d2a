"""MusiCNN on ONNX Runtime (SIDECAR_PLUGINS__MUSICNN__BACKEND=onnx) against the TensorFlow reference outputs
and against the PyTorch backend. The ONNX file is exported by the plugin's own `prepare` into the shared
models cache, next to the converted weights."""
from __future__ import annotations

import concurrent.futures
import os
import shutil

import numpy as np
import onnx
import pytest

from plugins.embedders.musicnn import MSD_TAGS, MusicnnEmbedder, weights_path
from plugins.embedders.musicnn import onnx_backend
from plugins.embedders.musicnn.onnx_backend import EXPORT_REVISION, META_EXPORT, META_VERSION, OUTPUTS, onnx_path
from plugins.embedders.musicnn.preprocess import PATCH_FRAMES
from sidecar.plugins import EmbedderUnavailable
from tests.conftest import MUSICNN_REFERENCE

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
    opts = e._session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
    assert musicnn_onnx._session.get_session_options().intra_op_num_threads == 1


def test_both_backends_share_the_version(musicnn_onnx, musicnn_torch):
    assert musicnn_onnx.version == musicnn_torch.version
    assert musicnn_onnx._model is None and musicnn_torch._session is None


# ------------------------------------------------------------------------------------------ the exported file
def test_exported_file_is_valid_with_metadata_and_a_dynamic_batch(musicnn_onnx, models_dir):
    path = onnx_path(models_dir)
    assert path == models_dir / "musicnn" / "msd_musicnn.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[META_VERSION] == musicnn_onnx.version and meta[META_EXPORT] == EXPORT_REVISION
    assert [o.name for o in model.graph.output] == list(OUTPUTS)
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value  # symbolic batch
    assert [d.dim_value for d in dims[1:]] == [PATCH_FRAMES, 96]
    # the sign flips of the fast front-end are folded into the stored conv weights (no run-time Mul on them)
    initializers = {t.name for t in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 8 and all(n.input[1] in initializers for n in convs)
    assert not list(path.parent.glob("*.tmp"))  # the temporary file of the atomic write is gone


def test_prepare_again_does_not_export_again(musicnn_onnx, models_dir, monkeypatch):
    path = onnx_path(models_dir)
    before = path.stat().st_mtime_ns

    def no_export(*a, **k):
        raise AssertionError("prepare() exported again although the ONNX file is current")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    onnx_embedder().prepare(models_dir)
    assert path.stat().st_mtime_ns == before


@pytest.fixture
def models_copy(musicnn_onnx, models_dir, tmp_path):
    """A models folder of its own holding copies (with their times) of the weights and the ONNX file."""
    (tmp_path / "musicnn").mkdir()
    shutil.copy2(weights_path(models_dir), weights_path(tmp_path))
    shutil.copy2(onnx_path(models_dir), onnx_path(tmp_path))
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


def test_an_onnx_file_of_another_version_is_exported_again(models_copy):
    o = onnx_path(models_copy)
    model = onnx.load(str(o))
    for p in model.metadata_props:
        if p.key == META_VERSION:
            p.value = "msd-musicnn-0"
    onnx.save(model, str(o))
    with pytest.raises(EmbedderUnavailable, match="another version"):
        onnx_embedder().load(models_copy)
    e = onnx_embedder()
    e.prepare(models_copy)
    assert {p.key: p.value for p in onnx.load(str(o)).metadata_props}[META_VERSION] == e.version
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
    onnx_path(models_copy).unlink()
    monkeypatch.setattr(onnx_backend, "CHECK_TOL", -1.0)  # no export can agree with PyTorch now
    with pytest.raises(EmbedderUnavailable, match="differs from PyTorch"):
        onnx_embedder().prepare(models_copy)
    assert sorted(p.name for p in (models_copy / "musicnn").iterdir()) == ["msd_musicnn.safetensors"]


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


def test_onnx_batching_does_not_change_results(musicnn_onnx):
    x = np.concatenate([ref(c, "logmel_patches") for c in CLIPS])[:17]  # one more than a batch
    whole = musicnn_onnx.infer(x)["dense_preact"]
    one_by_one = np.concatenate([musicnn_onnx.infer(x[i : i + 1])["dense_preact"] for i in range(len(x))])
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=1e-5)


def test_onnx_embed_equals_torch_on_real_music(musicnn_onnx, musicnn_torch, excerpt_audio):
    a, b = musicnn_onnx.embed(excerpt_audio), musicnn_torch.embed(excerpt_audio)
    assert a.vector.shape == (200,) and a.vector.dtype == np.float32
    assert a.segments.shape == b.segments.shape and a.segments.shape[0] >= 9  # ~30 s in 3-s patches
    np.testing.assert_allclose(a.vector, b.vector, rtol=0, atol=TOL)
    np.testing.assert_allclose(a.segments, b.segments, rtol=0, atol=TOL)
    assert list(a.tags) == list(b.tags) == list(MSD_TAGS)
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
