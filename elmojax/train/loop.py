"""The training loop: bilm-tf's recipe as a top-to-bottom sequence of named calls.

:func:`train` locks the run directory, settles the options and the vocabulary (new run or
resume), builds the mesh and the step, opens the data stream, restores the latest checkpoint or
starts afresh, then steps: batches come from a producer thread (:mod:`elmojax.data.prefetch`),
metrics go to the writers (:mod:`elmojax.train.metrics`), checkpoints to :mod:`elmojax.train.checkpoints`.
Running the same command again on the same directory resumes exactly where the last complete
checkpoint left off, and stops at the same final step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
from jax.experimental import multihost_utils
from tqdm import tqdm

from elmojax import parallel
from elmojax.config import TrainConfig
from elmojax.data.batches import PendingBatch, StepBatch
from elmojax.data.chars import Batcher
from elmojax.data.negatives import sample_negatives
from elmojax.data.prefetch import Prefetcher
from elmojax.data.streams import BidirectionalPosition, BidirectionalStream, count_tokens, resolve_files
from elmojax.data.tokenizers import copy_record
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError
from elmojax.fileio import check_writable_dir, is_disk_full
from elmojax.model.flops import model_flops, peak_tflops
from elmojax.model.weights import load_weights
from elmojax.options import ElmoOptions, load_options, options_from_dict
from elmojax.parallel import DataParallel
from elmojax.runtime import PEER_LOST_STATUS, exit_at_once
from elmojax.train.checkpoints import (
    Checkpointer,
    check_run_compatible,
    complete_steps,
    disk_full_error,
    load_run,
)
from elmojax.train.heldout import HeldOut
from elmojax.train.heldout import check_settings as check_heldout_settings
from elmojax.train.metrics import Meter, clear_run_metrics, open_writers, truncate_run_metrics
from elmojax.train.profiler import Profiler
from elmojax.train.runlock import RunLock
from elmojax.train.state import TrainState, init_state
from elmojax.train.step import StepConfig, jit_train_step

#: the defaults of TrainConfig.max_bad_steps and TrainConfig.agree_every (a run sets the fields)
MAX_BAD_STEPS = TrainConfig.max_bad_steps
AGREE_EVERY = TrainConfig.agree_every


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
    run (:mod:`elmojax.train.runlock`, held by process 0): a second run on it stops at once.
    ``on_step(step, record)`` is called with every logged record.
    """
    save_dir = check_writable_dir(config.save_dir)
    check_heldout_settings(config)  # before anything is written
    with run_lock(save_dir):
        options, vocab = settle_options(options, config, save_dir)
        par = DataParallel(options.training.batch_size, devices, config.softmax_shards)
        step_config = StepConfig(
            options,
            len(vocab),
            numerics=config.numerics,
            mesh=par.mesh,
            sparse=config.sparse,
            optimizer=config.optimizer,
            sparse_fraction=config.sparse_fraction,
        )
        stream = training_stream(options, config, vocab, par)
        ckpt = Checkpointer(
            save_dir,
            every=config.checkpoint_every,
            keep=config.keep_checkpoints,
            retry_after_s=config.restore_retry_s,
        )
        try:
            state = restore_or_init(ckpt, step_config, par, stream, config, vocab)
            return run_steps(state, step_config, par, stream, ckpt, config, on_step)
        except OSError as e:  # metrics, options or vocabulary writes
            if parallel.is_peer_failure(e):
                peer_lost(save_dir)
            if not is_disk_full(e):
                raise
            raise disk_full_error(
                save_dir, f"writing {e.filename or 'run files'}", ckpt.latest_step()
            ) from None
        except (RuntimeError, ValueError) as e:
            if parallel.is_peer_failure(e):
                peer_lost(save_dir)
            raise
        finally:
            ckpt.close()


def peer_lost(save_dir: Path) -> None:
    """End this process in one line: another process of the job is gone (a collective with it
    failed). Exit status :data:`~elmojax.runtime.PEER_LOST_STATUS`; never returns."""
    steps = complete_steps(save_dir)
    last = f"the last complete checkpoint is step {steps[-1]}" if steps else "no checkpoint is complete yet"
    exit_at_once(
        f"elmojax train: error: process {jax.process_index()} of {jax.process_count()}: another process "
        f"of this job is gone (a collective with it failed); {save_dir}: {last}. Restart all processes "
        "with the same command to resume",
        PEER_LOST_STATUS,
    )


@contextlib.contextmanager
def run_lock(save_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock (process 0 takes it); every process learns of a refusal."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = RunLock(save_dir)
        except ElmoError as e:
            error = e
    # every process learns of process 0's refusal instead of waiting for it in a collective
    if not all(parallel.all_succeeded(error is None)):
        raise error or ElmoError(f"{save_dir}: process 0 could not lock the run directory; see its error")
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def settle_options(
    options: ElmoOptions, config: TrainConfig, save_dir: Path
) -> tuple[ElmoOptions, Vocabulary]:
    """The run's options and vocabulary: a new run's from the arguments, a resumed run's from its
    directory (which the arguments must agree with)."""
    resolve_files(config.train_prefix, arg="train_prefix")  # fail early on a pattern that matches nothing
    if (save_dir / "options.json").exists():
        if config.vocab_file is None:  # the run's own options and vocabulary
            saved, vocab = load_run(save_dir)
        else:
            vocab = Vocabulary.from_file(config.vocab_file).require_specials()
            saved = prepare_options(options, config, vocab)
            # the per-device batch size may change with the number of devices: the checkpoint's
            # global batch is what must match (checked when it is restored)
            check_run_compatible(save_dir, saved, ignore=("batch_size",))
        options = saved.replace_training(batch_size=options.training.batch_size)
    else:
        if config.vocab_file is None:
            raise ElmoError("`vocab_file` is required for a new training run")
        vocab = Vocabulary.from_file(config.vocab_file).require_specials()
        options = prepare_options(options, config, vocab)
    options.check_trainable()
    return options, vocab


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


def training_stream(
    options: ElmoOptions, config: TrainConfig, vocab: Vocabulary, par: DataParallel
) -> BidirectionalStream:
    """This process's rows of both directions' window streams (its slice of the shards)."""
    batcher = Batcher(options.char_cnn.max_characters_per_token) if options.char_cnn else None
    return BidirectionalStream(
        config.train_prefix,
        vocab,
        par.local_rows,
        options.training.unroll_steps,
        batcher,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def restore_or_init(
    ckpt: Checkpointer,
    step_config: StepConfig,
    par: DataParallel,
    stream: BidirectionalStream,
    config: TrainConfig,
    vocab: Vocabulary,
) -> TrainState:
    """The latest readable checkpoint's state (the stream moved to its position), or a fresh
    state (``init_from``'s biLM weights, if given) with the run's files written."""
    save_dir = ckpt.save_dir
    shapes = jax.eval_shape(lambda: init_state(step_config, par.global_rows, jax.random.PRNGKey(0)))
    restored, latest = ckpt.restore(par.abstract_state(shapes), n_devices=par.n_devices)
    if restored is not None:
        processes = len(restored["data"]["process"])
        if processes != jax.process_count():
            raise ElmoError(
                f"{save_dir}: checkpoint {latest} was written by {processes} process(es), each with its own "
                f"position in the data; resume it with {processes} process(es), not {jax.process_count()}"
            )
        stream.load_state_dict(restored["data"]["process"][str(jax.process_index())])
        if jax.process_index() == 0:  # the only writer: another process rewriting it could drop lines
            truncate_run_metrics(save_dir, latest)
        print(f"resuming {save_dir} from step {latest}", file=sys.stderr)
        return restored["state"]
    options = step_config.options
    init = load_weights(config.init_from, options) if config.init_from else None
    # created in its shardings (step_config.mesh is par.mesh): the softmax is never whole on a device
    state = init_state(step_config, par.global_rows, jax.random.PRNGKey(config.seed), init)
    if jax.process_index() == 0:
        options.save(save_dir / "options.json")
        vocab.save(save_dir / "vocab.txt")
        copy_record(config.vocab_file, save_dir)  # the tokenizer the corpus was prepared with
        clear_run_metrics(save_dir)
    return state


class BatchProducer:
    """The producer of the prefetch thread: the next step's batch and the stream position after it.

    The thread is the only user of the stream once training starts. The negatives are a pure
    function of (seed, step), so a resumed run draws the same ones. With one process the batch is
    placed on the devices here too (the copies overlap the step); several processes must agree on
    table shapes through a collective, which stays in the loop's thread (:meth:`DataParallel.place`).
    """

    def __init__(
        self, stream: BidirectionalStream, par: DataParallel, config: StepConfig, seed: int, step: int
    ):
        self.stream, self.par, self.config, self.seed, self.step = stream, par, config, seed, step
        self.place_ahead = jax.process_count() == 1

    def __call__(self) -> tuple[StepBatch | PendingBatch, BidirectionalPosition]:
        options = self.config.options
        negatives = None
        if self.config.sample_softmax:
            n_sampled = options.training.n_negative_samples_batch
            negatives = sample_negatives(self.seed, self.step, self.config.n_vocab, n_sampled)
        host = self.par.host_batch(next(self.stream), options, negatives)
        self.step += 1
        return (self.par.place(host) if self.place_ahead else host), self.stream.position()


class Preemption:
    """A stop request (SIGTERM, SIGINT) turned into a step at which every process saves and stops.

    With one process, a Python handler sets a flag the loop checks after each step. With several,
    SIGTERM is left to JAX's preemption notifier (installed by ``jax.distributed.initialize``; a
    Python handler would shadow it): the coordination service tells every process, and
    :meth:`reached` turns true at the same step on all of them
    (``multihost_utils.reached_preemption_sync_point``), whichever process got the signal. SIGINT is
    passed on to that notifier as a SIGTERM (its check costs under a microsecond a step). Without
    JAX's preemption service, the processes agree on their flags with a small collective every
    ``agree_every`` steps instead (``agree_every`` of :class:`~elmojax.config.TrainConfig`).
    """

    def __init__(self, agree_every: int = AGREE_EVERY):
        self.agree_every = agree_every
        self.signal: int | None = None
        self._old: dict[int, Any] = {}
        self.sync_point = jax.process_count() > 1 and _preemption_service()

    def __enter__(self) -> Preemption:
        for sig in (signal.SIGINT,) if self.sync_point else (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signal = signum
        if self.sync_point:  # JAX's notifier tells the other processes
            os.kill(os.getpid(), signal.SIGTERM)

    def reached(self, step: int) -> bool:
        """Whether every process stops after ``step`` (call it after every step, on every process)."""
        if self.sync_point:
            return multihost_utils.reached_preemption_sync_point(step)
        if jax.process_count() > 1:  # a collective costs ~6 ms on CPUs (gloo): every few steps
            return step % self.agree_every == 0 and any(parallel.agree_max([self.signal is not None]))
        return self.signal is not None

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _preemption_service() -> bool:
    """Whether JAX's preemption sync manager runs in this process (several processes only)."""
    from jax._src import distributed  # the manager is not public; reached_preemption_sync_point is

    return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


def total_steps(options: ElmoOptions, config: TrainConfig, global_rows: int) -> int:
    """``max_steps``, else bilm-tf's ``n_epochs * n_train_tokens / tokens per step``."""
    t = options.training
    return config.max_steps or max(1, int(t.n_epochs * t.n_train_tokens / (global_rows * t.unroll_steps)))


def run_steps(
    state: TrainState,
    step_config: StepConfig,
    par: DataParallel,
    stream: BidirectionalStream,
    ckpt: Checkpointer,
    config: TrainConfig,
    on_step: Callable[[int, dict], None] | None,
) -> dict:
    """Step from ``state`` to the last step: log, checkpoint, stop on a signal or on bad steps."""
    options, t = step_config.options, step_config.options.training
    start, last_step = int(state.step), total_steps(options, config, par.global_rows)
    flops_per_token = model_flops(
        options, sampled=step_config.sample_softmax, n_vocab=step_config.n_vocab
    ).training
    primary = jax.process_index() == 0
    if primary:
        print(
            f"model: {flops_per_token / 1e9:.3f} GFLOP per token per training step (bilm-tf's count); "
            f"{par.n_devices} device(s), the softmax split {par.softmax_shards} way(s), "
            f"{par.global_rows} rows, "
            f"compute dtype {config.numerics.compute_dtype}",
            file=sys.stderr,
        )
    peak = peak_tflops(
        par.mesh.devices.flat[0].device_kind, config.numerics.compute_dtype, config.numerics.precision
    )
    meter = Meter(start, par.global_rows * t.unroll_steps, flops_per_token, t.learning_rate,
                  peak_tflops=peak and peak * par.n_devices)  # fmt: skip
    position = stream.position()  # the stream position that belongs with `state`
    compiled: set[tuple[int, ...]] = set()
    last: dict = {}
    producer = BatchProducer(stream, par, step_config, config.seed, start)
    heldout = HeldOut.create(config, step_config, par, stream.streams[0].vocab)
    bar = tqdm(total=last_step, initial=start, disable=not config.progress or not primary, unit="step",
               dynamic_ncols=True)  # fmt: skip
    with (
        bar,
        Preemption(config.agree_every) as preempt,
        # resumed: TensorBoard hides what the earlier session logged after the checkpoint
        open_writers(ckpt.save_dir, primary=primary, purge_step=start + 1 if start else None) as writers,
        Prefetcher(producer, depth=config.prefetch_steps, name="elmojax-train-batches") as batches,
        Profiler(ckpt.save_dir, config.profile_steps, primary=primary) as profiler,
    ):
        for step in range(start + 1, last_step + 1):
            profiler.before_step(step)
            batch, next_position = next(batches)
            if not producer.place_ahead:
                batch = par.place(batch)
            if batch.table.shape in compiled:
                state, metrics = jit_train_step(state, batch, step_config)
            else:  # a new table shape: compiled now (or read from the persistent cache)
                t_compile = time.time()
                state, metrics = jax.block_until_ready(jit_train_step(state, batch, step_config))
                meter.compile_s += time.time() - t_compile
                compiled.add(batch.table.shape)
            profiler.after_step(step, (state, metrics))
            position = next_position
            meter.step_done(metrics, state.bad_steps)  # summed on the device, read when logged
            interval_end = step % config.log_every == 0 or step == last_step
            if interval_end or step == start + 1:
                last = meter.record(step, restart=interval_end)
                writers.write(last)
                bar.set_postfix(ppl=f"{last['train_perplexity']:.1f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if on_step is not None:
                    on_step(step, last)
                check_bad_steps(state, step, config, ckpt)
            bar.update(1)
            # reading bad_steps waits for the step; only where a checkpoint is due, so the loop
            # otherwise queues the next step while this one runs
            if ckpt.due(step) and int(state.bad_steps) == 0:
                ckpt.save(step, state, position.to_dict())  # written while the next steps run
            if heldout is not None and heldout.due(step):
                heldout(step, state.params, writers, ckpt)
            if preempt.reached(step):
                ckpt.save(step, state, position.to_dict())
                ckpt.wait()
                print(
                    f"stopped at step {step} ({stop_reason(preempt)}); checkpoint {step} saved"
                    f"{' by every process' if jax.process_count() > 1 else ''}. Run the same command "
                    "again to resume.",
                    file=sys.stderr,
                )
                return {**last, "preempted": True, "step": step}
        ckpt.save(int(state.step), state, position.to_dict())
        ckpt.wait()
    return last


def stop_reason(preempt: Preemption) -> str:
    """What stopped the run, as the stop line says it."""
    if preempt.signal is not None:
        return f"signal {preempt.signal}"
    return "a process of this job was asked to stop (SIGTERM or a preemption notice)"


def check_bad_steps(state: TrainState, step: int, config: TrainConfig, ckpt: Checkpointer) -> None:
    """Stop when ``max_bad_steps`` consecutive steps had a non-finite loss or gradient."""
    bad = int(state.bad_steps)
    if bad >= config.max_bad_steps:
        raise ElmoError(
            f"{ckpt.save_dir}: {bad} consecutive steps up to step {step} had a non-finite loss or "
            f"gradient; stopped, the last good checkpoint is step {ckpt.latest_step()}. Lower "
            "learning_rate or check the data"
        )


def options_with_overrides(path: str | Path, **training: Any) -> ElmoOptions:
    """Load options and override training keys given on the command line (None = keep)."""
    options = load_options(path)
    changes = {k: v for k, v in training.items() if v is not None}
    if changes:
        options = options_from_dict({**options.to_dict(), **changes}, source=str(path))
    return options
