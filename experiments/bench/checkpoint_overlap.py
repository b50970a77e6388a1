"""Step time while an asynchronous checkpoint is written, against steps without one and a blocking save.

A model whose state takes a noticeable time to write: the ``quickstart`` model with a large
vocabulary (the ``[V, P]`` softmax and its Adagrad accumulator dominate the checkpoint). Each round
runs ``--steps`` steps, each timed to completion, and saves at its second step through the
trainer's :class:`~elmojax.train.checkpoints.Checkpointer`: ``async`` (what ``train`` does: the save
returns once the arrays are on the host, the files are written in the background), ``sync`` (the
save and its wait inside the step), or ``none``. The three are interleaved round by round, so
machine noise hits all alike. Reported: the median step time of steps without any save, of steps
that ran while a background write was in progress, the time the ``async`` save call held the loop,
and the blocking save's time.

    JAX_PLATFORMS=cpu python experiments/bench/checkpoint_overlap.py [--vocab 400000] [--batch 8] \
        [--steps 12] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax

from elmojax.options import load_options
from elmojax.runtime import retain_freed_memory
from elmojax.train.checkpoints import Checkpointer
from elmojax.train.step import jit_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import CONFIGS, make_corpus  # noqa: E402
from vocab_scaling import setup  # noqa: E402


def state_bytes(state) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))


def run_round(run: dict, ckpt: Checkpointer | None, mode: str, first_step: int, out: dict) -> int:
    """``len(batches)`` timed steps; a save at the second one (``mode``). Returns the next step."""
    state, step = run["state"], first_step
    for i, batch in enumerate(run["batches"]):
        start = time.perf_counter()
        writing = ckpt is not None and ckpt.pending is not None and ckpt.manager.is_saving_in_progress()
        state, _ = jit_train_step(state, batch, run["config"])
        jax.block_until_ready(state)
        step_s = time.perf_counter() - start
        if i == 1 and mode != "none":
            t = time.perf_counter()
            ckpt.save(step, jax.block_until_ready(state), {})
            if mode == "sync":
                ckpt.wait()
            out[f"{mode} save call"].append(time.perf_counter() - t)
        elif mode == "async" and writing:
            out["step during a background write"].append(step_s)
        elif mode == "none":
            out["step without a save"].append(step_s)
        step += 1
    if ckpt is not None:
        ckpt.wait()
    run["state"] = state
    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="quickstart")
    p.add_argument("--vocab", type=int, default=400_000, help="words in the vocabulary")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    retain_freed_memory()
    options = load_options(CONFIGS / f"{args.config}.json").replace_training(batch_size=args.batch)
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "step without a save",
            "step during a background write",
            "async save call",
            "sync save call",
        )
    }
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        make_corpus(corpus, 20000, 20000)
        words = (corpus / "vocab.txt").read_text().splitlines()
        words += [f"zz{i}" for i in range(args.vocab - len(words))]
        (corpus / "vocab_large.txt").write_text("\n".join(words) + "\n")
        print("compiling ...", file=sys.stderr, flush=True)
        run = setup(options, corpus, corpus / "vocab_large.txt", True, args.steps)
        size = state_bytes(run["state"])
        savers = {
            "async": Checkpointer(corpus / "async", every=10**9, keep=1),
            "sync": Checkpointer(corpus / "sync", every=10**9, keep=1),
        }
        step = 1
        for _ in range(args.rounds):
            for mode in ("none", "async", "sync"):
                step = run_round(run, savers.get(mode), mode, step, out)
        for saver in savers.values():
            saver.close()
    print(
        f"\n{args.config}, {args.vocab:,} words, batch {args.batch}: a checkpoint of {size / 2**20:,.0f} MiB"
    )
    print("| | median s | n |\n|---|---|---|")
    for name, times in out.items():
        if times:
            print(f"| {name} | {statistics.median(times):.3f} | {len(times)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
