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
