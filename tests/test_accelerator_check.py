"""The accelerator check script's CPU rehearsal, so the script a GPU session runs cannot rot."""

import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.e2e
def test_accelerator_check_tiny_runs_and_prints_the_table(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "experiments/bench/accelerator_check.py"), "--tiny", "--skip-tests",
           "--dtypes", "bfloat16", "--steps", "3", "--out", str(out)]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in out.read_text().splitlines()[2:]]
    assert [(c[0].strip(), c[1].strip()) for c in rows] == [
        ("train tiny", "bfloat16"),
        ("embed tiny (warm)", "bfloat16"),
    ]
    for cells in rows:
        assert float(cells[3].replace(",", "")) > 0  # tokens/s
    assert float(rows[0][4]) > 0  # model TFLOP/s from the FLOP count
