"""Flags shared by several commands, each defined once; bilm-tf's underscore spellings come with them.

The knobs of a run (:data:`elmojax.config.KNOBS`) are added by :func:`add_knobs` from that one
table and read back into their config dataclasses by :func:`config_from_args`.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from elmojax.config import DistributedConfig, Knob, knobs_for
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
    help_text = knob.help + (f"; {knob.notes[command]}" if command in knob.notes else "")
    if knob.kind == "progress":
        add_progress(parser)
        return
    if knob.kind == "switch":
        parser.add_argument(knob.option, action="store_true", help=help_text)
        return
    if knob.kind == "toggle":
        parser.add_argument(
            knob.option, action=argparse.BooleanOptionalAction, default=knob.default(command), help=help_text
        )
        return
    if command in knob.required:
        flag(parser, knob.option, required=True, metavar=knob.metavar, help=help_text)
        return
    default = knob.default(command)
    shown = f" (default {default})" if default is not None and knob.parse is None else ""
    # parsed as None when not given (config_from_args puts the default in): whether a flag was
    # given at all is known, e.g. a --heartbeat-timeout without --distributed
    flag(
        parser,
        knob.option,
        type=knob.type if knob.parse is None else str,
        choices=knob.choices,
        default=None,
        metavar=knob.metavar,
        help=help_text + shown,
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
        if value is None:
            value = knob.default(command)
        elif knob.parse is not None:
            value = knob.parse(value)
        values[knob.name] = value
    return cls(**values, **given)


def start_distributed(args: argparse.Namespace) -> None:
    """With ``--distributed``, start JAX's distributed runtime as the command's
    :class:`~elmojax.config.DistributedConfig` says; a process flag without it is an error."""
    for knob in knobs_for(args.command):
        if knob.owner is DistributedConfig and knob.kind == "value" and getattr(args, knob.name) is not None:
            if not args.distributed:
                raise ElmoError(f"{knob.option} needs --distributed")
    config = config_from_args(DistributedConfig, args, args.command)
    if not config.distributed:
        return
    from elmojax.parallel import initialize

    initialize(
        config.coordinator_address,
        config.num_processes,
        config.process_id,
        heartbeat_timeout=config.heartbeat_timeout,
        initialization_timeout=config.initialization_timeout,
        shutdown_timeout=config.shutdown_timeout,
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
