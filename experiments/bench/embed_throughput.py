"""Embedding throughput of elmojax's Embedder beside AllenNLP's ``_ElmoBiLm`` in the same run.

Both embed the same synthetic sentences (5-29 tokens of random lowercase words) with the same
random weights in the published ``small`` layout (lstm 1024/128, 2048 filters, 1 highway).
AllenNLP is an optional baseline installed separately (AllenNLP 2.10 in its own virtualenv);
point ``--allennlp-python`` (or $ALLENNLP_PYTHON) at its interpreter, or it is skipped.

    python experiments/bench/embed_throughput.py [--config small] [--batch 64] [--sentences 512]

Prints tokens/s (tokens exclude BOS/EOS), steady state after a warm-up pass, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from elmojax.embed.embedder import Embedder
from elmojax.model.weights import load_weights, standard_datasets
from elmojax.options import load_options

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

ALLENNLP_SNIPPET = r"""
import importlib.machinery, json, sys, time, types
for name in ("torchvision", "torchvision.ops"):  # allennlp imports torchvision it never uses here
    m = types.ModuleType(name); m.__spec__ = importlib.machinery.ModuleSpec(name, None); sys.modules[name] = m
import torch
from allennlp.modules.elmo import _ElmoBiLm, batch_to_ids
options, weights, sentences, batch, threads = sys.argv[1:6]
torch.set_num_threads(int(threads)); torch.set_grad_enabled(False)
sents = json.load(open(sentences)); batch = int(batch)
bilm = _ElmoBiLm(options, weights, requires_grad=False)
batches = [sents[i:i + batch] for i in range(0, len(sents), batch)]
for b in batches:  # warm-up pass, as for elmojax
    bilm._elmo_lstm.reset_states(); bilm(batch_to_ids(b))
t = time.perf_counter(); n = 0
for b in batches:
    bilm._elmo_lstm.reset_states(); bilm(batch_to_ids(b)); n += sum(map(len, b))
print(json.dumps({"tokens_per_s": n / (time.perf_counter() - t)}))
"""


def synthetic_sentences(n: int, seed: int = 0) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    letters = list("abcdefghijklmnopqrstuvwxyz")
    words = ["".join(rng.choice(letters, size=rng.integers(2, 11))) for _ in range(5000)]
    return [[words[i] for i in rng.integers(0, 5000, size=rng.integers(5, 30))] for _ in range(n)]


def write_random_weights(options, path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for name, _, shape in standard_datasets(options):
            f.create_dataset(name, data=rng.standard_normal(shape, dtype=np.float32) * 0.05)


def time_elmojax(embedder: Embedder, sentences, batch: int, sorted_stream: bool) -> float:
    def run():
        if sorted_stream:
            return sum(e.shape[1] for e in embedder.embed_sentences(sentences, batch))
        n = 0
        for i in range(0, len(sentences), batch):
            n += sum(e.shape[1] for e in embedder.embed_batch(sentences[i : i + batch]))
        return n

    run()  # warm-up: compiles every bucketed shape this stream needs
    t = time.perf_counter()
    n = run()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small", help="published size in experiments/configs (default small)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sentences", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for AllenNLP")
    ap.add_argument("--allennlp-python", default=os.environ.get("ALLENNLP_PYTHON"))
    args = ap.parse_args()

    options = load_options(CONFIGS / f"{args.config}.json")
    sentences = synthetic_sentences(args.sentences)
    results: dict = {
        "config": args.config,
        "batch": args.batch,
        "sentences": args.sentences,
        "tokens": sum(map(len, sentences)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "weights.hdf5"
        write_random_weights(options, weights)
        options.save(tmp / "options.json", for_export=True)
        (tmp / "sentences.json").write_text(json.dumps(sentences))
        params = load_weights(weights, options)
        embedder = Embedder(options, params, batch_size=args.batch)
        results["elmojax_in_order"] = time_elmojax(embedder, sentences, args.batch, sorted_stream=False)
        results["elmojax_sorted_stream"] = time_elmojax(embedder, sentences, args.batch, sorted_stream=True)
        if args.allennlp_python and Path(args.allennlp_python).exists():
            r = subprocess.run(
                [
                    args.allennlp_python,
                    "-c",
                    ALLENNLP_SNIPPET,
                    str(tmp / "options.json"),
                    str(weights),
                    str(tmp / "sentences.json"),
                    str(args.batch),
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                results["allennlp"] = json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"]
            else:
                results["allennlp_error"] = r.stderr.strip().splitlines()[-1:]
        else:
            results["allennlp"] = None
            print("AllenNLP baseline skipped: pass --allennlp-python or set ALLENNLP_PYTHON", file=sys.stderr)
    if results.get("allennlp"):
        for k in ("elmojax_in_order", "elmojax_sorted_stream"):
            results[f"ratio_{k}_vs_allennlp"] = results[k] / results["allennlp"]
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
