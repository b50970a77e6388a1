"""Step cost against vocabulary size: the same data and model with a 20k- and an 800k-word vocabulary.

The published ``small`` model (batch 32 by default, unroll 20, 8192 negatives) trains on a synthetic
Zipf corpus of 20,000 word types; the large vocabulary appends 780,000 words the corpus never uses
(as a real 800k vocabulary's tail is rare). Sampled softmax touches ~8k rows a step either way; the
sparse update (the default) keeps the step flat in the vocabulary, the dense one (``sparse=False``,
what elmojax did before) does not. The sparse update is used where a step's ids (``2 B T + 2 S``,
17,664 here) are at most a quarter of the vocabulary, so the 20k row is the dense update (the
``update`` column says which ran). Step-only tokens/s (batches built before timing), steady state
after compilation, the configurations interleaved round by round so machine noise hits all alike;
on a shared machine the tokens per CPU-second of the process (all its threads) are steadier than
wall-clock tokens/s, and both are printed.

    python experiments/bench/vocab_scaling.py [--batch 32] [--steps 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from elmojax.data.chars import Batcher
from elmojax.data.negatives import sample_negatives
from elmojax.data.streams import BidirectionalStream
from elmojax.data.vocab import Vocabulary
from elmojax.options import load_options
from elmojax.parallel import DataParallel
from elmojax.runtime import retain_freed_memory
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig, jit_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CONFIGS, make_corpus  # noqa: E402


def setup(options, corpus: Path, vocab_file: Path, sparse: bool, steps: int):
    vocab = Vocabulary.from_file(vocab_file)
    options = options.replace(n_tokens_vocab=len(vocab))
    t = options.training
    par = DataParallel(t.batch_size, jax.devices()[:1])
    config = StepConfig(options, len(vocab), mesh=par.mesh, sparse=sparse)
    stream = BidirectionalStream(
        str(corpus / "train.txt"), vocab, par.local_rows, t.unroll_steps, Batcher(50, vocab), seed=0
    )
    batches = [
        par.batch(next(stream), options, sample_negatives(0, i, len(vocab), t.n_negative_samples_batch))
        for i in range(steps)
    ]
    state = par.put_state(init_state(config, par.global_rows, jax.random.PRNGKey(0)))
    for b in batches:  # compile every table shape
        state, _ = jit_train_step(state, b, config)
    jax.block_until_ready(state)
    n_ids = batches[0].targets.size + batches[0].sampled.size
    update = "sparse" if config.sparse_softmax and n_ids <= config.sparse_fraction * len(vocab) else "dense"
    tokens = par.global_rows * t.unroll_steps
    return {"config": config, "state": state, "batches": batches, "tokens": tokens, "update": update}


def time_round(run: dict) -> tuple[float, float]:
    """One pass over the run's batches: (tokens per second, tokens per CPU-second of the process)."""
    start, cpu = time.perf_counter(), time.process_time()
    state = run["state"]
    for b in run["batches"]:
        state, _ = jit_train_step(state, b, run["config"])
    jax.block_until_ready(state)
    run["state"] = state
    tokens = len(run["batches"]) * run["tokens"]
    return tokens / (time.perf_counter() - start), tokens / (time.process_time() - cpu)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="small")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--large", type=int, default=800_000, help="words in the large vocabulary")
    p.add_argument("--dense", action="store_true", help="also time the dense update")
    args = p.parse_args()
    retain_freed_memory()
    options = load_options(CONFIGS / f"{args.config}.json").replace_training(batch_size=args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        make_corpus(corpus, 20000, 20000)
        small_vocab = corpus / "vocab.txt"
        large_vocab = corpus / "vocab_large.txt"
        words = small_vocab.read_text().splitlines()
        words += [f"zz{i}" for i in range(args.large - len(words))]
        large_vocab.write_text("\n".join(words) + "\n")
        large = f"{args.large // 1000}k"
        cases = {"20k": (small_vocab, True), large: (large_vocab, True)}
        if args.dense:
            cases.update(
                {"20k, sparse=False": (small_vocab, False), f"{large}, sparse=False": (large_vocab, False)}
            )
        runs = {}
        for name, (vocab_file, sparse) in cases.items():
            print(f"compiling {name} ...", file=sys.stderr, flush=True)
            runs[name] = setup(options, corpus, vocab_file, sparse, args.steps)
        rates: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                rates[name].append(time_round(run))
    wall = {name: statistics.median(r[0] for r in rs) for name, rs in rates.items()}
    cpu = {name: statistics.median(r[1] for r in rs) for name, rs in rates.items()}
    print(f"\n{args.config}, batch {args.batch}, step only (median of {args.rounds} rounds)")
    print("| vocabulary | update | tokens/s | vs 20k | tokens/CPU-s | vs 20k |\n|---|---|---|---|---|---|")
    for name, run in runs.items():
        print(
            f"| {name} | {run['update']} | {wall[name]:,.0f} | {wall[name] / wall['20k']:.3f} | "
            f"{cpu[name]:,.0f} | {cpu[name] / cpu['20k']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
