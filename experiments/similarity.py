"""The bilm-tf tutorial's similarity demo: one word in different contexts, layer by layer.

Embeds "dress" in two fashion sentences and one technology sentence with an exported ELMo
(weights HDF5 + options.json + vocab.txt), prints per-layer Euclidean and cosine distances between
its contextual vectors, and checks whether the same word in similar contexts is closer than in
different ones (a nearest-neighbour check). Layer 0 is context-free, so its distances are 0.

    python experiments/similarity.py --export-dir runs/quickstart/export [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from elmojax.embed.embedder import Embedder

SENTENCES = {
    "fashion_a": "she wore a long red dress to the party last night".split(),
    "fashion_b": "the shop sells a summer dress made of light cotton".split(),
    "technology": "the new software update lets users dress up the interface with custom themes".split(),
}
WORD = "dress"


def distances(export_dir: Path) -> dict:
    """Per-layer Euclidean and cosine distances between the word's vectors in each pair of sentences."""
    embedder = Embedder.from_files(
        export_dir / "options.json", export_dir / "weights.hdf5", export_dir / "vocab.txt"
    )
    names = list(SENTENCES)
    layers = embedder.embed_batch([SENTENCES[n] for n in names])
    vectors = {n: emb[:, SENTENCES[n].index(WORD)] for n, emb in zip(names, layers, strict=True)}  # [L+1, 2P]
    out: dict = {"word": WORD, "pairs": {}}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            va, vb = vectors[a], vectors[b]
            euclid = np.linalg.norm(va - vb, axis=-1)
            cos = 1 - (va * vb).sum(-1) / np.maximum(
                np.linalg.norm(va, axis=-1) * np.linalg.norm(vb, axis=-1), 1e-12
            )
            cos = np.clip(cos, 0.0, 2.0)  # rounding gives -0.0 for identical layer-0 vectors
            out["pairs"][f"{a}~{b}"] = {"euclidean": euclid.tolist(), "cosine": cos.tolist()}
    top = {k: v["cosine"][-1] for k, v in out["pairs"].items()}
    same = top["fashion_a~fashion_b"]
    different = min(top["fashion_a~technology"], top["fashion_b~technology"])
    out["nearest_neighbour_ok"] = bool(same < different)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--export-dir", type=Path, required=True, help="directory with weights.hdf5, options.json"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the distances here")
    args = ap.parse_args()
    result = distances(args.export_dir)
    for pair, d in result["pairs"].items():
        print(f"'{WORD}' {pair}")
        for k, (e, c) in enumerate(zip(d["euclidean"], d["cosine"], strict=True)):
            print(f"  layer {k}: euclidean {e:8.4f}   cosine distance {c:.4f}")
    verdict = "closer" if result["nearest_neighbour_ok"] else "NOT closer"
    print(
        f"same word, similar contexts (fashion~fashion) is {verdict} than across contexts (top layer, cosine)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
