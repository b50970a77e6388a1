"""Training the biLM as bilm-tf does: windowed streams, sampled softmax, Adagrad, exact resume.

The step is one pure function ``(state, batch) -> (state, metrics)``, jitted once per bucketed
shape. Data parallelism is a one-axis device mesh: the batch and the LSTM states are sharded on
the batch axis, parameters and optimiser state are replicated, and XLA inserts the gradient
all-reduce. Across hosts the same code runs after ``jax.distributed.initialize()``; each process
reads its own slice of the shards and contributes its rows of the global batch.

Checkpoints (orbax ``CheckpointManager``) hold the parameters, optimiser state, step, LSTM states,
RNG key and the data streams' exact position, so that resuming gives bit-for-bit the parameters
of an uninterrupted run on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
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

from elmojax.data import BidirectionalStream, Window, count_tokens, resolve_files
from elmojax.errors import ElmoError
from elmojax.fileio import atomic_write_text, check_writable_dir
from elmojax.model import BiLM, LSTMState, zero_state
from elmojax.options import ElmoOptions, load_options, options_from_dict
from elmojax.softmax import full_softmax_loss, sample_log_uniform, sampled_softmax_loss
from elmojax.vocab import Batcher, Vocabulary, trim_char_ids
from elmojax.weights import load_weights

#: consecutive non-finite steps after which training stops with an error
MAX_BAD_STEPS = 10


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


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; saved whole in each checkpoint."""

    step: jax.Array
    params: Any  # {"bilm": ..., "softmax": {"W": [V, P], "b": [V]}}
    opt_state: Any
    lstm: LSTMState  # c [n_dirs, L, B, H], h [n_dirs, L, B, P]
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


def init_softmax(options: ElmoOptions, n_vocab: int, key: jax.Array) -> dict:
    """Softmax ``W [V, P]`` ~ N(0, 1/sqrt(P)) and ``b [V]`` = 0, as bilm-tf initialises them."""
    p = options.projection_dim
    return {"W": jax.random.normal(key, (n_vocab, p), jnp.float32) / np.sqrt(p), "b": jnp.zeros((n_vocab,))}


class Trainer:
    """Builds the model, mesh, jitted step and host-side batches for one options file."""

    def __init__(self, options: ElmoOptions, n_vocab: int, *, devices: Sequence | None = None):
        self.options = options
        self.n_vocab = n_vocab
        self.model = BiLM(options)
        self.n_dirs = 2 if options.training.bidirectional else 1
        devices = devices if devices is not None else jax.devices()
        self.mesh = Mesh(np.array(devices), ("data",))
        self.n_devices = len(devices)
        self.local_devices = [d for d in devices if d.process_index == jax.process_index()]
        self.rows_per_device = options.training.batch_size
        self.global_rows = self.rows_per_device * self.n_devices
        self.local_rows = self.rows_per_device * len(self.local_devices)
        self.optimizer = make_optimizer(options)
        self.replicated = NamedSharding(self.mesh, P())
        self.rows = NamedSharding(self.mesh, P("data"))
        self.state_rows = NamedSharding(self.mesh, P(None, None, "data"))
        n_sampled = options.training.n_negative_samples_batch
        self.sample_softmax = options.training.sample_softmax and n_sampled < n_vocab
        self._step = jax.jit(self._step_impl, donate_argnums=0, out_shardings=(self.state_shardings(), None))
        self._eval = jax.jit(self._eval_impl)

    # -- state -----------------------------------------------------------------------------------

    def state_shardings(self) -> TrainState:
        return TrainState(
            step=self.replicated,
            params=self.replicated,
            opt_state=self.replicated,
            lstm=LSTMState(self.state_rows, self.state_rows),
            rng=self.replicated,
            bad_steps=self.replicated,
        )

    def init_state(self, key: jax.Array, bilm_params: dict | None = None) -> TrainState:
        """Fresh state; ``bilm_params`` (e.g. from ``--init-from``) replace the random biLM weights."""
        from elmojax.model import init_params

        k_model, k_softmax, k_rng = jax.random.split(key, 3)
        bilm = (
            bilm_params["params"] if bilm_params is not None else init_params(self.options, k_model)["params"]
        )
        params = {"bilm": bilm, "softmax": init_softmax(self.options, self.n_vocab, k_softmax)}
        params = jax.tree_util.tree_map(jnp.asarray, params)
        state = TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            lstm=zero_state(self.options, self.global_rows, self.n_dirs),
            rng=k_rng,
            bad_steps=jnp.zeros((), jnp.int32),
        )
        return jax.device_put(state, self.state_shardings())

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state, for restoring a checkpoint."""
        shapes = jax.eval_shape(lambda: self.init_state(jax.random.PRNGKey(0)))

        def attach(sharding, subtree):
            return jax.tree_util.tree_map(
                lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), subtree
            )

        return jax.tree_util.tree_map(attach, self.state_shardings(), shapes)

    # -- host-side batches -----------------------------------------------------------------------

    def make_batch(
        self, windows: tuple[Window, Window | None], step: int, seed: int = 0, sample: bool = True
    ) -> dict:
        """Device arrays for one step from the forward (and backward) windows of this process.

        The token inputs are deduplicated per device: each device gets a table of its distinct
        tokens (padded to a shared bucket) and indices into the global table, so the character
        CNN runs once per distinct token rather than once per position.
        """
        wins = [w for w in windows if w is not None]
        char = self.options.char_cnn is not None
        n_local = len(self.local_devices)
        r = self.rows_per_device
        per_device = []
        for d in range(n_local):
            rows = slice(d * r, (d + 1) * r)
            if char:
                inputs = np.stack([w.char_ids[rows] for w in wins])  # [dirs, r, T, C]
                flat = inputs.reshape(-1, inputs.shape[-1])
            else:
                inputs = np.stack([w.token_ids[rows] + 1 for w in wins])  # shifted ids
                flat = inputs.reshape(-1)
            table, inverse = np.unique(flat, axis=0, return_inverse=True)
            per_device.append((table, inverse.reshape(inputs.shape[:3])))
        keep = 0
        if char:
            width = self.options.char_cnn.max_width
            keep = max(trim_char_ids(t, width).shape[-1] for t, _ in per_device)
        bucket = max(_bucket(len(t)) for t, _ in per_device)
        if jax.process_count() > 1:  # every process must compile the same shapes
            bucket, keep = (
                int(v) for v in multihost_utils.process_allgather(np.array([bucket, keep])).max(0)
            )
        if char:
            per_device = [(t[:, :keep], inv) for t, inv in per_device]
        first_global = jax.process_index() * n_local
        tables, index = [], []
        for d, (table, inv) in enumerate(per_device):
            pad = [(0, bucket - len(table))] + [(0, 0)] * (table.ndim - 1)
            tables.append(np.pad(table, pad).astype(np.int32))
            index.append(inv + (first_global + d) * bucket)
        batch = {
            "table": np.concatenate(tables),
            "index": np.concatenate(index, axis=1).astype(np.int32),  # [dirs, local_rows, T]
            "targets": np.stack([w.targets for w in wins]).astype(np.int32),
            "mask": np.stack([w.mask for w in wins]),
        }
        sharded = {
            "table": self._global(batch["table"], self.rows),
            "index": self._global(batch["index"], NamedSharding(self.mesh, P(None, "data"))),
            "targets": self._global(batch["targets"], NamedSharding(self.mesh, P(None, "data"))),
            "mask": self._global(batch["mask"], NamedSharding(self.mesh, P(None, "data"))),
        }
        if sample and self.sample_softmax:
            rng = np.random.default_rng([seed, step, 7])
            draws = [
                sample_log_uniform(rng, self.n_vocab, self.options.training.n_negative_samples_batch)
                for _ in wins
            ]
            sharded["sampled"] = jax.device_put(np.stack([d[0] for d in draws]), self.replicated)
            sharded["num_tries"] = jax.device_put(
                np.array([d[1] for d in draws], np.float32), self.replicated
            )
        return sharded

    def _global(self, local: np.ndarray, sharding: NamedSharding) -> jax.Array:
        if jax.process_count() == 1:
            return jax.device_put(local, sharding)
        return jax.make_array_from_process_local_data(sharding, local)

    # -- the step --------------------------------------------------------------------------------

    def _directions(self, params, lstm: LSTMState, batch: dict, rng, train: bool):
        """Per-direction mean losses, token counts and new LSTM states."""
        vectors = self.model.apply({"params": params["bilm"]}, batch["table"], method=BiLM.embed_tokens)
        w, b = params["softmax"]["W"], params["softmax"]["b"]
        dropout = self.options.training.dropout if train else 0.0
        n_dirs = batch["index"].shape[0]
        masks = [batch["mask"][d] for d in range(n_dirs)]
        k_lstm, k_top = jax.random.split(rng)
        runs = self.model.apply(
            {"params": params["bilm"]},
            [jnp.take(vectors, batch["index"][d], axis=0) for d in range(n_dirs)],  # [B, T, P] each
            masks,
            [(lstm.c[d], lstm.h[d]) for d in range(n_dirs)],
            deterministic=not train,
            method=BiLM.run_directions,
            rngs={"dropout": k_lstm},
        )
        sums, counts, cs, hs = [], [], [], []
        for d, (layers, (c, h)) in enumerate(runs):
            top = layers[-1]
            if dropout > 0:
                keep = jax.random.bernoulli(jax.random.fold_in(k_top, d), 1.0 - dropout, top.shape)
                top = jnp.where(keep, top / (1.0 - dropout), 0.0)
            flat = top.reshape(-1, top.shape[-1])
            labels = batch["targets"][d].reshape(-1)
            if train and self.sample_softmax:
                losses = sampled_softmax_loss(w, b, flat, labels, batch["sampled"][d], batch["num_tries"][d])
            else:
                losses = full_softmax_loss(w, b, flat, labels)
            m = masks[d].reshape(-1)
            sums.append(jnp.sum(jnp.where(m, losses, 0.0)))
            counts.append(jnp.sum(m))
            cs.append(c)
            hs.append(h)
        new_lstm = LSTMState(jnp.stack(cs), jnp.stack(hs))
        return jnp.stack(sums), jnp.stack(counts), new_lstm

    def _step_impl(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        unroll = self.options.training.unroll_steps

        def loss_fn(params):
            sums, counts, new_lstm = self._directions(params, state.lstm, batch, rng, train=True)
            per_dir = sums / jnp.maximum(counts, 1)
            total = jnp.mean(per_dir)
            # bilm-tf differentiates total_loss * unroll_steps; with Adagrad's initial accumulator
            # and the clip this factor changes the dynamics, so we keep it
            return total * unroll, (total, per_dir, counts, new_lstm)

        grads, (total, per_dir, counts, new_lstm) = jax.grad(loss_fn, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        ok = jnp.isfinite(total) & jnp.isfinite(grad_norm)
        # a non-finite step becomes a zero gradient inside the optimiser's clip, which leaves
        # Adagrad's parameters and accumulators exactly as they were; cheaper than selecting
        # between two whole states
        updates, opt_state = self.optimizer.update(
            grads, state.opt_state, state.params, global_norm=grad_norm, finite=ok
        )
        params = optax.apply_updates(state.params, updates)
        new_lstm = jax.tree_util.tree_map(
            lambda a, b: jnp.where(ok, jax.lax.stop_gradient(a), b), new_lstm, state.lstm
        )
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            lstm=new_lstm,
            rng=state.rng,
            bad_steps=jnp.where(ok, 0, state.bad_steps + 1),
        )
        metrics = {
            "loss": total,
            "loss_forward": per_dir[0],
            "loss_backward": per_dir[-1],
            "grad_norm": grad_norm,
            "n_tokens": jnp.sum(counts),
            "finite": ok,
        }
        return new_state, metrics

    def _eval_impl(self, params, lstm: LSTMState, batch: dict):
        return self._directions(params, lstm, batch, jax.random.PRNGKey(0), train=False)

    def eval_step(self, params, lstm: LSTMState, batch: dict) -> tuple[jax.Array, jax.Array, LSTMState]:
        """Full-softmax loss sums ``[dirs]``, token counts ``[dirs]`` and the carried LSTM states."""
        return self._eval(params, lstm, batch)

    def step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimisation step (jitted; the input state is donated)."""
        return self._step(state, batch)


@functools.lru_cache(maxsize=8)
def _cached_trainer(options: ElmoOptions, n_vocab: int, devices: tuple) -> Trainer:
    return Trainer(options, n_vocab, devices=list(devices))


def get_trainer(options: ElmoOptions, n_vocab: int, devices: Sequence | None = None) -> Trainer:
    """A :class:`Trainer` shared by runs with the same options and devices, so its jitted
    functions compile once per process (resuming, evaluating and exporting in one process)."""
    return _cached_trainer(options, n_vocab, tuple(devices if devices is not None else jax.devices()))


def _bucket(n: int) -> int:
    """Distinct-token table sizes: multiples of 64 up to 512, then eight steps per doubling.

    At most 12.5% padding (about 6% on average) for at most eight compiled shapes per octave;
    batches of one corpus vary by a few percent, so a run sees only a handful of them.
    """
    if n <= 512:
        return -(-max(n, 1) // 64) * 64
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step


# --- run directories and checkpoints ------------------------------------------------------------


def checkpoint_manager(save_dir: str | Path, *, every: int = 1000, keep: int = 3) -> ocp.CheckpointManager:
    """The orbax manager of ``save_dir/checkpoints`` (synchronous, atomic per step)."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(
        Path(save_dir).absolute() / "checkpoints",
        options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()},
    )


def load_run(save_dir: str | Path) -> tuple[ElmoOptions, Vocabulary]:
    """Options and vocabulary of a training run directory."""
    save_dir = Path(save_dir)
    if not (save_dir / "options.json").exists():
        raise ElmoError(
            f"{save_dir}: not a training run directory (no options.json); run `elmojax train` first"
        )
    options = load_options(save_dir / "options.json")
    return options, Vocabulary.from_file(save_dir / "vocab.txt")


def restore_params(save_dir: str | Path) -> tuple[dict, int]:
    """Parameters ``{"bilm", "softmax"}`` of the latest complete checkpoint and its step.

    Only the parameters are needed, so the target is built from the checkpoint's own metadata:
    this works whatever batch size or number of devices the run was trained with.
    """
    mngr = checkpoint_manager(save_dir)
    step = mngr.latest_step()
    if step is None:
        raise ElmoError(
            f"{save_dir}: no complete checkpoint found; train first (elmojax train --save-dir ...)"
        )
    sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
    meta = mngr.item_metadata(step)["state"]
    target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta)
    restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
    return restored["state"]["params"], step


def _check_run_compatible(save_dir: Path, options: ElmoOptions) -> None:
    saved = load_options(save_dir / "options.json")
    if saved.to_dict() != options.to_dict():
        diff = sorted(
            k
            for k in set(saved.to_dict()) | set(options.to_dict())
            if saved.to_dict().get(k) != options.to_dict().get(k)
        )
        raise ElmoError(
            f"{save_dir}: run directory was written with other options (differs in: {', '.join(diff)}); "
            "use a new --save-dir or the same options file to resume"
        )


# --- the loop -----------------------------------------------------------------------------------


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
    the exact data position, and stops at the same final step.
    """
    save_dir = check_writable_dir(config.save_dir)
    resolve_files(config.train_prefix)  # fail early on a pattern that matches nothing
    resuming = (save_dir / "options.json").exists()
    if resuming:
        if config.vocab_file is None:
            options_saved, vocab = load_run(save_dir)
        else:
            vocab = Vocabulary.from_file(config.vocab_file).require_specials()
            options_saved = prepare_options(options, config, vocab)
        _check_run_compatible(save_dir, options_saved)
        options = options_saved
    else:
        if config.vocab_file is None:
            raise ElmoError("--vocab-file is required for a new training run")
        vocab = Vocabulary.from_file(config.vocab_file).require_specials()
        options = prepare_options(options, config, vocab)
    t = options.training
    trainer = get_trainer(options, len(vocab), devices)
    total_steps = config.max_steps or max(
        1, int(t.n_epochs * t.n_train_tokens / (trainer.global_rows * t.unroll_steps))
    )
    batcher = Batcher(options.char_cnn.max_characters_per_token, vocab) if options.char_cnn else None
    stream = BidirectionalStream(
        config.train_prefix,
        vocab,
        trainer.local_rows,
        t.unroll_steps,
        batcher,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        bidirectional=t.bidirectional,
    )
    mngr = checkpoint_manager(save_dir, every=config.checkpoint_every, keep=config.keep_checkpoints)
    metrics_path = save_dir / "metrics.jsonl"
    restored, latest = _restore_latest(mngr, trainer, save_dir)
    if restored is not None:
        state = restored["state"]
        stream.load_state_dict(restored["data"]["process"][str(jax.process_index())])
        _truncate_metrics(metrics_path, latest)
        print(f"resuming {save_dir} from step {latest}", file=sys.stderr)
    else:
        init = load_weights(config.init_from, options) if config.init_from else None
        state = trainer.init_state(jax.random.PRNGKey(config.seed), init)
        if jax.process_index() == 0:
            options.save(save_dir / "options.json")
            vocab.save(save_dir / "vocab.txt")
            metrics_path.unlink(missing_ok=True)
    start = int(state.step)

    def save(step: int, force: bool = False) -> None:
        if mngr.latest_step() == step or not (force or mngr.should_save(step)):
            return
        data = {"process": _gather_positions(stream.state_dict())}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data))
        mngr.save(step, args=args, force=force)

    from tqdm import tqdm

    bar = tqdm(
        total=total_steps,
        initial=start,
        disable=not config.progress or jax.process_index() != 0,
        unit="step",
        dynamic_ncols=True,
    )
    last: dict = {}
    tokens_per_step = trainer.global_rows * t.unroll_steps  # counted as bilm-tf counts n_train_tokens
    tokens_done, t_last, tokens_since = start * tokens_per_step, time.time(), 0
    with _Preemption() as preempt, open(metrics_path, "a", encoding="utf-8") as mlog:
        step = start
        while step < total_steps:
            batch = trainer.make_batch(next(stream), step, config.seed)
            state, metrics = trainer.step(state, batch)
            step += 1
            tokens_since += tokens_per_step
            if step % config.log_every == 0 or step == total_steps or step == start + 1:
                m = jax.device_get(metrics)
                now = time.time()
                tokens_done += tokens_since
                last = {
                    "step": step,
                    "tokens": tokens_done,
                    "train_perplexity": float(np.exp(min(m["loss"], 50.0))),
                    "loss_forward": float(m["loss_forward"]),
                    "loss_backward": float(m["loss_backward"]),
                    "tokens_per_s": tokens_since / max(now - t_last, 1e-9),
                    "grad_norm": float(m["grad_norm"]),
                    "learning_rate": t.learning_rate,
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
            if int(state.bad_steps) == 0:
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


def _restore_latest(mngr: ocp.CheckpointManager, trainer: Trainer, save_dir: Path) -> tuple[Any, int | None]:
    """Restore the newest readable checkpoint; an unreadable one (a damaged disk, a copy cut short)
    is skipped with a warning in favour of the one before it."""
    steps = sorted(mngr.all_steps(), reverse=True)
    unreadable: list[int] = []
    for step in steps:
        try:
            restored = mngr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(trainer.abstract_state()), data=ocp.args.JsonRestore()
                ),
            )
            for bad in unreadable:  # moved aside (not deleted) so that training can write these steps again
                src = Path(mngr.directory) / str(bad)
                src.rename(src.with_name(f"{bad}.unreadable-{int(time.time())}"))
            mngr.reload()
            return restored, step
        except ValueError as e:
            if "not compatible" in str(e) or "shape" in str(e):
                raise ElmoError(
                    f"{save_dir}: checkpoint {step} does not fit this run ({str(e).splitlines()[0][:200]}); "
                    "resume with the same options, batch size and number of devices"
                ) from None
            print(
                f"warning: {save_dir}: checkpoint {step} is unreadable ({e}); trying an older one",
                file=sys.stderr,
            )
        except Exception as e:  # noqa: BLE001 - any damage to one step must not lose the run
            unreadable.append(step)
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            print(
                f"warning: {save_dir}: checkpoint {step} is unreadable ({first}); trying an older one",
                file=sys.stderr,
            )
    if steps:
        raise ElmoError(f"{save_dir}: no readable checkpoint among steps {steps}; use a new --save-dir")
    return None, None


def _gather_positions(position: dict) -> dict[str, dict]:
    """Every process's data-stream position, keyed by process index (one collective on multi-host)."""
    if jax.process_count() == 1:
        return {"0": position}
    raw = np.frombuffer(json.dumps(position).encode(), np.uint8)
    size = int(multihost_utils.process_allgather(np.array(len(raw))).max())
    gathered = multihost_utils.process_allgather(np.pad(raw, (0, size - len(raw)), constant_values=32))
    return {str(i): json.loads(bytes(p).decode()) for i, p in enumerate(gathered)}


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue  # a line cut by a kill
    atomic_write_text(path, "".join(f"{x}\n" for x in keep))


def export_run(save_dir: str | Path, outfile: str | Path) -> Path:
    """Write the standard ELMo files of a run: weights HDF5 + ``options.json`` + ``vocab.txt`` beside it."""
    from elmojax.weights import save_weights

    options, vocab = load_run(save_dir)
    params, step = restore_params(save_dir)
    outfile = Path(outfile)
    check_writable_dir(outfile.parent if str(outfile.parent) else Path("."))
    save_weights({"params": jax.device_get(params["bilm"])}, options, outfile)
    options.save(outfile.parent / "options.json", for_export=True)
    vocab.save(outfile.parent / "vocab.txt")
    return outfile


def options_with_overrides(path: str | Path, **training: Any) -> ElmoOptions:
    """Load options and override training keys given on the command line (None = keep)."""
    options = load_options(path)
    changes = {k: v for k, v in training.items() if v is not None}
    if changes:
        options = options_from_dict({**options.to_dict(), **changes}, source=str(path))
    return options
