"""Flags shared by several commands, each defined once; bilm-tf's underscore spellings come with them.

The knobs of a run (:data:`elmojax.config.KNOBS`) are added by :func:`add_knobs` from that one
table and read back into their config dataclasses by :func:`config_from_args`.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from elmojax.config import Knob, knobs_for
from elmojax.errors import ElmoError
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


def add_knobs(parser: argparse.ArgumentParser, command: str) -> None:
    """Add the flag of every row of :data:`~elmojax.config.KNOBS` that ``command`` takes."""
    for knob in knobs_for(command):
        _add_knob(parser, knob, command)


def _add_knob(parser: argparse.ArgumentParser, knob: Knob, command: str) -> None:
    if knob.kind == "progress":
        add_progress(parser)
        return
    if knob.kind == "switch":
        parser.add_argument(knob.option, action="store_true", help=knob.help)
        return
    if knob.kind == "toggle":
        parser.add_argument(
            knob.option, action=argparse.BooleanOptionalAction, default=knob.default(command), help=knob.help
        )
        return
    if command in knob.required:
        flag(parser, knob.option, required=True, metavar=knob.metavar, help=knob.help)
        return
    default = knob.default(command)
    shown = f" (default {default})" if default is not None and knob.parse is None else ""
    flag(
        parser,
        knob.option,
        type=knob.type if knob.parse is None else str,
        choices=knob.choices,
        default=default,
        metavar=knob.metavar,
        help=knob.help + shown,
    )


def config_from_args(cls: type, args: argparse.Namespace, command: str, **given: Any) -> Any:
    """A ``cls`` (a dataclass of :data:`~elmojax.config.CONFIGS`) from the flags ``command`` took,
    with ``given`` fields on top; validated by the dataclass, its errors name the flags."""
    values: dict[str, Any] = {}
    for knob in knobs_for(command):
        if knob.owner is not cls or knob.name in given:
            continue
        if knob.kind == "progress":
            values[knob.name] = show_progress(args)
            continue
        value = getattr(args, knob.name)
        values[knob.name] = knob.parse(value) if knob.parse is not None and value is not None else value
    return cls(**values, **given)


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
