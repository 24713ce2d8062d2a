"""CLAP (LAION, e.g. laion/larger_clap_music) as an embedder plugin with a text tower, through transformers.

Weights are never downloaded: point SIDECAR_PLUGINS__CLAP__CHECKPOINT at a local checkpoint directory in
transformers format (config.json, the weights, preprocessor_config.json and the RoBERTa tokenizer files:
vocab.json, merges.txt, tokenizer_config.json...; what `ClapModel.save_pretrained` plus
`ClapProcessor.save_pretrained` write, and what laion/larger_clap_music ships). Loaded with
`ClapModel.from_pretrained(dir, local_files_only=True)` and `ClapProcessor.from_pretrained(dir,
local_files_only=True)`; the laion-clap package is not used (it forces numpy<1 and torchvision).

Audio (mono float32 at the feature extractor's rate, 48 kHz): windows of the model's own input length
(`max_length_s` of the feature extractor: 10 s for HTSAT), at most `max_windows` of them (default 12), spread
evenly over the whole track, the first at the start and the last at the end (see `_windows.py`). Windows are
never longer than the model's input, so the feature extractor never takes a random crop and the result is
deterministic; a track shorter than 10 s is one window, which the feature extractor pads its own way
(`repeatpad` for the LAION checkpoints). Each window goes through `get_audio_features` (the projection into
the joint space), is L2-normalised, and is a segment (store_segments); the track vector is the L2-normalised
mean of the window vectors. `embed_text` returns `get_text_features`, L2-normalised, in the same space, so
a cosine between a text and a track is what CLAP was trained to score.

dim = the model's projection_dim (512 for the LAION checkpoints), read in `load`. `version` names the
checkpoint (a fingerprint of its configs and weight files) and the window cap. Other options: `device`
(default `cpu`). Weights: see the checkpoint's model card for its licence.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from schemas.embedding import EmbedResult
from sidecar.plugins import EmbedderUnavailable, option_env

from ._checkpoint import CheckpointEmbedder, checkpoint_fingerprint
from ._windows import l2_normalize

__all__ = ["ClapEmbedder"]

log = logging.getLogger(__name__)

TEXT_BATCH = 32


class ClapEmbedder(CheckpointEmbedder):
    name = "clap"
    title = "CLAP"
    version = "clap-unloaded"
    dim = 512  # replaced in load() by the checkpoint's projection_dim
    sample_rate = 48_000  # replaced in load() by the feature extractor's rate
    supports_text = True
    checkpoint_files = (("config.json",), ("preprocessor_config.json",))

    def __init__(self) -> None:
        self._fe = None
        self._tokenizer = None
        self._window = 0
        super().__init__()

    def load(self, models_dir: Path) -> None:
        path = self.checkpoint()
        env = option_env(self.name, "checkpoint")
        if not ((path / "tokenizer.json").is_file() or all((path / f).is_file() for f in ("vocab.json", "merges.txt"))):
            raise EmbedderUnavailable(
                f"{env}={path} has no tokenizer (vocab.json and merges.txt, or tokenizer.json): ClapProcessor "
                "needs the RoBERTa tokenizer files saved with the checkpoint; copy them from its repository"
            )
        from transformers import ClapModel, ClapProcessor

        device = self.torch_device()
        try:
            processor = ClapProcessor.from_pretrained(str(path), local_files_only=True)
            model = ClapModel.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # missing tokenizer files, a foreign checkpoint...
            raise EmbedderUnavailable(
                f"cannot load the CLAP checkpoint in {path} ({env}; it needs the model, preprocessor_config.json "
                f"and the RoBERTa tokenizer files): {type(e).__name__}: {e}"
            ) from e
        fe, tok = processor.feature_extractor, processor.tokenizer
        text_positions = int(getattr(model.config.text_config, "max_position_embeddings", 514))
        self._max_tokens = max(8, min(int(tok.model_max_length or 512), text_positions - 2))  # RoBERTa offsets by 2
        self._window = int(fe.nb_max_samples)
        self._fe, self._tokenizer, self._model, self._device = fe, tok, model, device
        self.sample_rate = int(fe.sampling_rate)
        self.dim = int(model.config.projection_dim)
        # both towers: catches a feature extractor whose mel layout does not fit the model (fused mels for an
        # unfused model...) as well as a device that is not there
        with self.dry_run(path):
            model.eval().requires_grad_(False).to(device)
            probe = self.audio_windows(np.zeros((1, self.sample_rate), dtype=np.float32))
            self.embed_text(["music"])
        if probe.shape != (1, self.dim):
            self._model = None
            raise EmbedderUnavailable(f"the CLAP checkpoint in {path} makes {probe.shape[1]}-d audio vectors, not {self.dim}")
        self.version = f"clap-{checkpoint_fingerprint(path)}-w{self._window / self.sample_rate:g}sx{self.options.max_windows}-1"
        log.info("CLAP loaded from %s: %d Hz, %d-d (%s)", path, self.sample_rate, self.dim, self.version)

    # ---------------------------------------------------------------------------------------------- inference
    def window_samples(self) -> int:
        """The model's own input length, so the feature extractor never takes a random crop."""
        return self._window

    def audio_windows(self, windows: np.ndarray) -> np.ndarray:
        """(n, samples) windows, each at most the model's input length -> (n, dim) unit vectors."""
        import torch

        model, fe, device = self._model, self._fe, self._device
        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), self.batch):
                feats = fe(list(windows[i : i + self.batch]), sampling_rate=self.sample_rate, return_tensors="pt")
                kwargs = {"input_features": feats["input_features"].to(device)}
                if "is_longer" in feats:
                    kwargs["is_longer"] = torch.as_tensor(feats["is_longer"]).to(device)
                out.append(model.get_audio_features(**kwargs).float().cpu().numpy())
        return l2_normalize(np.concatenate(out))

    def embed_windows(self, windows: np.ndarray) -> EmbedResult:
        segments = self.audio_windows(windows)
        return EmbedResult(vector=l2_normalize(segments.mean(axis=0)), segments=segments)

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors in the audio vectors' space."""
        if self._model is None:
            raise EmbedderUnavailable("CLAP is not loaded: call load() first")
        import torch

        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model, device = self._model, self._device
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), TEXT_BATCH):
                with self.tokenizer_lock:
                    tokens = self._tokenizer(
                        texts[i : i + TEXT_BATCH], padding=True, truncation=True, max_length=self._max_tokens,
                        return_tensors="pt",
                    )
                emb = model.get_text_features(
                    input_ids=tokens["input_ids"].to(device), attention_mask=tokens["attention_mask"].to(device)
                )
                out.append(emb.float().cpu().numpy())
        return l2_normalize(np.concatenate(out))
