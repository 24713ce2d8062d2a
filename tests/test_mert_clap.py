"""MERT and CLAP plugins, loaded exactly as a user's checkpoint is, from tiny random checkpoints.

Weights cannot be downloaded here, so each checkpoint is a tiny random model of the real architecture,
written to a directory with `save_pretrained` and loaded through the plugins' own `configure -> prepare ->
load -> embed` path:

- MERT: a MERT-style remote-code checkpoint, laid out like m-a-p/MERT-v1-*: config.json whose `auto_map`
  points at configuration_MERT.py / modeling_MERT.py in the same directory (a MERTConfig and a MERTModel that
  subclasses transformers' HubertModel with MERT's own feature projection, and the try/except nnAudio import
  of the real file), loaded by `AutoModel.from_pretrained(dir, trust_remote_code=True, local_files_only=True)`,
  plus a Wav2Vec2FeatureExtractor at 24 kHz and MERT v1's CNN strides (75 frames a second).
- CLAP: `ClapModel(ClapConfig(tiny text and HTSAT audio towers))`, a ClapProcessor made of the real default
  ClapFeatureExtractor (48 kHz, 10 s, 64 mel bins) and a RobertaTokenizer whose vocab.json / merges.txt
  come from a byte-level BPE trained here on a few sentences.

Audio is real music (the `excerpts` fixture: 30-second OGG excerpts), decoded by sidecar.pipeline.audio.
"""
from __future__ import annotations

import asyncio

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from sidecar.plugins import EmbedderUnavailable

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from plugins.embedders import _windows  # noqa: E402
from plugins.embedders.clap import ClapEmbedder  # noqa: E402
from plugins.embedders.mert import MertEmbedder  # noqa: E402

# ------------------------------------------------------------------------------------------------ MERT checkpoint
# A cut-down MERT: the same class names, model_type, auto_map and import structure as the published
# checkpoints (only hubert classes from transformers; nnAudio optional), without the CQT and deepnorm variants.
CONFIGURATION_MERT = '''\
"""MERT configuration (tiny test stand-in, same fields as the published configuration_MERT.py)."""
from transformers.configuration_utils import PretrainedConfig


class MERTConfig(PretrainedConfig):
    model_type = "mert_model"

    def __init__(self, vocab_size=32, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, hidden_act="gelu", hidden_dropout=0.1, activation_dropout=0.1,
                 attention_dropout=0.1, feat_proj_layer_norm=True, feat_proj_dropout=0.0, final_dropout=0.1,
                 layerdrop=0.1, initializer_range=0.02, layer_norm_eps=1e-5, feat_extract_norm="group",
                 feat_extract_activation="gelu", conv_dim=(512,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                 conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_bias=False, conv_pos_batch_norm=False,
                 num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, do_stable_layer_norm=False,
                 apply_spec_augment=True, mask_time_prob=0.05, mask_time_length=10, mask_time_min_masks=2,
                 mask_feature_prob=0.0, mask_feature_length=10, mask_feature_min_masks=0,
                 feature_extractor_cqt=False, feature_extractor_cqt_bins=336, deepnorm=False,
                 attention_relax=-1.0, sample_rate=24000, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 **kwargs):
        super().__init__(**kwargs, pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.num_attention_heads, self.intermediate_size, self.hidden_act = num_attention_heads, intermediate_size, hidden_act
        self.hidden_dropout, self.activation_dropout, self.attention_dropout = hidden_dropout, activation_dropout, attention_dropout
        self.feat_proj_layer_norm, self.feat_proj_dropout, self.final_dropout = feat_proj_layer_norm, feat_proj_dropout, final_dropout
        self.layerdrop, self.initializer_range, self.layer_norm_eps = layerdrop, initializer_range, layer_norm_eps
        self.feat_extract_norm, self.feat_extract_activation = feat_extract_norm, feat_extract_activation
        self.conv_dim, self.conv_stride, self.conv_kernel = list(conv_dim), list(conv_stride), list(conv_kernel)
        self.num_feat_extract_layers = len(self.conv_dim)
        self.conv_bias, self.conv_pos_batch_norm = conv_bias, conv_pos_batch_norm
        self.num_conv_pos_embeddings, self.num_conv_pos_embedding_groups = num_conv_pos_embeddings, num_conv_pos_embedding_groups
        self.do_stable_layer_norm, self.apply_spec_augment = do_stable_layer_norm, apply_spec_augment
        self.mask_time_prob, self.mask_time_length, self.mask_time_min_masks = mask_time_prob, mask_time_length, mask_time_min_masks
        self.mask_feature_prob, self.mask_feature_length = mask_feature_prob, mask_feature_length
        self.mask_feature_min_masks = mask_feature_min_masks
        self.feature_extractor_cqt, self.feature_extractor_cqt_bins = feature_extractor_cqt, feature_extractor_cqt_bins
        self.deepnorm, self.attention_relax, self.sample_rate = deepnorm, attention_relax, sample_rate
'''

MODELING_MERT = '''\
"""MERT model (tiny test stand-in): HubertModel with MERT's feature projection, as the published file."""
from typing import Optional

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.hubert.modeling_hubert import (
    HubertEncoder,
    HubertEncoderStableLayerNorm,
    HubertFeatureEncoder,
    HubertModel,
)

try:
    from nnAudio import features as nnAudioFeatures  # only for the CQT variant
    NNAUDIO_INSTALLED = True
except ImportError:
    NNAUDIO_INSTALLED = False

from .configuration_MERT import MERTConfig


class MERTFeatureProjection(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.feat_proj_layer_norm = config.feat_proj_layer_norm
        self.feature_dimension = config.conv_dim[-1]
        if self.feat_proj_layer_norm:
            self.layer_norm = nn.LayerNorm(self.feature_dimension, eps=config.layer_norm_eps)
        self.projection = nn.Linear(self.feature_dimension, config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, hidden_states):
        if self.feat_proj_layer_norm:
            hidden_states = self.layer_norm(hidden_states)
        return self.dropout(self.projection(hidden_states))


class MERTModel(HubertModel):
    config_class = MERTConfig
    base_model_prefix = "mert_model"

    def __init__(self, config: MERTConfig) -> None:
        super(HubertModel, self).__init__(config)  # HubertPreTrainedModel.__init__, as MERT does
        self.config = config
        self.feature_extractor = HubertFeatureEncoder(config)
        self.feature_projection = MERTFeatureProjection(config)
        if config.mask_time_prob > 0.0 or config.mask_feature_prob > 0.0:
            self.masked_spec_embed = nn.Parameter(torch.FloatTensor(config.hidden_size).uniform_())
        self.encoder = HubertEncoderStableLayerNorm(config) if config.do_stable_layer_norm else HubertEncoder(config)
        self.post_init()

    def forward(self, input_values: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor] = None,
                mask_time_indices: Optional[torch.FloatTensor] = None, output_attentions: Optional[bool] = None,
                output_hidden_states: Optional[bool] = None, return_dict: Optional[bool] = None):
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        extract_features = self.feature_extractor(input_values).transpose(1, 2)
        if attention_mask is not None:
            attention_mask = self._get_feature_vector_attention_mask(extract_features.shape[1], attention_mask)
        hidden_states = self.feature_projection(extract_features)
        hidden_states = self._mask_hidden_states(hidden_states, mask_time_indices=mask_time_indices)
        encoder_outputs = self.encoder(hidden_states, attention_mask=attention_mask, output_attentions=output_attentions,
                                       output_hidden_states=output_hidden_states, return_dict=return_dict)
        if not return_dict:
            return (encoder_outputs[0],) + encoder_outputs[1:]
        return BaseModelOutput(last_hidden_state=encoder_outputs[0], hidden_states=encoder_outputs.hidden_states,
                               attentions=encoder_outputs.attentions)
'''

TINY_MERT = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64,
    conv_dim=[16] * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
)  # fmt: skip
# (MERT v1's conv strides and kernels are kept: 320x down-sampling, 75 frames a second at 24 kHz)
MERT_ENV = "SIDECAR_PLUGINS__MERT__CHECKPOINT"
CLAP_ENV = "SIDECAR_PLUGINS__CLAP__CHECKPOINT"


@pytest.fixture(scope="module")
def mert_checkpoint(tmp_path_factory) -> Path:
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    root = tmp_path_factory.mktemp("mert")
    ckpt = root / "mert_tiny"
    ckpt.mkdir()
    (ckpt / "configuration_MERT.py").write_text(CONFIGURATION_MERT)
    (ckpt / "modeling_MERT.py").write_text(MODELING_MERT)
    (ckpt / "config.json").write_text(json.dumps({
        "architectures": ["MERTModel"],
        "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig", "AutoModel": "modeling_MERT.MERTModel"},
        "model_type": "mert_model", "sample_rate": 24000, **TINY_MERT,
    }))  # fmt: skip
    config = AutoConfig.from_pretrained(str(ckpt), trust_remote_code=True, local_files_only=True)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, trust_remote_code=True)
    model.save_pretrained(str(ckpt))
    Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=24000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    ).save_pretrained(str(ckpt))  # MERT v1's preprocessor_config.json
    return ckpt


def _mert(ckpt: Path, models_dir: Path, **options) -> MertEmbedder:
    emb = MertEmbedder()
    emb.configure({"checkpoint": str(ckpt), **options})
    emb.prepare(models_dir)
    emb.load(models_dir)
    return emb


@pytest.fixture(scope="module")
def mert(mert_checkpoint, tmp_path_factory) -> MertEmbedder:
    return _mert(mert_checkpoint, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def clips(excerpts):
    """Two real excerpts, decoded once (sidecar.pipeline.audio.DecodedAudio; `.at(rate)` resamples)."""
    from sidecar.pipeline.audio import decode

    return [decode(excerpts[0]), decode(excerpts[1])]


# ------------------------------------------------------------------------------------------------ windows helper
def test_windows_tile_then_spread():
    assert _windows.window_starts(10, 20, 8).tolist() == [0]  # shorter than a window: one, whole
    assert _windows.window_starts(100, 50, 8).tolist() == [0, 50]
    assert _windows.window_starts(120, 50, 8).tolist() == [0, 35, 70]  # last ends at the end, small overlaps
    assert _windows.window_starts(1000, 50, 4).tolist() == [0, 317, 633, 950]  # capped: spread over the track
    assert _windows.window_starts(1000, 50, 1).tolist() == [475]  # one window: the middle
    w = _windows.split_windows(np.arange(120, dtype=np.float32), 50, 8)
    assert w.shape == (3, 50) and w[-1, -1] == 119
    assert _windows.split_windows(np.ones(7, dtype=np.float32), 50, 8).shape == (1, 7)


def test_pooled_mean_std_matches_all_frames():
    rng = np.random.default_rng(0)
    frames = [rng.normal(i, 1 + i, size=(n, 5)) for i, n in enumerate((30, 45, 12))]
    mean, std = _windows.pooled_mean_std(
        [f.mean(0) for f in frames], [f.var(0) for f in frames], [len(f) for f in frames]
    )
    allf = np.concatenate(frames)
    np.testing.assert_allclose(mean, allf.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, allf.std(0), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ MERT
def test_mert_loads_remote_code_checkpoint(mert, mert_checkpoint):
    model = mert._model
    # the user's path: AutoModel + trust_remote_code ran the checkpoint's own modeling file
    assert type(model).__name__ == "MERTModel"
    assert type(model).__module__.startswith("transformers_modules.")
    assert not model.training
    assert mert.sample_rate == 24000
    # default: one block (the mean of all 4 hidden states) x (mean, std) x hidden 32
    assert mert.dim == 32 * 1 * 2
    assert mert.store_segments and not mert.supports_text


def test_mert_embeds_real_music(mert, clips):
    sr = mert.sample_rate
    a = clips[0].at(sr)[: 12 * sr]  # 12 s -> ceil(12 / 5) = 3 five-second windows
    r = mert.embed(a)
    assert r.vector.shape == (mert.dim,) and r.vector.dtype == np.float32
    assert np.all(np.isfinite(r.vector))
    assert abs(np.linalg.norm(r.vector) - 1) < 1e-5
    assert r.segments.shape == (3, mert.dim) and np.all(np.isfinite(r.segments))
    np.testing.assert_allclose(np.linalg.norm(r.segments, axis=1), 1, atol=1e-5)
    # deterministic (eval mode: no SpecAugment masking, no layer drop)
    np.testing.assert_array_equal(mert.embed(a).vector, r.vector)
    # another track gives another vector
    b = mert.embed(clips[1].at(sr)[: 12 * sr])
    assert not np.allclose(b.vector, r.vector, atol=1e-4)
    # one window: the track vector is that window's vector
    one = mert.embed(a[: 4 * sr])
    assert one.segments.shape == (1, mert.dim)
    np.testing.assert_allclose(one.vector, one.segments[0], atol=1e-5)


def test_mert_window_cap_layers_and_pooling(mert_checkpoint, tmp_path, clips):
    emb = _mert(mert_checkpoint, tmp_path, layers="1, 3", pooling="mean", window_s="5", max_windows="4")
    assert emb.dim == 32 * 2 * 1
    sr = emb.sample_rate
    r = emb.embed(clips[0].at(sr))  # 30 s would be 6 windows; capped at 4, spread over the whole clip
    assert r.vector.shape == (64,) and r.segments.shape == (4, 64)
    emb2 = _mert(mert_checkpoint, tmp_path, layers="0-3,2")
    assert emb2.dim == 32 * 2 * 2 and emb2.embed(clips[0].at(sr)[: 6 * sr]).segments.shape == (2, 128)


def test_mert_version_follows_output_options(mert, mert_checkpoint, tmp_path):
    versions = {
        mert.version,
        _mert(mert_checkpoint, tmp_path, layers="2").version,
        _mert(mert_checkpoint, tmp_path, pooling="mean").version,
        _mert(mert_checkpoint, tmp_path, window_s="10").version,
        _mert(mert_checkpoint, tmp_path, max_windows="3").version,
    }
    assert len(versions) == 5
    assert _mert(mert_checkpoint, tmp_path).version == mert.version  # and stable otherwise


def test_mert_rejects_short_audio(mert):
    with pytest.raises(ValueError):
        mert.embed(np.zeros(100, dtype=np.float32))


def test_mert_checkpoint_errors_name_the_setting(tmp_path, mert_checkpoint, monkeypatch):
    with pytest.raises(EmbedderUnavailable, match=MERT_ENV):
        _mert("", tmp_path)
    emb = MertEmbedder()
    emb.configure({})
    with pytest.raises(EmbedderUnavailable, match=MERT_ENV):
        emb.load(tmp_path)
    with pytest.raises(EmbedderUnavailable, match=MERT_ENV):
        _mert(tmp_path / "no-such-dir", tmp_path)
    with pytest.raises(EmbedderUnavailable, match=MERT_ENV):  # a directory that is not a checkpoint
        _mert(tmp_path, tmp_path)
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MERT__LAYERS"):
        _mert(mert_checkpoint, tmp_path, layers="7")  # the tiny model has layers 0-3
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MERT__LAYERS"):
        MertEmbedder().configure({"checkpoint": str(mert_checkpoint), "layers": "six"})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MERT__DEVICE"):
        _mert(mert_checkpoint, tmp_path, device="gpu-please")
    if not torch.cuda.is_available():  # a valid device name that is not there
        with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MERT__DEVICE=cuda"):
            _mert(mert_checkpoint, tmp_path, device="cuda")
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MERT__POOLING"):
        MertEmbedder().configure({"checkpoint": str(mert_checkpoint), "pooling": "max"})
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__MERT__MAX_WINDOWS"):
        MertEmbedder().configure({"checkpoint": str(mert_checkpoint), "max_windows": "0"})
    import plugins.embedders.mert as mert_module

    monkeypatch.setattr(mert_module, "MAX_DIM", 100)  # e.g. 25 layers x 1024 x 3 on the real model
    with pytest.raises(EmbedderUnavailable, match="limit is 100"):
        _mert(mert_checkpoint, tmp_path, layers="0,1,2")


def test_mert_vectors_go_into_milvus(mert, clips, tmp_path):
    from sidecar.data.store import VectorStore

    sr = mert.sample_rate
    v1 = mert.embed(clips[0].at(sr)[: 10 * sr]).vector
    v2 = mert.embed(clips[1].at(sr)[: 10 * sr]).vector
    store = VectorStore(str(tmp_path / "m.db"))
    try:
        store.ensure_collection("mert", mert.dim)
        store.upsert("mert", [("t1", v1, "hash1"), ("t2", v2, "hash2")])
        assert store.search("mert", v1, 1)[0][0] == "t1"
        assert store.search("mert", v2, 1)[0][0] == "t2"
    finally:
        store.close()


# ------------------------------------------------------------------------------------------------ CLAP checkpoint
SENTENCES = [
    "calm piano music for a quiet evening", "energetic rock with loud drums and distorted guitar",
    "ambient electronic pads", "a sad violin melody", "upbeat chiptune from an old video game",
    "orchestral battle music with brass and timpani",
]  # fmt: skip


def _write_clap_checkpoint(ckpt: Path, *, fused: bool) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        ClapAudioConfig, ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, ClapTextConfig, RobertaTokenizer,
    )  # fmt: skip

    ckpt.mkdir(parents=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES, vocab_size=400, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    )
    bpe.save_model(str(ckpt))  # vocab.json + merges.txt, the files a RobertaTokenizer reads
    tok = RobertaTokenizer(vocab_file=str(ckpt / "vocab.json"), merges_file=str(ckpt / "merges.txt"))
    text = ClapTextConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    audio = ClapAudioConfig(  # HTSAT as in the real models (64 mel bins, 256x256 spectrogram image), tiny widths
        patch_embeds_hidden_size=16, depths=[1, 1, 1, 1], num_attention_heads=[1, 2, 2, 4], hidden_size=128,
        window_size=8, enable_fusion=fused, fusion_type="aff_2d" if fused else None,
    )  # fmt: skip
    config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=24)
    torch.manual_seed(0)
    ClapModel(config).save_pretrained(str(ckpt))
    # the LAION checkpoints: fused models take 4-channel "fusion" mels, unfused ones "rand_trunc" mels
    fe = ClapFeatureExtractor(truncation="fusion" if fused else "rand_trunc", padding="repeatpad")
    ClapProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(ckpt))
    return ckpt


@pytest.fixture(scope="module")
def clap_checkpoint(tmp_path_factory) -> Path:
    return _write_clap_checkpoint(tmp_path_factory.mktemp("clap") / "clap_tiny", fused=False)


def _clap(ckpt: Path, models_dir: Path, **options) -> ClapEmbedder:
    emb = ClapEmbedder()
    emb.configure({"checkpoint": str(ckpt), **options})
    emb.prepare(models_dir)
    emb.load(models_dir)
    return emb


@pytest.fixture(scope="module")
def clap(clap_checkpoint, tmp_path_factory) -> ClapEmbedder:
    return _clap(clap_checkpoint, tmp_path_factory.mktemp("models"))


# ------------------------------------------------------------------------------------------------ CLAP
def test_clap_loads(clap):
    assert clap.sample_rate == 48000 and clap.dim == 24
    assert clap.supports_text and clap.store_segments
    assert not clap._model.training


def test_clap_embeds_real_music(clap, clips):
    sr = clap.sample_rate
    a = clips[0].at(sr)[: 25 * sr]  # 25 s -> ceil(25 / 10) = 3 ten-second windows
    r = clap.embed(a)
    assert r.vector.shape == (clap.dim,) and np.all(np.isfinite(r.vector))
    assert abs(np.linalg.norm(r.vector) - 1) < 1e-5
    assert r.segments.shape == (3, clap.dim)
    np.testing.assert_allclose(np.linalg.norm(r.segments, axis=1), 1, atol=1e-5)
    mean = r.segments.mean(axis=0)
    np.testing.assert_allclose(r.vector, mean / np.linalg.norm(mean), atol=1e-6)
    np.testing.assert_array_equal(clap.embed(a).vector, r.vector)  # no random crops: deterministic
    b = clap.embed(clips[1].at(sr)[: 25 * sr])
    assert not np.allclose(b.vector, r.vector, atol=1e-4)
    short = clap.embed(a[: 3 * sr])  # shorter than the model's window: one window, padded by the extractor
    assert short.segments.shape == (1, clap.dim)


def test_clap_window_cap(clap_checkpoint, tmp_path, clips):
    emb = _clap(clap_checkpoint, tmp_path, max_windows="2")
    r = emb.embed(clips[0].at(emb.sample_rate))  # 30 s: 3 windows, capped at 2 (first and last 10 s)
    assert r.segments.shape == (2, emb.dim)
    assert emb.version != _clap(clap_checkpoint, tmp_path).version


def test_clap_text_in_the_audio_space(clap, clips):
    texts = ["calm piano music", "loud rock drums", "a sad violin melody"]
    t = clap.embed_text(texts)
    assert t.shape == (3, clap.dim) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1, atol=1e-5)
    again = clap.embed_text(["calm piano music"])
    np.testing.assert_array_equal(again, clap.embed_text(["calm piano music"]))  # same text, same vector
    np.testing.assert_allclose(again[0], t[0], atol=1e-5)  # batching and padding do not change it
    assert not np.allclose(t[0], t[1], atol=1e-4)
    assert clap.embed_text([]).shape == (0, clap.dim)
    audio = clap.embed(clips[0].at(clap.sample_rate)[: 10 * clap.sample_rate]).vector
    scores = t @ audio  # cosines, since both are unit vectors
    assert scores.shape == (3,) and np.all(np.abs(scores) <= 1 + 1e-5)


def test_clap_fused_checkpoint(tmp_path, clips):
    emb = _clap(_write_clap_checkpoint(tmp_path / "clap_fused", fused=True), tmp_path)
    r = emb.embed(clips[0].at(emb.sample_rate)[: 15 * emb.sample_rate])
    assert r.segments.shape == (2, emb.dim) and np.all(np.isfinite(r.vector))


def test_clap_checkpoint_errors_name_the_setting(tmp_path, clap_checkpoint):
    with pytest.raises(EmbedderUnavailable, match=CLAP_ENV):
        _clap("", tmp_path)
    with pytest.raises(EmbedderUnavailable, match=CLAP_ENV):
        _clap(tmp_path / "no-such-dir", tmp_path)
    no_tok = tmp_path / "no_tokenizer"
    shutil.copytree(clap_checkpoint, no_tok)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (no_tok / f).unlink(missing_ok=True)
    with pytest.raises(EmbedderUnavailable, match=f"{CLAP_ENV}.*no tokenizer"):
        _clap(no_tok, tmp_path)
    (no_tok / "config.json").write_text("{}")  # a broken model config: still a clear message
    shutil.copy(clap_checkpoint / "vocab.json", no_tok)
    shutil.copy(clap_checkpoint / "merges.txt", no_tok)
    with pytest.raises(EmbedderUnavailable, match=f"cannot load the CLAP checkpoint.*{CLAP_ENV}"):
        _clap(no_tok, tmp_path)
    mismatched = tmp_path / "mismatched"  # an unfused model with a feature extractor making fused mels
    shutil.copytree(clap_checkpoint, mismatched)
    pre = json.loads((mismatched / "preprocessor_config.json").read_text())
    (mismatched / "preprocessor_config.json").write_text(json.dumps({**pre, "truncation": "fusion"}))
    with pytest.raises(EmbedderUnavailable, match=f"{CLAP_ENV}.*does not run"):
        _clap(mismatched, tmp_path)
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__CLAP__DEVICE"):
        _clap(clap_checkpoint, tmp_path, device="gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__CLAP__DEVICE=cuda"):
            _clap(clap_checkpoint, tmp_path, device="cuda")
    with pytest.raises(EmbedderUnavailable, match="SIDECAR_PLUGINS__CLAP__MAX_WINDOWS"):
        ClapEmbedder().configure({"checkpoint": str(clap_checkpoint), "max_windows": "many"})


def test_clap_vectors_go_into_milvus(clap, clips, tmp_path):
    from sidecar.data.store import VectorStore

    sr = clap.sample_rate
    v1 = clap.embed(clips[0].at(sr)[: 20 * sr]).vector
    v2 = clap.embed(clips[1].at(sr)[: 20 * sr]).vector
    store = VectorStore(str(tmp_path / "m.db"))
    try:
        store.ensure_collection("clap", clap.dim)
        store.upsert("clap", [("t1", v1, "hash1"), ("t2", v2, "hash2")])
        assert store.search("clap", v1, 1)[0][0] == "t1"
        hits = store.search("clap", clap.embed_text(["calm piano music"])[0], 2)  # text query, same collection
        assert {h[0] for h in hits} == {"t1", "t2"}
    finally:
        store.close()


def test_embed_is_thread_safe(mert, clap, clips):
    """Worker threads share one loaded plugin: concurrent calls give the same results as sequential ones."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [
        (mert.embed, clips[0].at(mert.sample_rate)[: 6 * mert.sample_rate]),
        (mert.embed, clips[1].at(mert.sample_rate)[: 6 * mert.sample_rate]),
        (clap.embed, clips[0].at(clap.sample_rate)[: 12 * clap.sample_rate]),
        (clap.embed, clips[1].at(clap.sample_rate)[: 12 * clap.sample_rate]),
    ]
    expected = [fn(a).vector for fn, a in jobs]
    texts = [["calm piano music"], ["loud rock drums", "a sad violin melody"]]
    expected_text = [clap.embed_text(t) for t in texts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda j: j[0](j[1]).vector, jobs * 2))
        got_text = list(pool.map(clap.embed_text, texts * 4))
    for g, e in zip(got, expected * 2):
        np.testing.assert_allclose(g, e, atol=1e-5)
    for g, e in zip(got_text, expected_text * 4):
        np.testing.assert_allclose(g, e, atol=1e-5)


# ------------------------------------------------------------------------------------------------ through the core
def test_entry_points_and_core_loader(mert_checkpoint, clap_checkpoint, tmp_path):
    from importlib.metadata import entry_points

    from sidecar.plugins import load_embedders

    eps = {e.name: e for e in entry_points(group="sidecar.embedders")}
    assert eps["mert"].load() is MertEmbedder and eps["clap"].load() is ClapEmbedder
    loaded = load_embedders(
        ["mert", "clap"], tmp_path, {"mert": {"checkpoint": str(mert_checkpoint)}, "clap": {}}
    )
    assert set(loaded.ready) == {"mert"} and loaded.ready["mert"].dim == 64
    assert CLAP_ENV in loaded.unavailable["clap"]


async def test_mert_configured_by_settings_runs_in_the_ingest_pipeline_and_keeps_segments(
    mert_checkpoint, music_dir, tmp_path, models_dir
):
    """The whole user path: a checkpoint named in settings, the real worker, vectors and segments in Milvus."""
    from sidecar.config import Settings
    from sidecar.service import Sidecar
    from tests.test_ingest import until_idle

    data = tmp_path / "data"
    data.mkdir()
    (data / "models").symlink_to(models_dir)
    settings = Settings(
        music_dir=[music_dir], data_dir=data, embedders=["mert", "dsp"], reconcile_interval_s=0,
        plugins={"mert": {"checkpoint": str(mert_checkpoint)}},
    )
    sc = Sidecar(settings)
    await sc.start(watch=False)
    try:
        await until_idle(sc, processed=5)
        assert sc.catalog.counts()["models"]["mert"] == {"done": 5, "failed": 0}
        stored = await asyncio.to_thread(sc.store.all_ids, "mert")
        assert len(stored) == len(set(stored)) == 5
        for track_id in stored:  # 30-second excerpts: six 5-second windows each
            assert await asyncio.to_thread(sc.store.segment_ids, "mert", track_id) == [f"{track_id}:{i}" for i in range(6)]
        hits = await asyncio.to_thread(sc.store.search, "mert", (await asyncio.to_thread(sc.store.get_vectors, "mert", stored[:1]))[stored[0]], 1)
        assert hits[0][0] == stored[0]
    finally:
        await sc.close()
