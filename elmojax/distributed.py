"""Several processes (hosts) as one job: starting JAX's distributed runtime, agreeing on failure.

``train`` and ``embed`` both take ``--distributed``; this module is what they share. A process
that fails alone must not leave the others waiting in a collective until a timeout, so each
command reports its outcome through :func:`all_succeeded` before the others would block.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize``; None lets JAX detect the cluster (TPU pods, SLURM, ...) or
    read ``JAX_COORDINATOR_ADDRESS``. Call before anything else touches JAX's devices."""
    if jax.config.jax_cpu_collectives_implementation is None:
        # older JAX releases had no CPU collectives by default: CPU-only processes could not
        # reduce gradients across each other (current ones default to gloo)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )


def all_succeeded(ok: bool) -> list[bool]:
    """Every process's ``ok``, in process order (one collective; just ``[ok]`` in a single process)."""
    if jax.process_count() == 1:
        return [ok]
    return [bool(v) for v in multihost_utils.process_allgather(np.array(ok, np.int32))]
