"""Flags shared by several commands, each defined once; bilm-tf's underscore spellings come with them."""

from __future__ import annotations

import argparse
import re
import sys

from elmojax.errors import ElmoError
from elmojax.model.numerics import COMPUTE_DTYPES
from elmojax.options import START_STATES

_ARGUMENT = re.compile(r"`([a-z][a-z0-9_]*)`")


def cli_message(error: BaseException | str) -> str:
    """An error's message with each `` `argument` `` shown as its flag, ``--argument``."""
    return _ARGUMENT.sub(lambda m: "--" + m.group(1).replace("_", "-"), str(error))


def flag(parser: argparse.ArgumentParser, name: str, *aliases: str, **kwargs) -> None:
    """Add ``--foo-bar`` together with its bilm-tf spelling ``--foo_bar``."""
    names = [name, *aliases]
    underscored = name.replace("-", "_")
    if name.startswith("--") and underscored[2:] != name[2:]:
        names.append("--" + underscored[2:])
    parser.add_argument(*names, **kwargs)


def add_start_state(parser: argparse.ArgumentParser, what: str) -> None:
    flag(
        parser,
        "--start-state",
        choices=START_STATES,
        default=START_STATES[0],
        help=f"{what}: the model's warm state (default) or zeros (bilm-tf's and AllenNLP's start)",
    )


def add_compilation_cache(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use the per-user persistent compilation cache ($JAX_COMPILATION_CACHE_DIR, else "
        "$XDG_CACHE_HOME/elmojax/jax or ~/.cache/elmojax/jax)",
    )


def add_compute_dtype(parser: argparse.ArgumentParser) -> None:
    flag(
        parser,
        "--compute-dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="dtype of matmuls and convolutions (bfloat16: mixed precision for GPUs/TPUs; parameters, "
        "LSTM cell states and the loss stay float32; default float32)",
    )


def add_distributed(parser: argparse.ArgumentParser, what: str = "") -> None:
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (several hosts; see docs/accelerators.md)"
        + (f"; {what}" if what else ""),
    )
    flag(parser, "--coordinator-address", default=None, help="with --distributed: host:port of process 0")
    flag(parser, "--num-processes", type=int, default=None, help="with --distributed: number of processes")
    flag(parser, "--process-id", type=int, default=None, help="with --distributed: this process's index")
    flag(
        parser,
        "--heartbeat-timeout",
        type=int,
        default=None,
        help="with --distributed: seconds without a heartbeat after which a process counts as gone "
        "(default 60; see docs/training.md)",
    )
    flag(
        parser,
        "--initialization-timeout",
        type=int,
        default=None,
        help="with --distributed: seconds to wait for every process to start (default 300)",
    )
    flag(
        parser,
        "--shutdown-timeout",
        type=int,
        default=None,
        help="with --distributed: seconds a finished process waits for the others at exit (default 60)",
    )


def start_distributed(args: argparse.Namespace) -> None:
    timeouts = ("heartbeat_timeout", "initialization_timeout", "shutdown_timeout")
    given = [
        f
        for f in ("coordinator_address", "num_processes", "process_id", *timeouts)
        if getattr(args, f) is not None
    ]
    if not args.distributed:
        if given:
            raise ElmoError(f"--{given[0].replace('_', '-')} needs --distributed")
        return
    for name in timeouts:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ElmoError(f"--{name.replace('_', '-')} must be >= 1 (seconds)")
    from elmojax.parallel import initialize

    initialize(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        **{name: getattr(args, name) for name in timeouts if getattr(args, name) is not None},
    )


def add_softmax_shards(
    parser: argparse.ArgumentParser, default_help: str = "the devices of one TPU slice or one host"
) -> None:
    flag(
        parser,
        "--softmax-shards",
        type=int,
        default=None,
        help="split the softmax (and a word model's token embedding) over this many devices "
        f"(default: {default_help}; 1: the whole softmax on every device)",
    )


def add_progress(parser: argparse.ArgumentParser) -> None:
    """``--progress`` / ``--no-progress``; without either, a bar only when stderr is a terminal."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--progress",
        action="store_true",
        default=None,
        help="show the progress bar even when stderr is not a terminal (default: only on a terminal)",
    )
    group.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether to draw a progress bar: as ``--progress``/``--no-progress`` say, else only on a
    terminal (a bar's carriage returns would fill a CI or scheduler log)."""
    if args.progress is not None:
        return args.progress
    return sys.stderr.isatty()
