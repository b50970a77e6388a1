"""The allocator setting applies only where JAX will run on the CPU, decided without starting JAX."""

import subprocess
import sys

import pytest

from elmojax.runtime import _cpu_only
from tests.helpers import train_argv


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


def test_compilation_cache_is_per_user_and_shared(corpus, tmp_path):
    """`elmojax train` fills the per-user cache under XDG_CACHE_HOME, and a second identical run
    reads it: fewer seconds on the first step of each shape (compile_s); with
    --no-compilation-cache the command line leaves JAX's cache unset."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")

    def run(name, *extra):
        argv = train_argv(
            corpus.options_file, corpus.train, corpus.vocab, tmp_path / name, "--max-steps", "2"
        )
        r = subprocess.run(
            [sys.executable, "-m", "elmojax", *argv, *extra], env=env, capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[-1])["compile_s"]

    cache = tmp_path / "xdg" / "elmojax" / "jax"
    # the flag is read before any work: a command that stops at once shows whether the cache was set
    code = (
        "import jax, sys; from elmojax.cli import main; "
        "main(['evaluate', '--save-dir', sys.argv[1], '--test-prefix', 'x', '--no-compilation-cache']); "
        "print(jax.config.jax_compilation_cache_dir)"
    )
    off = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "none")], env=env, capture_output=True, text=True
    )
    assert off.stdout.strip() == "None" and not cache.exists(), off.stderr[-2000:]
    first = run("first")
    assert any(cache.iterdir())
    second = run("second")
    assert 0 < second < first


def test_libtpu_without_a_tpu_starts_jax_on_the_cpu(monkeypatch):
    """libtpu (installed for compile-check) on a machine without TPU chips: JAX starts on the CPU
    without probing for TPUs; never where JAX_PLATFORMS is set or a TPU may be attached."""
    import importlib.util

    from elmojax import runtime

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "libtpu" else real_find_spec(name, *a),
    )
    monkeypatch.setattr(runtime, "tpu_may_be_attached", lambda: False)
    monkeypatch.setattr(runtime, "_gpu_plugins", lambda: False)  # whatever earlier tests installed
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    runtime.skip_absent_tpu.cache_clear()
    assert runtime._cpu_only() is True  # the malloc setting still applies
    assert runtime.skip_absent_tpu() is True and runtime.os.environ["JAX_PLATFORMS"] == "cpu"
    monkeypatch.setenv("JAX_PLATFORMS", "tpu")
    runtime.skip_absent_tpu.cache_clear()
    assert runtime.skip_absent_tpu() is False and runtime.os.environ["JAX_PLATFORMS"] == "tpu"
    monkeypatch.delenv("JAX_PLATFORMS")
    monkeypatch.setattr(runtime, "tpu_may_be_attached", lambda: True)
    runtime.skip_absent_tpu.cache_clear()
    assert runtime.skip_absent_tpu() is False and runtime._cpu_only() is False
    runtime.skip_absent_tpu.cache_clear()


def test_google_pci_devices_other_than_the_network_card_count_as_a_tpu(monkeypatch, tmp_path):
    from elmojax import runtime

    for name, device in (("0000:00:04.0", "0x0042"), ("0000:00:05.0", "0x0063")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text("0x1ae0\n")
        (tmp_path / name / "device").write_text(device + "\n")
    real_glob = runtime.glob.glob
    monkeypatch.setattr(
        runtime.glob,
        "glob",
        lambda pattern: real_glob(str(tmp_path / "*" / "vendor")) if "pci" in pattern else [],
    )
    assert runtime.tpu_may_be_attached() is True  # the v5e's 0x0063
    (tmp_path / "0000:00:05.0" / "device").write_text("0x0042\n")
    assert runtime.tpu_may_be_attached() is False  # two network cards
