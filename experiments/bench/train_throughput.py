"""Training throughput of elmojax beside the original bilm-tf code, in one run on the same machine.

Both train on the same synthetic Zipf-distributed corpus (20,000 word types, sentences of 5-29
tokens) with the same options: the published ``small`` model (batch 32 per device, unroll 20,
8192 negatives) and a tiny one. Tokens/s are counted as bilm-tf counts ``n_train_tokens``
(batch x unroll per step, both directions once), steady state after compilation/graph building.
bilm-tf is optional: pass ``--bilmtf-dir`` (its patched checkout) and ``--tf-python`` (the
TensorFlow venv's interpreter; bilm-tf runs on TensorFlow 2 through ``tensorflow.compat.v1``), or it
is skipped.

    python experiments/bench/train_throughput.py [--steps 20] [--bilmtf-dir D --tf-python P]

``--end-to-end`` also times a real ``elmojax train`` run (``train()``, host pipeline included) on
the same corpus and reports its tokens/s (from metrics.jsonl, intervals without compilation)
beside the step-only figure; the ``minuscule`` config is a model whose step is cheap enough that
the host pipeline decides the end-to-end rate. Simulated devices come from the environment:

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python experiments/bench/train_throughput.py \
        --configs minuscule --batch-size 128 --end-to-end

Also reports the achieved FLOP/s of the jitted step (XLA's cost analysis) against a float32 GEMM
(2048 x 2048) measured in the same run.
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

import jax
import jax.numpy as jnp
import numpy as np

from elmojax.data.chars import Batcher
from elmojax.data.negatives import sample_negatives
from elmojax.data.streams import BidirectionalStream
from elmojax.data.vocab import Vocabulary
from elmojax.options import load_options, options_from_dict
from elmojax.parallel import DataParallel
from elmojax.runtime import retain_freed_memory
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig, jit_train_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = {
    "lstm": {
        "dim": 256,
        "projection_dim": 64,
        "n_layers": 2,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": True,
    },
    "char_cnn": {
        "activation": "relu",
        "embedding": {"dim": 8},
        "filters": [[1, 16], [2, 16], [3, 32], [4, 64]],
        "n_highway": 1,
        "n_characters": 261,
        "max_characters_per_token": 50,
    },
}

MINUSCULE = {  # a step so cheap that the host pipeline decides the end-to-end rate
    "lstm": {
        "dim": 16,
        "projection_dim": 8,
        "n_layers": 1,
        "cell_clip": 3,
        "proj_clip": 3,
        "use_skip_connections": False,
    },
    "char_cnn": {
        "activation": "relu",
        "embedding": {"dim": 4},
        "filters": [[1, 4], [2, 4]],
        "n_highway": 0,
        "n_characters": 261,
        "max_characters_per_token": 50,
    },
    "n_negative_samples_batch": 16,
}

BILMTF_CHILD = r"""
import json, sys, time, tempfile
sys.path.insert(0, sys.argv[1])
from bilm.training import train, load_vocab
from bilm.data import BidirectionalLMDataset
opts = json.load(open(sys.argv[2])); d = sys.argv[3]; n_batches = int(sys.argv[4])
vocab = load_vocab(d + "/vocab.txt", 50)
opts["n_tokens_vocab"] = vocab.size; opts["n_epochs"] = 1
opts["n_train_tokens"] = n_batches * opts["batch_size"] * opts["unroll_steps"]
data = BidirectionalLMDataset(d + "/train.txt", vocab, test=False, shuffle_on_load=True)
out = tempfile.mkdtemp()
t = time.time(); train(opts, data, 1, out, out); print("WALL", time.time() - t)
"""


def make_corpus(directory: Path, vocab_size: int = 20000, n_sentences: int = 20000, seed: int = 0) -> None:
    """Zipf-distributed random words; vocabulary sorted by count with the specials first."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, size=rng.integers(2, 11))) for _ in range(vocab_size)]
    p = 1.0 / np.arange(1, vocab_size + 1)
    p /= p.sum()
    counts: dict[str, int] = {}
    with open(directory / "train.txt", "w") as f:
        for _ in range(n_sentences):
            toks = [words[i] for i in rng.choice(vocab_size, size=rng.integers(5, 30), p=p)]
            for t in toks:
                counts[t] = counts.get(t, 0) + 1
            f.write(" ".join(toks) + "\n")
    vocab = ["<S>", "</S>", "<UNK>"] + sorted(counts, key=lambda w: (-counts[w], w))
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")


def gemm_rate() -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
        f(a).block_until_ready()
    return 10 * 2 * 2048**3 / (time.perf_counter() - t)


def time_elmojax(options, corpus: Path, steps: int) -> dict:
    vocab = Vocabulary.from_file(corpus / "vocab.txt")
    options = options.replace(n_tokens_vocab=len(vocab))
    t = options.training
    par = DataParallel(t.batch_size)
    config = StepConfig(options, len(vocab), mesh=par.mesh)
    stream = BidirectionalStream(
        str(corpus / "train.txt"), vocab, par.local_rows, t.unroll_steps, Batcher(50, vocab), seed=0
    )

    def make_batch(i: int) -> dict:  # what `elmojax train` does on the host for step i
        negatives = sample_negatives(0, i, len(vocab), t.n_negative_samples_batch)
        return par.batch(next(stream), options, negatives)

    state = par.put_state(init_state(config, par.global_rows, jax.random.PRNGKey(0)))
    batches = [make_batch(i) for i in range(steps)]
    shapes = {b.table.shape for b in batches}
    compiled = set()
    t0 = time.perf_counter()
    for b in batches:  # compile every bucketed shape first, so only steady-state steps are timed
        if b.table.shape not in compiled:
            compiled.add(b.table.shape)
            state, m = jit_train_step(state, b, config)
    jax.block_until_ready(state)
    print(f"  compiled {len(compiled)} step shapes in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    flops = jit_train_step.lower(state, batches[0], config).compile().cost_analysis()
    flops = (flops[0] if isinstance(flops, list) else flops).get("flops", float("nan"))
    start = time.perf_counter()
    for b in batches:
        state, m = jit_train_step(state, b, config)
    jax.block_until_ready(state)
    dt = time.perf_counter() - start
    tokens = steps * par.global_rows * t.unroll_steps
    # the host side (streams + dedup) runs before timing; time it separately to show it keeps up
    h0 = time.perf_counter()
    for i in range(steps):
        make_batch(i)
    host = (time.perf_counter() - h0) / steps
    return {
        "tokens_per_s": tokens / dt,
        "step_s": dt / steps,
        "host_batch_s": host,
        "flops_per_step": flops,
        "achieved_flops": flops * steps / dt,
        "table_shapes": len(shapes),
        "final_loss": float(m["loss"]),
    }


def time_train_end_to_end(options, corpus: Path, steps: int, log_every: int = 5) -> dict:
    """Tokens/s of a real ``train()`` run, host pipeline included, from its metrics.jsonl.

    Only log intervals in which nothing was compiled count (the first step of each table shape
    compiles); steps and checkpoints are as `elmojax train` runs them, minus the progress bar.
    """
    from elmojax.train.loop import TrainConfig, train

    with tempfile.TemporaryDirectory() as run:
        config = TrainConfig(
            save_dir=str(Path(run) / "run"),
            train_prefix=str(corpus / "train.txt"),
            vocab_file=str(corpus / "vocab.txt"),
            max_steps=steps + 2 * log_every,
            log_every=log_every,
            checkpoint_every=10**9,
            progress=False,
        )
        t0 = time.perf_counter()
        train(options.replace(n_tokens_vocab=None), config)
        wall = time.perf_counter() - t0
        lines = [json.loads(x) for x in (Path(run) / "run" / "metrics.jsonl").read_text().splitlines()]
    tokens = seconds = 0.0
    for prev, cur in zip(lines, lines[1:], strict=False):
        if cur["compile_s"] == prev["compile_s"]:
            n = cur["tokens"] - prev["tokens"]
            tokens, seconds = tokens + n, seconds + n / cur["tokens_per_s"]
    return {"end_to_end_tokens_per_s": tokens / seconds if seconds else float("nan"), "train_wall_s": wall}


def time_bilmtf(args, options_dict: dict, corpus: Path, n1: int, n2: int) -> float | None:
    if not (args.bilmtf_dir and args.tf_python and Path(args.tf_python).exists()):
        return None
    opts = json.loads(json.dumps(options_dict))
    if "char_cnn" in opts:
        opts["char_cnn"]["n_characters"] = 261
    of = corpus / f"bilmtf_options_{abs(hash(json.dumps(opts))) % 10**8}.json"
    of.write_text(json.dumps(opts))
    walls = []
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for n in (n1, n2):
        r = subprocess.run(
            [args.tf_python, "-c", BILMTF_CHILD, args.bilmtf_dir, str(of), str(corpus), str(n)],
            capture_output=True,
            text=True,
            env=env,
        )
        wall = [line for line in r.stdout.splitlines() if line.startswith("WALL")]
        if not wall:
            print(r.stdout[-1000:], r.stderr[-2000:], file=sys.stderr)
            return None
        walls.append(float(wall[0].split()[1]))
    return (n2 - n1) * opts["batch_size"] * opts["unroll_steps"] / (walls[1] - walls[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20, help="timed elmojax steps per config")
    ap.add_argument("--bilmtf-dir", default=os.environ.get("BILMTF_DIR"))
    ap.add_argument("--tf-python", default=os.environ.get("BILMTF_PYTHON"))
    ap.add_argument(
        "--bilmtf-batches",
        default="small=5:45,tiny=50:450",
        help="per config, bilm-tf runs N1 and N2 batches; their wall-time difference is timed",
    )
    ap.add_argument("--configs", default="small,tiny", help="small, tiny, minuscule or a config file name")
    ap.add_argument("--end-to-end", action="store_true", help="also time a real train() run per config")
    ap.add_argument("--batch-size", type=int, default=32, help="per device (bilm-tf's small.json uses 128)")
    args = ap.parse_args()
    retain_freed_memory()  # as `elmojax train` does, before JAX's first computation

    train_keys = {
        "batch_size": args.batch_size,
        "unroll_steps": 20,
        "n_negative_samples_batch": 8192,
        "dropout": 0.1,
        "all_clip_norm_val": 10.0,
        "bidirectional": True,
        "n_epochs": 1,
    }
    batches = {
        k: tuple(int(n) for n in v.split(":"))
        for k, v in (item.split("=") for item in args.bilmtf_batches.split(","))
    }
    results: dict = {"devices": [str(d) for d in jax.devices()], "gemm_flops": gemm_rate()}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        make_corpus(corpus)
        for name in args.configs.split(","):
            if name in ("tiny", "minuscule"):
                d = {**train_keys, **TINY} if name == "tiny" else {**train_keys, **MINUSCULE}
            else:
                d = {**load_options(CONFIGS / f"{name}.json").to_dict(), **train_keys}
            options = options_from_dict(d, source=name)
            r = time_elmojax(options, corpus, args.steps)
            r["step_only_tokens_per_s"] = r.pop("tokens_per_s")
            if args.end_to_end:
                r.update(time_train_end_to_end(options, corpus, args.steps))
            r["flop_fraction_of_gemm"] = r["achieved_flops"] / results["gemm_flops"]
            n1, n2 = batches.get(name, (5, 45))
            bilmtf = time_bilmtf(args, options.to_dict(), corpus, n1, n2)
            if bilmtf is not None:
                r["bilmtf_tokens_per_s"] = bilmtf
                r["ratio_vs_bilmtf"] = r["step_only_tokens_per_s"] / bilmtf
            results[name] = r
            print(name, json.dumps(r), file=sys.stderr)
    print(json.dumps(results, indent=2, default=float))


if __name__ == "__main__":
    main()
