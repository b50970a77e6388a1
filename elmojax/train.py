"""Training the biLM as bilm-tf does: windowed streams, sampled softmax, Adagrad, exact resume.

Read top to bottom: the train state and optimiser; the steps, ``train_step(state, batch, config)``
and ``eval_step``, pure functions of a hashable :class:`StepConfig` jitted once per shape; the
device mesh and its shardings; host batches onto devices; the loop. Data parallelism is a one-axis
mesh: the batch and the LSTM states are sharded on the batch axis, parameters and optimiser state
are replicated, and XLA inserts the gradient all-reduce. Across hosts the same code runs after
``jax.distributed.initialize()``; each process reads its own slice of the shards and contributes
its rows of the global batch. Checkpoints and run files are :mod:`elmojax.rundir`'s.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from elmojax.batching import assemble_train_batch, fixed_table_size, sample_negatives, train_arrays
from elmojax.data import BidirectionalStream, Window, count_tokens, resolve_files
from elmojax.distributed import all_succeeded
from elmojax.errors import ElmoError
from elmojax.fileio import check_writable_dir
from elmojax.flops import model_flops
from elmojax.model import BiLM, LSTMState, init_params, zero_state
from elmojax.options import N_DIRECTIONS, ElmoOptions, Numerics, load_options, options_from_dict
from elmojax.prefetch import Prefetcher
from elmojax.rundir import (
    check_run_compatible,
    checkpoint_manager,
    gather_positions,
    load_run,
    restore_latest,
    truncate_metrics,
)
from elmojax.runlock import RunLock
from elmojax.softmax import full_softmax_loss, init_softmax, sampled_softmax_loss
from elmojax.vocab import Batcher, Vocabulary
from elmojax.weights import load_weights

#: consecutive non-finite steps after which training stops with an error
MAX_BAD_STEPS = 10
#: steps whose host arrays are prepared ahead of the device (see elmojax.prefetch)
PREFETCH_STEPS = 2


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to run training; the model and optimiser settings live in :class:`ElmoOptions`."""

    save_dir: str
    train_prefix: str
    vocab_file: str | None = None
    max_steps: int | None = None
    seed: int = 0
    init_from: str | None = None
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 10
    progress: bool = True
    max_bad_steps: int = MAX_BAD_STEPS
    numerics: Numerics = Numerics()  # e.g. Numerics(compute_dtype="bfloat16")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in each checkpoint."""

    step: jax.Array
    params: Any  # {"bilm": ..., "softmax": {"W": [V, P], "b": [V]}}
    opt_state: Any
    lstm: LSTMState  # c [2, L, B, H], h [2, L, B, P]
    rng: jax.Array
    bad_steps: jax.Array  # consecutive steps skipped for a non-finite loss or gradient


def make_optimizer(options: ElmoOptions) -> optax.GradientTransformationExtraArgs:
    """bilm-tf's optimiser: global-norm clipping, then Adagrad with initial accumulator 1.0.

    TensorFlow's Adagrad has no epsilon inside the square root, hence ``eps=0``. ``update`` takes
    two extra keyword arguments, ``global_norm`` (of the gradients) and ``finite`` (whether the
    step's loss and gradients are finite); see ``clip_by_known_global_norm``.
    """
    t = options.training
    return optax.chain(
        clip_by_known_global_norm(t.all_clip_norm_val),
        optax.adagrad(t.learning_rate, initial_accumulator_value=1.0, eps=0.0),
    )


def clip_by_known_global_norm(max_norm: float) -> optax.GradientTransformationExtraArgs:
    """``optax.clip_by_global_norm`` given the norm, which also zeroes a non-finite step's gradients.

    The step has already reduced the gradients to their global norm (a metric, and the finiteness
    check); computing it again inside the optimiser, as ``optax.clip_by_global_norm`` does, and
    zeroing separately cost two more passes over every gradient (about 2.5% of a ``small`` step).
    A zero gradient leaves Adagrad's parameters and accumulators exactly as they were. The state
    is ``optax.EmptyState``, as ``optax.clip_by_global_norm``'s is, so checkpoints are unchanged.
    """

    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None, *, global_norm, finite, **extra):
        del params, extra
        scale = jnp.where(finite, max_norm / jnp.maximum(global_norm, max_norm), 0.0)
        return jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0) * scale, updates), state

    return optax.GradientTransformationExtraArgs(init, update)


# --- the steps ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Everything static about the steps: a hashable jit argument, so equal configs share compilations.

    ``mesh`` (optional) pins the returned state to the data-parallel shardings. ``sparse`` (the
    default) updates the softmax and a word-level token embedding only on the rows a step touches;
    ``False`` is the plain dense update, kept as the reference the sparse one is tested against.
    """

    options: ElmoOptions
    n_vocab: int
    numerics: Numerics = Numerics()
    mesh: Mesh | None = None
    sparse: bool = True

    @property
    def model(self) -> BiLM:
        sharded = self.mesh is not None and self.mesh.devices.size > 1
        return BiLM(self.options, dataclasses.replace(self.numerics, sharded_batch=sharded))

    @property
    def sample_softmax(self) -> bool:
        """bilm-tf's sampled softmax, unless the vocabulary is not larger than the sample."""
        t = self.options.training
        return t.sample_softmax and t.n_negative_samples_batch < self.n_vocab

    @property
    def sparse_softmax(self) -> bool:
        """Whether the softmax is updated on the rows a step touches only (see :func:`train_step`)."""
        return self.sparse and self.sample_softmax

    @property
    def sparse_embedding(self) -> bool:
        """Whether a word-level model's token embedding is updated on the step's rows only."""
        return self.sparse and self.options.char_cnn is None


def losses(
    params: dict, lstm: LSTMState, batch: dict, rng: jax.Array, config: StepConfig, train: bool
) -> tuple[jax.Array, jax.Array, LSTMState]:
    """Per-direction loss sums ``[2]``, token counts ``[2]`` and the new LSTM states of one batch.

    ``batch``: ``table [D * U, ...]`` distinct token inputs of ``D`` devices (or blocks), ``index
    [2, D, B / D, T]`` into each one's block, ``targets`` and
    ``mask [2, B, T]``; for the sampled softmax also ``sampled [2, S]`` and ``num_tries [2]``.
    Training uses the sampled softmax (when enabled) and dropout; evaluation the full softmax. In a
    sparse step ``params["softmax"]`` holds only the step's rows, which ``target_rows [2, B, T]`` and
    ``sampled_rows [2, S]`` index (see :func:`sparse_view`).
    """
    model = config.model
    variables = {"params": params["bilm"]}
    if config.sparse_embedding and train:
        # the step's rows of the word embedding; flax would refuse the row view's shape, and the
        # word embedder is this one lookup
        vectors = jnp.take(params["bilm"]["token_embedder"]["embedding"], batch["table"], axis=0)
    else:
        vectors = model.apply(variables, batch["table"], method=BiLM.embed_tokens)  # [U, P]
    # each device's rows look up its own block of the table: a batched gather over the device
    # axis, which the partitioner keeps local (a gather with global indices would all-gather
    # every device's token vectors to every device)
    index = batch["index"]  # [2, D, rows, T]
    if index.shape[1] == 1:  # one device: a plain lookup
        xs = [jnp.take(vectors, index[d, 0], axis=0) for d in range(N_DIRECTIONS)]
    else:
        blocks = vectors.reshape(index.shape[1], -1, vectors.shape[-1])  # [D, bucket, P]
        if config.mesh is not None:
            blocks = jax.lax.with_sharding_constraint(blocks, NamedSharding(config.mesh, P("data")))
        lookup = jax.vmap(lambda table, idx: jnp.take(table, idx, axis=0))
        n_rows, steps = index.shape[1] * index.shape[2], index.shape[3]
        xs = [lookup(blocks, index[d]).reshape(n_rows, steps, -1) for d in range(N_DIRECTIONS)]
    masks = [batch["mask"][d] for d in range(N_DIRECTIONS)]
    outputs, new_lstm = model.apply(
        variables, xs, masks, lstm, deterministic=not train, method=BiLM.lstm, rngs={"dropout": rng}
    )
    w, b = params["softmax"]["W"], params["softmax"]["b"]
    dot = config.numerics.dot
    sums, counts = [], []
    for d in range(N_DIRECTIONS):
        top = outputs[d][-1]
        flat = top.reshape(-1, top.shape[-1])
        labels = batch["targets"][d].reshape(-1)
        if train and config.sample_softmax:
            rows = None
            if "target_rows" in batch:
                rows = (batch["target_rows"][d].reshape(-1), batch["sampled_rows"][d])
            per_token = sampled_softmax_loss(
                w,
                b,
                flat,
                labels,
                batch["sampled"][d],
                batch["num_tries"][d],
                dot,
                rows=rows,
                n_classes=config.n_vocab,
            )
        else:
            per_token = full_softmax_loss(w, b, flat, labels, dot)
        m = masks[d].reshape(-1)
        sums.append(jnp.sum(jnp.where(m, per_token, 0.0)))
        counts.append(jnp.sum(m))
    return jnp.stack(sums), jnp.stack(counts), new_lstm


#: parameters that a step touches only a few rows of: the softmax, a word-level token embedding
SOFTMAX_W, SOFTMAX_B = ("softmax", "W"), ("softmax", "b")
WORD_EMBEDDING = ("bilm", "token_embedder", "embedding")


#: sparse updates are used when a step's row ids number at most this fraction of the vocabulary
SPARSE_FRACTION = 0.25


def _dict_keys(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _map_rows(fn: Callable, tree: Any, rows: dict[tuple, jax.Array], *others: Any) -> Any:
    """Apply ``fn(leaf, rows, *other_leaves)`` to the leaves of ``tree`` (params, or an optimiser
    state that mirrors them) whose dict-key path ends with one of ``rows``' keys."""

    def visit(path, leaf, *rest):
        keys = _dict_keys(path)
        for name, r in rows.items():
            if keys[-len(name) :] == name:
                return fn(leaf, r, *rest)
        return leaf if not rest else rest[0]

    return jax.tree_util.tree_map_with_path(visit, tree, *others)


def sparse_view(params: dict, batch: dict, config: StepConfig) -> tuple[dict, dict, dict]:
    """The rows of the sparse parameters a step touches, and the batch re-indexed into them.

    ``-> (rows {path: ids [R]}, view params, view batch)``. The softmax's rows are the distinct
    targets and sampled ids of both directions (``R = 2 B T + 2 S``, padded with the out-of-range
    id ``V``); a word-level embedding's are the distinct entries of the token table. Where ``R`` is
    not small against the vocabulary (see :data:`SPARSE_FRACTION`) the parameter stays dense. Each row
    appears once, so its gradient is the sum over its uses, as TensorFlow sums ``IndexedSlices``
    before a sparse update.
    """
    rows: dict[tuple, jax.Array] = {}
    batch = dict(batch)
    n_ids = batch["targets"].size + (batch["sampled"].size if "sampled" in batch else 0)
    # a row set about the size of the vocabulary saves nothing and costs a sort and a scatter
    if config.sparse_softmax and n_ids <= SPARSE_FRACTION * config.n_vocab:
        targets, sampled = batch["targets"], batch["sampled"]
        ids = jnp.concatenate([targets.reshape(-1), sampled.reshape(-1)])
        uniq, inverse = jnp.unique(ids, size=ids.size, fill_value=config.n_vocab, return_inverse=True)
        inverse = inverse.reshape(-1)
        batch["target_rows"] = inverse[: targets.size].reshape(targets.shape)
        batch["sampled_rows"] = inverse[targets.size :].reshape(sampled.shape)
        rows[SOFTMAX_W] = rows[SOFTMAX_B] = uniq
    if config.sparse_embedding and batch["table"].size <= SPARSE_FRACTION * config.n_vocab:
        table = batch["table"]
        uniq, inverse = jnp.unique(table, size=table.size, fill_value=config.n_vocab + 1, return_inverse=True)
        batch["table"] = inverse.reshape(table.shape)
        rows[WORD_EMBEDDING] = uniq
    view = _map_rows(_gather_rows, params, rows)
    return rows, view, batch


def _gather_rows(x: jax.Array, rows: jax.Array) -> jax.Array:
    return jnp.take(x, rows, axis=0, mode="fill", fill_value=0)


def _scatter_rows(x: jax.Array, rows: jax.Array, values: jax.Array) -> jax.Array:
    # padding ids are out of range: dropped
    return x.at[rows].set(values.astype(x.dtype), mode="drop")


def train_step(state: TrainState, batch: dict, config: StepConfig) -> tuple[TrainState, dict]:
    """One optimisation step: ``(state, batch) -> (state, metrics)``.

    A non-finite loss or gradient leaves parameters, optimiser state and LSTM states as they were
    and counts a bad step. With ``config.sparse`` the softmax (and a word-level embedding) is
    differentiated, clipped and updated on the rows the step touches only, as TensorFlow's sparse
    Adagrad does: Adagrad is elementwise and a row without gradient is left exactly as it is, so
    this is the dense update without the ``[V, P]`` gradient and the passes over every row.
    """
    rng = jax.random.fold_in(state.rng, state.step)
    unroll = config.options.training.unroll_steps
    rows, params, batch = sparse_view(state.params, batch, config)
    opt_state = _map_rows(_gather_rows, state.opt_state, rows)

    def loss_fn(params):
        sums, counts, new_lstm = losses(params, state.lstm, batch, rng, config, train=True)
        per_dir = sums / jnp.maximum(counts, 1)
        total = jnp.mean(per_dir)
        # bilm-tf differentiates total_loss * unroll_steps; with Adagrad's initial accumulator
        # and the clip this factor changes the dynamics, so we keep it
        return total * unroll, (total, per_dir, counts, new_lstm)

    grads, (total, per_dir, counts, new_lstm) = jax.grad(loss_fn, has_aux=True)(params)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(total) & jnp.isfinite(grad_norm)
    # a non-finite step becomes a zero gradient inside the optimiser's clip, which leaves
    # Adagrad's parameters and accumulators exactly as they were; cheaper than selecting
    # between two whole states
    updates, opt_state = make_optimizer(config.options).update(
        grads, opt_state, params, global_norm=grad_norm, finite=ok
    )
    params = optax.apply_updates(params, updates)
    if rows:  # the updated rows back into the full arrays
        params = _map_rows(_scatter_rows, state.params, rows, params)
        opt_state = _map_rows(_scatter_rows, state.opt_state, rows, opt_state)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        opt_state=opt_state,
        lstm=jax.tree_util.tree_map(
            lambda a, b: jnp.where(ok, jax.lax.stop_gradient(a), b), new_lstm, state.lstm
        ),
        rng=state.rng,
        bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
    )
    if config.mesh is not None:
        new_state = jax.lax.with_sharding_constraint(new_state, state_shardings(config.mesh))
    metrics = {
        "loss": total,
        "loss_forward": per_dir[0],
        "loss_backward": per_dir[1],
        "grad_norm": grad_norm,
    }
    return new_state, metrics


def eval_step(
    params: dict, lstm: LSTMState, batch: dict, config: StepConfig
) -> tuple[jax.Array, jax.Array, LSTMState]:
    """Full-softmax loss sums ``[2]``, token counts ``[2]`` and the carried LSTM states."""
    return losses(params, lstm, batch, jax.random.PRNGKey(0), config, train=False)


#: the jitted steps, shared by every run of a process with an equal :class:`StepConfig`
jit_train_step = jax.jit(train_step, static_argnames="config", donate_argnames="state")
jit_eval_step = jax.jit(eval_step, static_argnames="config")


def init_state(
    config: StepConfig, global_rows: int, key: jax.Array, bilm_params: dict | None = None
) -> TrainState:
    """A fresh train state; ``bilm_params`` (e.g. from ``--init-from``) replace the random biLM weights."""
    k_model, k_softmax, k_rng = jax.random.split(key, 3)
    options = config.options
    bilm = bilm_params if bilm_params is not None else init_params(options, k_model, config.numerics)
    params = {
        "bilm": bilm["params"],
        "softmax": init_softmax(
            config.n_vocab, options.projection_dim, k_softmax, config.numerics.param_dtype
        ),
    }
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=make_optimizer(options).init(params),
        lstm=zero_state(options, global_rows),
        rng=k_rng,
        bad_steps=jnp.zeros((), jnp.int32),
    )


# --- devices: mesh, shardings, host batches -------------------------------------------------------


def state_shardings(mesh: Mesh) -> TrainState:
    """LSTM states split on their batch axis, everything else replicated."""
    replicated = NamedSharding(mesh, P())
    rows = NamedSharding(mesh, P(None, None, "data"))
    return TrainState(
        step=replicated,
        params=replicated,
        opt_state=replicated,
        lstm=LSTMState(rows, rows),
        rng=replicated,
        bad_steps=replicated,
    )


class DataParallel:
    """A one-axis device mesh over ``devices`` and this process's share of a global batch."""

    def __init__(self, rows_per_device: int, devices: Sequence | None = None):
        devices = list(devices) if devices is not None else jax.devices()
        self.mesh = Mesh(np.array(devices), ("data",))
        self.n_devices = len(devices)
        self.n_local = sum(d.process_index == jax.process_index() for d in devices)
        self.rows_per_device = rows_per_device
        self.platform = devices[0].platform
        self.global_rows = rows_per_device * self.n_devices
        self.local_rows = rows_per_device * self.n_local

    def put(self, local: np.ndarray, spec: P) -> jax.Array:
        """This process's rows of a global array, placed on the mesh."""
        sharding = NamedSharding(self.mesh, spec)
        if jax.process_count() == 1:
            return jax.device_put(local, sharding)
        return jax.make_array_from_process_local_data(sharding, local)

    def put_state(self, state: TrainState) -> TrainState:
        return jax.device_put(state, state_shardings(self.mesh))

    def put_lstm(self, lstm: LSTMState) -> LSTMState:
        return jax.device_put(lstm, state_shardings(self.mesh).lstm)

    def host_batch(self, windows: tuple[Window, Window], options: ElmoOptions) -> HostBatch:
        """The numpy side of :meth:`batch`: no device, no collective, so it can run in a thread.

        Each device gets a table of its distinct tokens (padded to a bucket shared by all devices)
        and indices into it; no device reads another's table. Across processes the bucket is agreed on in
        :meth:`place` (the arrays are assembled there then), since every process must compile the
        same shapes; a fixed table size needs no agreement.
        """
        width = options.char_cnn.max_width if options.char_cnn is not None else None
        fixed = fixed_table_size(self.platform, self.rows_per_device, windows[0].mask.shape[1])
        per_device, bucket, keep = train_arrays(windows, self.n_local, self.rows_per_device, width, fixed)
        if jax.process_count() > 1 and fixed is None:
            return HostBatch(None, (windows, per_device, bucket, keep))
        return HostBatch(assemble_train_batch(windows, per_device, bucket, keep))

    def place(self, host: HostBatch, negatives: tuple[np.ndarray, np.ndarray] | None = None) -> dict:
        """Device arrays of one step from :meth:`host_batch`'s; ``negatives`` (the sampled softmax's
        ids and tries) are replicated."""
        arrays = host.arrays
        if arrays is None:
            windows, per_device, bucket, keep = host.pending
            agreed = multihost_utils.process_allgather(np.array([bucket, keep])).max(0)
            bucket, keep = (int(v) for v in agreed)
            arrays = assemble_train_batch(windows, per_device, bucket, keep)
        by_rows = P(None, "data")
        batch = {
            "table": self.put(arrays["table"], P("data")),
            "index": self.put(arrays["index"], by_rows),
            "targets": self.put(arrays["targets"], by_rows),
            "mask": self.put(arrays["mask"], by_rows),
        }
        if negatives is not None:
            replicated = NamedSharding(self.mesh, P())
            batch["sampled"] = jax.device_put(negatives[0], replicated)
            batch["num_tries"] = jax.device_put(negatives[1], replicated)
        return batch

    def batch(
        self,
        windows: tuple[Window, Window],
        options: ElmoOptions,
        negatives: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict:
        """Device arrays of one step from this process's forward and backward windows
        (:meth:`host_batch`, then :meth:`place`)."""
        return self.place(self.host_batch(windows, options), negatives)


@dataclasses.dataclass
class HostBatch:
    """One step's host arrays (``table``, ``index``, ``targets``, ``mask``), or, when processes
    must first agree on the table bucket, what :func:`assemble_train_batch` needs."""

    arrays: dict[str, np.ndarray] | None
    pending: tuple | None = None


# --- the loop ---------------------------------------------------------------------------------------


class _Preemption:
    """Turns SIGTERM/SIGINT into a flag the loop checks, so a checkpoint can be written first."""

    def __init__(self):
        self.signal: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def prepare_options(options: ElmoOptions, config: TrainConfig, vocab: Vocabulary) -> ElmoOptions:
    """Fill the keys bilm-tf derives from the data: ``n_tokens_vocab`` and ``n_train_tokens``."""
    if options.n_tokens_vocab is not None and options.n_tokens_vocab != len(vocab):
        print(
            f"note: n_tokens_vocab {options.n_tokens_vocab} in the options replaced by the vocabulary size "
            f"{len(vocab)} of {vocab.source}",
            file=sys.stderr,
        )
    options = options.replace(n_tokens_vocab=len(vocab))
    if options.training.n_train_tokens is None:
        options = options.replace_training(n_train_tokens=count_tokens(config.train_prefix))
    return options


def train(
    options: ElmoOptions,
    config: TrainConfig,
    *,
    devices: list | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train (or resume) a biLM in ``config.save_dir``; returns the last logged metrics.

    Running again on an existing run directory resumes from its latest complete checkpoint with
    the exact data position, and stops at the same final step. The directory is locked for the
    run (:mod:`elmojax.runlock`, held by process 0): a second run on it stops at once.
    """
    save_dir = check_writable_dir(config.save_dir)
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock(save_dir)
        except ElmoError as e:
            error = e
    # every process learns of process 0's refusal instead of waiting for it in a collective
    if not all(all_succeeded(error is None)):
        raise error or ElmoError(f"{save_dir}: process 0 could not lock the run directory; see its error")
    try:
        return _train_locked(options, config, devices=devices, on_step=on_step)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(
    options: ElmoOptions,
    config: TrainConfig,
    *,
    devices: list | None,
    on_step: Callable[[int, dict], None] | None,
) -> dict:
    # -- run directory, options and vocabulary
    save_dir = check_writable_dir(config.save_dir)
    resolve_files(config.train_prefix)  # fail early on a pattern that matches nothing
    resuming = (save_dir / "options.json").exists()
    if resuming:
        if config.vocab_file is None:
            options_saved, vocab = load_run(save_dir)
        else:
            vocab = Vocabulary.from_file(config.vocab_file).require_specials()
            options_saved = prepare_options(options, config, vocab)
        check_run_compatible(save_dir, options_saved)
        options = options_saved
    else:
        if config.vocab_file is None:
            raise ElmoError("--vocab-file is required for a new training run")
        vocab = Vocabulary.from_file(config.vocab_file).require_specials()
        options = prepare_options(options, config, vocab)
    options.check_trainable()
    t = options.training

    # -- devices and the step
    par = DataParallel(t.batch_size, devices)
    step_config = StepConfig(options, len(vocab), numerics=config.numerics, mesh=par.mesh)
    flops_per_token = model_flops(options, sampled=step_config.sample_softmax, n_vocab=len(vocab)).training
    if jax.process_index() == 0:
        print(
            f"model: {flops_per_token / 1e9:.3f} GFLOP per token per training step (bilm-tf's count); "
            f"{par.n_devices} device(s), {par.global_rows} rows, "
            f"compute dtype {config.numerics.compute_dtype}",
            file=sys.stderr,
        )
    total_steps = config.max_steps or max(
        1, int(t.n_epochs * t.n_train_tokens / (par.global_rows * t.unroll_steps))
    )

    # -- data: this process's rows of both directions' window streams
    # the streams gather character rows by token id (elmojax.tokens): no per-token cache to pre-fill
    batcher = Batcher(options.char_cnn.max_characters_per_token) if options.char_cnn else None
    stream = BidirectionalStream(
        config.train_prefix,
        vocab,
        par.local_rows,
        t.unroll_steps,
        batcher,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )

    # -- state: the latest readable checkpoint, or a fresh start
    mngr = checkpoint_manager(save_dir, every=config.checkpoint_every, keep=config.keep_checkpoints)
    metrics_path = save_dir / "metrics.jsonl"
    shapes = jax.eval_shape(lambda: init_state(step_config, par.global_rows, jax.random.PRNGKey(0)))
    abstract = jax.tree_util.tree_map(  # shardings are a prefix of the state tree
        lambda sharding, sub: jax.tree_util.tree_map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), sub
        ),
        state_shardings(par.mesh),
        shapes,
    )
    restored, latest = restore_latest(mngr, abstract, save_dir)
    if restored is not None:
        state = restored["state"]
        stream.load_state_dict(restored["data"]["process"][str(jax.process_index())])
        truncate_metrics(metrics_path, latest)
        print(f"resuming {save_dir} from step {latest}", file=sys.stderr)
    else:
        init = load_weights(config.init_from, options) if config.init_from else None
        state = par.put_state(init_state(step_config, par.global_rows, jax.random.PRNGKey(config.seed), init))
        if jax.process_index() == 0:
            options.save(save_dir / "options.json")
            vocab.save(save_dir / "vocab.txt")
            metrics_path.unlink(missing_ok=True)
    start = int(state.step)

    position = stream.position()  # the stream position that belongs with `state`

    def save(step: int, force: bool = False) -> None:
        if mngr.latest_step() == step or not (force or mngr.should_save(step)):
            return
        data = {"process": gather_positions(position.to_dict())}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        mngr.save(step, args=args, force=force)

    # -- the loop
    from tqdm import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start,
        disable=not config.progress or jax.process_index() != 0,
        unit="step",
        dynamic_ncols=True,
    )
    last: dict = {}
    tokens_per_step = par.global_rows * t.unroll_steps  # counted as bilm-tf counts n_train_tokens
    tokens_done, t_last, tokens_since = start * tokens_per_step, time.time(), 0
    compiled: set[tuple[int, ...]] = set()
    compile_s = 0.0  # first step of each table shape, compilation included
    produced = start
    # one process places batches from the prefetch thread too (the copies overlap the step);
    # several must agree on table shapes through a collective, kept in the loop's thread
    place_ahead = jax.process_count() == 1

    def produce() -> tuple[dict | tuple[HostBatch, Any], Any]:
        # runs in the prefetch thread: the only user of `stream` from here on
        nonlocal produced
        negatives = None
        if step_config.sample_softmax:
            negatives = sample_negatives(config.seed, produced, len(vocab), t.n_negative_samples_batch)
        host = par.host_batch(next(stream), options)
        produced += 1
        return (par.place(host, negatives) if place_ahead else (host, negatives)), stream.position()

    with (
        _Preemption() as preempt,
        open(metrics_path, "a", encoding="utf-8") as mlog,
        Prefetcher(produce, depth=PREFETCH_STEPS, name="elmojax-train-batches") as batches,
    ):
        step = start
        while step < total_steps:
            item, next_position = next(batches)
            batch = item if place_ahead else par.place(*item)
            if batch["table"].shape in compiled:
                state, metrics = jit_train_step(state, batch, step_config)
            else:  # a new table shape: compiled now (or read from the persistent cache)
                t_compile = time.time()
                state, metrics = jax.block_until_ready(jit_train_step(state, batch, step_config))
                compile_s += time.time() - t_compile
                compiled.add(batch["table"].shape)
            step += 1
            position = next_position
            tokens_since += tokens_per_step
            if step % config.log_every == 0 or step == total_steps or step == start + 1:
                m = jax.device_get(metrics)
                now = time.time()
                tokens_done += tokens_since
                tokens_per_s = tokens_since / max(now - t_last, 1e-9)
                last = {
                    "step": step,
                    "tokens": tokens_done,
                    "train_perplexity": float(np.exp(min(m["loss"], 50.0))),
                    "loss_forward": float(m["loss_forward"]),
                    "loss_backward": float(m["loss_backward"]),
                    "tokens_per_s": tokens_per_s,
                    "model_tflops_per_s": tokens_per_s * flops_per_token / 1e12,
                    "grad_norm": float(m["grad_norm"]),
                    "learning_rate": t.learning_rate,
                    "compile_s": round(compile_s, 3),
                }
                t_last, tokens_since = now, 0
                if jax.process_index() == 0:
                    mlog.write(json.dumps(last) + "\n")
                    mlog.flush()
                bar.set_postfix(ppl=f"{last['train_perplexity']:.1f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if on_step is not None:
                    on_step(step, last)
                if int(state.bad_steps) >= config.max_bad_steps:
                    bar.close()
                    raise ElmoError(
                        f"{save_dir}: {int(state.bad_steps)} consecutive steps up to step {step} had a "
                        f"non-finite loss or gradient; stopped, the last good checkpoint is step "
                        f"{mngr.latest_step()}. Lower learning_rate or check the data"
                    )
            bar.update(1)
            # reading bad_steps waits for the step; only where a checkpoint is due, so the loop
            # otherwise queues the next step while this one runs
            if mngr.should_save(step) and int(state.bad_steps) == 0:
                save(step)
            if preempt.signal is not None:
                save(step, force=True)
                mngr.wait_until_finished()
                bar.close()
                print(
                    f"stopped by signal {preempt.signal} at step {step}; checkpoint saved. Run the same "
                    "command again to resume.",
                    file=sys.stderr,
                )
                return {**last, "preempted": True, "step": step}
        save(step, force=True)
        mngr.wait_until_finished()
    bar.close()
    return last


def options_with_overrides(path: str | Path, **training: Any) -> ElmoOptions:
    """Load options and override training keys given on the command line (None = keep)."""
    options = load_options(path)
    changes = {k: v for k, v in training.items() if v is not None}
    if changes:
        options = options_from_dict({**options.to_dict(), **changes}, source=str(path))
    return options
