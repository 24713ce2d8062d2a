"""MusiCNN (MSD_musicnn + MTT_vgg) in PyTorch against outputs of the original TensorFlow models, and the plugin's
track vector, similarity space and tags.

The reference fixtures (see their READMEs) were made by the musicnn package's own graph code under
TensorFlow with a strict checkpoint restore. Weights are converted once into the shared models cache by
the plugin's own `prepare` (a `pip download --no-deps musicnn==0.1.0` and a numpy-only checkpoint read).
"""
from __future__ import annotations

import concurrent.futures
import subprocess
import zipfile
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from plugins.embedders.musicnn import MSD_TAGS, MTT_TAGS, MusicnnEmbedder, weights_path
from plugins.embedders.musicnn.checkpoint import (
    CheckpointError,
    crc32c,
    masked_crc32c,
    read_index,
    read_tensors,
)
from plugins.embedders.musicnn.convert import (
    DATA_NAME,
    INDEX_NAME,
    TF_MODEL_TENSORS,
    WHEEL_CHECKPOINT_DIR,
    convert_wheel,
)
from plugins.embedders.musicnn.model import MusicnnMSD, load_state
from plugins.embedders.musicnn.preprocess import PATCH_FRAMES, audio_to_patches
from plugins.embedders.musicnn.recipe import MSD, VGG
from sidecar.plugins import EmbedderUnavailable
from tests.conftest import MUSICNN_REFERENCE

CLIPS = ("mix", "heavy", "soft")
TOL = 1e-4
VGG_REFERENCE = Path(__file__).parent / "fixtures" / "musicnn_networks"


def ref(clip: str, what: str) -> np.ndarray:
    return np.load(MUSICNN_REFERENCE / f"test_{clip}_{what}.npy")


def vgg_ref(clip: str, what: str) -> np.ndarray:
    """MTT_vgg's TensorFlow outputs on the same 10 reference patches (pool5, logits, taggram)."""
    return np.load(VGG_REFERENCE / f"MTT_vgg_{clip}_{what}.npy")


def logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def load_wav(clip: str) -> np.ndarray:
    y, _ = librosa.load(MUSICNN_REFERENCE / f"test_{clip}.wav", sr=16000, mono=True)
    return y


@pytest.fixture(scope="session")
def musicnn(models_dir) -> MusicnnEmbedder:
    """The PyTorch port (test_musicnn_onnx.py holds the default ONNX backend to the same references)."""
    e = MusicnnEmbedder()
    e.configure({"backend": "torch"})
    e.prepare(models_dir)
    e.load(models_dir)
    return e


@pytest.fixture(scope="session")
def checkpoint(wheel) -> tuple[bytes, bytes]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.read(WHEEL_CHECKPOINT_DIR + INDEX_NAME), zf.read(WHEEL_CHECKPOINT_DIR + DATA_NAME)


# ------------------------------------------------------------------------------------------ plugin contract
def test_plugin_attributes():
    e = MusicnnEmbedder()
    assert (e.name, e.dim, e.sample_rate) == ("musicnn", 1012, 16000)
    assert isinstance(e.version, str) and e.version and e.networks == (MSD, VGG)
    assert len(MSD_TAGS) == 50 and len(set(MSD_TAGS)) == 50
    assert MSD_TAGS[:3] == ("rock", "pop", "alternative") and MSD_TAGS[-1] == "happy"
    assert len(MTT_TAGS) == 50 and len(set(MTT_TAGS)) == 50 and MTT_TAGS[:2] == ("guitar", "classical")


def test_space_blocks_cover_the_vector_in_order():
    """[MSD mean | MSD std | MTT_vgg mean | MTT_vgg std | MSD tag logits | MTT tag logits], each network weighing
    1 (its mean 0.8, its std 0.2) and each network's tags 0.25: the benchmark's recipe (see recipe.py)."""
    e = MusicnnEmbedder()
    assert [(b.name, b.size, b.weight, b.scales) for b in e.space] == [
        ("msd_mean", 200, 0.8, None), ("msd_std", 200, 0.2, None), ("mtt_vgg_mean", 256, 0.8, None),
        ("mtt_vgg_std", 256, 0.2, None), ("msd_tags", 50, 0.25, None), ("mtt_tags", 50, 0.25, None),
    ]  # fmt: skip
    assert sum(b.size for b in e.space) == e.dim


def test_vgg_off_is_the_msd_recipe_with_its_own_version_and_space():
    default, msd = MusicnnEmbedder(), MusicnnEmbedder()
    msd.configure({"vgg_patches": "0"})
    assert msd.networks == (MSD,) and msd.dim == 450 and msd.version != default.version
    assert [(b.name, b.size, b.weight) for b in msd.space] == [("msd_mean", 200, 0.8), ("msd_std", 200, 0.2), ("msd_tags", 50, 0.25)]
    fewer = MusicnnEmbedder()
    fewer.configure({"vgg_patches": "6"})  # a budget, like `patches`: same vector, same version
    assert (fewer.version, fewer.dim, fewer.space) == (default.version, default.dim, default.space)


@pytest.mark.parametrize("value", ["-1", "some", "2.5", "100001"])
def test_a_bad_vgg_patch_budget_is_refused_naming_the_setting(value):
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSICNN__VGG_PATCHES") as ei:
        MusicnnEmbedder().configure({"vgg_patches": value})
    assert repr(value) in str(ei.value)


def test_load_without_weights_says_run_setup(tmp_path):
    with pytest.raises(EmbedderUnavailable, match="sidecar setup") as ei:
        MusicnnEmbedder().load(tmp_path)
    assert str(weights_path(tmp_path)) in str(ei.value)


def test_embed_before_load_is_refused():
    with pytest.raises(EmbedderUnavailable, match="load"):
        MusicnnEmbedder().embed(np.zeros(48000, np.float32))


def test_prepare_is_idempotent_and_does_not_download_again(musicnn, models_dir, monkeypatch):
    paths = [weights_path(models_dir, net) for net in (MSD, VGG)]
    before = [p.stat().st_mtime_ns for p in paths]

    def no_pip(*a, **k):
        raise AssertionError("prepare() ran pip although the weights exist")

    monkeypatch.setattr(subprocess, "run", no_pip)
    MusicnnEmbedder().prepare(models_dir)
    assert [p.stat().st_mtime_ns for p in paths] == before
    assert paths[0].stat().st_size < 4_000_000 and paths[1].stat().st_size < 3_000_000  # model tensors only, no Adam slots


def test_prepare_reports_a_failed_download(tmp_path, monkeypatch):
    def failing_pip(cmd, **k):
        assert "--no-deps" in cmd and "musicnn==0.1.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(EmbedderUnavailable, match="could not download musicnn==0.1.0.*No matching distribution"):
        MusicnnEmbedder().prepare(tmp_path)
    assert not (tmp_path / "musicnn").exists() or not any((tmp_path / "musicnn").iterdir())


def test_an_upgrade_converts_the_missing_network_from_one_download(musicnn, models_dir, wheel, tmp_path, monkeypatch):
    """A models folder of the previous version holds MSD_musicnn only: prepare fetches the wheel once and adds
    MTT_vgg, leaving the MSD weights as they were."""
    import shutil

    (tmp_path / "musicnn").mkdir()
    shutil.copy2(weights_path(models_dir), weights_path(tmp_path))
    before = weights_path(tmp_path).stat().st_mtime_ns
    calls = []

    def pip_from_cache(cmd, **k):  # `pip download` answered from the test cache's wheel
        calls.append(cmd)
        shutil.copy(wheel, Path(cmd[cmd.index("-d") + 1]) / wheel.name)
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(subprocess, "run", pip_from_cache)
    e = MusicnnEmbedder()
    e.configure({"backend": "torch"})
    e.prepare(tmp_path)
    assert len(calls) == 1 and weights_path(tmp_path).stat().st_mtime_ns == before
    from safetensors.numpy import load_file

    added, shared = load_file(str(weights_path(tmp_path, VGG))), load_file(str(weights_path(models_dir, VGG)))
    assert added.keys() == shared.keys() and all(np.array_equal(added[k], shared[k]) for k in added)
    e.load(tmp_path)


def test_load_without_the_vgg_weights_says_run_setup_unless_vgg_is_off(musicnn, models_dir, tmp_path):
    import shutil

    (tmp_path / "musicnn").mkdir()
    shutil.copy2(weights_path(models_dir), weights_path(tmp_path))
    e = MusicnnEmbedder()
    e.configure({"backend": "torch"})
    with pytest.raises(EmbedderUnavailable, match="sidecar setup") as ei:
        e.load(tmp_path)
    assert str(weights_path(tmp_path, VGG)) in str(ei.value)
    e.configure({"backend": "torch", "vgg_patches": "0"})
    e.load(tmp_path)
    assert e.embed(load_wav("mix")).vector.shape == (450,)


@pytest.mark.parametrize("network", [MSD, VGG])
def test_prepared_weights_equal_a_fresh_conversion(musicnn, models_dir, wheel, tmp_path, network):
    from safetensors.numpy import load_file

    fresh = convert_wheel(wheel, tmp_path / "w.safetensors", network)
    cached = load_file(str(weights_path(models_dir, network)))
    assert fresh.keys() == cached.keys()
    # parameters of the 64 MSD_musicnn model tensors; of the 34 of MTT_vgg
    assert sum(v.size for v in fresh.values()) == {MSD: 792_079, VGG: 607_030}[network]
    for k in fresh:
        np.testing.assert_array_equal(fresh[k], cached[k], err_msg=k)


# ------------------------------------------------------------------------------------------ checkpoint reader
def test_crc32c_matches_known_values():
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vectors
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    # the vectorised path (>= 4 KiB) agrees with a plain bytewise CRC
    from plugins.embedders.musicnn.checkpoint import _crc_raw_py

    data = np.random.default_rng(1).integers(0, 256, 100_003, dtype=np.uint8).tobytes()
    assert crc32c(data) == _crc_raw_py(data, 0xFFFFFFFF) ^ 0xFFFFFFFF
    crc = crc32c(b"123456789")
    assert masked_crc32c(b"123456789") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_index_lists_model_tensors_and_adam_slots(checkpoint):
    index_bytes, _ = checkpoint
    entries = read_index(index_bytes)
    assert len(entries) == 150
    assert TF_MODEL_TENSORS <= entries.keys() and len(TF_MODEL_TENSORS) == 64
    assert {n for n in entries if n not in TF_MODEL_TENSORS} == {
        n for n in entries if n.endswith(("/Adam", "/Adam_1")) or n in ("beta1_power", "beta2_power")
    }
    e = entries["conv2d/kernel"]
    assert e.shape == (7, 38, 1, 204) and e.dtype == np.float32 and e.size == 7 * 38 * 204 * 4


def test_checkpoint_reader_rejects_a_flipped_byte(checkpoint, tmp_path):
    index_bytes, data_bytes = checkpoint
    entry = read_index(index_bytes)["dense/kernel"]
    good = read_tensors(index_bytes, data_bytes, keep=lambda n: n == "dense/kernel")
    assert good["dense/kernel"].shape == (1506, 200)

    copy = tmp_path / DATA_NAME  # a copy of the data file with one byte of one tensor flipped
    corrupt = bytearray(data_bytes)
    corrupt[entry.offset + 1000] ^= 0x01
    copy.write_bytes(bytes(corrupt))
    with pytest.raises(CheckpointError, match=r"dense/kernel: crc32c mismatch.*corrupt"):
        read_tensors(index_bytes, copy.read_bytes())


def test_checkpoint_reader_rejects_a_corrupt_index_and_truncated_data(checkpoint):
    index_bytes, data_bytes = checkpoint
    bad = bytearray(index_bytes)
    bad[10] ^= 0xFF  # inside the first data block of the SSTable
    with pytest.raises(CheckpointError, match="crc32c mismatch"):
        read_index(bytes(bad))
    with pytest.raises(CheckpointError, match="magic"):
        read_index(index_bytes[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="past the end"):
        read_tensors(index_bytes, data_bytes[: len(data_bytes) // 2])


def test_conversion_of_a_corrupt_wheel_fails_and_writes_nothing(wheel, checkpoint, tmp_path):
    target = read_index(checkpoint[0])["conv2d_5/kernel"]  # a model tensor (Adam slots are never read)
    bad_wheel = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(bad_wheel, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == WHEEL_CHECKPOINT_DIR + DATA_NAME:
                data = bytearray(data)
                data[target.offset + target.size // 2] ^= 0x80
                data = bytes(data)
            dst.writestr(info, data)
    dest = tmp_path / "out" / "msd_musicnn.safetensors"
    with pytest.raises(CheckpointError, match="conv2d_5/kernel: crc32c mismatch"):
        convert_wheel(bad_wheel, dest)
    assert not dest.exists()


# ------------------------------------------------------------------------------------------ parity with TF
@pytest.mark.parametrize("clip", CLIPS)
def test_preprocessing_matches_reference_patches(clip):
    patches = audio_to_patches(load_wav(clip))
    expected = ref(clip, "logmel_patches")
    assert patches.shape == expected.shape == (10, PATCH_FRAMES, 96)
    assert patches.dtype == np.float32
    np.testing.assert_allclose(patches, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("clip", CLIPS)
def test_model_matches_tensorflow(musicnn, clip):
    out = musicnn.infer(ref(clip, "logmel_patches"))
    for ours, theirs in [
        ("taggram", "tf_taggram"),
        ("logits", "tf_logits"),
        ("penultimate", "tf_penultimate"),
        ("dense_preact", "tf_dense_preact"),
    ]:
        expected = ref(clip, theirs)
        assert out[ours].shape == expected.shape
        np.testing.assert_allclose(out[ours], expected, rtol=0, atol=TOL, err_msg=f"{clip}: {ours}")
    # the dense pre-activation is not the (ReLU'd, normalised) penultimate layer
    assert (out["dense_preact"] < 0).any()


def test_fast_frontend_equals_the_literal_graph_order(musicnn, models_dir):
    from safetensors.torch import load_file

    literal = load_state(MusicnnMSD(literal=True), load_file(str(weights_path(models_dir))))
    x = torch.from_numpy(np.concatenate([ref(c, "logmel_patches")[:3] for c in CLIPS]))
    with torch.inference_mode():
        a, b = literal(x), musicnn._models[MSD](x)
    for name in a._fields:
        torch.testing.assert_close(getattr(b, name), getattr(a, name), rtol=0, atol=1e-5, msg=name)


def test_batching_does_not_change_results(musicnn):
    x = ref("mix", "logmel_patches")
    whole = musicnn.infer(x)["dense_preact"]
    one_by_one = np.concatenate([musicnn.infer(x[i : i + 1])["dense_preact"] for i in range(len(x))])
    np.testing.assert_allclose(one_by_one, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("clip", CLIPS)
def test_mtt_vgg_matches_tensorflow(musicnn, clip):
    out = musicnn.infer(ref(clip, "logmel_patches"), VGG)
    assert set(out) == {"pool5", "logits", "taggram"}
    for k in out:
        assert out[k].shape == vgg_ref(clip, k).shape
        np.testing.assert_allclose(out[k], vgg_ref(clip, k), rtol=0, atol=TOL, err_msg=f"{clip}: {k}")


# ------------------------------------------------------------------------------------------ embed()
def expected_vector(clip: str, vgg_rows=slice(None)) -> np.ndarray:
    """The documented layout, from the TensorFlow references alone."""
    dense, pool5 = ref(clip, "tf_dense_preact"), vgg_ref(clip, "pool5")[vgg_rows]
    return np.concatenate([
        dense.mean(0), dense.std(0), pool5.mean(0), pool5.std(0),
        logit(ref(clip, "tf_taggram").mean(0)), logit(vgg_ref(clip, "taggram")[vgg_rows].mean(0)),
    ])  # fmt: skip


@pytest.mark.parametrize("clip", ["mix", "soft"])
def test_embed_end_to_end(musicnn, clip):
    res = musicnn.embed(load_wav(clip))  # 10 patches: MTT_vgg sees all of them (at most 12)
    assert res.vector.shape == (1012,) and res.vector.dtype == np.float32
    assert np.isfinite(res.vector).all() and res.segments is None
    np.testing.assert_allclose(res.vector, expected_vector(clip), rtol=0, atol=2 * TOL)
    assert list(res.tags) == list(MSD_TAGS) + [f"mtt:{t}" for t in MTT_TAGS]
    probs = np.array(list(res.tags.values()))
    assert ((probs >= 0) & (probs <= 1)).all()
    np.testing.assert_allclose(probs[:50], ref(clip, "tf_taggram").mean(axis=0), rtol=0, atol=TOL)
    np.testing.assert_allclose(probs[50:], vgg_ref(clip, "taggram").mean(axis=0), rtol=0, atol=TOL)


def test_mtt_vgg_runs_on_every_other_patch_of_a_budget(musicnn):
    e = MusicnnEmbedder()
    e.configure({"backend": "torch", "vgg_patches": "5"})
    e._models = musicnn._models
    res = e.embed(load_wav("heavy"))  # 10 patches, 5 through MTT_vgg: 0, 2, 4, 6, 8
    np.testing.assert_allclose(res.vector, expected_vector("heavy", slice(None, None, 2)), rtol=0, atol=2 * TOL)
    np.testing.assert_allclose(list(res.tags.values())[50:], vgg_ref("heavy", "taggram")[::2].mean(0), rtol=0, atol=TOL)
    assert np.abs(res.vector - musicnn.embed(load_wav("heavy")).vector)[400:912].max() > 1e-3  # not all 10


def test_vgg_off_embeds_the_msd_recipe_and_msd_tags_only(musicnn):
    e = MusicnnEmbedder()
    e.configure({"backend": "torch", "vgg_patches": "0"})
    e._models = {MSD: musicnn._models[MSD]}
    res = e.embed(load_wav("mix"))
    dense = ref("mix", "tf_dense_preact")
    expected = np.concatenate([dense.mean(0), dense.std(0), logit(ref("mix", "tf_taggram").mean(0))])
    assert res.vector.shape == (450,)
    np.testing.assert_allclose(res.vector, expected, rtol=0, atol=2 * TOL)
    assert list(res.tags) == list(MSD_TAGS)


def test_embed_tags_tell_clips_apart(musicnn):
    soft = musicnn.embed(load_wav("soft")).tags
    mix = musicnn.embed(load_wav("mix")).tags
    assert max(soft, key=soft.get) != max(mix, key=mix.get)


def test_mtt_tags_tell_orchestral_from_electronic_music(musicnn, genre_excerpts):
    """Real excerpts of known kind (Wesnoth's orchestral score, Nexuiz's electronic one): the MagnaTagATune tags
    that name instruments and styles rank them apart."""
    from sidecar.pipeline.audio import decode

    def score(path, up: tuple[str, ...], down: tuple[str, ...]) -> float:
        tags = musicnn.embed(decode(path).at(16000)).tags
        return sum(tags[f"mtt:{t}"] for t in up) - sum(tags[f"mtt:{t}"] for t in down)

    up, down = ("classical", "strings", "violin"), ("techno", "electronic", "beats")
    orchestral = [score(p, up, down) for p in genre_excerpts["orchestral"][:6]]
    electronic = [score(p, up, down) for p in genre_excerpts["electronic"][:6]]
    assert min(orchestral) > max(electronic), (orchestral, electronic)


def test_embed_rejects_audio_shorter_than_one_second(musicnn):
    with pytest.raises(ValueError, match="too short"):
        musicnn.embed(load_wav("mix")[:8000])  # 0.5 s
    with pytest.raises(ValueError):
        musicnn.embed(np.zeros((2, 48000), np.float32))  # not mono


def test_embed_pads_a_short_track_to_one_patch(musicnn):
    y = load_wav("mix")[: int(1.5 * 16000)]
    res = musicnn.embed(y)
    patch = audio_to_patches(y)
    assert patch.shape == (1, PATCH_FRAMES, 96)
    frames = len(y) // 256 + 1  # center=True
    # the frames away from the cut match the full clip; the rest of the patch is zeros (log10(1): silence)
    full = ref("mix", "logmel_patches")[0]
    np.testing.assert_allclose(patch[0, : frames - 2], full[: frames - 2], rtol=0, atol=TOL)
    assert patch[0, frames - 2 :].any(axis=1).sum() <= 2 and not patch[0, frames:].any()
    # one patch: the means are its outputs, the spreads zero
    np.testing.assert_allclose(res.vector[:200], musicnn.infer(patch)["dense_preact"][0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(res.vector[400:656], musicnn.infer(patch, VGG)["pool5"][0], rtol=0, atol=1e-6)
    assert not res.vector[200:400].any() and not res.vector[656:912].any()


def test_embed_is_thread_safe(musicnn):
    clips = [load_wav(c) for c in (*CLIPS, "mix")]
    expected = [musicnn.embed(y).vector for y in clips]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda y: musicnn.embed(y).vector, clips))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)
