"""MuQ-MuLan (`muq_mulan`, supports_text; SIDECAR_PLUGINS__MUQ_MULAN__CHECKPOINT = a local copy of
OpenMuQ/MuQ-MuLan-large: config.json and pytorch_model.bin or model.safetensors). Upstream,
`MuQMuLan.from_pretrained` builds its two towers with `MuQ.from_pretrained(config.audio_model.name)` and
`XLMRobertaModel.from_pretrained(config.text_model.name)` (hub names; a local path only works if it contains
"muq" and "xlm-roberta"), downloads both towers' weights only to overwrite them with the MuLan state dict,
and on a local directory it reads model.safetensors only, while the release ships pytorch_model.bin. Here the
towers are built from their *configs* alone (no tower weights are read), the names are left as they are so
every upstream name check still holds, and the full MuLan state dict is loaded on top, checked. What is
needed besides the MuLan checkpoint:

- the MuQ audio tower's config.json (OpenMuQ/MuQ-large-msd-iter): option `audio_tower`, else a directory
  named like the config's audio model (`MuQ-large-msd-iter`) inside the checkpoint directory or beside it;
- the XLM-R text tower's config.json and tokenizer (tokenizer.json or sentencepiece.bpe.model, from
  FacebookAI/xlm-roberta-base): option `text_tower`, else `xlm-roberta-base` inside or beside the checkpoint.

A layout that works with no options: models/MuQ-MuLan-large/, models/MuQ-large-msd-iter/config.json,
models/xlm-roberta-base/{config.json,tokenizer.json,...}.

- Audio: windows of the model's own clip length (config `mulan.clip_secs`, 10 s), at most `max_windows`
  (default 6), spread evenly as above; a window shorter than a clip (a short track) is filled by repeating
  the track, as upstream `_get_all_clips` wraps around. Each window gives a unit vector in the joint
  space; the track vector is their mean, L2-normalised (upstream averages the clip vectors). Segments are
  the per-window unit vectors. dim = `mulan.dim_latent` (512).
- Text: `embed_text` gives the joint-space text vectors (XLM-R, then MuLan's text transformer and projection,
  L2-normalised), one text at a time: upstream pads a batch and averages over the padding too, so a
  text's vector would depend on its batch neighbours. Texts are truncated to the tower's 512 tokens.

The checkpoint's weights are loaded with loading.py's checks (MULAN_UNUSED may be absent).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydantic import Field

from schemas.embedding import EmbedResult
from sidecar.plugins import EmbedderUnavailable, option_env

from .._checkpoint import CheckpointEmbedder, CheckpointOptions, MaxWindows, checkpoint_fingerprint, missing_files
from .._windows import l2_normalize
from .loading import LICENCE_NOTE, MULAN_UNUSED, WEIGHT_FILES, build_muq, import_muq, load_checked, preserve_rng, read_config, read_weights

__all__ = ["MuqMulanEmbedder"]

log = logging.getLogger(__name__)


def _local_mulan_class(audio_config: dict, audio_dir: Path, text_dir: Path, env: str):
    """A MuQMuLan subclass whose towers are built from local configs (no hub access, no tower weights)."""
    muq = import_muq()
    from muq.muq_mulan.models.audio import AudioSpectrogramTransformerPretrained
    from muq.muq_mulan.models.mulan import MuLanModel
    from muq.muq_mulan.models.text import TextTransformerPretrained
    from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

    class LocalAudioTower(AudioSpectrogramTransformerPretrained):
        def _init_pretrained_model(self, model_name):
            if "muq" not in str(model_name).lower():
                raise EmbedderUnavailable(
                    f"this MuQ-MuLan checkpoint's audio tower is {model_name!r}; only MuQ audio towers are supported"
                )
            self.model = build_muq(audio_config, audio_dir, option_env("muq_mulan", "audio_tower"))

    class LocalTextTower(TextTransformerPretrained):
        def _init_pretrained_model(self):
            if self.pretrained_model_type != "roberta":
                raise EmbedderUnavailable(
                    f"this MuQ-MuLan checkpoint's text tower is {self.model_name!r}; only XLM-R text towers are supported"
                )
            cfg = XLMRobertaConfig.from_pretrained(str(text_dir), local_files_only=True)
            return XLMRobertaModel(cfg)

        def _init_tokenizer(self):
            return AutoTokenizer.from_pretrained(str(text_dir), local_files_only=True)

    class LocalMuQMuLan(muq.MuQMuLan):
        @classmethod
        def create_MuLan_from_config(cls, config, hf_hub_cache_dir=None):
            # as MuQMuLan.create_MuLan_from_config, with the local towers
            audio = LocalAudioTower(
                model_name=config.audio_model.name, model_dim=config.audio_model.model_dim,
                use_layer_idx=config.audio_model.use_layer_idx, **config.audio_transformer,
                frozen_pretrained=False, hf_hub_cache_dir=None,
            )  # fmt: skip
            text = LocalTextTower(
                model_name=config.text_model.name, model_dim=config.text_model.model_dim,
                **config.text_transformer, frozen_pretrained=False, hf_hub_cache_dir=None,
            )  # fmt: skip
            return MuLanModel(audio_transformer=audio, text_transformer=text, **config.mulan)

    return LocalMuQMuLan


class MuqMulanEmbedder(CheckpointEmbedder):
    name = "muq_mulan"
    title = "MuQ-MuLan"
    version = "muq_mulan-unloaded"
    dim = 0
    sample_rate = 24_000
    supports_text = True
    checkpoint_files = (("config.json",), WEIGHT_FILES)
    checkpoint_hint = f"a local copy of OpenMuQ/MuQ-MuLan-large: config.json + pytorch_model.bin; {LICENCE_NOTE}"

    class Options(CheckpointOptions):
        audio_tower: Path | None = Field(None, description="the MuQ audio tower's config.json directory (default: found by name)")
        text_tower: Path | None = Field(None, description="the XLM-R text tower's config and tokenizer (default: found by name)")
        max_windows: MaxWindows = 6

    options: Options
    SECTIONS = ("mulan", "audio_model", "text_model", "audio_transformer", "text_transformer")

    def __init__(self) -> None:
        self._clip = 0
        self._max_tokens = 512
        super().__init__()

    def _config(self, path: Path) -> dict:
        env = option_env(self.name, "checkpoint")
        cfg = read_config(path, env)
        missing = [s for s in self.SECTIONS if not isinstance(cfg.get(s), dict)]
        if missing:
            raise EmbedderUnavailable(f"{path / 'config.json'} ({env}) is not a MuQ-MuLan config: no {', '.join(missing)}")
        return {s: cfg[s] for s in self.SECTIONS}

    def _tower(self, option: str, hub_name: str, ckpt: Path, required: tuple[tuple[str, ...], ...], what: str) -> Path:
        """The directory of a tower's files: the option, else <checkpoint>/<name> or <checkpoint>/../<name>."""
        env = option_env(self.name, option)

        def ok(d: Path) -> bool:
            return d.is_dir() and not missing_files(d, required)

        need = ", ".join(" or ".join(a) for a in required)
        given = getattr(self.options, option)
        if given is not None:
            d = given.expanduser()
            if not ok(d):
                raise EmbedderUnavailable(f"{env}={given}: not a directory holding the {what} ({need})")
            return d
        base = str(hub_name).rstrip("/").split("/")[-1] or what
        candidates = [ckpt / base, ckpt.parent / base]
        for d in candidates:
            if ok(d):
                return d
        raise EmbedderUnavailable(
            f"MuQ-MuLan needs the {what} ({hub_name}: {need}); not found in {' or '.join(map(str, candidates))}: "
            f"put it there or set {env}=/path/to/it"
        )

    def _towers(self, path: Path, cfg: dict) -> tuple[Path, Path]:
        audio = self._tower("audio_tower", cfg["audio_model"].get("name", ""), path, (("config.json",),), "MuQ audio tower config")
        text = self._tower(
            "text_tower", cfg["text_model"].get("name", ""), path,
            (("config.json",), ("tokenizer.json", "sentencepiece.bpe.model")), "XLM-R text tower config and tokenizer",
        )  # fmt: skip
        return audio, text

    def prepare(self, models_dir: Path) -> None:
        """Nothing to download; checks the checkpoint and the two tower directories."""
        path = self.checkpoint()
        self._towers(path, self._config(path))

    def load(self, models_dir: Path) -> None:
        path = self.checkpoint()
        env = option_env(self.name, "checkpoint")
        cfg = self._config(path)
        audio_dir, text_dir = self._towers(path, cfg)
        audio_config = read_config(audio_dir, option_env(self.name, "audio_tower"))
        device = self.torch_device()
        cls = _local_mulan_class(audio_config, audio_dir, text_dir, env)
        try:
            with preserve_rng():
                model = cls(cfg)
        except EmbedderUnavailable:
            raise
        except Exception as e:
            raise EmbedderUnavailable(f"cannot build MuQ-MuLan from {path / 'config.json'} ({env}): {type(e).__name__}: {e}") from e
        load_checked(model, read_weights(path, env), MULAN_UNUSED, path, env)
        model.eval().requires_grad_(False).to(device)
        mulan = model.mulan_module
        try:
            _ = mulan.text.tokenizer
        except Exception as e:
            raise EmbedderUnavailable(f"cannot load the XLM-R tokenizer in {text_dir}: {type(e).__name__}: {e}") from e
        max_pos = int(getattr(mulan.text.model.config, "max_position_embeddings", 514))
        self._max_tokens = max(8, min(int(getattr(mulan.text.tokenizer, "model_max_length", 512) or 512), max_pos - 2))
        self._model, self._device = model, device
        self.sample_rate = int(model.sr)
        self._clip = int(round(float(model.clip_secs) * self.sample_rate))
        self.dim = int(mulan.dim_latent)
        with self.dry_run(path):  # both towers
            a = self._audio_latents(np.zeros((1, self.sample_rate), dtype=np.float32))
            t = self.embed_text(["music"])
        if a.shape[-1] != self.dim or t.shape[-1] != self.dim:
            self._model = None
            raise EmbedderUnavailable(f"MuQ-MuLan in {path} gives {a.shape[-1]}-d audio and {t.shape[-1]}-d text vectors, expected {self.dim}")
        self.version = (
            f"muq_mulan-{checkpoint_fingerprint(path, audio_dir, text_dir)}-d{self.dim}"
            f"-clip{model.clip_secs:g}sx{self.options.max_windows}-1"
        )
        log.info("MuQ-MuLan loaded from %s: %d-d joint space (%s); %s", path, self.dim, self.version, LICENCE_NOTE)

    # ---------------------------------------------------------------------------------------------- inference
    def window_samples(self) -> int:
        """The model's own clip length."""
        return self._clip

    def _audio_latents(self, windows: np.ndarray) -> np.ndarray:
        import torch

        mulan = self._model.mulan_module
        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(windows[i : i + self.batch])).to(self._device)
                out.append(mulan.get_audio_latents(x).float().cpu().numpy())
        return np.concatenate(out)

    def embed_windows(self, windows: np.ndarray) -> EmbedResult:
        if windows.shape[1] < self._clip:  # a track shorter than a clip: repeat it, as upstream wraps around
            windows = np.stack([np.resize(w, self._clip) for w in windows]).astype(np.float32)
        latents = l2_normalize(self._audio_latents(windows))
        return EmbedResult(vector=l2_normalize(latents.mean(axis=0)), segments=latents)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            raise EmbedderUnavailable("MuQ-MuLan is not loaded: call load() first")
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ValueError("embed_text expects a list of strings")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        mulan = self._model.mulan_module
        tower = mulan.text
        out = []
        with torch.inference_mode():
            for text in texts:
                # TextTransformerPretrained.forward(raw_texts=[text]), with truncation to the tower's length
                with self.tokenizer_lock:
                    inputs = tower.tokenizer([text], return_tensors="pt", truncation=True, max_length=self._max_tokens)
                inputs = {k: v.to(self._device) for k, v in inputs.items()}
                h = tower.pred_pretrained_model_hidden(**inputs)
                h = tower.proj(h)
                h, _ = tower.transformer(h, return_all_layers=True)
                latent = mulan._norm_latents(mulan.text_to_latents(h.mean(dim=-2)))
                out.append(latent.float().cpu().numpy()[0])
        return l2_normalize(np.stack(out))
