"""Importing `muq` without torchaudio, and reading MuQ checkpoints (config.json, weights) with checks.

Installing: `pip install --no-deps -c constraints.txt -r requirements-nodeps.txt` (muq==0.1.0, x-clip==0.14.4:
their declared dependencies pull torchaudio and torchvision, i.e. a CUDA torch) plus einops, easydict,
beartype, ftfy and regex. torchaudio is never installed: muq imports MelSpectrogram/AmplitudeToDB (and four
training-only transforms) from it, so `import_muq()` imports muq with the pure-torch stand-in of
`_torchaudio_compat.py` in `sys.modules` for the duration of that import only (transformers, which probes for
torchaudio, is imported before and never sees it). x_clip's package `__init__` imports torchvision, but muq
only needs `x_clip.tokenizer`: that module is loaded on its own, without running the package `__init__`.
Building a MuQ model reseeds torch's and Python's global RNGs (muq does `torch.manual_seed(142)` and
`random.seed(142)` in constructors); `preserve_rng` gives the process its states back.

Weights are loaded with `load_checked`: a file that lacks a tensor the features depend on is refused instead
of silently leaving random weights (the tensors only training uses, MUQ_UNUSED and MULAN_UNUSED, may be absent).
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import random
import sys
import threading
import types
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

from sidecar.plugins import EmbedderUnavailable

from .._torchaudio_compat import torchaudio_standin

__all__ = [
    "LICENCE_NOTE", "WEIGHT_FILES", "MUQ_UNUSED", "MULAN_UNUSED", "import_muq", "preserve_rng", "read_config",
    "weights_file", "read_weights", "load_checked", "build_muq",
]  # fmt: skip

log = logging.getLogger(__name__)

LICENCE_NOTE = "the MuQ and MuQ-MuLan weights are licensed CC-BY-NC-4.0 (non-commercial use only)"
INSTALL_HINT = "pip install --no-deps -c constraints.txt -r requirements-nodeps.txt (muq, x-clip)"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# state-dict entries that feature extraction never reads: missing ones are tolerated (logged)
MUQ_UNUSED = ("model.quantizer_", "model.linear.", "model.cls_token", "model.rvq.", "model.recon_proj.")
MULAN_UNUSED = (
    "mulan.contrast.", "mulan.multi_layer_contrastive_learning.", "mulan.audio.aggregator.",
    "mulan.text.model.pooler.", "mulan.text_layers_indices", "mulan.audio_layers_indices",
) + tuple("mulan.audio.model." + p for p in MUQ_UNUSED)  # fmt: skip

# ------------------------------------------------------------------------------------------------- import

_IMPORT_LOCK = threading.Lock()


def _x_clip_tokenizer_standin() -> types.ModuleType:
    """Only `tokenizer.vocab_size` is read (a default argument of MuLan's non-pretrained text transformer)."""

    def _tokenize(*_a, **_k):
        raise NotImplementedError("x_clip's CLIP tokenizer is not available (install x-clip==0.14.4 --no-deps)")

    mod = types.ModuleType("x_clip.tokenizer")
    mod.tokenizer = types.SimpleNamespace(vocab_size=49408, tokenize=_tokenize, encode=_tokenize)
    return mod


def _preload_x_clip_tokenizer() -> list[str]:
    """Import `x_clip.tokenizer` without running `x_clip/__init__` (it imports torchvision via visual_ssl).

    Returns the sys.modules names added, to be removed once muq holds its reference.
    """
    if "x_clip.tokenizer" in sys.modules:
        return []
    added: list[str] = []
    if "x_clip" not in sys.modules:
        spec = importlib.util.find_spec("x_clip")
        if spec is None or not spec.submodule_search_locations:
            pkg = types.ModuleType("x_clip")
            pkg.__path__ = []
            sys.modules["x_clip"] = pkg
            sys.modules["x_clip.tokenizer"] = pkg.tokenizer = _x_clip_tokenizer_standin()
            log.warning("x-clip is not installed: using a stand-in for x_clip.tokenizer (only its vocab size is used)")
            return ["x_clip", "x_clip.tokenizer"]
        sys.modules["x_clip"] = importlib.util.module_from_spec(spec)  # the package object, __init__ not run
        added.append("x_clip")
    try:
        importlib.import_module("x_clip.tokenizer")
    except Exception as e:  # beartype/ftfy/regex missing...
        log.warning("cannot import x_clip.tokenizer (%s): using a stand-in (only its vocab size is used)", e)
        sys.modules["x_clip.tokenizer"] = _x_clip_tokenizer_standin()
    added.append("x_clip.tokenizer")
    return added


def import_muq() -> types.ModuleType:
    """Import the `muq` package (see the module doc); EmbedderUnavailable if it cannot be imported."""
    with _IMPORT_LOCK:
        mod = sys.modules.get("muq")
        if mod is not None and hasattr(mod, "MuQMuLan"):
            return mod
        try:
            # everything muq takes from transformers and huggingface_hub, imported before the stand-in is in
            # sys.modules, so that transformers' torchaudio probe sees the real environment
            import easydict  # noqa: F401
            import einops  # noqa: F401
            import huggingface_hub  # noqa: F401
            import transformers  # noqa: F401
            import transformers.activations  # noqa: F401
            import transformers.modeling_outputs  # noqa: F401
            import transformers.modeling_utils  # noqa: F401
            import transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer  # noqa: F401
            from transformers import (  # noqa: F401
                AutoModel, AutoModelForCausalLM, AutoTokenizer, Wav2Vec2FeatureExtractor, XLMRobertaModel,
            )  # fmt: skip
        except ImportError as e:
            raise EmbedderUnavailable(f"MuQ needs transformers<5, einops and easydict: {e}") from e
        added = _preload_x_clip_tokenizer()
        try:
            with torchaudio_standin():
                import muq
        except Exception as e:
            for name in [n for n in sys.modules if n == "muq" or n.startswith("muq.")]:
                sys.modules.pop(name, None)
            raise EmbedderUnavailable(f"cannot import muq ({type(e).__name__}: {e}); install it with: {INSTALL_HINT}") from e
        finally:
            for name in added:
                sys.modules.pop(name, None)
        return muq


@contextlib.contextmanager
def preserve_rng() -> Iterator[None]:
    """muq's constructors call torch.manual_seed and random.seed: give the process its RNG states back."""
    import torch

    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(py_state)

# ------------------------------------------------------------------------------------------------- loading


def read_config(path: Path, env: str) -> dict:
    """config.json of a hub-mixin checkpoint directory (flat, or nested under "config")."""
    f = Path(path) / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EmbedderUnavailable(f"cannot read {f} ({env}): {e}") from e
    if isinstance(cfg, dict) and isinstance(cfg.get("config"), dict):
        cfg = cfg["config"]
    if not isinstance(cfg, dict):
        raise EmbedderUnavailable(f"{f} ({env}) does not hold a JSON object")
    return cfg


def weights_file(path: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (Path(path) / name).is_file():
            return Path(path) / name
    return None


def read_weights(path: Path, env: str) -> dict:
    """The state dict in model.safetensors or pytorch_model.bin (loaded with weights_only=True)."""
    f = weights_file(path)
    if f is None:
        raise EmbedderUnavailable(f"{env}={path}: no {' or '.join(WEIGHT_FILES)} in that directory ({LICENCE_NOTE})")
    import torch

    try:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(f))
        else:
            try:  # memory-mapped: the 2.6 GB MuQ-MuLan file is not held twice in memory while loading
                state = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # an old-style (non-zip) file cannot be mapped
                state = torch.load(str(f), map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign or pickled-with-code files
        raise EmbedderUnavailable(f"cannot read the weights {f} ({env}): {type(e).__name__}: {e}") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise EmbedderUnavailable(f"{f} ({env}) holds no state dict")
    return state


def load_checked(model, state: dict, unused: tuple[str, ...], where: Path, env: str) -> None:
    """load_state_dict, refusing a file that lacks a tensor the features depend on (or has the wrong shapes)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as e:  # shape mismatches (another model size or architecture), non-tensor entries
        raise EmbedderUnavailable(f"the weights in {where} ({env}) do not fit its config: {str(e)[:600]}") from e
    needed = [k for k in missing if not k.startswith(unused)]
    if needed:
        raise EmbedderUnavailable(
            f"the weights in {where} ({env}) lack {len(needed)} tensors the model needs "
            f"(e.g. {', '.join(needed[:3])}): not a checkpoint of this model"
        )
    if missing:
        log.info("%s: %d unused tensors absent from the weights (e.g. %s)", where, len(missing), missing[0])
    if unexpected:
        log.info("%s: %d tensors in the weights are not used (e.g. %s)", where, len(unexpected), unexpected[0])


def build_muq(config: dict, where: Path, env: str):
    """A MuQ model (random weights) from a MuQ config.json dict; EmbedderUnavailable if it is not one."""
    muq = import_muq()
    MuQ, MuQConfig = muq.MuQ, muq.MuQConfig
    names = {f.name for f in fields(MuQConfig)}
    kw = {k: v for k, v in config.items() if k in names}
    stat = kw.get("stat") or {}
    if not isinstance(stat, dict) or not {"melspec_2048_mean", "melspec_2048_std"} <= set(stat):
        raise EmbedderUnavailable(
            f"{Path(where) / 'config.json'} ({env}) is not a MuQ config: no melspec_2048 mean/std statistics"
        )
    if kw.get("is_flash"):
        kw["is_flash"] = False  # muq's flash path imports a module the package does not ship; same weights
    if kw.get("use_encodec_target"):
        kw["use_encodec_target"] = False  # a training target only (needs the encodec package)
    try:
        with preserve_rng():
            return MuQ(MuQConfig(**kw))
    except Exception as e:
        raise EmbedderUnavailable(f"cannot build MuQ from {Path(where) / 'config.json'} ({env}): {type(e).__name__}: {e}") from e
