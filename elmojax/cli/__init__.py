"""The ``elmojax`` command line: argument parsing only; every command calls one public function."""

from elmojax.cli.main import build_parser, cli_message, main

__all__ = ["build_parser", "cli_message", "main"]
