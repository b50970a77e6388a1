"""``elmojax train``: bilm-tf's ``train_elmo.py`` flags; the same command resumes."""

from __future__ import annotations

import argparse
import json

from elmojax.cli import flags
from elmojax.errors import ElmoError
from elmojax.model.numerics import Numerics


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a biLM (resumes when SAVE_DIR already holds a run)",
        description="Train an ELMo biLM as bilm-tf's train_elmo.py does. Running the same command again "
        "resumes from the latest checkpoint in --save-dir.",
    )
    flags.flag(p, "--options-file", required=True, help="options.json with the model and training keys")
    flags.flag(
        p, "--train-prefix", required=True, help="glob of training shards, e.g. 'data/train/shard_*.txt'"
    )
    flags.flag(
        p, "--vocab-file", default=None, help="vocabulary (<S>, </S>, <UNK> first); required for a new run"
    )
    flags.flag(
        p, "--save-dir", required=True, help="run directory: options, vocabulary, checkpoints, metrics"
    )
    flags.flag(
        p,
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps (default: n_epochs * n_train_tokens / tokens per step)",
    )
    flags.flag(p, "--init-from", default=None, help="start from a weights HDF5 (continued pre-training)")
    flags.flag(p, "--seed", type=int, default=0, help="seed for initialisation, shuffling, dropout, sampling")
    flags.flag(
        p, "--batch-size", type=int, default=None, help="override batch_size (per device) of the options"
    )
    flags.flag(p, "--n-epochs", type=int, default=None, help="override n_epochs of the options")
    flags.flag(
        p, "--checkpoint-every", type=int, default=1000, help="steps between checkpoints (default 1000)"
    )
    flags.flag(p, "--keep-checkpoints", type=int, default=3, help="checkpoints kept (default 3)")
    flags.flag(p, "--log-every", type=int, default=10, help="steps between metric lines (default 10)")
    flags.flag(
        p,
        "--heldout-prefix",
        default=None,
        help="glob of held-out files: their perplexity (as `elmojax evaluate` computes it) goes to the "
        "metrics every --eval-every steps",
    )
    flags.flag(
        p,
        "--eval-every",
        type=int,
        default=None,
        help="steps between held-out evaluations (default: --checkpoint-every)",
    )
    flags.flag(
        p,
        "--heldout-tokens",
        type=int,
        default=None,
        help="score only the first sentences, up to this many tokens",
    )
    p.add_argument(
        "--keep-best",
        action="store_true",
        help="keep the checkpoint of the lowest held-out perplexity in SAVE_DIR/best, out of the rotation",
    )
    flags.flag(
        p,
        "--profile-steps",
        default=None,
        metavar="A:B",
        help="write a jax.profiler trace of steps A to B into SAVE_DIR/profile (TensorBoard's profile "
        "plugin and ui.perfetto.dev open it)",
    )
    flags.add_softmax_shards(p)
    flags.add_distributed(p)
    flags.add_progress(p)
    flags.add_compute_dtype(p)
    flags.add_compilation_cache(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    flags.start_distributed(args)
    from elmojax.train import TrainConfig, options_with_overrides, train
    from elmojax.train.profiler import parse_steps

    for name in (
        "max_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "eval_every",
        "heldout_tokens",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ElmoError(f"`{name}` must be >= 1")
    profile_steps = parse_steps(args.profile_steps) if args.profile_steps is not None else None
    options = options_with_overrides(args.options_file, batch_size=args.batch_size, n_epochs=args.n_epochs)
    config = TrainConfig(
        save_dir=args.save_dir,
        train_prefix=args.train_prefix,
        vocab_file=args.vocab_file,
        max_steps=args.max_steps,
        seed=args.seed,
        init_from=args.init_from,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        log_every=args.log_every,
        progress=flags.show_progress(args),
        numerics=Numerics(compute_dtype=args.compute_dtype),
        softmax_shards=args.softmax_shards,
        heldout_prefix=args.heldout_prefix,
        eval_every=args.eval_every,
        heldout_tokens=args.heldout_tokens,
        keep_best=args.keep_best,
        profile_steps=profile_steps,
    )
    last = train(options, config)
    print(json.dumps(last))
