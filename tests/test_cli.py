"""The command line: every flag is in the docs' CLI reference, bilm-tf spellings work, errors are one line."""

import re

import pytest

from elmojax.cli import build_parser, main
from tests.helpers import ROOT


def subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return action.choices


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "export", "embed", "compile-check"])
def test_cli_reference_lists_every_flag(command):
    section = (ROOT / "docs" / "cli.md").read_text()
    block = re.search(rf"elmojax {command} (.*?)(?=\nelmojax |\n```)", section, re.S).group(1)
    flags = {
        o
        for a in subparsers()[command]._actions
        for o in a.option_strings
        if o.startswith("--") and "_" not in o and o != "--help"
    }
    missing = sorted(f for f in flags if f not in block)
    assert not missing, f"docs/cli.md lacks {missing} for `{command}`"


@pytest.mark.parametrize(
    "flag, underscored",
    [("--save-dir", "--save_dir"), ("--vocab-file", "--vocab_file"), ("--train-prefix", "--train_prefix")],
)
def test_bilm_tf_underscore_spellings(flag, underscored):
    train = subparsers()["train"]
    a = train.parse_args([flag, "x", "--options-file", "o", "--train-prefix", "t", "--save-dir", "s"])
    b = train.parse_args([underscored, "x", "--options-file", "o", "--train-prefix", "t", "--save-dir", "s"])
    assert vars(a) == vars(b)


def test_missing_run_directory_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--save-dir", str(tmp_path / "nope"), "--test-prefix", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope: not a training run directory" in err and "\n" not in err
    assert main(["export", "--save-dir", str(tmp_path / "nope"), "--outfile", str(tmp_path / "w.hdf5")]) == 2


@pytest.mark.parametrize("command", ["train", "embed"])
def test_process_flags_without_distributed_are_refused(command, tmp_path, capsys):
    args = {
        "train": ["train", "--options-file", "o", "--train-prefix", "t", "--save-dir", str(tmp_path)],
        "embed": ["embed", "in.txt", "out.h5", "--options-file", "o", "--weight-file", "w"],
    }[command]
    assert main([*args, "--num-processes", "2", "--no-compilation-cache"]) == 2
    assert "--num-processes needs --distributed" in capsys.readouterr().err
