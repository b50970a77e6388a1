"""Progress bars only on a terminal: a log (a pipe) gets none unless ``--progress`` asks for it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from elmojax.cli import flags
from elmojax.cli.main import build_parser
from tests.helpers import ROOT

COMMANDS = {
    "train": ["--options-file", "o", "--train-prefix", "t", "--save-dir", "s"],
    "evaluate": ["--save-dir", "s", "--test-prefix", "t"],
    "embed": ["in.txt", "out.h5", "--options-file", "o", "--weight-file", "w"],
    "prepare": ["in.txt", "--out", "o"],
    "probe": ["--options-file", "o", "--weight-file", "w", "--train", "a", "--test", "b", "--task", "upos"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_bar_follows_the_terminal_unless_told(command, monkeypatch):
    parse = lambda *extra: build_parser().parse_args([command, *COMMANDS[command], *extra])  # noqa: E731
    for isatty in (True, False):
        monkeypatch.setattr(sys.stderr, "isatty", lambda isatty=isatty: isatty)
        assert flags.show_progress(parse()) is isatty
        assert flags.show_progress(parse("--progress")) is True
        assert flags.show_progress(parse("--no-progress")) is False


def prepare(tmp_path, *extra: str) -> subprocess.CompletedProcess:
    (tmp_path / "in.txt").write_text("the cat sat on the mat .\n" * 200)
    out = tmp_path / f"out{len(extra)}"
    return subprocess.run(
        [sys.executable, "-m", "elmojax", "prepare", str(tmp_path / "in.txt"), "--out", str(out), *extra],
        capture_output=True,  # stderr is a pipe, as in a CI or scheduler log; bytes keep each \r
        cwd=ROOT,
    )


def test_a_log_gets_no_bar_unless_progress_forces_it(tmp_path):
    quiet = prepare(tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert b"\r" not in quiet.stderr and b"%|" not in quiet.stderr
    forced = prepare(tmp_path, "--progress")
    assert forced.returncode == 0, forced.stderr
    assert b"\r" in forced.stderr and b"reading:" in forced.stderr
    both = prepare(tmp_path, "--progress", "--no-progress")
    assert both.returncode == 2 and b"not allowed with argument" in both.stderr
