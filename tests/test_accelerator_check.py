"""The accelerator check script's CPU rehearsal, so the script a GPU session runs cannot rot: its
numeric test list exists and collects, a missing file stops it, a failing test fails it."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "experiments" / "bench" / "accelerator_check.py"


@pytest.fixture(scope="module")
def check():
    """The script as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("accelerator_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script(tmp_path, *args, timeout=300):
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(SCRIPT), "--tiny", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp_path)


def test_numeric_test_list_exists(check):
    # the files moved into subfolders once and the device run went on with pytest's exit 4
    assert len(check.NUMERIC_TESTS) >= 4
    assert check.missing_tests(list(check.NUMERIC_TESTS)) == []
    assert check.missing_tests(["tests/model/test_softmax.py", "tests/test_model.py"]) == [
        "tests/test_model.py"
    ]


def test_a_missing_test_file_stops_the_script(tmp_path):
    r = script(tmp_path, "--tests", "tests/model/test_softmax.py,tests/test_model.py", timeout=120)
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "numeric test file not found: tests/test_model.py" in r.stdout
    assert "train tiny" not in r.stdout  # nothing ran


def test_failing_or_skipped_tests_fail_the_check(check, tmp_path):
    failing = tmp_path / "test_failing.py"
    failing.write_text("def test_one():\n    assert 1 + 1 == 3\n")
    code, last = check.run_tests([str(failing)], collect_only=False)
    assert code == 1 and "1 failed" in last
    # collected only (the rehearsal), a module skipped at collection fails: the device would not run it
    skipped = tmp_path / "test_skipped.py"
    skipped.write_text(
        "import pytest\npytest.skip('no', allow_module_level=True)\n\ndef test_one():\n    pass\n"
    )
    collected = tmp_path / "test_collected.py"
    collected.write_text("def test_two():\n    pass\n")
    code, last = check.run_tests([str(collected)], collect_only=True)
    assert code == 0 and last.startswith("1 test collected"), last
    code, last = check.run_tests([str(skipped), str(collected)], collect_only=True)
    assert code == 1 and "not run on the device: SKIPPED" in last and "test_skipped.py" in last


@pytest.mark.e2e
def test_accelerator_check_tiny_runs_and_prints_the_table(tmp_path):
    out = tmp_path / "table.md"
    r = script(tmp_path, "--dtypes", "bfloat16", "--steps", "3", "--out", str(out))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the real test list, collected, none skipped or deselected
    line = next(x for x in r.stdout.splitlines() if x.startswith("numeric tests collected"))
    assert "exit 0" in line and "skipped" not in line and "deselected" not in line, line
    assert int(re.search(r"(\d+) tests? collected", line).group(1)) >= 40, line  # 46 today
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[2:]]
    assert [(c[0].strip(), c[1].strip()) for c in rows] == [
        ("train tiny", "bfloat16"),
        ("embed tiny (warm)", "bfloat16"),
    ]
    for cells in rows:
        assert float(cells[3].replace(",", "")) > 0  # tokens/s
    assert float(rows[0][4]) > 0  # model TFLOP/s from the FLOP count
