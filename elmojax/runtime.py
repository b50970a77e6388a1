"""Process-wide settings for long-running jobs (train, evaluate, embed) from the command line."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import importlib.metadata
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

# mallopt parameters from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


@functools.cache
def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    XLA's CPU runtime allocates a step's large temporaries afresh on every call; by default glibc
    serves each from a new ``mmap`` and unmaps it on free, so every step page-faults on its
    temporaries again. With one arena, no ``mmap`` and no trimming, freed blocks are reused and the
    process stays at its peak resident size, which a dedicated job reaches anyway. Call it before
    JAX's first computation; later calls are harmless but help less. Only the CPU backend gains:
    with a GPU, XLA's many compiler threads then contend for the single arena and compiling takes
    several times as long, so it does nothing unless JAX will run on the CPU (``docs/benchmarks.md``
    gives the figures).
    Returns whether the settings were applied (CPU backend, glibc on Linux only).
    """
    if not sys.platform.startswith("linux") or not _cpu_only():
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    # arena first: threads created afterwards then share the main heap
    return bool(
        mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    )


#: Google's PCI vendor id, and the ids of its PCI devices that are not TPUs (the gVNIC network card)
_GOOGLE_PCI_VENDOR = "0x1ae0"
_GOOGLE_NOT_TPU = {"0x0042"}


def tpu_may_be_attached() -> bool:
    """Whether this machine may have TPU chips: a TPU device node, or a Google PCI device that is
    not known to be something else (so an unknown TPU generation still counts)."""
    if glob.glob("/dev/accel*"):
        return True
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() != _GOOGLE_PCI_VENDOR:
                continue
            if (Path(vendor).parent / "device").read_text().strip() not in _GOOGLE_NOT_TPU:
                return True
        except OSError:
            continue
    return False


def _libtpu_without_tpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None and not tpu_may_be_attached()


@functools.cache
def skip_absent_tpu() -> bool:
    """With ``libtpu`` installed (for ``compile-check``) on a machine without TPUs, make JAX start
    on the CPU directly instead of probing for TPU chips and metadata (slower, and warnings on
    stderr). Only when ``JAX_PLATFORMS`` is unset and no GPU plugin is installed; call it before
    JAX starts. Returns whether it set ``JAX_PLATFORMS=cpu``."""
    if os.environ.get("JAX_PLATFORMS", "").strip() or not _libtpu_without_tpu() or _gpu_plugins():
        return False
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported already: its configuration has read the environment
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    return True


def _gpu_plugins() -> bool:
    """Whether a GPU plugin (CUDA, ROCm) is installed for JAX."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins  # namespace package that GPU plugins install into
    except ImportError:
        return False
    return any(pkgutil.iter_modules(jax_plugins.__path__))


def _cpu_only() -> bool:
    """Whether JAX will pick its CPU backend, decided without starting any backend.

    Starting one here would make a later ``jax.distributed.initialize()`` fail, so this reads
    ``JAX_PLATFORMS`` and otherwise looks for installed accelerator plugins (CUDA, ROCm, TPU; an
    installed libtpu counts only where a TPU may be attached).
    """
    platforms = os.environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return platforms.split(",")[0].strip().lower() == "cpu"
    if importlib.util.find_spec("libtpu") is not None and tpu_may_be_attached():
        return False
    return not _gpu_plugins()


def compilation_cache_dir() -> Path:
    """The per-user directory of JAX's persistent compilation cache shared by all elmojax runs:
    ``$JAX_COMPILATION_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/elmojax/jax`` (``~/.cache`` when
    ``XDG_CACHE_HOME`` is unset)."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return Path(os.environ["JAX_COMPILATION_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "elmojax" / "jax"


def enable_compilation_cache() -> Path:
    """Turn on JAX's persistent compilation cache in :func:`compilation_cache_dir`, so that a second
    run of the same model reuses the first one's compiled steps (each table shape of the ``small``
    step costs seconds on a CPU and over half a minute on a GPU). Call before the first compilation."""
    import jax

    path = compilation_cache_dir()
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path


#: exit status of a process that stopped because another process of its job is gone
PEER_LOST_STATUS = 3


def exit_at_once(line: str, status: int) -> None:
    """Print ``line`` on stderr and end the process with ``status`` at once, without Python's or
    the C++ runtime's exit handlers.

    For a job whose peer process is gone: an orderly exit would wait at the coordination service's
    shutdown barrier for the dead process and then abort with a C++ stack dump (a signal, not a
    status). Nothing is lost by skipping it: checkpoints are written under a temporary name and
    renamed when complete, so a write cut short here is ignored by the next run.
    """
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    try:  # the runtime's threads may still log the failure: the line above says it
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    except OSError:
        pass
    os._exit(status)
