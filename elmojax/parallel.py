"""Devices, meshes and shardings: the one module that knows axis names and partition rules.

Data parallelism is a mesh over the devices with one axis, ``data``: a batch's rows and the LSTM
states' batch axis are split over it; parameters and optimiser state are replicated, and XLA
inserts the gradient all-reduce. Train, evaluate, embed and restore ask this module for meshes,
shardings and placement; no other module builds a ``Mesh`` or writes a ``PartitionSpec``.

Partition rules are lists of ``(regex, PartitionSpec)`` matched against a leaf's path
(``params/softmax/W``, ``lstm/c``, ``table``), first match wins, as big_vision writes them: a new
layout is a new rule, not new code in the step.

Inside a traced function, :func:`tracing` makes the mesh the abstract-mesh context, and the
kernels ask :func:`batch_is_sharded` how to contract their batch axis (``Dot.tn``): nothing about
sharding travels in the model's settings.

Several processes (hosts) run the same program after :func:`initialize`; each holds its own
devices' rows of a global batch (:meth:`DataParallel.put`). :func:`all_succeeded`,
:func:`all_gather_json` and :func:`agree_max` are the few host-side collectives the commands need.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.data.batches import PendingBatch, StepBatch

#: the mesh axis of data parallelism
DATA = "data"
#: the mesh axes a batch's rows are split over, in mesh order
BATCH_AXES = (DATA,)
#: a batch's rows in a partition spec
ROWS = DATA

Rules = Sequence[tuple[str, P]]

#: the train state: LSTM states ``[2, L, B, ...]`` split on their batch axis, the rest replicated
STATE_RULES: Rules = (
    (r"^lstm/", P(None, None, ROWS)),
    (r".*", P()),
)
#: a step batch (see :class:`~elmojax.data.batches.StepBatch`): each device's block of the token
#: table, rows of ``index``/``targets``/``mask [2, B, ...]``; the negatives are replicated
BATCH_RULES: Rules = (
    (r"^table$", P(ROWS)),
    (r"^(index|targets|mask)$", P(None, ROWS)),
    (r".*", P()),
)


# --- meshes and shardings -----------------------------------------------------------------------


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The data-parallel mesh over ``devices`` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.array(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same array on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def leading_rows(mesh: Mesh) -> NamedSharding:
    """An array's leading axis split over the batch axes (a table's per-device blocks, a batch's rows)."""
    return NamedSharding(mesh, P(ROWS))


def lstm_sharding(mesh: Mesh) -> NamedSharding:
    """LSTM states ``[2, L, B, ...]``: the batch axis split over the batch axes."""
    return NamedSharding(mesh, P(None, None, ROWS))


def path_name(path: tuple) -> str:
    """A pytree path as ``a/b/0``: dataclass fields, dict keys and tuple positions alike."""
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def spec_for(name: str, rules: Rules) -> P:
    """The partition spec of the leaf called ``name``: the first rule whose regex matches it."""
    for pattern, spec in rules:
        if re.search(pattern, name):
            return spec
    raise ValueError(f"no partition rule matches {name!r}")


def shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """A tree of :class:`NamedSharding` shaped like ``tree`` (arrays or shapes), by ``rules``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: NamedSharding(mesh, spec_for(path_name(path), rules)), tree
    )


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """The shardings of a train state (arrays or abstract shapes), by :data:`STATE_RULES`."""
    return shardings(state, mesh, STATE_RULES)


def constrain(x: Any, mesh: Mesh | None, rules: Rules) -> Any:
    """``with_sharding_constraint`` by ``rules`` inside a traced function; nothing without a mesh."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, shardings(x, mesh, rules))


def constrain_blocks(x: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Pin ``[devices, ...]`` per-device blocks to their devices (the lookup then stays local)."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, leading_rows(mesh))


@contextlib.contextmanager
def tracing(mesh: Mesh | None) -> Iterator[None]:
    """Trace the enclosed computation for ``mesh`` (its abstract mesh becomes the context)."""
    if mesh is None:
        yield
        return
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def batch_is_sharded() -> bool:
    """Whether the computation being traced splits its batch over several devices (see :func:`tracing`)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    return int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES])) > 1


# --- data parallelism ---------------------------------------------------------------------------


class DataParallel:
    """The data-parallel mesh over ``devices`` and this process's share of a global batch.

    ``rows_per_device`` rows of each step's batch live on each device: ``global_rows`` in all,
    ``local_rows`` on this process's devices.
    """

    def __init__(self, rows_per_device: int, devices: Sequence[jax.Device] | None = None):
        self.mesh = data_mesh(devices)
        devices = list(self.mesh.devices.flat)
        self.n_devices = len(devices)
        self.n_local = sum(d.process_index == jax.process_index() for d in devices)
        self.rows_per_device = rows_per_device
        self.platform = devices[0].platform
        self.global_rows = rows_per_device * self.n_devices
        self.local_rows = rows_per_device * self.n_local

    def put(self, local: np.ndarray, sharding: NamedSharding) -> jax.Array:
        """This process's part of a global array, placed on the mesh."""
        if jax.process_count() == 1:
            return jax.device_put(local, sharding)
        return jax.make_array_from_process_local_data(sharding, local)

    def host_batch(
        self, windows: Sequence[Any], options: Any, negatives: tuple[np.ndarray, np.ndarray] | None = None
    ) -> StepBatch | PendingBatch:
        """This process's step batch of ``windows`` (a stream's forward and backward windows), on the
        host: numpy only, no collective, so it can be built in a thread (see :meth:`place`).

        On GPUs and TPUs every step gets one table size (one compile per run); across processes
        without one, the table shape is agreed on when the batch is placed.
        """
        from elmojax.data.batches import fixed_table_size, step_batch

        c = options.char_cnn
        return step_batch(
            windows,
            n_local_devices=self.n_local,
            rows_per_device=self.rows_per_device,
            max_filter_width=c.max_width if c is not None else None,
            fixed_size=fixed_table_size(self.platform, self.rows_per_device, windows[0].mask.shape[1]),
            negatives=negatives,
            agree=jax.process_count() > 1,
        )

    def batch(
        self, windows: Sequence[Any], options: Any, negatives: tuple[np.ndarray, np.ndarray] | None = None
    ) -> StepBatch:
        """:meth:`host_batch`, then :meth:`place`: one step's batch on the devices."""
        return self.place(self.host_batch(windows, options, negatives))

    def place(self, host: StepBatch | PendingBatch) -> StepBatch:
        """A host step batch on the devices: each device gets its own rows and its block of the table.

        A :class:`~elmojax.data.batches.PendingBatch` (several processes without a fixed table size)
        is assembled first, once every process has agreed on the table bucket: all of them must
        compile the same shapes.
        """
        from elmojax.data.batches import PendingBatch

        if isinstance(host, PendingBatch):
            host = host.assemble(*agree_max([host.bucket, host.keep]))
        return jax.tree_util.tree_map(
            lambda sharding, array: self.put(array, sharding), shardings(host, self.mesh, BATCH_RULES), host
        )

    def put_state(self, state: Any) -> Any:
        """A train state on the mesh, by :data:`STATE_RULES`."""
        return jax.device_put(state, state_shardings(state, self.mesh))

    def put_lstm(self, lstm: Any) -> Any:
        """LSTM states ``[2, L, global_rows, ...]`` split on their batch axis."""
        return jax.device_put(lstm, lstm_sharding(self.mesh))

    def abstract_state(self, shapes: Any) -> Any:
        """``shapes`` (``jax.eval_shape`` of a state) with this mesh's shardings, for restoring."""
        return jax.tree_util.tree_map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            shapes,
            state_shardings(shapes, self.mesh),
        )


# --- several processes ----------------------------------------------------------------------------


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
    """Every process's ``ok``, in process order (one collective; just ``[ok]`` in a single process).

    A process that fails alone must not leave the others waiting in a collective until a timeout:
    each command reports its outcome through this before the others would block.
    """
    if jax.process_count() == 1:
        return [ok]
    return [bool(v) for v in multihost_utils.process_allgather(np.array(ok, np.int32))]


def agree_max(values: Sequence[int]) -> list[int]:
    """The element-wise maximum of ``values`` over all processes (one collective)."""
    if jax.process_count() == 1:
        return [int(v) for v in values]
    return [int(v) for v in multihost_utils.process_allgather(np.array(values)).max(0)]


def all_gather_json(value: Any) -> dict[str, Any]:
    """Every process's JSON-serialisable ``value``, keyed by process index as a string."""
    if jax.process_count() == 1:
        return {"0": value}
    raw = np.frombuffer(json.dumps(value).encode(), np.uint8)
    size = int(multihost_utils.process_allgather(np.array(len(raw))).max())
    gathered = multihost_utils.process_allgather(np.pad(raw, (0, size - len(raw)), constant_values=32))
    return {str(i): json.loads(bytes(p).decode()) for i, p in enumerate(gathered)}
