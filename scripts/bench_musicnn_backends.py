"""Time MusiCNN per 3-s patch on the torch and ONNX Runtime backends; print a Markdown table.

    .venv/bin/python scripts/bench_musicnn_backends.py [--audio FILE] [--threads 1 2] [--repeats 10] [--int8]

Model time only (log-mel patches in, all four outputs out), batches of 16 patches (`embed` now runs 4 at a time),
cut from a real excerpt (its ~10 patches repeated to fill the batch). The configurations are timed in turns,
`--repeats` times each, and the best time is kept, so that other load on the machine counts as little as
possible. The weights and the ONNX file are prepared as `sidecar setup` does (in `--models-dir`).

`--int8` also quantises the ONNX model dynamically (onnxruntime.quantization.quantize_dynamic, int8 and
uint8 weights) and prints its time and the cosine similarity of its track vectors (mean dense
pre-activation) to float32 over the demo excerpts: the evidence behind not offering an int8 backend.
"""
from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCH = 16


def default_excerpts() -> list[Path]:
    """The 30-s demo excerpts the test suite makes (fixture `excerpts`) under .cache/excerpts."""
    from sidecar.demo import DEMO_PACKAGES

    folder = REPO / ".cache" / "excerpts"
    return sorted(p for p in folder.glob("*.ogg") if p.name.startswith(tuple(f"{pkg}-" for pkg in DEMO_PACKAGES)))


def patches_of(path: Path) -> np.ndarray:
    from plugins.embedders.musicnn.preprocess import audio_to_patches
    from sidecar.pipeline.audio import decode

    return audio_to_patches(decode(path).at(16000))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models-dir", type=Path, default=REPO / ".cache" / "models")
    ap.add_argument("--audio", type=Path, help="a real music file (default: the first demo excerpt)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--int8", action="store_true", help="also measure dynamic int8 quantisation (not a backend)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort
    import torch

    from plugins.embedders.musicnn import MusicnnEmbedder
    from plugins.embedders.musicnn.onnx_backend import OUTPUTS, make_session, onnx_path

    excerpts = default_excerpts()
    audio = args.audio or (excerpts[0] if excerpts else None)
    if audio is None:
        sys.exit("no audio: pass --audio FILE, or run the test suite once to make .cache/excerpts")
    prep = MusicnnEmbedder()
    prep.configure({"backend": "onnx"})
    prep.prepare(args.models_dir)  # weights, then the ONNX export if missing or stale
    torch_emb = MusicnnEmbedder()
    torch_emb.configure({"backend": "torch"})
    torch_emb.load(args.models_dir)
    model = torch_emb._models["MSD_musicnn"]

    p = patches_of(audio)
    x = np.ascontiguousarray(np.resize(p, (BATCH, *p.shape[1:])), dtype=np.float32)
    xt = torch.from_numpy(x)

    def torch_run():
        with torch.inference_mode():
            model(xt)

    def ort_run(session):
        return lambda: session.run(list(OUTPUTS), {"patches": x})

    variants: dict[str, Path] = {"onnx": onnx_path(args.models_dir)}
    tmp = tempfile.TemporaryDirectory(prefix="musicnn-int8-")
    if args.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logging.getLogger().setLevel(logging.ERROR)  # the quantiser's advice to pre-process
        for label, wt in (("onnx int8 (dynamic, s8 weights)", QuantType.QInt8),
                          ("onnx int8 (dynamic, u8 weights)", QuantType.QUInt8)):  # fmt: skip
            dest = Path(tmp.name) / f"{wt.name}.onnx"
            quantize_dynamic(variants["onnx"], dest, weight_type=wt)
            variants[label] = dest

    best: dict[tuple[str, int], float] = {}
    for n in args.threads:
        torch.set_num_threads(n)  # outside the timed calls: changing it resizes torch's pool
        runs = {("torch", n): torch_run}
        for label, path in variants.items():
            runs[(label, n)] = ort_run(make_session(path, threads=n))
        for fn in runs.values():
            fn()  # warm-up
        best.update({k: float("inf") for k in runs})
        for _ in range(args.repeats):  # in turns, so that a burst of load hits every configuration alike
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                best[k] = min(best[k], time.perf_counter() - t)
    torch.set_num_threads(1)

    labels = ["torch", *variants]
    print(f"MusiCNN model time per 3-s patch, batch {BATCH}, best of {args.repeats} "
          f"({audio.name}; {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__})\n")  # fmt: skip
    print("| backend | " + " | ".join(f"{n} thread{'s' * (n > 1)}" for n in args.threads) + " |")
    print("|---|" + "---:|" * len(args.threads))
    for label in labels:
        cells = []
        for n in args.threads:
            ms = best[(label, n)] / BATCH * 1000
            speed = best[("torch", n)] / best[(label, n)]
            cells.append(f"{ms:.1f} ms" + ("" if label == "torch" else f" ({speed:.2f}x)"))
        print(f"| {label} | " + " | ".join(cells) + " |")

    if args.int8:
        float_session = make_session(variants["onnx"])
        sessions = {k: make_session(v) for k, v in variants.items() if k != "onnx"}
        files = excerpts or [audio]

        def track_vector(session, patches):
            out = [session.run(["dense_preact"], {"patches": patches[i : i + BATCH]})[0]
                   for i in range(0, len(patches), BATCH)]  # fmt: skip
            return np.concatenate(out).mean(axis=0)

        cos: dict[str, list[float]] = {k: [] for k in sessions}
        for f in files:
            pf = patches_of(f)
            ref = track_vector(float_session, pf)
            for k, s in sessions.items():
                v = track_vector(s, pf)
                cos[k].append(float(v @ ref / (np.linalg.norm(v) * np.linalg.norm(ref))))
        print(f"\nTrack-vector cosine similarity of int8 to float32 over {len(files)} excerpts\n")
        print("| variant | min | mean | max |")
        print("|---|---:|---:|---:|")
        for k, c in cos.items():
            print(f"| {k} | {min(c):.4f} | {np.mean(c):.4f} | {max(c):.4f} |")
    tmp.cleanup()


if __name__ == "__main__":
    main()
