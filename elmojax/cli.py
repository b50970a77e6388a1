"""The ``elmojax`` command line: argument parsing only; every command calls one public function.

Flags mirror what ELMo users already type: bilm-tf's scripts for ``train``/``evaluate``/``export``
(``--save-dir``, ``--vocab-file``, ``--train-prefix``, ``--test-prefix``, ``--outfile``; the
underscore spellings work too) and AllenNLP's ``elmo`` command for ``embed``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from elmojax.errors import ElmoError
from elmojax.options import COMPUTE_DTYPES, START_STATES, Numerics
from elmojax.outputs import OUTPUT_FORMATS
from elmojax.runtime import enable_compilation_cache, retain_freed_memory


def _flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs) -> None:
    """Add ``--foo-bar`` together with its bilm-tf spelling ``--foo_bar``."""
    names = [name, *aliases]
    underscored = name.replace("-", "_")
    if name.startswith("--") and underscored[2:] != name[2:]:
        names.append("--" + underscored[2:])
    parser.add_argument(*names, **kwargs)


def _add_start_state_flag(parser: argparse.ArgumentParser, what: str) -> None:
    _flag(
        parser,
        "--start-state",
        choices=START_STATES,
        default=START_STATES[0],
        help=f"{what}: the model's warm state (default) or zeros (bilm-tf's and AllenNLP's start)",
    )


def _add_compilation_cache_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use the per-user persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, else "
        "$XDG_CACHE_HOME/elmojax/jax or ~/.cache/elmojax/jax)",
    )


def _add_compute_dtype_flag(parser: argparse.ArgumentParser) -> None:
    _flag(
        parser,
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="dtype of matmuls and convolutions (bfloat16: mixed precision for GPUs/TPUs; parameters, "
        "LSTM cell states and the loss stay float32; default float32)",
    )


def _add_distributed_flags(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (multi-host; see the README)"
        + (f"; {what}" if what else ""),
    )
    _flag(parser, "--coordinator-address", default=None, help="with --distributed: host:port of process 0")
    _flag(parser, "--num-processes", type=int, default=None, help="with --distributed: number of processes")
    _flag(parser, "--process-id", type=int, default=None, help="with --distributed: this process's index")


def _start_distributed(args: argparse.Namespace) -> None:
    given = [
        f for f in ("coordinator_address", "num_processes", "process_id") if getattr(args, f) is not None
    ]
    if not args.distributed:
        if given:
            raise ElmoError(f"--{given[0].replace('_', '-')} needs --distributed")
        return
    from elmojax.distributed import initialize

    initialize(args.coordinator_address, args.num_processes, args.process_id)


def _add_embed(sub) -> None:
    p = sub.add_parser(
        "embed",
        help="write contextual embeddings of a text file to HDF5 (as AllenNLP's `elmo` command)",
        description="Embed INPUT (one whitespace-tokenized sentence a line) into OUTPUT (HDF5): one dataset "
        "per line named by its 0-based index, plus `sentence_to_index` (JSON).",
    )
    p.add_argument("input_file", metavar="INPUT", help="text file, one tokenized sentence a line")
    p.add_argument("output_file", metavar="OUTPUT", help="HDF5 file to write (written atomically)")
    _flag(p, "--options-file", required=True, help="ELMo options.json")
    _flag(p, "--weight-file", required=True, help="ELMo weights HDF5 (bilm-tf dump_weights layout)")
    _flag(p, "--vocab-file", default=None, help="vocabulary (optional for character models)")
    fmt = p.add_mutually_exclusive_group()
    for name, (help_text, _) in OUTPUT_FORMATS.items():
        fmt.add_argument(f"--{name}", dest="output_format", action="store_const", const=name, help=help_text)
    p.set_defaults(output_format="all")
    _flag(p, "--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument(
        "--stateful",
        action="store_true",
        help="carry LSTM states from batch to batch row by row, from zeros, as bilm-tf and AllenNLP do "
        "(default: stateless, each sentence embedded independently from the start state)",
    )
    _add_start_state_flag(p, "stateless start of every sentence")
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: stop with the line and byte offset (strict) or replace it and go on",
    )
    _add_distributed_flags(
        p,
        "each process embeds a contiguous block of lines into OUTPUT's part file "
        "(emb.h5 -> emb.part-00000-of-00002.h5); process 0 writes the index emb.index.json",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_compute_dtype_flag(p)
    _add_compilation_cache_flag(p)
    p.set_defaults(func=_run_embed)


def _run_embed(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise ElmoError(f"--batch-size must be >= 1, found {args.batch_size}")
    _start_distributed(args)
    from elmojax.embed import Embedder, embed_file
    from elmojax.embedparts import embed_file_part, index_path

    embedder = Embedder.from_files(
        args.options_file,
        args.weight_file,
        args.vocab_file,
        batch_size=args.batch_size,
        stateful=args.stateful,
        start_state=args.start_state,
        numerics=Numerics(compute_dtype=args.compute_dtype, precision="highest"),
    )
    kwargs = dict(output_format=args.output_format, batch_size=args.batch_size, errors=args.errors)
    if not args.distributed:
        n = embed_file(embedder, args.input_file, args.output_file, progress=not args.no_progress, **kwargs)
        print(f"wrote embeddings of {n} sentences to {args.output_file}", file=sys.stderr)
        return
    import jax

    part, n = embed_file_part(
        embedder,
        args.input_file,
        args.output_file,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        progress=not args.no_progress and jax.process_index() == 0,
        **kwargs,
    )
    print(f"wrote embeddings of {n} sentences to {part}", file=sys.stderr)
    if jax.process_index() == 0:
        print(f"wrote the index of all parts to {index_path(args.output_file)}", file=sys.stderr)


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare",
        help="tokenize, shuffle and shard a corpus; write the vocabulary",
        description="Turn raw text, a CSV/TSV column or a local TFDS dataset into DIR/train/shard_*.txt, "
        "DIR/heldout/shard_*.txt (one tokenized sentence a line), DIR/vocab.txt and DIR/stats.json.",
    )
    p.add_argument("inputs", metavar="INPUT", nargs="*", help="text (.txt) or CSV/TSV files, UTF-8")
    _flag(p, "--out", required=True, help="output directory")
    _flag(p, "--column", default=None, help="CSV/TSV column holding the text (e.g. transcript)")
    _flag(
        p, "--heldout-fraction", type=float, default=0.01, help="share of sentences held out (default 0.01)"
    )
    _flag(p, "--sentences-per-shard", type=int, default=100_000, help="sentences per shard file")
    _flag(p, "--seed", type=int, default=0, help="shuffling seed (default 0)")
    _flag(p, "--min-count", type=int, default=1, help="minimum count for a vocabulary token (default 1)")
    p.add_argument("--lowercase", action="store_true", help="lowercase all text")
    p.add_argument(
        "--tokenized",
        action="store_true",
        help="input is already one tokenized sentence a line: split on whitespace only",
    )
    _flag(
        p,
        "--tfds",
        default=None,
        metavar="NAME[:SPLIT]",
        help="read a TensorFlow Datasets dataset already on disk (needs the tfds extra)",
    )
    _flag(p, "--text-key", default=None, help="feature holding the text in the TFDS dataset")
    _flag(
        p,
        "--tfds-data-dir",
        default=None,
        help="TFDS data directory (default: TFDS's own, ~/tensorflow_datasets)",
    )
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        default="strict",
        help="invalid UTF-8: stop with the line and byte offset (strict) or replace it and go on",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from elmojax.prepare import prepare_corpus

    if not args.inputs and not args.tfds:
        raise ElmoError("give at least one INPUT file or --tfds NAME")
    stats = prepare_corpus(
        args.inputs,
        args.out,
        column=args.column,
        heldout_fraction=args.heldout_fraction,
        sentences_per_shard=args.sentences_per_shard,
        seed=args.seed,
        min_count=args.min_count,
        lowercase=args.lowercase,
        tokenized=args.tokenized,
        tfds=args.tfds,
        text_key=args.text_key,
        tfds_data_dir=args.tfds_data_dir,
        errors=args.errors,
        progress=not args.no_progress,
    )
    print(json.dumps(stats))


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a biLM (resumes when SAVE_DIR already holds a run)",
        description="Train an ELMo biLM as bilm-tf's train_elmo.py does. Running the same command again "
        "resumes from the latest checkpoint in --save-dir.",
    )
    _flag(p, "--options-file", required=True, help="options.json with the model and training keys")
    _flag(p, "--train-prefix", required=True, help="glob of training shards, e.g. 'data/train/shard_*.txt'")
    _flag(p, "--vocab-file", default=None, help="vocabulary (<S>, </S>, <UNK> first); required for a new run")
    _flag(p, "--save-dir", required=True, help="run directory: options, vocabulary, checkpoints, metrics")
    _flag(
        p,
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps (default: n_epochs * n_train_tokens / tokens per step)",
    )
    _flag(p, "--init-from", default=None, help="start from a weights HDF5 (continued pre-training)")
    _flag(p, "--seed", type=int, default=0, help="seed for initialisation, shuffling, dropout, sampling")
    _flag(p, "--batch-size", type=int, default=None, help="override batch_size (per device) of the options")
    _flag(p, "--n-epochs", type=int, default=None, help="override n_epochs of the options")
    _flag(p, "--checkpoint-every", type=int, default=1000, help="steps between checkpoints (default 1000)")
    _flag(p, "--keep-checkpoints", type=int, default=3, help="checkpoints kept (default 3)")
    _flag(p, "--log-every", type=int, default=10, help="steps between metric lines (default 10)")
    _add_distributed_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_compute_dtype_flag(p)
    _add_compilation_cache_flag(p)
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    _start_distributed(args)
    from elmojax.train import TrainConfig, options_with_overrides, train

    for name in ("max_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ElmoError(f"--{name.replace('_', '-')} must be >= 1")
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
        progress=not args.no_progress,
        numerics=Numerics(compute_dtype=args.compute_dtype),
    )
    last = train(options, config)
    print(json.dumps(last))


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="held-out perplexity of a run (full softmax, every token counted)",
        description="Print one JSON object with perplexity (exp of the mean of both directions' "
        "cross-entropies, as bilm-tf reports it), forward_perplexity, backward_perplexity and n_tokens.",
    )
    _flag(p, "--save-dir", required=True, help="training run directory")
    _flag(p, "--test-prefix", required=True, help="glob of held-out files")
    _flag(p, "--vocab-file", default=None, help="vocabulary (default: the run's own)")
    _flag(p, "--batch-size", type=int, default=None, help="rows per batch (default: the run's batch_size)")
    p.add_argument(
        "--per-sentence",
        action="store_true",
        help="also score every sentence on its own from the start state, as stateless embedding sees it",
    )
    _add_start_state_flag(p, "where rows and sentences start")
    _add_compute_dtype_flag(p)
    _add_compilation_cache_flag(p)
    p.set_defaults(func=_run_evaluate)


#: forward and backward perplexities of a sound model agree closely (within 2-3% on the quickstart);
#: beyond this ratio ``evaluate`` warns
DIRECTION_MARGIN = 1.25


def _run_evaluate(args: argparse.Namespace) -> None:
    from elmojax.evaluate import evaluate

    result = evaluate(
        args.save_dir,
        args.test_prefix,
        vocab_file=args.vocab_file,
        batch_size=args.batch_size,
        per_sentence=args.per_sentence,
        start=args.start_state,
        numerics=Numerics(compute_dtype=args.compute_dtype),
    )
    print(json.dumps(result))
    for name, r in (("", result), ("per-sentence ", result.get("per_sentence"))):
        if r is None:
            continue
        fwd, bwd = r["forward_perplexity"], r["backward_perplexity"]
        if max(fwd, bwd) > DIRECTION_MARGIN * min(fwd, bwd):
            print(
                f"elmojax evaluate: warning: {name}forward perplexity {fwd:.1f} and backward {bwd:.1f} "
                f"differ by more than {DIRECTION_MARGIN - 1:.0%}; a sound model scores held-out text about "
                "equally both ways: train longer, or compare --start-state warm/zero and --per-sentence",
                file=sys.stderr,
            )


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write the standard ELMo files (weights HDF5, options.json, vocab.txt) of a run",
        description="Write the latest checkpoint of --save-dir as a bilm-tf layout weights HDF5, with "
        "options.json (n_characters 262) and vocab.txt beside it.",
    )
    _flag(p, "--save-dir", required=True, help="training run directory")
    _flag(p, "--outfile", required=True, help="weights HDF5 to write")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from elmojax.rundir import export_run

    out = export_run(args.save_dir, args.outfile)
    print(f"wrote {out}, {out.parent / 'options.json'} and {out.parent / 'vocab.txt'}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The ``elmojax`` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="elmojax",
        description="Train ELMo biLMs in JAX; contextual embeddings compatible with bilm-tf and AllenNLP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_prepare(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_export(sub)
    _add_embed(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``elmojax`` and ``python -m elmojax``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command in ("train", "evaluate", "embed"):
        retain_freed_memory()  # before JAX's first computation starts its threads
        if not args.no_compilation_cache:
            enable_compilation_cache()
    try:
        args.func(args)
    except ElmoError as e:
        print(f"elmojax {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, ...: name the file, not the stack
        where = f"{e.filename}: " if e.filename else ""
        print(f"elmojax {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"elmojax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("ELMOJAX_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(
            f"elmojax {args.command}: internal error: {type(e).__name__}: {first[:300]} "
            "(set ELMOJAX_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
