"""Devices, meshes and shardings: the one module that knows axis names and partition rules.

The mesh has two axes, ``replica`` x ``shard``. A batch's rows and the LSTM states' batch axis are
split over both (data parallelism over every device); the rows of the vocabulary-sized arrays (the
softmax ``W [V, P]`` and ``b [V]``, a word-level model's token embedding, and their optimiser
state) are split over ``shard`` and replicated over ``replica``; everything else is replicated, and
XLA inserts the gradient all-reduce. ``shard`` is where the vocabulary lives: by default one TPU
slice, or one host's GPUs (fast links within, ``replica`` across), as MaxText separates ICI from
DCN parallelism. One shard (``softmax_shards=1``) is plain data parallelism, as on one device.
Train, evaluate, embed and restore ask this module for meshes, shardings and placement; no other
module builds a ``Mesh`` or writes a ``PartitionSpec``.

Partition rules are lists of ``(regex, PartitionSpec)`` matched against a leaf's path
(``params/softmax/W``, ``lstm/c``, ``table``), first match wins, as big_vision writes them: a new
layout is a new rule, not new code in the step. Vocabulary-sized arrays have their rows padded to
a multiple of the shard count (:func:`vocab_rows`); padding rows are never a target or a sample.

The model learns how its batch is split from an explicit :class:`BatchLayout` (:func:`batch_layout`
of the mesh), a static field of its modules and of the kernels' ``Dot``, never from an ambient
context. :func:`take_rows`, :func:`put_rows` and
:func:`vocab_sharded` are the collectives of a row-sharded table: a step moves only its own rows
between devices, never an array of the vocabulary's size.

Several processes (hosts) run the same program after :func:`initialize`; each holds its own
devices' rows of a global batch (:meth:`DataParallel.put`). :func:`all_succeeded`,
:func:`all_gather_json` and :func:`agree_max` are the few host-side collectives the commands need.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from elmojax.config import DistributedConfig
from elmojax.errors import ElmoError

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.data.batches import PendingBatch, StepBatch

#: the mesh axis over which the whole model is replicated (data parallelism across groups)
REPLICA = "replica"
#: the mesh axis over which the vocabulary's rows are split (data parallelism within a group)
SHARD = "shard"
#: the mesh axes a batch's rows are split over, in mesh order
BATCH_AXES = (REPLICA, SHARD)
#: a batch's rows in a partition spec
ROWS = BATCH_AXES

Rules = Sequence[tuple[str, P]]

#: leaves whose rows are the vocabulary's (parameters, and the optimiser state that mirrors them)
VOCAB_LEAVES = (r"(^|/)softmax/(W|b)$", r"(^|/)token_embedder/embedding$")

#: the train state: vocabulary rows split over the shard axis, LSTM states ``[2, L, B, ...]`` on
#: their batch axis, the rest replicated
STATE_RULES: Rules = (
    *((pattern, P(SHARD)) for pattern in VOCAB_LEAVES),
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


def default_shards(devices: Sequence[jax.Device]) -> int:
    """How many ways the vocabulary is split by default: the devices of one TPU slice (its chips
    are linked directly), else of one process (one host's GPUs, or the CPU's devices)."""
    first = devices[0]
    if first.platform == "tpu":  # one slice unless the devices say otherwise (multislice)
        return sum(getattr(d, "slice_index", 0) == getattr(first, "slice_index", 0) for d in devices)
    return sum(d.process_index == first.process_index for d in devices)


def mesh_of(devices: Sequence[jax.Device] | None = None, shards: int | None = None) -> Mesh:
    """The ``replica x shard`` mesh over ``devices`` (default: every device of every process),
    consecutive devices forming one shard group; ``shards`` defaults to :func:`default_shards`."""
    devices = list(devices) if devices is not None else jax.devices()
    shards = default_shards(devices) if shards is None else shards
    if shards < 1 or len(devices) % shards:
        raise ElmoError(
            f"`softmax_shards` {shards} must divide the number of devices ({len(devices)}); "
            f"use one of {', '.join(str(k) for k in range(1, len(devices) + 1) if len(devices) % k == 0)}"
        )
    return Mesh(np.array(devices).reshape(len(devices) // shards, shards), BATCH_AXES)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Plain data parallelism over ``devices``: every array whole on each device but the batch's."""
    return mesh_of(devices, shards=1)


def row_shards(mesh: Mesh | None) -> int:
    """How many ways ``mesh`` splits the vocabulary's rows (1 without a mesh)."""
    return 1 if mesh is None else int(mesh.shape[SHARD])


def vocab_rows(n_rows: int, mesh: Mesh | None) -> int:
    """Rows a vocabulary-sized array gets on ``mesh``: ``n_rows`` padded to a multiple of the shards."""
    shards = row_shards(mesh)
    return -(-n_rows // shards) * shards


def is_vocab_leaf(name: str) -> bool:
    """Whether the leaf called ``name`` (see :func:`path_name`) has the vocabulary's rows."""
    return any(re.search(pattern, name) for pattern in VOCAB_LEAVES)


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


def state_leaf_sharding(name: str, mesh: Mesh) -> NamedSharding:
    """The sharding of the train-state leaf called ``name`` (``params/softmax/W``, ...) on ``mesh``."""
    return NamedSharding(mesh, spec_for(name, STATE_RULES))


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


@dataclasses.dataclass(frozen=True)
class BatchLayout:
    """How a computation's batch is spread over devices, as the model's math needs to know it:
    ``groups`` devices each hold an equal block of the batch's rows (and of the token table).

    A static setting (hashable, part of the model's settings), computed from a mesh by
    :func:`batch_layout` only: the kernels then contract a sharded batch axis as it is
    (:meth:`elmojax.model.kernels.dot.Dot.tn`) and split work by device blocks; the values never
    depend on it.
    """

    groups: int = 1


def batch_layout(mesh: Mesh | None) -> BatchLayout:
    """The :class:`BatchLayout` of a batch split over ``mesh``'s batch axes (one group without a mesh)."""
    if mesh is None:
        return BatchLayout()
    return BatchLayout(int(np.prod([mesh.shape.get(a, 1) for a in BATCH_AXES])))


# --- tables whose rows are split over the shard axis --------------------------------------------


def take_rows(
    table: jax.Array,
    ids: jax.Array,
    mesh: Mesh | None,
    *,
    sharded_ids: bool = False,
    sorted_unique: bool = False,
) -> jax.Array:
    """``table[ids]`` (ids out of range read zeros) for a table whose rows may be split over the
    shard axis: each shard looks up the ids it owns and the pieces are summed, so only the looked-up
    rows cross devices. ``ids`` (any shape) are the same on every device, and so is the result;
    with ``sharded_ids`` their leading axis is split over the batch axes instead (each device's
    own ids), and so is the result's. ``sorted_unique`` promises ascending, distinct ``ids [R]``
    (out-of-range ones included), which lets one device's gather skip its checks."""
    if row_shards(mesh) == 1:
        return jnp.take(
            table,
            ids,
            axis=0,
            mode="fill",
            fill_value=0,
            indices_are_sorted=sorted_unique,
            unique_indices=sorted_unique,
        )

    def lookup(block, ids):
        offset = jax.lax.axis_index(SHARD) * block.shape[0]
        own = (ids >= offset) & (ids < offset + block.shape[0])
        rows = jnp.take(block, jnp.where(own, ids - offset, 0), axis=0)
        return jnp.where(own.reshape(own.shape + (1,) * (rows.ndim - own.ndim)), rows, 0)

    if not sharded_ids:
        local = lambda block, ids: jax.lax.psum(lookup(block, ids), SHARD)  # noqa: E731
        return jax.shard_map(local, mesh=mesh, in_specs=(P(SHARD), P()), out_specs=P())(table, ids)

    def local_sharded(block, ids):
        # the shard group's ids, looked up where they live, then each device's own rows summed back
        rows = lookup(block, jax.lax.all_gather(ids, SHARD, tiled=True))
        return jax.lax.psum_scatter(rows, SHARD, scatter_dimension=0, tiled=True)

    return jax.shard_map(local_sharded, mesh=mesh, in_specs=(P(SHARD), P(ROWS)), out_specs=P(ROWS))(
        table, ids
    )


def put_rows(
    table: jax.Array,
    ids: jax.Array,
    values: jax.Array,
    mesh: Mesh | None,
    *,
    sorted_unique: bool = False,
) -> jax.Array:
    """``table`` with rows ``ids`` set to ``values`` (ids out of range dropped), rows split over the
    shard axis or not: each shard writes the rows it owns, nothing crosses devices. ``ids [R]``
    must be distinct (but for out-of-range ones); ids and values are the same on every device.
    Inside a jitted function whose ``table`` is donated, the rows are written in place (the
    compiled program copies no ``[V, ...]`` array). ``sorted_unique`` promises ascending ids,
    distinct out-of-range ones included: one device's scatter then needs no ordering or
    collision handling (GPUs and TPUs write the rows in parallel)."""
    values = values.astype(table.dtype)
    if row_shards(mesh) == 1:
        return table.at[ids].set(
            values, mode="drop", indices_are_sorted=sorted_unique, unique_indices=sorted_unique
        )

    def local(block, ids, values):
        offset = jax.lax.axis_index(SHARD) * block.shape[0]
        own = (ids >= offset) & (ids < offset + block.shape[0])
        return block.at[jnp.where(own, ids - offset, block.shape[0])].set(values, mode="drop")

    return jax.shard_map(local, mesh=mesh, in_specs=(P(SHARD), P(), P()), out_specs=P(SHARD))(
        table, ids, values
    )


def vocab_sharded(
    per_shard: Callable[..., tuple[jax.Array, jax.Array]],
    weights: jax.Array,
    biases: jax.Array,
    inputs: jax.Array,
    labels: jax.Array,
    mesh: Mesh | None,
) -> tuple[jax.Array, jax.Array]:
    """A log-sum-exp over the vocabulary and each row's true logit, with the vocabulary's rows split
    over the shard axis and the inputs' rows over the batch axes.

    ``per_shard(w [V_s, P], b [V_s], x [M, P], labels [M], first_row) -> (lse [M], true [M])``
    works on one shard's rows of the vocabulary (``first_row`` is the first one's id); a shard
    sees every input row of its shard group (they are gathered over the shard axis: activations,
    never weights), and the shards' partial log-sum-exps and true logits are combined.
    ``inputs [N, P]``, ``labels [N]`` -> ``(lse [N], true [N])``, rows as the inputs'.
    """
    if row_shards(mesh) == 1:
        return per_shard(weights, biases, inputs, labels, 0)

    def local(w, b, x, y):
        xs = jax.lax.all_gather(x, SHARD, tiled=True)  # the shard group's rows
        ys = jax.lax.all_gather(y, SHARD, tiled=True)
        lse, true = per_shard(w, b, xs, ys, jax.lax.axis_index(SHARD) * w.shape[0])
        top = jax.lax.stop_gradient(jax.lax.pmax(lse, SHARD))
        lse = top + jnp.log(jax.lax.psum(jnp.exp(lse - top), SHARD))
        true = jax.lax.psum(true, SHARD)
        mine = jax.lax.axis_index(SHARD) * x.shape[0]
        return jax.lax.dynamic_slice_in_dim(lse, mine, x.shape[0]), jax.lax.dynamic_slice_in_dim(
            true, mine, x.shape[0]
        )

    spec = (P(SHARD), P(SHARD), P(ROWS), P(ROWS))
    return jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=(P(ROWS), P(ROWS)))(
        weights, biases, inputs, labels
    )


# --- data parallelism ---------------------------------------------------------------------------


class DataParallel:
    """The ``replica x shard`` mesh over ``devices`` and this process's share of a global batch.

    ``rows_per_device`` rows of each step's batch live on each device: ``global_rows`` in all,
    ``local_rows`` on this process's devices. ``softmax_shards`` splits the vocabulary's rows that
    many ways (default :func:`default_shards`; 1: replicated, plain data parallelism).
    """

    def __init__(
        self,
        rows_per_device: int,
        devices: Sequence[jax.Device] | None = None,
        softmax_shards: int | None = None,
    ):
        self.mesh = mesh_of(devices, softmax_shards)
        devices = list(self.mesh.devices.flat)
        self.softmax_shards = row_shards(self.mesh)
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


#: how collectives and the coordination service report that another process is gone (gloo on
#: CPUs: its peer's socket closed; the coordination service: heartbeats or barriers timed out)
PEER_FAILURE_TEXTS = (
    "Gloo", "gloo", "Connection reset", "Connection closed", "Socket closed", "UNAVAILABLE",
    "DEADLINE_EXCEEDED", "heartbeat", "distributed collective mismatch",
)  # fmt: skip


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout: int = DistributedConfig.heartbeat_timeout,
    initialization_timeout: int = DistributedConfig.initialization_timeout,
    shutdown_timeout: int = DistributedConfig.shutdown_timeout,
) -> None:
    """``jax.distributed.initialize``; None lets JAX detect the cluster (TPU pods, SLURM, ...) or
    read ``JAX_COORDINATOR_ADDRESS``. Call before anything else touches JAX's devices.

    The timeouts default to :class:`~elmojax.config.DistributedConfig`'s (the command line's).
    ``heartbeat_timeout`` (seconds) bounds how long a process that vanished without a word (kill -9,
    a lost host) goes unnoticed by the coordination service; ``shutdown_timeout`` how long one that
    finished waits at exit for the others. JAX's preemption service stays on: its SIGTERM notifier
    is what lets every process agree on the step to save at (see ``elmojax.train.loop.Preemption``).
    """
    if jax.config.jax_cpu_collectives_implementation is None:
        # older JAX releases had no CPU collectives by default: CPU-only processes could not
        # reduce gradients across each other (current ones default to gloo)
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout,
        shutdown_timeout_seconds=shutdown_timeout,
    )


def is_peer_failure(error: BaseException) -> bool:
    """Whether ``error`` (from a collective or the coordination service) means another process of
    this job is gone; never true with one process."""
    if jax.process_count() == 1 or not isinstance(error, (RuntimeError, ValueError, OSError)):
        return False
    text = str(error)
    return any(s in text for s in PEER_FAILURE_TEXTS)


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
