"""Training metrics: one record per logged step, written through one interface to every backend.

A record is a flat dict of numbers with its ``step``: the per-direction losses, train perplexity
and gradient norm averaged over the logging interval, tokens/s and model TFLOP/s over its wall
time, learning rate and compile seconds. :class:`Meter` makes
the records; a :class:`MetricsWriter` writes them: ``metrics.jsonl`` and, with the ``tensorboard``
extra, TensorBoard event files (:mod:`elmojax.train.tensorboard`). Only process 0 writes. A resumed
run first drops what was logged after the checkpoint it resumes from (:func:`truncate_run_metrics`;
TensorBoard through ``purge_step``), so no step is logged twice; a new run in a directory starts
both afresh (:func:`clear_run_metrics`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np

from elmojax.fileio import atomic_write_text
from elmojax.train import tensorboard

#: the file of a run directory that holds one JSON record a line
METRICS_FILE = "metrics.jsonl"


class MetricsWriter(Protocol):
    """Where metric records go."""

    def write(self, record: dict) -> None: ...

    def close(self) -> None: ...


class JsonlWriter:
    """Records appended to ``metrics.jsonl``, one JSON object a line, flushed as written."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Writers:
    """Several writers as one (none at all on processes other than 0)."""

    def __init__(self, writers: Sequence[MetricsWriter]):
        self.writers = list(writers)

    def write(self, record: dict) -> None:
        for w in self.writers:
            w.write(record)

    def close(self) -> None:
        for w in self.writers:
            w.close()

    def __enter__(self) -> Writers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_writers(save_dir: Path, *, primary: bool, purge_step: int | None = None) -> Writers:
    """The writers of a run directory: ``metrics.jsonl`` and the TensorBoard events (when
    tensorboardX is installed) on the primary process, nothing elsewhere. A run resumed from
    checkpoint ``S`` passes ``purge_step=S + 1``: TensorBoard then hides what the earlier session
    logged from that step on (``metrics.jsonl`` was truncated by :func:`truncate_run_metrics`)."""
    if not primary:
        return Writers([])
    board = tensorboard.open_tensorboard(save_dir, purge_step=purge_step)
    return Writers([JsonlWriter(save_dir / METRICS_FILE), *([board] if board else [])])


def log_evaluation(save_dir: Path, result: dict) -> None:
    """Write ``evaluate``'s perplexities to the run's TensorBoard events at the checkpoint's step:
    ``eval/perplexity``, ``eval/forward_perplexity``, ``eval/backward_perplexity``, ``eval/n_tokens``
    and ``eval/per_sentence/...`` (``eval_zero/`` from the zero start state). A directory that
    cannot be written to is a note, not an error: the result is still returned and printed."""
    record = {k: v for k, v in result.items() if k != "per_sentence"}
    for key, value in result.get("per_sentence", {}).items():
        record[f"per_sentence/{key}"] = value
    try:
        board = tensorboard.open_tensorboard(
            save_dir, "eval" if result["start_state"] == "warm" else "eval_zero"
        )
        if board is not None:
            board.write(record)
            board.close()
    except OSError as e:
        print(
            f"note: perplexities not written to {save_dir / tensorboard.TENSORBOARD_DIR} ({e})",
            file=sys.stderr,
        )


def truncate_run_metrics(save_dir: Path, step: int) -> None:
    """Drop the ``metrics.jsonl`` lines a run directory logged after ``step``; the TensorBoard
    events are purged by the resumed run's writer instead (``purge_step``, see :func:`open_writers`)."""
    truncate_metrics(save_dir / METRICS_FILE, step)


def clear_run_metrics(save_dir: Path) -> None:
    """Remove what an earlier run logged in ``save_dir`` (a new run starts there)."""
    (save_dir / METRICS_FILE).unlink(missing_ok=True)
    tensorboard.clear_events(save_dir)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (the checkpoint a run resumes from: logged again)."""
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


#: the per-step metrics averaged over a logging interval (over its finite steps)
MEAN_KEYS = ("loss", "loss_forward", "loss_backward", "grad_norm")


@jax.jit
def _accumulate(sums: dict | None, metrics: dict, bad_steps: jax.Array) -> dict:
    """``sums`` with one more step's metrics added (a fresh interval when ``sums`` is None).

    A step is finite when the state's consecutive bad-step count is 0 after it; a non-finite one
    adds to ``interval_steps`` and ``bad_steps`` only, so its NaN does not reach the means.
    """
    finite = bad_steps == 0
    step = {k: jnp.where(finite, metrics[k], 0.0).astype(jnp.float32) for k in MEAN_KEYS}
    step["grad_norm_max"] = jnp.where(finite, metrics["grad_norm"], -jnp.inf).astype(jnp.float32)
    step["interval_steps"] = jnp.int32(1)
    step["bad_steps"] = (~finite).astype(jnp.int32)
    if sums is None:
        return step
    added = {k: sums[k] + step[k] for k in step if k != "grad_norm_max"}
    return {**added, "grad_norm_max": jnp.maximum(sums["grad_norm_max"], step["grad_norm_max"])}


class Meter:
    """Makes the metric records of a run: means over each logging interval, throughput, and totals.

    Each step's metrics (device arrays) are added to running sums on the device
    (``_accumulate``, dispatched without waiting), so the loop syncs only when it logs. A record
    holds the means over the finite steps of the interval (:data:`MEAN_KEYS`; ``train_perplexity``
    is ``exp`` of the mean loss), ``grad_norm_max``, the interval's ``interval_steps`` and
    ``bad_steps`` (non-finite ones), and ``tokens_per_s`` over the wall time since the previous record.

    ``tokens_per_step`` counts tokens as bilm-tf counts ``n_train_tokens`` (rows x unroll steps);
    ``flops_per_token`` is the model's count (:mod:`elmojax.model.flops`). With ``peak_tflops``, the
    dense peak of all the run's chips together, records have ``mfu``: model TFLOP/s over that peak.
    """

    def __init__(
        self,
        start_step: int,
        tokens_per_step: int,
        flops_per_token: float,
        learning_rate: float,
        peak_tflops: float | None = None,
    ):
        self.tokens_per_step = tokens_per_step
        self.flops_per_token = flops_per_token
        self.learning_rate = learning_rate
        self.peak_tflops = peak_tflops
        self.tokens = start_step * tokens_per_step
        self.compile_s = 0.0  # first step of each table shape, compilation included
        self._since = 0
        self._t_last = time.time()
        self._sums: dict | None = None

    def step_done(self, metrics: dict, bad_steps: jax.Array | int = 0) -> None:
        """Add a step's metrics (scalars, device arrays or numbers) to the interval; ``bad_steps``
        is the state's consecutive non-finite count after the step (0: the step was finite)."""
        self._since += self.tokens_per_step
        self._sums = _accumulate(self._sums, {k: metrics[k] for k in MEAN_KEYS}, bad_steps)

    def record(self, step: int, *, restart: bool = True) -> dict:
        """The record of ``step`` (reads the sums from the device: waits for the step).

        ``restart=False`` keeps the interval going (the extra record of a session's first step), so
        intervals end at the same steps in an uninterrupted run and a resumed one.
        """
        sums = {k: float(v) for k, v in jax.device_get(self._sums or {}).items()}
        now = time.time()
        self.tokens += self._since
        tokens_per_s = self._since / max(now - self._t_last, 1e-9)
        self._t_last, self._since = now, 0
        if restart:
            self._sums = None
        steps, bad = int(sums.get("interval_steps", 0)), int(sums.get("bad_steps", 0))
        finite = steps - bad
        mean = {k: sums[k] / finite if finite else math.nan for k in MEAN_KEYS}
        record = {
            "step": step,
            "tokens": self.tokens,
            "train_perplexity": float(np.exp(min(mean["loss"], 50.0))),
            "loss_forward": mean["loss_forward"],
            "loss_backward": mean["loss_backward"],
            "tokens_per_s": tokens_per_s,
            "model_tflops_per_s": tokens_per_s * self.flops_per_token / 1e12,
            "grad_norm": mean["grad_norm"],
            "grad_norm_max": sums["grad_norm_max"] if finite else math.nan,
            "interval_steps": steps,
            "bad_steps": bad,
            "learning_rate": self.learning_rate,
            "compile_s": round(self.compile_s, 3),
        }
        if self.peak_tflops:
            record["mfu"] = record["model_tflops_per_s"] / self.peak_tflops
        return record
