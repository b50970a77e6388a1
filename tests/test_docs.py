"""The README and the docs say what works: every `elmojax` command in them parses with the real
command line, the `--help` ones run, every Python example imports names that exist (and the ones
that need no model files run), every repository file they name exists, and the README stays a
short entry point. The site itself is built with warnings as errors by .ci/run."""

from __future__ import annotations

import ast
import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys

import pytest

from elmojax.cli import build_parser, main
from tests.helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
#: programs the docs' shell commands may start with besides elmojax
OTHER_PROGRAMS = {
    "python3",
    "bash",
    "tensorboard",
    "srun",
    ".venv/bin/pip",
    ".venv/bin/ruff",
    ".venv/bin/sphinx-build",
}


def blocks(language: str) -> list[tuple[str, str]]:
    """(page, code) of every fenced block in ``language``."""
    found = []
    for page in PAGES:
        for lang, code in _FENCE.findall(page.read_text(encoding="utf-8")):
            if lang == language:
                found.append((page.relative_to(ROOT).as_posix(), code))
    return found


def shell_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of every command of the bash blocks: continuations joined, comments dropped,
    ``&&`` chains split, leading ``VAR=value`` assignments removed."""
    commands = []
    for page, code in blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            argv: list[str] = []
            for token in [*shlex.split(line, comments=True), "&&"]:
                if token not in ("&&", "||", "|", ";"):
                    argv.append(token)
                    continue
                while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
                    argv = argv[1:]
                if argv:
                    commands.append((page, argv))
                argv = []
    return commands


def elmojax_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``elmojax`` / ``python -m elmojax``, or None for another program."""
    if argv[0] == "elmojax":
        return argv[1:]
    if argv[0] in ("python", ".venv/bin/python") and argv[1:3] == ["-m", "elmojax"]:
        return argv[3:]
    return None


def table_commands() -> list[tuple[str, list[str]]]:
    """(page, argv) of the whole commands in table cells (``preparing.md``'s one per format)."""
    found = []
    for page in PAGES:
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.startswith("|"):
                for span in re.findall(r"`(elmojax [^`]+ --[^`]+)`", line):
                    found.append((page.relative_to(ROOT).as_posix(), shlex.split(span)))
    return found


COMMANDS = shell_commands() + table_commands()
ELMOJAX = [(page, args) for page, argv in COMMANDS if (args := elmojax_argv(argv)) is not None]


def test_the_docs_show_every_command():
    shown = {args[0] for _, args in ELMOJAX if args and not args[0].startswith("-")}
    assert shown == {"prepare", "train", "evaluate", "export", "embed", "probe", "compile-check"}
    assert len(ELMOJAX) >= 25  # the extraction finds the blocks and the tables


@pytest.mark.parametrize("page, args", ELMOJAX, ids=lambda x: x if isinstance(x, str) else " ".join(x)[:60])
def test_every_elmojax_command_parses_as_written(page, args):
    if "--help" in args:  # the short ones run: help printed, exit 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0 and out.getvalue().startswith("usage: elmojax"), (page, args)
        return
    parsed = build_parser().parse_args(args)  # a wrong flag or a missing required one exits 2
    assert parsed.command == args[0]


def test_other_commands_run_known_programs_on_files_that_exist():
    for page, argv in COMMANDS:
        if elmojax_argv(argv) is not None:
            continue
        program = argv[0]
        if program in ("python", ".venv/bin/python") and argv[1] != "-m" and argv[1] != "-c":
            script = argv[1].removeprefix("PATH/TO/")
            assert (ROOT / script).is_file(), (page, argv)
        elif program == "bash":
            assert (ROOT / argv[1]).is_file(), (page, argv)
        elif program not in ("python", ".venv/bin/python"):
            assert program in OTHER_PROGRAMS, (page, argv)


def test_the_help_runs_from_the_installed_entry_point():
    r = subprocess.run([sys.executable, "-m", "elmojax", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "prepare" in r.stdout and "embed" in r.stdout


PYTHON = blocks("python")


@pytest.mark.parametrize("page, code", PYTHON, ids=[f"{p}-{i}" for i, (p, _) in enumerate(PYTHON)])
def test_python_examples_import_what_exists_and_the_self_contained_ones_run(page, code):
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "elmojax":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), (page, node.module, alias.name)
    if "assert " in code:  # written to run: no model files needed
        exec(compile(tree, page, "exec"), {})


_PATH = re.compile(r"(?<![\w/.])((?:experiments|tests|elmojax|docs|\.ci)/[\w./-]*[\w/])")


def test_every_repository_file_the_pages_name_exists():
    for page in [*PAGES, ROOT / "CHANGELOG.md"]:
        for path in _PATH.findall(page.read_text(encoding="utf-8")):
            if "*" in path or path.startswith("docs/_build"):
                continue
            assert (ROOT / path).exists(), (page.name, path)


def resolves(dotted: str) -> bool:
    """Whether ``elmojax.a.b.c`` names a module or an attribute of one."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for name in parts[i:]:
                obj = getattr(obj, name)
        except AttributeError:
            return False
        return True
    return False


def test_every_python_name_the_pages_give_exists():
    for page in [*PAGES, ROOT / "CHANGELOG.md"]:
        for dotted in re.findall(r"`(elmojax(?:\.\w+)+)", page.read_text(encoding="utf-8")):
            assert resolves(dotted), (page.name, dotted)


def test_the_module_reference_covers_every_module():
    documented = set(
        re.findall(r"^\.\. automodule:: ([\w.]+)", (ROOT / "docs" / "reference.md").read_text(), re.M)
    )
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "elmojax").rglob("*.py")
        if p.name != "__main__.py"
    }
    assert documented == modules


def test_the_readme_is_a_short_entry_point_with_the_two_commands_first():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    first = _FENCE.search(readme).group(2)
    assert "experiments/quickstart.sh" in first and "-m pytest" in first
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name not in ("index.md", "reference.md", "changelog.md"):
            assert f"docs/{page.name}" in readme, f"the README's map lacks {page.name}"
