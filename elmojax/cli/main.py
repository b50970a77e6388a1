"""The ``elmojax`` command line: a table of commands, one module each, and one-line errors.

Each command module (``elmojax.cli.prepare``, ``train``, ``evaluate``, ``export``, ``embed``) adds
its parser and runs one public library function. Library errors name Python arguments as
`` `name` ``; :func:`cli_message` shows them as this command line's flags (``--name``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from elmojax.cli import compile_check, embed, evaluate, export, prepare, probe, train
from elmojax.cli.flags import cli_message
from elmojax.errors import ElmoError
from elmojax.runtime import enable_compilation_cache, retain_freed_memory, skip_absent_tpu

#: the sub-commands in the order ``--help`` lists them
COMMANDS = {
    "prepare": prepare,
    "train": train,
    "evaluate": evaluate,
    "export": export,
    "embed": embed,
    "probe": probe,
    "compile-check": compile_check,
}
#: commands that run JAX computations (process-wide settings apply before JAX starts)
JAX_COMMANDS = ("train", "evaluate", "embed", "probe")


def build_parser() -> argparse.ArgumentParser:
    """The ``elmojax`` argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(
        prog="elmojax",
        description="Train ELMo biLMs in JAX; contextual embeddings compatible with bilm-tf and AllenNLP.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``elmojax`` and ``python -m elmojax``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command in JAX_COMMANDS:
        skip_absent_tpu()  # before JAX starts: libtpu (for compile-check) probes for TPUs otherwise
        retain_freed_memory()  # before JAX's first computation starts its threads
        if not args.no_compilation_cache:
            enable_compilation_cache()
    try:
        status = args.func(args)
    except ElmoError as e:
        print(f"elmojax {args.command}: error: {cli_message(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a vanished file, ...: name the file, not the stack
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
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
