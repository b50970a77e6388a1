"""Host-pipeline throughput of `elmojax train` on its own: the window streams and the step arrays.

Times what the training loop does on the host for each step of ``--devices`` local devices of
``batch_size`` rows each (the config's, unless ``--batch-size``): ``next(stream)`` (both
directions' windows) plus the per-device distinct-token tables and the assembled step arrays
(``host``), and optionally the same plus placing them on ``--devices`` simulated CPU devices
(``transfer``, DataParallel.batch). Tokens/s count as the trainer counts them (rows x unroll per
step). The corpus is the synthetic Zipf one of train_throughput.py, with the vocabulary cut to
``--vocab-size`` words so that rare words are out of vocabulary as in real corpora.

    python experiments/bench/host_pipeline.py --config original --devices 8 [--transfer]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="original", help="a config of experiments/configs")
    ap.add_argument("--devices", type=int, default=8, help="simulated local devices")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per device (default: the config's)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--vocab-size", type=int, default=15000, help="words kept in the vocabulary")
    ap.add_argument("--transfer", action="store_true", help="also time placing the arrays on the devices")
    args = ap.parse_args()
    # before JAX starts: the simulated devices
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={args.devices}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import jax
    from train_throughput import CONFIGS, make_corpus

    from elmojax.data.batches import step_batch
    from elmojax.data.chars import Batcher
    from elmojax.data.streams import BidirectionalStream
    from elmojax.data.vocab import Vocabulary
    from elmojax.options import load_options
    from elmojax.parallel import DataParallel

    options = load_options(CONFIGS / f"{args.config}.json")
    rows = args.batch_size or options.training.batch_size
    unroll = options.training.unroll_steps
    width = options.char_cnn.max_width if options.char_cnn else None
    results: dict = {
        "config": args.config,
        "devices": args.devices,
        "rows_per_device": rows,
        "unroll": unroll,
    }
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp)
        make_corpus(corpus)
        words = (corpus / "vocab.txt").read_text().split()[: args.vocab_size]
        vocab = Vocabulary(words)
        batcher = Batcher(options.char_cnn.max_characters_per_token, vocab) if options.char_cnn else None

        def stream() -> BidirectionalStream:
            return BidirectionalStream(
                str(corpus / "train.txt"), vocab, rows * args.devices, unroll, batcher, seed=0
            )

        def timed(step) -> float:
            step()  # first step: shard loading, caches
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            return (time.perf_counter() - t) / args.steps

        s = stream()
        results["stream_s"] = timed(lambda: next(s))
        s = stream()

        def host(windows):
            return step_batch(
                windows, n_local_devices=args.devices, rows_per_device=rows, max_filter_width=width
            )

        results["host_s"] = timed(lambda: host(next(s)))
        tokens = rows * args.devices * unroll
        results["host_tokens_per_s"] = tokens / results["host_s"]
        if args.transfer:
            par = DataParallel(rows, jax.devices()[: args.devices])
            s = stream()
            results["host_and_transfer_s"] = timed(lambda: jax.block_until_ready(par.place(host(next(s)))))
            results["host_and_transfer_tokens_per_s"] = tokens / results["host_and_transfer_s"]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
