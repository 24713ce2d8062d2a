"""MuQ and MuQ-MuLan (Zhu et al. 2025, tencent-ailab, `muq` 0.1.0) as embedder plugins.

Weights are never downloaded. The MuQ and MuQ-MuLan weights are licensed CC-BY-NC-4.0 (non-commercial use
only); the `muq` code is MIT.

Installing: `pip install --no-deps -c constraints.txt -r requirements-nodeps.txt` (muq==0.1.0, x-clip==0.14.4:
their declared dependencies pull torchaudio and torchvision, i.e. a CUDA torch) plus einops, easydict,
beartype, ftfy and regex. torchaudio is never installed: muq imports MelSpectrogram/AmplitudeToDB (and four
training-only transforms) from it, so `import_muq()` imports muq with the pure-torch stand-in of
`_torchaudio_compat.py` in `sys.modules` for the duration of that import only (transformers, which probes for
torchaudio, is imported before and never sees it). x_clip's package `__init__` imports torchvision, but muq
only needs `x_clip.tokenizer`: that module is loaded on its own, without running the package `__init__`.
Building a MuQ model reseeds torch's and Python's global RNGs (muq does `torch.manual_seed(142)` and
`random.seed(142)` in constructors); the plugins restore both afterwards.

MuQ (`muq`; SIDECAR_PLUGINS__MUQ__CHECKPOINT = a local copy of OpenMuQ/MuQ-large-msd-iter: config.json and
model.safetensors or pytorch_model.bin). Loaded like `MuQ.from_pretrained(dir)` does (MuQ(config) from
config.json, then the state dict), but checked: a weight file that lacks any tensor of the feature path
(conv front end, conformer) is refused instead of silently leaving random weights, and nothing is printed.

- Input: 24 kHz mono. Windows of `window_s` seconds (default 10: the clip length the authors feed MuQ in
  MuQ-MuLan, 250 frames of context), at most `max_windows` of them (default 6, i.e. a minute of audio, the
  budget of the MERT plugin), spread evenly over the track, first at the start and last at the end
  (`_windows.py`); a track shorter than one window is one window (at least 1 s). Four windows per forward
  pass. Cost: MuQ-large (330M parameters) takes about 0.6 s of CPU time per second of audio on 2 cores,
  so about 40 s a track with the defaults on such a machine (well under a second on a GPU: `device`).
- Layer (`layer`, default 7): `hidden_states` has encoder_depth + 1 entries (0 = the conv front end,
  i = conformer layer i, the last one also passes the encoder's final LayerNorm); negative numbers count from
  the end. Layer 7 of 12 is what the MusicFM authors use for the same 25 Hz, 12-layer wav2vec2-conformer
  design that MuQ reuses, and middle layers are the ones that carry genre, mood and instrumentation in
  MARBLE-style probing, while the last layer is specialised towards predicting the Mel-RVQ tokens. Every
  conformer layer ends in a LayerNorm, so the middle layers have no huge outlier dimensions.
- Pooling (`pooling`): `meanstd` (default), the mean and the standard deviation of the 25 Hz frames of that
  layer - within a window for a segment, over all frames of all windows for the track (the law of total
  variance, so the track's spread includes how its windows differ; well defined for a one-window track);
  `mean` keeps the means only. Each statistic is L2-normalised and the pair divided by sqrt(2), so vectors
  are unit length and both count equally in a cosine similarity (the recipe of the MERT plugin).
- dim = hidden size x 2 (2048 for MuQ-large), computed in `load` from the checkpoint. Segments: one vector
  per window, same dim and recipe (store_segments). `version` names the checkpoint (a fingerprint of its
  config and weight files), layer, pooling and windowing.

MuQ-MuLan (`muq_mulan`, supports_text; SIDECAR_PLUGINS__MUQ_MULAN__CHECKPOINT = a local copy of
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

Both: option `device` (default cpu, e.g. cuda).
"""
from __future__ import annotations

import contextlib
import hashlib
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

import numpy as np

from schemas.embedding import EmbedResult
from sidecar.plugins import Embedder, EmbedderUnavailable, option_env

from ._torchaudio_compat import torchaudio_standin
from ._windows import (
    checkpoint_dir, checkpoint_fingerprint, l2_normalize, mean_spread_vector, number_option, pooled_mean_std, split_windows,
)  # fmt: skip

__all__ = ["MuqEmbedder", "MuqMulanEmbedder", "import_muq", "build_muq", "read_config", "read_weights"]

log = logging.getLogger(__name__)

LICENCE_NOTE = "the MuQ and MuQ-MuLan weights are licensed CC-BY-NC-4.0 (non-commercial use only)"
INSTALL_HINT = "pip install --no-deps -c constraints.txt -r requirements-nodeps.txt (muq, x-clip)"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MIN_SECONDS = 1.0
POOLINGS = ("meanstd", "mean")
MUQ_BATCH = 4  # windows per forward pass (equal lengths, no padding: batching does not change the output)
MULAN_BATCH = 4  # 10-s clips per forward pass
MAX_DIM = 32_768  # Milvus's FLOAT_VECTOR limit

# state-dict entries that feature extraction never reads: missing ones are tolerated (logged)
_MUQ_UNUSED = ("model.quantizer_", "model.linear.", "model.cls_token", "model.rvq.", "model.recon_proj.")
_MULAN_UNUSED = (
    "mulan.contrast.", "mulan.multi_layer_contrastive_learning.", "mulan.audio.aggregator.",
    "mulan.text.model.pooler.", "mulan.text_layers_indices", "mulan.audio_layers_indices",
) + tuple("mulan.audio.model." + p for p in _MUQ_UNUSED)  # fmt: skip

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
def _preserve_rng() -> Iterator[None]:
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


def _load_checked(model, state: dict, unused: tuple[str, ...], where: Path, env: str) -> None:
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
        with _preserve_rng():
            return MuQ(MuQConfig(**kw))
    except Exception as e:
        raise EmbedderUnavailable(f"cannot build MuQ from {Path(where) / 'config.json'} ({env}): {type(e).__name__}: {e}") from e


def _device(plugin: str, spec: str):
    import torch

    try:
        device = torch.device(spec)
        torch.empty(0, device=device)  # a device this torch build cannot use fails here, not mid-load
    except (RuntimeError, ValueError, AssertionError) as e:
        raise EmbedderUnavailable(f"{option_env(plugin, 'device')}={spec!r}: {e}") from None
    return device


def _checkpoint(plugin: str, options: dict, hint: str) -> Path:
    try:
        path = checkpoint_dir(plugin, options, required_files=("config.json",))
    except EmbedderUnavailable as e:
        raise EmbedderUnavailable(f"{e} ({hint}; {LICENCE_NOTE})") from None
    if weights_file(path) is None:
        raise EmbedderUnavailable(
            f"{option_env(plugin, 'checkpoint')}={path}: no {' or '.join(WEIGHT_FILES)} in that directory "
            f"({hint}; {LICENCE_NOTE})"
        )
    return path


def _fingerprint(*parts: str) -> str:
    return hashlib.blake2b("\0".join(parts).encode(), digest_size=4).hexdigest()


def _check_audio(audio: np.ndarray, sample_rate: int, what: str) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or len(audio) < MIN_SECONDS * sample_rate:
        raise ValueError(f"{what} needs mono audio of at least {MIN_SECONDS:g} s at {sample_rate} Hz")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio contains NaN or infinite samples")
    return audio


# ------------------------------------------------------------------------------------------------- MuQ


class MuqEmbedder(Embedder):
    name = "muq"
    version = "muq-unloaded"
    dim = 0
    sample_rate = 24_000
    supports_text = False
    store_segments = True

    DEFAULTS = {"layer": "7", "pooling": "meanstd", "window_s": 10.0, "max_windows": 6, "device": "cpu"}
    HINT = "a local copy of OpenMuQ/MuQ-large-msd-iter: config.json + model.safetensors"

    def __init__(self) -> None:
        self._model = None
        self._device = None
        self._layer_index = 0
        self.configure({})

    def configure(self, options) -> None:
        self.options = {k.lower(): str(v) for k, v in dict(options).items()}
        o = self.options
        raw = (o.get("layer") or self.DEFAULTS["layer"]).strip()
        try:
            self.layer = int(raw)
        except ValueError:
            raise EmbedderUnavailable(
                f"{option_env(self.name, 'layer')}={raw!r}: expected a layer number (0-12 for MuQ-large, -1 = last)"
            ) from None
        self.pooling = (o.get("pooling") or self.DEFAULTS["pooling"]).strip().lower()
        if self.pooling not in POOLINGS:
            raise EmbedderUnavailable(f"{option_env(self.name, 'pooling')}={self.pooling!r}: use one of {', '.join(POOLINGS)}")
        self.window_s = number_option(self.name, o, "window_s", self.DEFAULTS["window_s"], kind=float, minimum=MIN_SECONDS)
        self.max_windows = number_option(self.name, o, "max_windows", self.DEFAULTS["max_windows"], kind=int, minimum=1)
        self.device = (o.get("device") or self.DEFAULTS["device"]).strip()

    def _checkpoint(self) -> Path:
        return _checkpoint(self.name, self.options, self.HINT)

    def prepare(self, models_dir: Path) -> None:
        """Nothing to download (weights come from the configured directory); checks that it is there."""
        self._checkpoint()

    def load(self, models_dir: Path) -> None:
        path = self._checkpoint()
        env = option_env(self.name, "checkpoint")
        import torch

        device = _device(self.name, self.device)
        model = build_muq(read_config(path, env), path, env)
        _load_checked(model, read_weights(path, env), _MUQ_UNUSED, path, env)
        model.eval().requires_grad_(False).to(device)
        with torch.inference_mode():  # a dry run: fails here rather than on the first track, and gives the shapes
            try:
                out = model(torch.zeros(1, self.sample_rate, device=device), output_hidden_states=True)
            except Exception as e:
                raise EmbedderUnavailable(f"the MuQ model in {path} ({env}) does not run here: {type(e).__name__}: {e}") from e
        states = getattr(out, "hidden_states", None)
        if not states:
            raise EmbedderUnavailable(f"the MuQ model in {path} returned no hidden states (needs transformers<5)")
        n = len(states)
        if not -n <= self.layer < n:
            raise EmbedderUnavailable(
                f"{option_env(self.name, 'layer')}={self.layer}: this checkpoint has layers 0-{n - 1} "
                f"(0 = the conv front end, {n - 1} = the last conformer layer; negative counts from the end)"
            )
        hidden = int(states[-1].shape[-1])
        dim = hidden * (2 if self.pooling == "meanstd" else 1)
        if dim > MAX_DIM:
            raise EmbedderUnavailable(f"MuQ's hidden size {hidden} gives {dim}-d vectors, over Milvus's {MAX_DIM}")
        self._model, self._device, self._layer_index = model, device, self.layer % n
        self.dim = dim
        self.version = (
            f"muq-{checkpoint_fingerprint(path)}-h{hidden}x{n - 1}-layer{self._layer_index}-{self.pooling}"
            f"-w{self.window_s:g}sx{self.max_windows}-1"
        )
        log.info("MuQ loaded from %s: %d-d (%s); %s", path, dim, self.version, LICENCE_NOTE)

    def window_stats(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Frame statistics of the chosen layer per window: means (n, H), variances (n, H), frame counts (n,)."""
        import torch

        means, vars_, counts = [], [], []
        with torch.inference_mode():
            for i in range(0, len(windows), MUQ_BATCH):
                x = torch.from_numpy(np.ascontiguousarray(windows[i : i + MUQ_BATCH])).to(self._device)
                h = self._model(x, output_hidden_states=True).hidden_states[self._layer_index].float()  # (b, T, H)
                means.append(h.mean(dim=1).cpu().numpy())
                vars_.append(h.var(dim=1, unbiased=False).cpu().numpy())
                counts += [h.shape[1]] * h.shape[0]
        return np.concatenate(means), np.concatenate(vars_), np.asarray(counts)

    def _vector(self, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
        return mean_spread_vector(mean, std, self.pooling)

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if self._model is None:
            raise EmbedderUnavailable("MuQ is not loaded: call load() first")
        audio = _check_audio(audio, self.sample_rate, "MuQ")
        windows = split_windows(audio, int(round(self.window_s * self.sample_rate)), self.max_windows)
        means, vars_, counts = self.window_stats(windows)
        segments = self._vector(means, np.sqrt(vars_))
        t_mean, t_std = pooled_mean_std(means, vars_, counts)
        return EmbedResult(vector=self._vector(t_mean, t_std), segments=segments)


# ------------------------------------------------------------------------------------------------- MuQ-MuLan


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


class MuqMulanEmbedder(Embedder):
    name = "muq_mulan"
    version = "muq_mulan-unloaded"
    dim = 0
    sample_rate = 24_000
    supports_text = True
    store_segments = True

    DEFAULTS = {"max_windows": 6, "device": "cpu"}
    HINT = "a local copy of OpenMuQ/MuQ-MuLan-large: config.json + pytorch_model.bin"
    SECTIONS = ("mulan", "audio_model", "text_model", "audio_transformer", "text_transformer")

    def __init__(self) -> None:
        self._model = None
        self._device = None
        self._clip = 0
        self._max_tokens = 512
        self._tok_lock = threading.Lock()  # fast tokenizers are not safe to call from several threads at once
        self.configure({})

    def configure(self, options) -> None:
        self.options = {k.lower(): str(v) for k, v in dict(options).items()}
        o = self.options
        self.max_windows = number_option(self.name, o, "max_windows", self.DEFAULTS["max_windows"], kind=int, minimum=1)
        self.device = (o.get("device") or self.DEFAULTS["device"]).strip()

    def _checkpoint(self) -> Path:
        return _checkpoint(self.name, self.options, self.HINT)

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
            return d.is_dir() and all(any((d / f).is_file() for f in alternatives) for alternatives in required)

        need = ", ".join(" or ".join(a) for a in required)
        raw = (self.options.get(option) or "").strip()
        if raw:
            d = Path(raw).expanduser()
            if not ok(d):
                raise EmbedderUnavailable(f"{env}={raw}: not a directory holding the {what} ({need})")
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
        path = self._checkpoint()
        self._towers(path, self._config(path))

    def load(self, models_dir: Path) -> None:
        path = self._checkpoint()
        env = option_env(self.name, "checkpoint")
        import torch

        cfg = self._config(path)
        audio_dir, text_dir = self._towers(path, cfg)
        audio_config = read_config(audio_dir, option_env(self.name, "audio_tower"))
        device = _device(self.name, self.device)
        cls = _local_mulan_class(audio_config, audio_dir, text_dir, env)
        try:
            with _preserve_rng():
                model = cls(cfg)
        except EmbedderUnavailable:
            raise
        except Exception as e:
            raise EmbedderUnavailable(f"cannot build MuQ-MuLan from {path / 'config.json'} ({env}): {type(e).__name__}: {e}") from e
        _load_checked(model, read_weights(path, env), _MULAN_UNUSED, path, env)
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
        with torch.inference_mode():  # dry runs of both towers: fail here rather than on the first track
            try:
                a = self._audio_latents(np.zeros((1, self.sample_rate), dtype=np.float32))
                t = self.embed_text(["music"])
            except Exception as e:
                self._model = None
                raise EmbedderUnavailable(f"the MuQ-MuLan model in {path} ({env}) does not run here: {type(e).__name__}: {e}") from e
        if a.shape[-1] != self.dim or t.shape[-1] != self.dim:
            self._model = None
            raise EmbedderUnavailable(f"MuQ-MuLan in {path} gives {a.shape[-1]}-d audio and {t.shape[-1]}-d text vectors, expected {self.dim}")
        fp = _fingerprint(checkpoint_fingerprint(path), checkpoint_fingerprint(audio_dir), checkpoint_fingerprint(text_dir))
        self.version = f"muq_mulan-{fp}-d{self.dim}-clip{model.clip_secs:g}sx{self.max_windows}-1"
        log.info("MuQ-MuLan loaded from %s: %d-d joint space (%s); %s", path, self.dim, self.version, LICENCE_NOTE)

    # ---------------------------------------------------------------------------------------------- inference
    def _audio_latents(self, windows: np.ndarray) -> np.ndarray:
        import torch

        mulan = self._model.mulan_module
        out = []
        with torch.inference_mode():
            for i in range(0, len(windows), MULAN_BATCH):
                x = torch.from_numpy(np.ascontiguousarray(windows[i : i + MULAN_BATCH])).to(self._device)
                out.append(mulan.get_audio_latents(x).float().cpu().numpy())
        return np.concatenate(out)

    def embed(self, audio: np.ndarray) -> EmbedResult:
        if self._model is None:
            raise EmbedderUnavailable("MuQ-MuLan is not loaded: call load() first")
        audio = _check_audio(audio, self.sample_rate, "MuQ-MuLan")
        windows = split_windows(audio, self._clip, self.max_windows)
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
                with self._tok_lock:
                    inputs = tower.tokenizer([text], return_tensors="pt", truncation=True, max_length=self._max_tokens)
                inputs = {k: v.to(self._device) for k, v in inputs.items()}
                h = tower.pred_pretrained_model_hidden(**inputs)
                h = tower.proj(h)
                h, _ = tower.transformer(h, return_all_layers=True)
                latent = mulan._norm_latents(mulan.text_to_latents(h.mean(dim=-2)))
                out.append(latent.float().cpu().numpy()[0])
        return l2_normalize(np.stack(out))
