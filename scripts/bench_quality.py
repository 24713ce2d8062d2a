"""Recommendation-quality benchmark (issue 13) on real, labelled music from Debian packages.

    .venv/bin/python scripts/bench_quality.py                 # everything: similarity, text, duplicates, cost, service
    .venv/bin/python scripts/bench_quality.py --only similarity --show-all
    .venv/bin/python scripts/bench_quality.py --report .cache/quality/bench_output.md

Each step is cached under .cache/quality/, so a rerun takes well under a minute (the first run fetches about
1 GB of packages and analyses ~550 files: about an hour on 2 busy cores).

1. Corpus (scripts/quality_corpus.py): 301 full-length tracks (19 h) in 24 albums from 17 Debian packages;
   13 albums (150 tracks) carry a style label (orchestral, electronic, ambient, metal, tracker), 11 albums are
   unlabelled distractors. Albums are split into `dev` (where every setting is chosen) and `test` (where the
   figures are reported); each style has albums on both sides.
2. Features: the product's analysis path (sidecar.pipeline.audio.decode, 24 patches spread over the track,
   ONNX Runtime on one thread) for all four networks of the musicnn wheel (MSD_musicnn, MTT_musicnn, MSD_vgg,
   MTT_vgg: per-patch embedding layer and tag probabilities), and the product's DSP analysis.
3. Similarity spaces, offline: each candidate turns the library's features into one vector per track, and
   cosine similarity ranks the library for every query track. Metrics, averaged over the queries of a split:
   - album P@10: share of the 10 nearest tracks (whole library) from the query's album;
   - album MAP: mean average precision of the query's album over the whole ranking;
   - style P@10 (cross-album): among the labelled tracks of the other albums (the query's own album and the
     unlabelled distractors are left out of this ranking), the share of the 10 nearest with the query's style;
   - per style: style P@10 of the queries of each style.
   Random ranking and the plain MSD_musicnn patch-mean baseline are computed in the same run. The dev objective
   is the smaller of the relative gains over the baseline in album P@10 and style P@10 (the issue's target
   needs both). The best recipe of each cost tier (which networks must be analysed) is shown with a 90%
   interval of its gains (albums resampled). The recommender's `union` merge of two models' ranked lists is
   compared with the fused vector of the same two models.
4. Text prompts (scripts/quality_text.py): 20 prompts naming the five styles (and 15 held-out ones) answered
   by the product's zero-shot search on the analysis's tags and DSP features, beside today's product; P@10
   among the labelled tracks of the dev albums, of the test albums and of all.
5. Near-duplicates: 50 tracks re-encoded (MP3, Opus), trimmed, made 6 dB quieter, or all three; rules over
   the vectors, DSP descriptors and durations, with thresholds chosen on the copies of dev tracks; found share
   and false merges among distinct tracks of one album.
6. CPU cost per track of each network and stage, from the analysis runs and a per-patch timing.
7. Through the product (scripts/quality_service.py): the corpus analysed by `sidecar scan`, every similarity
   endpoint and the text prompts asked over HTTP of a running `sidecar serve` on its defaults, scored as above.

Needs the project venv; the first run also needs apt-get (packages) and openmpt123 (tracker modules).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import quality_corpus as qc  # noqa: E402

NETS = ("MSD_musicnn", "MTT_musicnn", "MSD_vgg", "MTT_vgg")
EMB = {"MSD_musicnn": "dense_preact", "MTT_musicnn": "dense_preact", "MSD_vgg": "pool5", "MTT_vgg": "pool5"}
K = 10
DEFAULT_SPACE = "plugin default: MSD + MTT_vgg on 12 patches, the store's space"  # the product's, among the candidates


# ------------------------------------------------------------------------------------------------ library
@dataclass
class Library:
    ids: list[str]
    album: np.ndarray
    style: np.ndarray  # "" when unlabelled
    split: np.ndarray
    seconds: np.ndarray
    feats: list[dict[str, np.ndarray]]
    cache: dict = field(default_factory=dict)

    def patches(self, key: str) -> list[np.ndarray]:
        return [f[key] for f in self.feats]

    def pooled(self, key: str, stat: str = "mean") -> np.ndarray:
        ck = (key, stat)
        if ck not in self.cache:
            fn = {"mean": np.mean, "std": np.std, "max": np.max}[stat]
            self.cache[ck] = np.stack([fn(p.astype(np.float64), axis=0) for p in self.patches(key)])
        return self.cache[ck]

    def dsp(self) -> np.ndarray:
        return np.stack([f["dsp.vector"].astype(np.float64) for f in self.feats])


def load_library(compute: bool = True) -> Library:
    tracks = qc.build(verbose=False)
    if compute:
        qc.compute_features([(t.id, qc.CORPUS / t.path) for t in tracks])
    feats = qc.load_features([t.id for t in tracks])
    tracks = [t for t in tracks if t.id in feats]
    return Library(
        ids=[t.id for t in tracks],
        album=np.array([t.album for t in tracks]),
        style=np.array([t.style or "" for t in tracks]),
        split=np.array([t.split for t in tracks]),
        seconds=np.array([t.seconds for t in tracks]),
        feats=[feats[t.id] for t in tracks],
    )


# ------------------------------------------------------------------------------------------- normalisers
def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def zscore(x: np.ndarray) -> np.ndarray:
    """Per-dimension standardisation with the library's own mean and standard deviation."""
    return (x - x.mean(0)) / x.std(0).clip(1e-6 * (x.std(0).max() + 1e-12))


def whiten(x: np.ndarray, alpha: float = 0.1, dims: int | None = None) -> np.ndarray:
    """PCA whitening over the library, regularised: component i is divided by sqrt(var_i + alpha * mean var)
    (alpha 0: full whitening; large alpha: plain centring). `dims` keeps the leading components only."""
    xc = x - x.mean(0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    var = s**2 / len(x)
    proj = xc @ vt.T
    if dims:
        proj, var = proj[:, :dims], var[:dims]
    return proj / np.sqrt(var + alpha * var.mean())


NORMS = {
    "raw": lambda x: x,
    "center": lambda x: x - x.mean(0),
    "z": zscore,
    "pca-w0.01": lambda x: whiten(x, 0.01),
    "pca-w0.1": lambda x: whiten(x, 0.1),
    "pca-w1": lambda x: whiten(x, 1.0),
}


def block(lib: Library, key: str, norm: str = "z", std_weight: float = 0.0) -> np.ndarray:
    """One model's track vectors: patch mean (+ patch std at `std_weight`), normalised, unit length."""
    x = NORMS[norm](lib.pooled(key, "mean"))
    if std_weight:
        x = np.hstack([unit(x), std_weight * unit(NORMS[norm](lib.pooled(key, "std")))])
    return unit(x)


def fuse(blocks: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Concatenate unit-length blocks at weights w: the cosine of the result is the w^2-weighted mean of the
    blocks' cosines (one vector, one search)."""
    total = np.sqrt(sum(w * w for _, w in blocks))
    return np.hstack([b * (w / total) for b, w in blocks if w])


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# ------------------------------------------------------------------------------------------------ metrics
def similarity(x: np.ndarray) -> np.ndarray:
    u = unit(np.asarray(x, np.float64))
    s = u @ u.T
    np.fill_diagonal(s, -np.inf)
    return s


def per_query(lib: Library, sim: np.ndarray, split: str) -> dict[str, np.ndarray]:
    """Per query of `split`: album P@10, album AP, cross-album style P@10 (NaN for unlabelled queries)."""
    q = np.flatnonzero(lib.split == split) if split != "all" else np.arange(len(lib.ids))
    p10, ap, sp10 = np.zeros(len(q)), np.zeros(len(q)), np.full(len(q), np.nan)
    for n, i in enumerate(q):
        order = np.argsort(-sim[i], kind="stable")[:-1]  # self (at -inf) last
        rel = lib.album[order] == lib.album[i]
        p10[n] = rel[:K].mean()
        hits = np.flatnonzero(rel)
        ap[n] = np.mean((np.arange(len(hits)) + 1) / (hits + 1)) if len(hits) else 0.0
        if lib.style[i]:
            other = order[(lib.album[order] != lib.album[i]) & (lib.style[order] != "")][:K]
            sp10[n] = (lib.style[other] == lib.style[i]).mean()
    return {"query": q, "album_p10": p10, "album_map": ap, "style_p10": sp10}


def evaluate(lib: Library, sim: np.ndarray, split: str) -> dict[str, float]:
    """Album P@10, album MAP, cross-album style P@10 (overall and per style) for the queries of `split`."""
    pq = per_query(lib, sim, split)
    style = lib.style[pq["query"]]
    out = {k: float(np.nanmean(pq[k])) for k in ("album_p10", "album_map", "style_p10")}
    for s in sorted(set(style) - {""}):
        out[f"style_p10:{s}"] = float(np.mean(pq["style_p10"][style == s]))
        out[f"album_p10:{s}"] = float(np.mean(pq["album_p10"][style == s]))
    return out


def bootstrap_gain(lib: Library, sim: np.ndarray, base: np.ndarray, split: str, n: int = 2000) -> dict[str, tuple]:
    """90% interval of the relative gain over `base`, resampling whole albums (queries of one album are not
    independent)."""
    a, b = per_query(lib, sim, split), per_query(lib, base, split)
    albums = lib.album[a["query"]]
    names = np.unique(albums)
    idx = [np.flatnonzero(albums == x) for x in names]
    rng = np.random.default_rng(0)
    out = {}
    for k in ("album_p10", "style_p10"):
        gains = []
        for _ in range(n):
            pick = np.concatenate([idx[j] for j in rng.integers(0, len(names), len(names))])
            num, den = np.nanmean(a[k][pick]), np.nanmean(b[k][pick])
            if np.isfinite(num) and np.isfinite(den) and den > 0:
                gains.append(num / den - 1)
        out[k] = (float(np.quantile(gains, 0.05)), float(np.quantile(gains, 0.95)))
    return out


def evaluate_random(lib: Library, split: str, seeds: int = 20) -> dict[str, float]:
    rng = np.random.default_rng(0)
    runs = []
    for _ in range(seeds):
        s = rng.random((len(lib.ids), len(lib.ids)))
        np.fill_diagonal(s, -np.inf)
        runs.append(evaluate(lib, s, split))
    return {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}


def union_similarity(sims: list[np.ndarray], top: int = 100) -> np.ndarray:
    """The recommender's union merge: each model keeps its `top` candidates; a track's merged score is its
    best similarity in any model's list (tracks in no list rank last)."""
    out = np.full_like(sims[0], -np.inf)
    top = min(top, len(out) - 1)
    for s in sims:
        s = s.copy()
        cut = -np.sort(-s, axis=1)[:, top - 1 : top]
        s[s < cut] = -np.inf
        out = np.maximum(out, s)
    np.fill_diagonal(out, -np.inf)
    return out


# ------------------------------------------------------------------------------------------- candidates
def plugin_outputs(f: dict[str, np.ndarray], vgg_budget: int) -> tuple[dict, dict | None]:
    """A track's cached per-patch outputs as the MusiCNN plugin hands them to its recipe: MSD_musicnn on the 24
    patches, MTT_vgg on the plugin's share of them (`recipe.vgg_patches`), none with a budget of 0."""
    from plugins.embedders.musicnn.recipe import vgg_patches

    msd = {"dense_preact": f["MSD_musicnn.dense_preact"], "taggram": f["MSD_musicnn.taggram"]}
    if not vgg_budget:
        return msd, None
    pick = vgg_patches(len(msd["dense_preact"]), vgg_budget)
    return msd, {"pool5": f["MTT_vgg.pool5"][pick], "taggram": f["MTT_vgg.taggram"][pick]}


def plugin_space(feats: list[dict[str, np.ndarray]], vgg_budget: int | None = None, blocks=None) -> np.ndarray:
    """The plugin's track vectors (plugins/embedders/musicnn/recipe.py: `track_vector`) in the store's similarity
    space (sidecar/data/space.py: `Space`, fitted on these tracks): what the product compares. `blocks`: another
    split of the same vector, for comparison."""
    from plugins.embedders.musicnn import VGG_PATCHES
    from plugins.embedders.musicnn.recipe import space, track_vector
    from sidecar.data.space import Space

    budget = VGG_PATCHES if vgg_budget is None else vgg_budget
    raw = np.stack([track_vector(*plugin_outputs(f, budget)) for f in feats])
    sp = Space.of(blocks or space(budget > 0), raw.shape[1]).fitted(raw, len(raw))
    return sp.lift(sp.project(sp.transform(raw)))  # as the mirror holds them (projected past 2 x PROJECT tracks)


def neighbourhood_mean(x: np.ndarray, k: int, a: float) -> np.ndarray:
    """Database-side augmentation: each track's vector replaced by the mean of its k nearest (itself included),
    weighted by cosine^a."""
    u = unit(np.asarray(x, np.float64))
    s = u @ u.T
    near = np.argsort(-s, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(s, near, 1).clip(0) ** a
    return unit(np.einsum("nk,nkd->nd", w, u[near]))


def shared_neighbours(sim: np.ndarray, k: int, weight: float) -> np.ndarray:
    """Cosine blended with the share of k nearest two tracks have in common (both standardised)."""
    near = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    member = np.zeros_like(sim)
    np.put_along_axis(member, near, 1.0, 1)
    return _blend([(sim, 1 - weight), (member @ member.T / k, weight)])


def _blend(parts: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Weighted sum of similarity matrices, each standardised over its pairs (the diagonal stays -inf)."""
    off = ~np.eye(len(parts[0][0]), dtype=bool)
    out = sum(w * (s - s[off].mean()) / s[off].std() for s, w in parts)
    np.fill_diagonal(out, -np.inf)
    return out


def baseline(lib: Library) -> np.ndarray:
    """The plain MusiCNN vector: mean over the 24 patches of MSD_musicnn's dense layer before ReLU."""
    return lib.pooled("MSD_musicnn.dense_preact")


def tags_vector(lib: Library, nets=("MSD_musicnn", "MTT_musicnn"), norm: str = "z") -> np.ndarray:
    return unit(np.hstack([unit(NORMS[norm](logit(lib.pooled(f"{n}.taggram")))) for n in nets]))


def candidate_spaces(lib: Library) -> dict[str, np.ndarray]:
    """Every similarity space tried: name -> (tracks, dims) vectors."""
    c: dict[str, np.ndarray] = {"baseline: MSD_musicnn dense_preact patch-mean, raw cosine": baseline(lib)}
    dsp = lib.dsp()
    c["issue's fused: z(MSD dense) + raw DSP at 0.5"] = fuse([(unit(zscore(baseline(lib))), 1.0), (unit(dsp), 0.5)])
    # normalisations of the baseline
    for norm in NORMS:
        if norm != "raw":
            c[f"MSD dense mean, {norm}"] = block(lib, "MSD_musicnn.dense_preact", norm)
    c["MSD penultimate mean, raw"] = lib.pooled("MSD_musicnn.penultimate")
    c["MSD penultimate mean, z"] = block(lib, "MSD_musicnn.penultimate", "z")
    # patch statistics
    for w in (0.5, 1.0):
        for norm in ("z", "pca-w0.1"):
            c[f"MSD dense mean+std({w}), {norm}"] = block(lib, "MSD_musicnn.dense_preact", norm, w)
    # each network alone
    for net in NETS:
        key = f"{net}.{EMB[net]}"
        c[f"{net} {EMB[net]} mean, raw"] = lib.pooled(key)
        for norm in ("z", "pca-w0.1"):
            c[f"{net} {EMB[net]} mean, {norm}"] = block(lib, key, norm)
        c[f"{net} {EMB[net]} mean+std(0.5), z"] = block(lib, key, "z", 0.5)
        c[f"{net} tags (logit), z"] = unit(zscore(logit(lib.pooled(f"{net}.taggram"))))
    c["MSD_musicnn.penultimate mean, pca-w0.1"] = block(lib, "MSD_musicnn.penultimate", "pca-w0.1")
    c["MTT_musicnn penultimate mean, z"] = block(lib, "MTT_musicnn.penultimate", "z")
    c["tags MSD+MTT musicnn (logit), z"] = tags_vector(lib)
    c["tags all four (logit), z"] = tags_vector(lib, NETS)
    # the plugin's analysis in the store's space: the default, MSD_musicnn alone, and three coarser blocks
    # (each network's mean and std in one block, std scaled by 0.5; both networks' tags in one block)
    from sidecar.plugins import Block

    c[DEFAULT_SPACE] = plugin_space(lib.feats)
    c["plugin with vgg_patches=0: MSD alone, the store's space"] = plugin_space(lib.feats, 0)
    coarse = (Block("msd", 400, 1.0, (1.0,) * 200 + (0.5,) * 200), Block("mtt_vgg", 512, 1.0, (1.0,) * 256 + (0.5,) * 256),
              Block("tags", 100, 0.5))  # fmt: skip
    c["plugin default vector, 3 coarse blocks"] = plugin_space(lib.feats, blocks=coarse)
    # the default space smoothed by each track's neighbourhood (no labels): a stabler picture of a track's style?
    for k, a in ((5, 3), (12, 3), (12, 8)):
        c[f"plugin default + neighbourhood mean (k={k}, a={a})"] = neighbourhood_mean(c[DEFAULT_SPACE], k, a)
    # DSP alone
    c["DSP vector, raw"] = dsp
    c["DSP vector, z"] = unit(zscore(dsp))
    # ensembles, with and without DSP
    ens = {
        "MSD": ["MSD_musicnn"],
        "MSD+MTT": ["MSD_musicnn", "MTT_musicnn"],
        "MSD+MTT_vgg": ["MSD_musicnn", "MTT_vgg"],
        "musicnn+vgg (all 4)": list(NETS),
        "MTT+MTT_vgg": ["MTT_musicnn", "MTT_vgg"],
    }
    for name, nets in ens.items():
        for norm in ("z", "pca-w0.1"):
            for sw in (0.0, 0.5):
                blocks = [(block(lib, f"{n}.{EMB[n]}", norm, sw), 1.0) for n in nets]
                for wt in (0.0, 0.5) if norm == "z" else (0.0,):  # the same networks' tags, as one more block
                    tags = [(tags_vector(lib, tuple(nets)), wt * np.sqrt(len(nets)))] if wt else []
                    for wd in (0.0, 0.25, 0.5, 0.75, 1.0):
                        extra = [(unit(zscore(dsp)), wd * np.sqrt(len(nets)))] if wd else []
                        label = f"fused {name}: {norm}" + (f", mean+std({sw})" if sw else ", mean")
                        label += f" + tags at {wt}" if wt else ""
                        label += f" + DSP(z) at {wd}" if wd else ""
                        c[label] = fuse(blocks + tags + extra)
    return c


def objective(r: dict[str, float], base: dict[str, float]) -> float:
    """The smaller relative gain over the baseline of album P@10 and style P@10 (both must improve)."""
    return min(r["album_p10"] / base["album_p10"], r["style_p10"] / base["style_p10"]) - 1


# -------------------------------------------------------------------------------------------- reporting
def fmt_row(name: str, r: dict[str, float], styles: list[str]) -> str:
    cells = [f"{r['album_p10']:.3f}", f"{r['album_map']:.3f}", f"{r['style_p10']:.3f}"]
    cells += [f"{r.get(f'style_p10:{s}', float('nan')):.2f}" for s in styles]
    return f"| {name} | " + " | ".join(cells) + " |"


def table_header(styles: list[str]) -> str:
    head = "| space | album P@10 | album MAP | style P@10 (other albums) | " + " | ".join(styles) + " |"
    return head + "\n|---|---:|---:|---:|" + "---:|" * len(styles)


#: networks of each fused family, for the cost tiers
FAMILIES = {"MSD": ("MSD_musicnn",), "MSD+MTT_vgg": ("MSD_musicnn", "MTT_vgg"), "MSD+MTT": ("MSD_musicnn", "MTT_musicnn"),
            "musicnn+vgg (all 4)": NETS}  # fmt: skip


def run_similarity(lib: Library, show_all: bool, out: list[str]) -> dict:
    styles = sorted(set(lib.style) - {""})
    spaces = candidate_spaces(lib)
    sims = {name: similarity(x) for name, x in spaces.items()}
    # union merges of two models' ranked lists (the recommender's `union`), beside the fused vector of the same two
    pairs = {
        "union(MSD dense z, DSP z)": ("MSD dense mean, z", "DSP vector, z"),
        "union(MSD dense z, MTT_musicnn z)": ("MSD dense mean, z", "MTT_musicnn dense_preact mean, z"),
    }
    base_name = next(iter(spaces))
    for name, (a, b) in pairs.items():
        sims[name] = union_similarity([sims[a], sims[b]])
    for k in (10, 20):
        sims[f"plugin default, blended with shared neighbours (k={k}, 0.3)"] = shared_neighbours(sims[DEFAULT_SPACE], k, 0.3)
    sims["plugin default, blended with the baseline's cosine (0.5)"] = _blend([(sims[DEFAULT_SPACE], 0.5), (sims[base_name], 0.5)])
    res = {split: {name: evaluate(lib, s, split) for name, s in sims.items()} for split in ("dev", "test")}
    rnd = {split: evaluate_random(lib, split) for split in ("dev", "test")}
    dev_gain = {n: objective(res["dev"][n], res["dev"][base_name]) for n in sims}
    ranked = sorted(sims, key=lambda n: -dev_gain[n])
    best = ranked[0]
    # the best of each cost tier (networks analysed), chosen on dev among the fused recipes
    tiers = {}
    for fam in FAMILIES:
        names = [n for n in ranked if n.startswith(f"fused {fam}: z,")]
        if names:
            tiers[fam] = names[0]

    # the MSD+MTT_vgg winner with MTT_vgg on 12 of the 24 patches (half its cost)
    if "MSD+MTT_vgg" in tiers:
        r = recipe_from_name(tiers["MSD+MTT_vgg"])
        r.patch_step = {"MTT_vgg": 2}
        half = tiers["MSD+MTT_vgg"] + " [MTT_vgg on 12 patches]"
        sims[half] = similarity(r.fit(lib.feats).transform(lib.feats))
        for split in ("dev", "test"):
            res[split][half] = evaluate(lib, sims[half], split)
        tiers["MSD+MTT_vgg (12 patches)"] = half
    out.append(f"\n## Similarity spaces ({len(lib.ids)} tracks, {len(set(lib.album))} albums; "
               f"dev {int((lib.split == 'dev').sum())} queries, test {int((lib.split == 'test').sum())})\n")  # fmt: skip
    out.append("Cosine similarity in each space. Dev objective: the smaller of the relative gains in album P@10 and "
               "style P@10 over the baseline. Style columns: cross-album style P@10 per style (candidates: the "
               "labelled tracks of the other albums).\n")  # fmt: skip
    out.append("### Best of each cost tier (chosen on dev), with 90% intervals of the gain (albums resampled)\n")
    out.append("| networks analysed | recipe | split | album P@10 | gain | 90% interval | style P@10 | gain | 90% interval |")
    out.append("|---|---|---|---:|---:|---|---:|---:|---|")
    for split in ("dev", "test"):
        b = res[split][base_name]
        out.append(f"| MSD_musicnn | baseline (today) | {split} | {b['album_p10']:.3f} | | | {b['style_p10']:.3f} | | |")
        for fam, name in tiers.items():
            r = res[split][name]
            ci = bootstrap_gain(lib, sims[name], sims[base_name], split)
            out.append(f"| {fam} | {name.split(': ', 1)[1]} | {split} | {r['album_p10']:.3f} | "
                       f"{r['album_p10'] / b['album_p10'] - 1:+.0%} | {ci['album_p10'][0]:+.0%} .. {ci['album_p10'][1]:+.0%} | "
                       f"{r['style_p10']:.3f} | {r['style_p10'] / b['style_p10'] - 1:+.0%} | "
                       f"{ci['style_p10'][0]:+.0%} .. {ci['style_p10'][1]:+.0%} |")  # fmt: skip
    shown = ranked if show_all else _summary_rows(ranked, base_name, best) + [t for t in tiers.values() if t not in ranked[:12]]
    shown = [n for n in ranked if n in set(shown)]
    for split in ("dev", "test"):
        out.append(f"\n### {split}: {'every space' if show_all else 'a selection'}, sorted by the dev objective\n\n{table_header(styles)}")
        out.append(fmt_row("random", rnd[split], styles))
        for name in shown:
            out.append(fmt_row(name, res[split][name], styles))
    # the product computes the recommended recipe: the plugin's vectors in the store's space give its cosines
    d = DEFAULT_RECIPE
    rec = Recipe(d.nets, d.std_weight, d.dsp_weight, d.tags_weight, d.norm, dict(d.patch_step)).fit(lib.feats)
    ref, plugin = similarity(rec.transform(lib.feats)), sims[DEFAULT_SPACE]
    off = ~np.eye(len(ref), dtype=bool)  # the diagonal holds -inf (a query is not its own neighbour)
    gap = float(np.abs(ref[off] - plugin[off]).max())
    out.append(f"\nThe plugin's default analysis in the store's space gives the recommended recipe's cosines within {gap:.1e} "
               "(float32 storage; the store's variance floor).")  # fmt: skip
    r = recipe_from_name(best)
    if r is not None:  # the Recipe (library statistics, usable on new tracks) is the same space
        assert np.allclose(unit(r.fit(lib.feats).transform(lib.feats)), unit(spaces[best]), atol=1e-6), best
    out.append(f"\nBest on dev overall: **{best}**")
    for split in ("dev", "test"):
        b, r = res[split][base_name], res[split][best]
        out.append(f"- {split}: album P@10 {b['album_p10']:.3f} -> {r['album_p10']:.3f} "
                   f"({r['album_p10'] / b['album_p10'] - 1:+.0%}), album MAP {b['album_map']:.3f} -> {r['album_map']:.3f} "
                   f"({r['album_map'] / b['album_map'] - 1:+.0%}), style P@10 {b['style_p10']:.3f} -> {r['style_p10']:.3f} "
                   f"({r['style_p10'] / b['style_p10'] - 1:+.0%})")  # fmt: skip
    return {"best_name": best, "tiers": tiers, "results": res}


def _summary_rows(ranked: list[str], base: str, best: str) -> list[str]:
    """A readable subset: the baseline, the best 12 on dev, and one representative of each family."""
    keep = [base] + ranked[:12]
    families = ["issue's fused: z(MSD dense) + raw DSP at 0.5", "MSD dense mean, z", "MSD dense mean, pca-w0.1", "MSD dense mean+std(0.5), z",
                "MSD penultimate mean, z", "MTT_musicnn dense_preact mean, z", "MSD_vgg pool5 mean, z",
                "MTT_vgg pool5 mean, z", "tags MSD+MTT musicnn (logit), z", "DSP vector, z", "MSD dense mean, center",
                "fused MSD: z, mean + DSP(z) at 0.25", "fused MSD: z, mean + DSP(z) at 0.75", "fused MSD: z, mean + DSP(z) at 1.0",
                "fused MSD: z, mean + DSP(z) at 0.5", "fused MSD+MTT: z, mean", "fused musicnn+vgg (all 4): z, mean",
                "union(MSD dense z, DSP z)", "union(MSD dense z, MTT_musicnn z)",
                DEFAULT_SPACE,
                "plugin with vgg_patches=0: MSD alone, the store's space", "plugin default vector, 3 coarse blocks"]  # fmt: skip
    keep += [f for f in families if f in ranked]
    return [n for n in ranked if n in set(keep)]


def run_probe(lib: Library, out: list[str]) -> None:
    """How much of each style the features carry from one set of albums to another: a linear classifier (logistic
    regression) trained on the labelled tracks of the dev albums and scored on the test albums, and the reverse.
    No similarity space can bring together tracks of one style that this supervised probe cannot tell apart."""
    from sklearn.linear_model import LogisticRegression

    styles = sorted(set(lib.style) - {""})
    default = plugin_space(lib.feats)
    features = {
        "baseline: MSD_musicnn patch mean (z)": unit(zscore(baseline(lib))),
        "plugin default (the store's space)": unit(default),
        "all four networks, patch mean and tags (z)": fuse([(block(lib, f"{n}.{EMB[n]}"), 1.0) for n in NETS] + [(tags_vector(lib, NETS), 1.0)]),
        "DSP vector (z)": zscore(lib.dsp()),
    }
    out.append("\n## What the features carry across albums: a supervised probe\n\n"
               "A linear classifier of the five styles, trained on one split's labelled tracks and scored on the other's "
               "(per style: the share of its tracks classified right).\n")  # fmt: skip
    out.append("| features | trained on | scored on | accuracy | " + " | ".join(styles) + " |\n|---|---|---|---:|" + "---:|" * len(styles))
    for name, x in features.items():
        for train, score in (("dev", "test"), ("test", "dev")):
            tr, te = (lib.split == train) & (lib.style != ""), (lib.split == score) & (lib.style != "")
            pred = LogisticRegression(C=1.0, max_iter=5000).fit(x[tr], lib.style[tr]).predict(x[te])
            truth = lib.style[te]
            per = [f"{np.mean(pred[truth == st] == st):.2f}" for st in styles]
            out.append(f"| {name} | {train} | {score} | {np.mean(pred == truth):.2f} | " + " | ".join(per) + " |")


PARTS = ("similarity", "probe", "text", "duplicates", "cost", "service")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=PARTS, action="append",
                    help="run only these parts (repeatable); default: all. service: the corpus analysed by `sidecar scan` and "
                         "every endpoint asked over HTTP of a running `sidecar serve` (scripts/quality_service.py)")  # fmt: skip
    ap.add_argument("--show-all", action="store_true", help="print every candidate space, not a summary")
    ap.add_argument("--report", type=Path, help="also write the Markdown tables to this file")
    ap.add_argument("--cached-only", action="store_true", help="use the tracks already analysed; analyse nothing")
    args = ap.parse_args(argv)
    parts = set(args.only or PARTS)
    lib = load_library(compute=not args.cached_only)
    out: list[str] = [f"# Recommendation quality ({len(lib.ids)} real tracks)"]
    if "similarity" in parts:
        run_similarity(lib, args.show_all, out)
    if "probe" in parts:
        run_probe(lib, out)
    if "text" in parts:
        import quality_text as qt

        qt.run_text(lib, out)
    if "duplicates" in parts:
        run_duplicates(lib, out, DEFAULT_RECIPE, compute=not args.cached_only)
        run_projection(lib, out)
    if "cost" in parts:
        run_cost(lib, out)
    if "service" in parts:
        import quality_service
        import quality_text as qt

        quality_service.run_service(lib, out, qt.PROMPTS)
    text = "\n".join(out) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text)
    return 0


# ------------------------------------------------------------------------------------------- the recipe
@dataclass
class Recipe:
    """A fused similarity space with its library statistics, applicable to tracks outside the library (new
    tracks, duplicates): blocks of per-network patch statistics, each z-scored with the library's mean and
    standard deviation per dimension and made unit length, concatenated at the given weights (+ DSP)."""

    nets: tuple[str, ...] = ("MSD_musicnn",)
    std_weight: float = 0.0  # patch std beside the patch mean, inside each network's block
    dsp_weight: float = 0.0  # relative to one network block
    tags_weight: float = 0.0  # the networks' tag logits (z-scored), as one block, relative to one network block
    norm: str = "z"
    #: analyse the networks after the first on every k-th of the 24 patches only (to save time): {net: k}
    patch_step: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def _p(self, f: dict, net: str, what: str) -> np.ndarray:
        return f[f"{net}.{what}"][:: self.patch_step.get(net, 1)].astype(np.float64)

    def _raw(self, feats: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        out = {}
        for n in self.nets:
            p = [self._p(f, n, EMB[n]) for f in feats]
            out[f"{n}:mean"] = np.stack([x.mean(0) for x in p])
            if self.std_weight:
                out[f"{n}:std"] = np.stack([x.std(0) for x in p])
        if self.dsp_weight:
            out["dsp"] = np.stack([f["dsp.vector"].astype(np.float64) for f in feats])
        if self.tags_weight:
            for n in self.nets:
                out[f"{n}:tags"] = logit(np.stack([self._p(f, n, "taggram").mean(0) for f in feats]))
        return out

    def fit(self, feats: list[dict[str, np.ndarray]]) -> Recipe:
        self.stats = {k: (v.mean(0), v.std(0).clip(1e-6 * (v.std(0).max() + 1e-12))) for k, v in self._raw(feats).items()}
        return self

    def transform(self, feats: list[dict[str, np.ndarray]]) -> np.ndarray:
        raw = self._raw(feats)

        def z(k: str) -> np.ndarray:
            mu, sd = self.stats[k]
            return unit((raw[k] - mu) / sd if self.norm == "z" else raw[k])

        blocks = []
        for n in self.nets:
            b = z(f"{n}:mean")
            if self.std_weight:
                b = unit(np.hstack([b, self.std_weight * z(f"{n}:std")]))
            blocks.append((b, 1.0))
        if self.tags_weight:
            blocks.append((unit(np.hstack([z(f"{n}:tags") for n in self.nets])), self.tags_weight * np.sqrt(len(self.nets))))
        if self.dsp_weight:
            blocks.append((z("dsp"), self.dsp_weight * np.sqrt(len(self.nets))))
        return fuse(blocks)

    def describe(self) -> str:
        s = " + ".join(f"{n}.{EMB[n]}" + (f" (every {self.patch_step[n]}th patch)" if self.patch_step.get(n, 1) > 1 else "") for n in self.nets) + (f" (patch mean + {self.std_weight} x patch std)" if self.std_weight else " (patch mean)")
        s += f", {self.norm}-scored per library, unit blocks"
        s += f", + tag logits z-scored at {self.tags_weight}" if self.tags_weight else ""
        return s + (f", + DSP vector z-scored at {self.dsp_weight}" if self.dsp_weight else "")


#: the recommended default (see REPORT.md): chosen on the dev albums, reported on the test albums
DEFAULT_RECIPE = Recipe(("MSD_musicnn", "MTT_vgg"), std_weight=0.5, tags_weight=0.5, patch_step={"MTT_vgg": 2})


def recipe_from_name(name: str) -> Recipe | None:
    """The Recipe behind a 'fused ...: z, ...' or single-network 'z' candidate name (None for others)."""
    ens = {"MSD": ("MSD_musicnn",), "MSD+MTT": ("MSD_musicnn", "MTT_musicnn"), "MSD+MTT_vgg": ("MSD_musicnn", "MTT_vgg"),
           "musicnn+vgg (all 4)": NETS, "MTT+MTT_vgg": ("MTT_musicnn", "MTT_vgg")}  # fmt: skip
    if not name.startswith("fused ") or ": z," not in name:
        return None
    head, tail = name[len("fused ") :].split(": z,", 1)
    sw = float(tail.split("mean+std(")[1].split(")")[0]) if "mean+std(" in tail else 0.0
    wd = float(tail.split("DSP(z) at ")[1]) if "DSP(z) at " in tail else 0.0
    wt = float(tail.split("tags at ")[1].split(" ")[0]) if "tags at " in tail else 0.0
    return Recipe(ens[head.strip()], sw, wd, wt)


# --------------------------------------------------------------------------------------- near-duplicates
SHORT_S = 180.0  # descriptor tolerances widen by SHORT_S / duration for shorter tracks (in the *_short rules)
#: DSP descriptors that neither a gain change nor a re-encode nor a short trim should move much
DESCRIPTORS = ("dynamics_db", "percussiveness", "brightness", "key_strength")


def _dur_ok(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Durations compatible with a copy of the same recording: at most 8 s + 3% apart (trims, codec padding)."""
    return np.abs(a - b) <= 8 + 0.03 * np.maximum(a, b)


def run_projection(lib: Library, out: list[str]) -> None:
    """The mirror's projection (sidecar/data/space.py: PROJECT leading directions) on real music: the corpus and
    the duplicate benchmark's altered copies as one library (over 2 x PROJECT tracks, so it is projected), the
    space fitted on all of it; recall@10 of the projected search against the full space, and the metrics of the
    corpus tracks. Needs the copies' features (run the duplicates part once)."""
    from plugins.embedders.musicnn import VGG_PATCHES
    from plugins.embedders.musicnn.recipe import space, track_vector
    from sidecar.data import space as space_module
    from sidecar.data.space import Space

    tracks = qc.build(verbose=False)
    copies = [f"{t.id}~{v}" for t in qc.duplicate_originals(tracks) for v in qc.DUP_VARIANTS]
    dfeats = qc.load_features(copies, root=qc.CACHE / "dup_features")
    raw = np.stack([track_vector(*plugin_outputs(f, VGG_PATCHES)) for f in lib.feats + list(dfeats.values())])
    out.append(f"\n### The mirror's projection ({len(lib.ids)} corpus tracks + {len(dfeats)} altered copies = {len(raw)} "
               "tracks, fitted on all)\n")
    out.append("| dimensions kept | recall@10 vs the full space | dev album P@10 | dev style P@10 | test album P@10 | test style P@10 |")
    out.append("|---|---:|---:|---:|---:|---:|")
    default = space_module.PROJECT
    try:
        full = None
        for k in (0, 256, default, 128, 64):
            space_module.PROJECT = k or 10**6
            sp = Space.of(space(True), raw.shape[1]).fitted(raw, len(raw))
            t = sp.transform(raw)
            full = unit(t) if full is None else full
            held = unit(sp.lift(sp.project(t)))
            near_full, near_held = similarity(full), similarity(held)
            recall = np.mean([len(set(np.argsort(-a)[:10]) & set(np.argsort(-b)[:10])) / 10 for a, b in zip(near_full, near_held)])
            r = {split: evaluate(lib, similarity(held[: len(lib.ids)]), split) for split in ("dev", "test")}
            name = "all (no projection)" if not k else f"**{k} (the default)**" if k == default else str(k)
            out.append(f"| {name} | {recall:.3f} | {r['dev']['album_p10']:.3f} | {r['dev']['style_p10']:.3f} | "
                       f"{r['test']['album_p10']:.3f} | {r['test']['style_p10']:.3f} |")
    finally:
        space_module.PROJECT = default


def run_duplicates(lib: Library, out: list[str], recipe: Recipe, compute: bool = True) -> None:
    """Altered copies of 50 tracks against the library. Rules: a cosine threshold on one kind of vector, or on
    two at once (both must pass), always with the duration check. Thresholds are chosen on the copies of dev
    tracks (the highest that still finds >= 97% of them) and reported on the copies of test tracks."""
    tracks = qc.build(verbose=False)
    if compute:
        dups = qc.make_duplicates(tracks)
        qc.compute_features([(vid, p) for vid, _, p in dups], root=qc.CACHE / "dup_features")
    else:
        dups = [(f"{t.id}~{v}", t.id, qc._dup_path(t, v)) for t in qc.duplicate_originals(tracks) for v in qc.DUP_VARIANTS]
    dfeats = qc.load_features([vid for vid, _, _ in dups], root=qc.CACHE / "dup_features")
    dups = [(vid, orig, p) for vid, orig, p in dups if vid in dfeats and orig in lib.ids]
    index = {t: i for i, t in enumerate(lib.ids)}
    o_idx = np.array([index[o] for _, o, _ in dups])
    var = np.array([v.split("~")[1] for v, _, _ in dups])
    d_sec = np.array([float(dfeats[v]["seconds"]) for v, _, _ in dups])
    lib_sec = np.array([float(f["seconds"]) for f in lib.feats])
    dfl = [dfeats[v] for v, _, _ in dups]

    def vectors(kind: str) -> tuple[np.ndarray, np.ndarray]:
        if kind == "dsp":
            return unit(lib.dsp()), unit(np.stack([f["dsp.vector"].astype(np.float64) for f in dfl]))
        r = Recipe(("MSD_musicnn",), norm="raw") if kind == "msd" else recipe
        r = Recipe(r.nets, r.std_weight, r.dsp_weight, r.tags_weight, r.norm, dict(r.patch_step)).fit(lib.feats)
        return unit(r.transform(lib.feats)), unit(r.transform(dfl))

    kinds = {"msd": "MSD_musicnn patch-mean (today's vector)", "dsp": "DSP vector (52-d)", "rec": "recommended similarity vector"}
    cos = {}
    for k in kinds:
        L, D = vectors(k)
        cos[k] = (np.einsum("ij,ij->i", D, L[o_idx]), L @ L.T, D @ L.T)  # copy-original, library pairs, copy-library
    # gain-invariant DSP descriptors: how far a copy's are from its original's, and any two library tracks'
    fn = [str(n) for n in lib.feats[0]["dsp.feature_names"]]

    def desc(feats: list[dict]) -> np.ndarray:
        f = np.stack([x["dsp.features"] for x in feats])
        return np.stack([f[:, fn.index(k)] if k != "brightness" else np.log(np.maximum(f[:, fn.index(k)], 1.0))
                         for k in DESCRIPTORS], axis=1)  # fmt: skip

    Ld, Dd = desc(lib.feats), desc(dfl)
    d_pair = np.abs(Dd - Ld[o_idx])  # (copies, descriptors)
    d_ll = np.abs(Ld[:, None, :] - Ld[None, :, :])
    d_dl = np.abs(Dd[:, None, :] - Ld[None, :, :])
    same = lib.album[:, None] == lib.album[None, :]
    np.fill_diagonal(same, False)
    dur_ll = _dur_ok(lib_sec[:, None], lib_sec[None, :])
    dur_pair = _dur_ok(d_sec, lib_sec[o_idx])
    other = (lib.album[None, :] == lib.album[o_idx][:, None]) & (np.arange(len(lib.ids))[None, :] != o_idx[:, None])
    dur_dl = _dur_ok(d_sec[:, None], lib_sec[None, :])
    dev = lib.split[o_idx] == "dev"

    tol97 = np.quantile(d_pair[dev], 0.97, axis=0)  # descriptor tolerances, from the dev copies

    # short tracks: a few seconds trimmed are a larger share of them, and their statistics rest on fewer frames
    short_pair = np.maximum(1.0, SHORT_S / np.minimum(d_sec, lib_sec[o_idx]))[:, None]
    short_ll = np.maximum(1.0, SHORT_S / np.minimum(lib_sec[:, None], lib_sec[None, :]))[:, :, None]
    short_dl = np.maximum(1.0, SHORT_S / np.minimum(d_sec[:, None], lib_sec[None, :]))[:, :, None]

    def apply(rule: dict[str, float]):
        found, ll, dl = dur_pair.copy(), dur_ll & same, dur_dl & other
        for k, t in rule.items():
            if k in ("desc", "desc_short"):  # t: multiple of the dev copies' 97th percentile deviation
                tol = tol97 * t
                sp, sl, sd = (short_pair, short_ll, short_dl) if k == "desc_short" else (1.0, 1.0, 1.0)
                found &= (d_pair <= tol * sp).all(1)
                ll &= (d_ll <= tol * sl).all(2)
                dl &= (d_dl <= tol * sd).all(2)
                continue
            found &= cos[k][0] >= t
            ll &= cos[k][1] >= t
            dl &= cos[k][2] >= t
        return found, ll, dl

    def choose(ks: tuple[str, ...]) -> dict[str, float]:
        """Per kind, the highest threshold (step 0.005) under which >= 97% of the dev copies pass that kind alone."""
        return {k: float(np.floor(np.quantile(cos[k][0][dev], 0.03) / 0.005) * 0.005) for k in ks}

    rules = {f"{kinds[k]} >= t": choose((k,)) for k in kinds}
    rules["MSD >= t1 and DSP >= t2"] = choose(("msd", "dsp"))
    rules["recommended >= t1 and DSP >= t2"] = choose(("rec", "dsp"))
    for m in (1.25, 2.0, 3.0):
        rules[f"DSP descriptors within {m} x tolerance (no cosine)"] = {"desc": m}
        rules[f"MSD >= 0.93 and DSP descriptors within {m} x tolerance"] = {"msd": 0.93, "desc": m}
        rules[f"DSP descriptors within {m} x tolerance, x {SHORT_S:.0f}/duration under {SHORT_S:.0f} s"] = {"desc_short": m}
        rules[f"MSD >= 0.93 and DSP descriptors within {m} x tolerance, x {SHORT_S:.0f}/duration under {SHORT_S:.0f} s"] = {"msd": 0.93, "desc_short": m}
    out.append(f"\n## Near-duplicates ({len(set(o_idx))} originals x {len(qc.DUP_VARIANTS)} alterations = {len(dups)} copies; "
               f"{int(dev.sum())} copies of dev tracks, {int((~dev).sum())} of test tracks)\n")  # fmt: skip
    out.append("Alterations: MP3 (libsndfile/LAME VBR), Ogg Opus, trim (3 s off the start, 2 s off the end), gain -6 dB, "
               "mixed (4 s off the start, -6 dB, MP3). Every rule also needs durations within 8 s + 3%. Thresholds: "
               "chosen on the dev copies. Found: share of (copy, its original) pairs flagged. False merges: share of pairs "
               f"of distinct tracks of one album in the library ({int(same.sum() // 2)} pairs), and of (copy, another track "
               "of its original's album) pairs.\n")  # fmt: skip
    out.append("| rule | cosine thresholds | found: dev copies | test copies | per alteration (all) | false merges: dev albums' pairs | test albums' pairs | copies vs other tracks |")
    out.append("|---|---|---:|---:|---|---:|---:|---:|")
    dev_pairs = same & (lib.split[:, None] == "dev")
    scored = {}
    for name, rule in rules.items():
        found, ll, dl = apply(rule)
        per = ", ".join(f"{v} {found[var == v].mean():.2f}" for v in qc.DUP_VARIANTS)
        th = ", ".join(f"{k} {t:.3f}" for k, t in rule.items() if not k.startswith("desc")) or "-"
        fdev, ftest = (ll & dev_pairs).sum() / dev_pairs.sum(), (ll & same & ~dev_pairs).sum() / (same & ~dev_pairs).sum()
        scored[name] = (found[dev].mean(), -fdev)
        out.append(f"| {name} | {th} | {found[dev].mean():.3f} | {found[~dev].mean():.3f} | {per} | {fdev:.4f} ({(ll & dev_pairs).sum() // 2}) "
                   f"| {ftest:.4f} ({(ll & same & ~dev_pairs).sum() // 2}) | {dl.sum() / other.sum():.4f} ({dl.sum()}) |")  # fmt: skip
    ok = [n for n in rules if scored[n][0] >= 0.97] or list(rules)
    pick = max(ok, key=lambda n: (scored[n][1], scored[n][0]))
    found, ll, dl = apply(rules[pick])
    out.append(f"\nChosen on dev (of the rules finding >= 97% of the dev copies, the one with the fewest false merges among "
               f"the dev albums' pairs, then the most found): **{pick}**: found {found[dev].mean():.1%} of the dev copies "
               f"and {found[~dev].mean():.1%} of the test copies; {ll.sum() // 2} of {int(same.sum() // 2)} same-album pairs "
               f"merged; {dl.sum()} of {other.sum()} (copy, other track of the album) pairs.")  # fmt: skip
    merged = [(lib.ids[i], lib.ids[j]) for i, j in zip(*np.nonzero(np.triu(ll)))]
    missed = [dups[i][0] for i in np.flatnonzero(~found)]
    out.append(f"Merged distinct tracks: {merged or 'none'}. Missed copies: {missed or 'none'}.")
    for k, name in kinds.items():
        out.append(f"\n{name}: copy-original cosine min {cos[k][0].min():.4f} (per alteration min: "
                   + ", ".join(f"{v} {cos[k][0][var == v].min():.3f}" for v in qc.DUP_VARIANTS)
                   + f"); distinct same-album pairs max {cos[k][1][same].max():.4f}")  # fmt: skip
    out.append("\nDescriptor tolerance unit (the 97th percentile of |copy - original| over the dev copies): "
               + ", ".join(f"{k} {t:.3g}" for k, t in zip(DESCRIPTORS, tol97)) + " (brightness: log ratio).")
    out.append(f"\nRecommended vector: {recipe.describe()}.")
    paths = {t.id: qc.CORPUS / t.path for t in tracks if t.id in index} | {v: path for v, _, path in dups}
    _product_duplicate_rule(lib, out, fn, dfl, d_sec, lib_sec, o_idx, var, dev, same, paths, [v for v, _, _ in dups])


def _product_duplicate_rule(lib: Library, out: list[str], fn: list[str], dfl: list[dict], d_sec: np.ndarray,
                            lib_sec: np.ndarray, o_idx: np.ndarray, var: np.ndarray, dev: np.ndarray, same: np.ndarray,
                            paths: dict[str, Path], dup_ids: list[str]) -> None:
    """The rule the sidecar runs (sidecar.data.recordings: stage 1 the descriptors, stage 2 the loudness contours,
    constants fixed in the code) on the same copies: found, and false merges among all pairs of distinct tracks."""
    from sidecar.data.recordings import contour, descriptors, same_contour, similar_descriptors

    def desc(feats: list[dict]) -> np.ndarray:
        return np.array([descriptors(dict(zip(fn, f["dsp.features"].tolist()))) for f in feats], np.float64)

    Ld, Dd = desc(lib.feats), desc(dfl)
    contours = _loudness_contours(paths)
    Lc, Dc = [contour(contours[t]) for t in lib.ids], [contour(contours[v]) for v in dup_ids]
    found1 = similar_descriptors(d_sec, Dd, lib_sec[o_idx], Ld[o_idx])
    found = found1 & np.array([same_contour(Dc[i], Lc[o]) for i, o in enumerate(o_idx)])
    ll1 = np.triu(similar_descriptors(lib_sec[:, None], Ld[:, None, :], lib_sec[None, :], Ld[None, :, :]), 1)
    dl1 = similar_descriptors(d_sec[:, None], Dd[:, None, :], lib_sec[None, :], Ld[None, :, :])
    dl1[np.arange(len(o_idx)), o_idx] = False  # a copy and its own original: found, not a false merge
    ll, dl = np.zeros_like(ll1), np.zeros_like(dl1)
    for i, j in zip(*np.nonzero(ll1)):
        ll[i, j] = same_contour(Lc[i], Lc[j])
    for i, j in zip(*np.nonzero(dl1)):
        dl[i, j] = same_contour(Dc[i], Lc[j])
    pairs, album_pairs, others = len(lib.ids) * (len(lib.ids) - 1) // 2, int(same.sum() // 2), dl.size - len(o_idx)
    out.append("\n### The product's rule (sidecar.data.recordings, the constants fixed in the code)\n")
    out.append("| stages | found: dev copies | test copies | per alteration | false merges: same-album pairs | all library pairs | (copy, other track) pairs |")
    out.append("|---|---:|---:|---|---:|---:|---:|")
    for name, f, l, d in (("1: durations + descriptors", found1, ll1, dl1), ("1 + 2: and loudness contours (the product)", found, ll, dl)):
        out.append(f"| {name} | {f[dev].mean():.3f} | {f[~dev].mean():.3f} | " + ", ".join(f"{v} {f[var == v].mean():.2f}" for v in qc.DUP_VARIANTS)
                   + f" | {int((l & same).sum())} of {album_pairs} | {int(l.sum())} of {pairs} ({l.sum() / pairs:.2e}) "
                   f"| {int(d.sum())} of {others} ({d.sum() / others:.2e}) |")  # fmt: skip
    missed = [f"{lib.ids[o]}~{v}" for o, v in zip(o_idx[~found], var[~found])]
    merged = [(lib.ids[i], lib.ids[j]) for i, j in zip(*np.nonzero(ll))]
    out.append(f"\nMissed copies: {missed or 'none'}. Merged distinct tracks: {merged or 'none'}. Stage 1 alone merged: "
               f"{[(lib.ids[i], lib.ids[j]) for i, j in zip(*np.nonzero(ll1))] or 'none'}.")  # fmt: skip


def _loudness_contours(paths: dict[str, Path]) -> dict[str, str]:
    """The DSP analysis's loudness contour of each file (plugins/embedders/dsp.py), decoded as the product does;
    cached under .cache/quality/contours/ (the feature cache predates the contour)."""
    from concurrent.futures import ProcessPoolExecutor

    root = qc.CACHE / "contours"
    root.mkdir(parents=True, exist_ok=True)
    where = {k: root / (k.replace("/", "__") + ".txt") for k in paths}
    todo = [(paths[k], where[k]) for k in paths if not where[k].exists()]
    if todo:
        print(f"loudness contours of {len(todo)} files...", file=sys.stderr)
        with ProcessPoolExecutor(2) as pool:
            list(pool.map(_contour_job, todo, chunksize=4))
    return {k: where[k].read_text() for k in paths}


def _contour_job(item: tuple[Path, Path]) -> None:
    import os

    from plugins.embedders.dsp import SR, loudness_contour
    from sidecar.pipeline.audio import decode

    os.nice(10)
    src, dest = item
    tmp = dest.with_suffix(".tmp")
    tmp.write_text(loudness_contour(decode(src).at(SR)))
    tmp.replace(dest)


# ----------------------------------------------------------------------------------------------- cost
def run_cost(lib: Library, out: list[str]) -> None:
    """CPU seconds per track of each stage, from the analysis runs themselves (two workers at nice 10 on a
    shared 2-core machine: absolute figures are inflated by contention, ratios hold), and each network's
    model time per patch on one ONNX Runtime thread (best of 5, batch 16)."""
    import time

    from plugins.embedders.musicnn.onnx_backend import INPUT, make_session, output_names

    names = [str(n) for n in lib.feats[0]["cpu_names"]]
    cpu = np.stack([f["cpu_s"] for f in lib.feats])
    out.append(f"\n## CPU cost per track ({len(lib.ids)} tracks, median {np.median(lib.seconds):.0f} s long; 24 patches)\n")
    out.append("| stage | mean CPU s per track | median |\n|---|---:|---:|")
    for j, n in enumerate(names):
        out.append(f"| {n} | {cpu[:, j].mean():.3f} | {np.median(cpu[:, j]):.3f} |")
    today = sum(cpu[:, names.index(n)].mean() for n in ("decode", "mel", "MSD_musicnn", "dsp"))
    out.append(f"\nToday's analysis (decode + mel + MSD_musicnn + DSP): {today:.2f} s CPU per track. Adding a network costs:")
    for n in NETS[1:]:
        add = cpu[:, names.index(n)].mean()
        out.append(f"- {n}: +{add:.2f} s (+{add / today:.0%})")
        if n == "MTT_vgg":
            out.append(f"- MTT_vgg on 12 of the 24 patches: +{add / 2:.2f} s (+{add / 2 / today:.0%})")
    x = np.random.default_rng(0).uniform(0, 4, (16, 187, 96)).astype(np.float32)
    out.append("\nModel time per 3-s patch, ONNX Runtime, 1 thread, batch 16, best of 5 (CPU time):\n")
    out.append("| network | ms per patch | per track (24 patches) |\n|---|---:|---:|")
    for n in NETS:
        s = make_session(qc.ONNX_DIR / f"{n}.onnx", threads=1)
        o = list(output_names(n))
        s.run(o, {INPUT: x})
        best = 1e9
        for _ in range(5):
            t = time.process_time()
            s.run(o, {INPUT: x})
            best = min(best, time.process_time() - t)
        out.append(f"| {n} | {best / 16 * 1000:.1f} | {best * 1.5:.2f} s |")


if __name__ == "__main__":
    sys.exit(main())
