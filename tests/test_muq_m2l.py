"""MuQ, MuQ-MuLan and Music2Latent plugins, and the torchaudio stand-in MuQ imports.

No weights can be downloaded here, so every test builds a *tiny random model of the real architecture
classes* (muq's MuQ and MuQMuLan with an XLM-R text tower and a tokenizer trained on a few sentences;
music2latent's UNet with smaller hyperparameters), saves it in the layout a user's checkpoint has
(config.json + model.safetensors for MuQ; config.json + pytorch_model.bin for MuQ-MuLan, with its two tower
directories beside it; a `gen_state_dict` dict in music2latent.pt), and loads it through the plugin's own
path: configure -> prepare -> load -> embed, on real music (the OGG excerpts of tests/conftest.py).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import librosa
import numpy as np
import pytest
import torch

from plugins.embedders import _torchaudio_compat as ta
from plugins.embedders.music2latent import Music2LatentEmbedder
from plugins.embedders.muq import MuqEmbedder, MuqMulanEmbedder, import_muq
from sidecar.plugins import EmbedderUnavailable

REPO = Path(__file__).resolve().parents[1]
STAT = {"melspec_2048_mean": 6.768444971712967, "melspec_2048_std": 18.417922652295623}
SENTENCES = [
    "classical genres, hopeful mood, piano.",
    "a fast electronic dance track with heavy bass",
    "calm acoustic guitar and soft female vocals",
    "epic orchestral soundtrack for a video game battle",
    "jazz trio with brushed drums and upright bass",
    "一首适合海边风景的小提琴曲，节奏欢快",
    "chiptune melody, retro eight bit arcade music",
    "slow ambient pads, relaxing, dreamy",
]

# ------------------------------------------------------------------------------------------------- real audio


@pytest.fixture(scope="module")
def clips(excerpts) -> dict[int, list[np.ndarray]]:
    """Two real 30-s excerpts at 24 kHz and 44.1 kHz (decoded once)."""
    from sidecar.pipeline.audio import decode

    decoded = [decode(p) for p in excerpts[:2]]
    return {sr: [d.at(sr) for d in decoded] for sr in (24_000, 44_100)}


# ------------------------------------------------------------------------------------------------- tiny models


def tiny_muq_config(hidden: int = 32, depth: int = 8) -> dict:
    """8 layers, so that the plugin's default layer (7, for MuQ-large's 12) exists in the tiny model too."""
    # config.json holds the MuQConfig fields, w2v2_config being a JSON-round-tripped conformer config
    from transformers import Wav2Vec2ConformerConfig

    w2v2 = Wav2Vec2ConformerConfig(
        hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=2, intermediate_size=2 * hidden,
        conv_depthwise_kernel_size=5, position_embeddings_type="rotary",
    ).to_dict()  # fmt: skip
    return {
        "encoder_dim": hidden, "encoder_depth": depth, "conv_dim": 8, "codebook_size": 64, "codebook_dim": 16,
        "stat": STAT, "w2v2_config": json.loads(json.dumps(w2v2)),
    }  # fmt: skip


def save_tiny_muq(path: Path, **kw) -> Path:
    """A MuQ checkpoint directory as published (hub mixin save_pretrained: config.json + model.safetensors)."""
    muq = import_muq()
    model = muq.MuQ(muq.MuQConfig(**tiny_muq_config(**kw)))
    model.save_pretrained(str(path))
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    return path


def save_tiny_xlmr(path: Path) -> Path:
    """A tiny XLM-R: config, weights, and a Unigram tokenizer (XLM-R's special tokens and ids) trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0-4, as in xlm-roberta-base
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(SENTENCES * 4, trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=512,
    )  # fmt: skip
    fast.save_pretrained(str(path))
    cfg = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=34, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )  # fmt: skip
    XLMRobertaModel(cfg).save_pretrained(str(path))
    return path


def tiny_mulan_config(audio_name: str, text_name: str) -> dict:
    return {
        "mulan": {
            "sr": 24000, "clip_secs": 10, "dim_latent": 16, "decoupled_contrastive_learning": True,
            "hierarchical_contrastive_loss": False, "hierarchical_contrastive_loss_layers": None,
            "sigmoid_contrastive_loss": False, "rank_contrast": True,
        },
        "audio_model": {"name": audio_name, "model_dim": 32, "use_layer_idx": -1},
        "text_model": {"name": text_name, "model_dim": 32, "use_layer_idx": -1},
        "audio_transformer": {"dim": 24, "tf_depth": 1, "heads": 2, "dim_head": 8, "attn_dropout": 0.0, "ff_dropout": 0.0, "ff_mult": 2},
        "text_transformer": {"dim": 24, "tf_depth": 1, "max_seq_len": 64, "dim_head": 8, "heads": 2, "attn_dropout": 0.0, "ff_dropout": 0.0, "ff_mult": 2},
    }  # fmt: skip


@pytest.fixture(scope="module")
def muq_dir(tmp_path_factory) -> Path:
    return save_tiny_muq(tmp_path_factory.mktemp("muq") / "MuQ-large-msd-iter")


@pytest.fixture(scope="module")
def mulan_models(tmp_path_factory):
    """models/{MuQ-MuLan-large, MuQ-large-msd-iter, xlm-roberta-base}, as a user downloads them.

    The MuLan checkpoint is made by upstream muq code: MuQMuLan(config) with its towers loaded by upstream
    `from_pretrained` from local directories (names that contain "muq" and "xlm-roberta"), then its state
    dict saved as pytorch_model.bin beside a config.json naming the towers by their hub names, like the
    release. The upstream model is returned too, as the reference.
    """
    root = tmp_path_factory.mktemp("models")
    audio = save_tiny_muq(root / "MuQ-large-msd-iter", depth=2)
    text = save_tiny_xlmr(root / "xlm-roberta-base")
    muq = import_muq()
    reference = muq.MuQMuLan(tiny_mulan_config(str(audio), str(text))).eval()
    ckpt = root / "MuQ-MuLan-large"
    ckpt.mkdir()
    torch.save(reference.state_dict(), ckpt / "pytorch_model.bin")
    (ckpt / "config.json").write_text(json.dumps(tiny_mulan_config("OpenMuQ/MuQ-large-msd-iter", "xlm-roberta-base"), indent=2))
    return root, reference


M2L_TINY = {
    "base_channels": 4, "bottleneck_base_channels": 16, "num_bottleneck_layers": 1, "bottleneck_channels": 8,
    "cond_channels": 16,
}  # fmt: skip


@pytest.fixture
def tiny_m2l(monkeypatch):
    """music2latent's model classes with smaller hyperparameters (its architecture is module constants)."""
    import music2latent.models as m2l

    for k, v in M2L_TINY.items():
        monkeypatch.setattr(m2l, k, v)
    return m2l


def save_m2l_checkpoint(path: Path, m2l, *, extra_objects: bool = False) -> Path:
    """music2latent.pt as the package loads it: a dict with the UNet's state under gen_state_dict."""
    gen = m2l.UNet()
    ckpt = {"gen_state_dict": gen.state_dict(), "it": 1000}
    if extra_objects:  # a training namespace, as released checkpoints may pickle: needs weights_only=False
        ckpt["hparams"] = argparse.Namespace(base_channels=m2l.base_channels, note="pickled object")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def loaded(embedder, options: dict, tmp_path: Path):
    embedder.configure(options)
    embedder.prepare(tmp_path)
    embedder.load(tmp_path)
    return embedder


def check_result(r, dim: int, n_segments: int) -> None:
    assert r.vector.shape == (dim,) and r.vector.dtype == np.float32
    assert np.all(np.isfinite(r.vector))
    assert abs(np.linalg.norm(r.vector) - 1) < 1e-4
    assert r.segments is not None and r.segments.shape == (n_segments, dim)
    assert np.all(np.isfinite(r.segments))
    np.testing.assert_allclose(np.linalg.norm(r.segments, axis=1), 1.0, atol=1e-4)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------------------------------- torchaudio stand-in


@pytest.mark.parametrize("mel_scale,norm", [("htk", None), ("slaney", "slaney"), ("htk", "slaney"), ("slaney", None)])
def test_melspectrogram_matches_librosa(clips, mel_scale, norm):
    """The stand-in's MelSpectrogram against librosa with the equivalent settings (torchaudio can't run here).

    MuQ's own settings are the first case (htk, no norm). torchaudio builds its filters in float32, so the
    comparison is relative to the spectrogram's peak (filter-edge bins carry float32 rounding)."""
    y = clips[24_000][0][: 24_000 * 5]
    ours = ta.MelSpectrogram(sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128, mel_scale=mel_scale, norm=norm)
    mel = ours(torch.from_numpy(y)).double().numpy()
    ref = librosa.feature.melspectrogram(
        y=y.astype(np.float64), sr=24000, n_fft=2048, hop_length=240, n_mels=128, htk=mel_scale == "htk",
        norm=norm, center=True, pad_mode="reflect", power=2.0, window="hann",
    )  # fmt: skip
    assert mel.shape == ref.shape == (128, 501)
    assert np.abs(mel - ref).max() / ref.max() < 1e-5
    loud = ref > ref.max() * 1e-6  # every bin within 60 dB of the peak, elementwise
    assert (np.abs(mel - ref)[loud] / ref[loud]).max() < 1e-3
    fb = ta.melscale_fbanks(1025, 0.0, 12000.0, 128, 24000, norm, mel_scale).numpy().T
    fb_ref = librosa.filters.mel(sr=24000, n_fft=2048, n_mels=128, htk=mel_scale == "htk", norm=norm, dtype=np.float64)
    assert np.abs(fb - fb_ref).max() / fb_ref.max() < 1e-4

    db = ta.AmplitudeToDB()(torch.from_numpy(mel)).numpy()
    db_ref = librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=None)
    hear = db_ref > db_ref.max() - 80
    assert np.abs(db - db_ref)[hear].max() < 5e-3
    db80 = ta.AmplitudeToDB(top_db=80.0)(torch.from_numpy(mel)).numpy()
    np.testing.assert_allclose(db80, librosa.power_to_db(ref, ref=1.0, amin=1e-10, top_db=80.0), atol=5e-3)


def test_standin_shapes_and_batches():
    x = torch.randn(3, 2, 24_000)
    m = ta.MelSpectrogram(sample_rate=24000, n_fft=2048, hop_length=240, n_mels=128)
    out = m(x)
    assert out.shape == (3, 2, 128, 101)
    torch.testing.assert_close(out[1, 0], m(x[1, 0]))
    spec = ta.Spectrogram(n_fft=128, win_length=24, power=None)(x[0, 0])
    assert spec.is_complex() and spec.shape == (65, 24_000 // 12 + 1)
    with pytest.raises(NotImplementedError):
        ta.TimeMasking(time_mask_param=80)(out)


def test_muq_import_leaves_no_torchaudio_behind():
    """muq imports with the stand-in, which is gone from sys.modules afterwards; transformers is unaffected."""
    muq = import_muq()
    from muq.muq.modules import features

    assert features.torchaudio.__version__.endswith("standin")  # what muq holds and uses at run time
    assert "torchaudio" not in sys.modules and "torchaudio.transforms" not in sys.modules
    assert importlib.util.find_spec("torchaudio") is None
    assert "x_clip" not in sys.modules  # the half-imported x_clip package (its __init__ needs torchvision) is gone too
    import transformers
    from transformers import AutoModel, Wav2Vec2FeatureExtractor  # noqa: F401

    assert transformers.utils.is_torchaudio_available() is False
    assert muq.MuQ is not None and muq.MuQMuLan is not None
    assert import_muq() is muq


def test_transformers_works_after_muq_plugin_in_a_fresh_process(muq_dir, tmp_path):
    """In a new interpreter: load the MuQ plugin first, then use transformers (its torchaudio probe included)."""
    code = textwrap.dedent(
        f"""
        import importlib.util, sys
        from plugins.embedders.muq import MuqEmbedder
        e = MuqEmbedder(); e.configure({{"checkpoint": {str(muq_dir)!r}}}); e.load(None)
        assert "torchaudio" not in sys.modules and importlib.util.find_spec("torchaudio") is None
        import transformers
        from transformers import AutoModel, AutoConfig, Wav2Vec2FeatureExtractor
        from transformers.utils import is_torchaudio_available
        assert is_torchaudio_available() is False
        import transformers.models.wav2vec2.modeling_wav2vec2
        print("OK", e.dim)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK 64"


# ------------------------------------------------------------------------------------------------- MuQ


def test_muq_embeds_real_music(muq_dir, clips, tmp_path):
    e = loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "window_s": "10"}, tmp_path)
    assert e.dim == 64 and e.sample_rate == 24_000 and e.store_segments and not e.supports_text  # 32-d hidden x (mean, std)
    a, b = (c[: 20 * 24_000] for c in clips[24_000])
    ra, rb = e.embed(a), e.embed(b)
    check_result(ra, 64, 2)  # 20 s in 10-s windows
    check_result(rb, 64, 2)
    assert cos(ra.vector, rb.vector) < 0.999
    np.testing.assert_allclose(e.embed(a).vector, ra.vector, atol=1e-5)  # deterministic
    assert e.embed(a[: 24_000 * 3]).segments.shape == (1, 64)  # shorter than a window: one window
    with pytest.raises(ValueError):
        e.embed(np.zeros(1000, dtype=np.float32))


def test_muq_matches_upstream_from_pretrained(muq_dir, clips, tmp_path):
    """The plugin's loading gives the same model as upstream `MuQ.from_pretrained(dir)`: same frame features."""
    muq = import_muq()
    e = loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "layer": "1", "window_s": "10"}, tmp_path)
    upstream = muq.MuQ.from_pretrained(str(muq_dir)).eval()
    x = clips[24_000][0][: 10 * 24_000]
    with torch.inference_mode():
        h = upstream(torch.from_numpy(x)[None], output_hidden_states=True).hidden_states[1][0]
    means, vars_, counts = e.window_stats(x[None])
    assert counts.tolist() == [h.shape[0]] == [250]  # 25 Hz
    np.testing.assert_allclose(means[0], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(vars_[0], h.var(0, unbiased=False).numpy(), rtol=1e-3, atol=1e-5)


def test_muq_options_change_output_and_version(muq_dir, clips, tmp_path):
    x = clips[24_000][0][: 12 * 24_000]
    base = loaded(MuqEmbedder(), {"checkpoint": str(muq_dir)}, tmp_path)
    assert base.version.startswith("muq-") and "layer7" in base.version and "w10sx6" in base.version
    assert base.embed(x).segments.shape == (2, 64)  # 12 s: two 10-s windows
    last = loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "layer": "-1"}, tmp_path)
    assert "layer8" in last.version
    mid = loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "layer": "1"}, tmp_path)
    assert mid.version != base.version and "layer1" in mid.version
    assert cos(mid.embed(x).vector, base.embed(x).vector) < 0.999
    mean = loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "pooling": "mean", "max_windows": "2", "window_s": "4"}, tmp_path)
    r = mean.embed(x)
    assert mean.dim == 32 and r.vector.shape == (32,) and r.segments.shape == (2, 32)
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ__LAYER"):
        loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "layer": "9"}, tmp_path)  # 0-8 exist
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ__LAYER"):
        MuqEmbedder().configure({"layer": "middle"})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ__POOLING"):
        MuqEmbedder().configure({"pooling": "max"})


def test_muq_load_does_not_reseed_global_rngs(muq_dir, tmp_path):
    """muq's constructors call torch.manual_seed(142) and random.seed(142); loading must not reseed the process.

    (A forward pass does draw from torch's RNG - transformers' LayerDrop check - so torch's stream moves on,
    but it must still depend on the process's own seed.)"""
    draws = []
    for seed in (1234, 999):
        torch.manual_seed(seed)
        random.seed(seed)
        expected_py = random.random()
        random.seed(seed)
        loaded(MuqEmbedder(), {"checkpoint": str(muq_dir)}, tmp_path)
        assert random.random() == expected_py
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_muq_missing_or_bad_checkpoint(muq_dir, tmp_path):
    e = MuqEmbedder()
    e.configure({})
    for call in (e.prepare, e.load):
        with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ__CHECKPOINT") as err:
            call(tmp_path)
        assert "CC-BY-NC-4.0" in str(err.value)
    e.configure({"checkpoint": str(tmp_path / "nowhere")})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ__CHECKPOINT") as err:
        e.load(tmp_path)
    assert "no such directory" in str(err.value) and "CC-BY-NC-4.0" in str(err.value)

    no_weights = tmp_path / "only-config"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((muq_dir / "config.json").read_text())
    e.configure({"checkpoint": str(no_weights)})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ__CHECKPOINT.*model.safetensors"):
        e.load(tmp_path)

    other = save_tiny_muq(tmp_path / "other", hidden=16)  # weights of another size under this config
    (other / "config.json").write_text((muq_dir / "config.json").read_text())
    e.configure({"checkpoint": str(other)})
    with pytest.raises(EmbedderUnavailable, match="do not fit"):
        e.load(tmp_path)

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (foreign / "model.safetensors").write_bytes(b"not safetensors")
    e.configure({"checkpoint": str(foreign)})
    with pytest.raises(EmbedderUnavailable, match="not a MuQ config"):
        e.load(tmp_path)


# ------------------------------------------------------------------------------------------------- MuQ-MuLan


def test_mulan_audio_and_text_in_one_space(mulan_models, clips, tmp_path):
    root, reference = mulan_models
    e = loaded(MuqMulanEmbedder(), {"checkpoint": str(root / "MuQ-MuLan-large")}, tmp_path)
    assert e.supports_text and e.store_segments and e.dim == 16 and e.sample_rate == 24_000
    a, b = (c[: 20 * 24_000] for c in clips[24_000])
    ra, rb = e.embed(a), e.embed(b)
    check_result(ra, 16, 2)  # 20 s in the model's 10-s clips
    check_result(rb, 16, 2)
    assert cos(ra.vector, rb.vector) < 0.9999
    check_result(e.embed(a[: 24_000 * 3]), 16, 1)  # 3 s: one clip, the track repeated to fill it

    texts = ["calm acoustic guitar", "epic orchestral soundtrack", "一首适合海边风景的小提琴曲"]
    t = e.embed_text(texts)
    assert t.shape == (3, 16) and t.dtype == np.float32 and np.all(np.isfinite(t))
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(e.embed_text(texts), t)  # deterministic
    np.testing.assert_allclose(e.embed_text(texts[::-1])[::-1], t, atol=1e-6)  # independent of the batch
    assert cos(t[0], t[1]) < 0.9999
    assert e.embed_text([]).shape == (0, 16)
    long = e.embed_text([" ".join(SENTENCES * 20)])  # far over the tiny tower's 32 positions: truncated
    assert long.shape == (1, 16) and np.all(np.isfinite(long))
    sims = t @ ra.vector  # comparable with the audio vectors
    assert sims.shape == (3,) and np.all(np.abs(sims) <= 1.0001)

    # the same numbers as the upstream model the checkpoint was saved from
    with torch.inference_mode():
        up_text = reference(texts=[texts[1]]).numpy()[0]
        up_audio = reference(wavs=torch.from_numpy(a[: 10 * 24_000])[None]).numpy()[0]
    np.testing.assert_allclose(t[1], up_text, atol=1e-5)
    np.testing.assert_allclose(e.embed(a[: 10 * 24_000]).vector, up_audio / np.linalg.norm(up_audio), atol=1e-5)


def test_mulan_tower_options_and_errors(mulan_models, tmp_path):
    root, _ = mulan_models
    # towers anywhere, named anything, given by options
    import shutil

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "MuQ-large-msd-iter", elsewhere / "audio")
    shutil.copytree(root / "xlm-roberta-base", elsewhere / "text")
    ckpt = tmp_path / "mulan"
    shutil.copytree(root / "MuQ-MuLan-large", ckpt)
    opts = {"checkpoint": str(ckpt), "audio_tower": str(elsewhere / "audio"), "text_tower": str(elsewhere / "text"), "max_windows": "3"}
    e = loaded(MuqMulanEmbedder(), opts, tmp_path)
    assert e.dim == 16 and "x3" in e.version

    e = MuqMulanEmbedder()
    e.configure({"checkpoint": str(ckpt), "audio_tower": str(elsewhere / "audio")})  # no text tower beside it
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ_MULAN__TEXT_TOWER"):
        e.prepare(tmp_path)
    e.configure({"checkpoint": str(ckpt), "audio_tower": str(elsewhere / "audio"), "text_tower": str(tmp_path / "nope")})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ_MULAN__TEXT_TOWER"):
        e.load(tmp_path)
    e.configure({})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ_MULAN__CHECKPOINT.*CC-BY-NC-4.0"):
        e.load(tmp_path)
    e.configure({"checkpoint": str(tmp_path / "missing-dir")})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUQ_MULAN__CHECKPOINT"):
        e.prepare(tmp_path)
    with pytest.raises(EmbedderUnavailable, match="no text tower"):
        MuqEmbedder().embed_text(["x"])


# ------------------------------------------------------------------------------------------------- Music2Latent


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")  # upstream's autocast, in the reference
def test_music2latent_embeds_real_music(tiny_m2l, clips, tmp_path):
    ckpt = save_m2l_checkpoint(tmp_path / "m2l" / "music2latent.pt", tiny_m2l)
    e = loaded(Music2LatentEmbedder(), {"checkpoint": str(ckpt.parent), "window_s": "2"}, tmp_path)  # a directory works
    assert e.dim == 2 * M2L_TINY["bottleneck_channels"] and e.sample_rate == 44_100 and e.store_segments
    a, b = (c[: 4 * 44_100] for c in clips[44_100])  # (the encoder's 2-D convolutions are slow on CPU even when tiny)
    ra, rb = e.embed(a), e.embed(b)
    check_result(ra, 16, 2)  # 4 s in 2-s windows
    check_result(rb, 16, 2)
    assert cos(ra.vector, rb.vector) < 0.999
    short = e.embed(a[: 44_100 * 3 // 2])
    check_result(short, 16, 1)  # shorter than a window: one window
    np.testing.assert_allclose(e.embed(a[: 44_100 * 3 // 2]).vector, short.vector, atol=1e-6)  # deterministic

    # the plugin's encoding is the package's own encode_audio_inference (latents / sigma_rescale)
    import types

    from music2latent.inference import encode_audio_inference

    holder = torch.nn.Module()
    holder.encoder = e._model
    window = a[: 2 * 44_100]
    up = encode_audio_inference(window, types.SimpleNamespace(gen=holder), 44_100 * 60, 1, device="cpu")
    torch.testing.assert_close(e._encode(window[None]), up.float(), rtol=1e-4, atol=1e-5)

    f = loaded(Music2LatentEmbedder(), {"checkpoint": str(ckpt), "representation": "features", "window_s": "2"}, tmp_path)
    channels = tiny_m2l.base_channels * tiny_m2l.multipliers_list[-1] * 32  # channels x the 32 frequency rows left
    assert f.dim == 2 * channels == 1024 and f.version != e.version and "features" in f.version  # (16,384 full size)
    check_result(f.embed(window), f.dim, 1)
    up = encode_audio_inference(window, types.SimpleNamespace(gen=holder), 44_100 * 60, 1, device="cpu", extract_features=True)
    torch.testing.assert_close(f._encode(window[None]), up.float(), rtol=1e-4, atol=1e-5)


def test_music2latent_checkpoint_with_pickled_objects(tiny_m2l, clips, tmp_path, caplog):
    """A checkpoint holding more than tensors needs weights_only=False; it loads (with a warning)."""
    ckpt = save_m2l_checkpoint(tmp_path / "music2latent.pt", tiny_m2l, extra_objects=True)
    with pytest.raises(Exception):
        torch.load(ckpt, weights_only=True)
    e = loaded(Music2LatentEmbedder(), {"checkpoint": str(ckpt)}, tmp_path)
    assert "weights_only=False" in caplog.text
    check_result(e.embed(clips[44_100][0][: 2 * 44_100]), e.dim, 1)


def test_music2latent_missing_or_bad_checkpoint(tiny_m2l, tmp_path):
    e = Music2LatentEmbedder()
    e.configure({})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT"):
        e.prepare(tmp_path)
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT"):
        e.load(tmp_path)
    e.configure({"checkpoint": str(tmp_path / "nowhere" / "music2latent.pt")})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT.*no such file"):
        e.load(tmp_path)
    e.configure({"checkpoint": str(tmp_path)})  # a directory without music2latent.pt
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT"):
        e.load(tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a torch file")
    e.configure({"checkpoint": str(bad)})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT"):
        e.load(tmp_path)
    other = tmp_path / "other.pt"
    torch.save({"gen_state_dict": {"decoder.x": torch.zeros(1)}}, other)
    e.configure({"checkpoint": str(other)})
    with pytest.raises(EmbedderUnavailable, match="no encoder"):
        e.load(tmp_path)
    # the full-size package hyperparameters against a tiny checkpoint: refused, not half-loaded
    tiny = save_m2l_checkpoint(tmp_path / "tiny.pt", tiny_m2l)
    for k in M2L_TINY:
        setattr(tiny_m2l, k, getattr(__import__("music2latent.hparams", fromlist=["x"]), k))
    e.configure({"checkpoint": str(tiny)})
    with pytest.raises(EmbedderUnavailable, match="do not fit"):
        e.load(tmp_path)
    for opt, value in (("representation", "codes"), ("pooling", "max"), ("window_s", "90"), ("max_windows", "0")):
        with pytest.raises(EmbedderUnavailable, match=f"SIDECAR_PLUGINS__MUSIC2LATENT__{opt.upper()}"):
            e.configure({opt: value})


# ------------------------------------------------------------------------------------------------- storage


def test_vectors_store_and_search_in_milvus(muq_dir, mulan_models, tiny_m2l, clips, tmp_path):
    """Real-clip vectors and segments of all three plugins go into Milvus Lite and come back as the best hit."""
    from sidecar.data.store import VectorStore

    root, _ = mulan_models
    m2l_ckpt = save_m2l_checkpoint(tmp_path / "music2latent.pt", tiny_m2l)
    embedders = [
        (loaded(MuqEmbedder(), {"checkpoint": str(muq_dir), "window_s": "10"}, tmp_path), clips[24_000]),
        (loaded(MuqMulanEmbedder(), {"checkpoint": str(root / "MuQ-MuLan-large")}, tmp_path), clips[24_000]),
        (loaded(Music2LatentEmbedder(), {"checkpoint": str(m2l_ckpt), "window_s": "2"}, tmp_path), clips[44_100]),
    ]
    seconds = {"muq": 12, "muq_mulan": 12, "music2latent": 4}
    s = VectorStore(str(tmp_path / "m.db"))
    try:
        for e, audio in embedders:
            sr = e.sample_rate
            n = seconds[e.name] * sr
            r1, r2 = e.embed(audio[0][:n]), e.embed(audio[1][:n])
            s.ensure_collection(e.name, e.dim, segments=e.store_segments)
            s.upsert(e.name, [("t1", r1.vector, "h1"), ("t2", r2.vector, "h2")])
            assert s.search(e.name, r1.vector, 1)[0][0] == "t1"
            assert s.search(e.name, r2.vector, 1)[0][0] == "t2"
            s.replace_segments(e.name, "t1", r1.segments, "h1")
            assert len(s.segment_ids(e.name, "t1")) == len(r1.segments) >= 2
        mulan = embedders[1][0]
        hits = s.search(mulan.name, mulan.embed_text(["a song"])[0], 2)  # text queries search the audio space
        assert {h[0] for h in hits} == {"t1", "t2"}
    finally:
        s.close()


def test_plugins_load_through_entry_points(muq_dir, mulan_models, tmp_path):
    """As the service loads them: entry points, options per plugin, EmbedderUnavailable reasons kept."""
    from sidecar.plugins import discover, load_embedders

    found = discover()
    assert found["muq"] is MuqEmbedder and found["muq_mulan"] is MuqMulanEmbedder
    assert found["music2latent"] is Music2LatentEmbedder
    root, _ = mulan_models
    options = {"muq": {"checkpoint": str(muq_dir)}, "muq_mulan": {"checkpoint": str(root / "MuQ-MuLan-large")}}
    out = load_embedders(["muq", "muq_mulan", "music2latent"], tmp_path, options)
    assert set(out.ready) == {"muq", "muq_mulan"}
    assert out.ready["muq"].dim == 64 and out.ready["muq_mulan"].dim == 16
    assert "SIDECAR_PLUGINS__MUSIC2LATENT__CHECKPOINT" in out.unavailable["music2latent"]
    if not torch.cuda.is_available():
        bad = load_embedders(["muq"], tmp_path, {"muq": {"checkpoint": str(muq_dir), "device": "cuda"}})
        assert "SIDECAR_PLUGINS__MUQ__DEVICE" in bad.unavailable["muq"]
