"""The allocator setting applies only where JAX will run on the CPU, decided without starting JAX."""

import subprocess
import sys

import pytest

from elmojax.runtime import _cpu_only


@pytest.mark.parametrize(("platforms", "expected"), [("cpu", True), ("cuda", False), ("tpu,cpu", False)])
def test_jax_platforms_decides(monkeypatch, platforms, expected):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert _cpu_only() is expected


def test_installed_gpu_plugin_means_not_cpu(monkeypatch, tmp_path):
    # GPU wheels install a module into the jax_plugins namespace package
    (tmp_path / "jax_plugins" / "xla_cuda12").mkdir(parents=True)
    (tmp_path / "jax_plugins" / "xla_cuda12" / "__init__.py").write_text("")
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "jax_plugins", raising=False)
    assert _cpu_only() is False


def test_retain_freed_memory_leaves_jax_uninitialised():
    # jax.distributed.initialize() must still be possible afterwards, so no backend may start
    code = (
        "import jax; from elmojax.runtime import retain_freed_memory; retain_freed_memory();"
        "from jax._src import xla_bridge; print(xla_bridge.backends_are_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compilation_cache_is_per_user_and_shared(tmp_path):
    """`elmojax train` fills the per-user cache under XDG_CACHE_HOME (unless told not to), and a
    second identical run reads it: fewer seconds on the first step of each shape (compile_s)."""
    import json
    import os
    import subprocess
    import sys

    from tests.helpers import TRAIN_KEYS, tiny_options_dict, write_corpus

    train_glob, vocab = write_corpus(tmp_path / "corpus" / "train")
    (tmp_path / "options.json").write_text(json.dumps(tiny_options_dict(**TRAIN_KEYS)))
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")

    def run(name, *extra):
        cmd = [sys.executable, "-m", "elmojax", "train", "--options-file", str(tmp_path / "options.json"),
               "--train-prefix", train_glob, "--vocab-file", vocab, "--save-dir", str(tmp_path / name),
               "--max-steps", "2", "--no-progress", *extra]  # fmt: skip
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])["compile_s"]

    cache = tmp_path / "xdg" / "elmojax" / "jax"
    run("off", "--no-compilation-cache")
    assert not cache.exists()
    first = run("first")
    assert any(cache.iterdir())
    second = run("second")
    assert 0 < second < first
