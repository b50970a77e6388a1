"""``--profile-steps A:B``: a ``jax.profiler`` trace of training steps A to B, in ``SAVE_DIR/profile``.

The trace starts before step A's batch is taken and stops once step B's results are ready, so the
window holds the device work of steps A..B, the host time between them (the input pipeline) and
each step's dispatch, marked as a TensorBoard step (``StepTraceAnnotation("train", step_num=...)``).
It is written in the layout TensorBoard's profile plugin reads,
``SAVE_DIR/profile/plugins/profile/<time>/<host>.xplane.pb``, with ``<host>.trace.json.gz`` and
``perfetto_trace.json.gz`` beside it for https://ui.perfetto.dev. Only process 0 traces (the
processes run the same program; see docs/accelerators.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax

#: the folder of a run directory that holds the traces (``tensorboard --logdir SAVE_DIR/profile``)
PROFILE_DIR = "profile"


class Profiler:
    """Traces the steps of ``window`` this session runs (all of them unless it resumes inside it).

    Call :meth:`before_step` before a step's batch is taken, :meth:`after_step` with the step's
    outputs once it is dispatched, and :meth:`stop` at the end (leaving the ``with`` block does:
    it stops a trace the run ended in). Does nothing without a window or on processes other than 0.
    """

    def __init__(self, save_dir: Path, window: tuple[int, int] | None, *, primary: bool):
        # window: TrainConfig.profile_steps, checked there
        self.directory = save_dir / PROFILE_DIR
        self.window = window if primary else None
        self.tracing = False
        self.traced: list[int] = []  # the first and last step traced
        self._step: Any = None  # the open StepTraceAnnotation

    def due(self, step: int) -> bool:
        """Whether ``step`` is in the window."""
        return self.window is not None and self.window[0] <= step <= self.window[1]

    def before_step(self, step: int) -> None:
        """Start the trace at the window's first step of this session; mark the step."""
        if not self.due(step):
            return
        if not self.tracing:
            self.directory.mkdir(parents=True, exist_ok=True)
            jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
            self.tracing, self.traced = True, [step, step]
        self.traced[1] = step
        self._step = jax.profiler.StepTraceAnnotation("train", step_num=step)
        self._step.__enter__()

    def after_step(self, step: int, outputs: Any) -> None:
        """End the step's mark; after the window's last step, wait for ``outputs`` and stop."""
        if self._step is not None:
            self._step.__exit__(None, None, None)
            self._step = None
        if self.tracing and step == self.window[1]:
            jax.block_until_ready(outputs)
            self.stop()

    def stop(self) -> None:
        """Stop the trace and write it (``jax.profiler.stop_trace``); say where it went."""
        if not self.tracing:
            return
        if self._step is not None:
            self._step.__exit__(None, None, None)
            self._step = None
        self.tracing = False
        jax.profiler.stop_trace()
        print(
            f"profile of steps {self.traced[0]}:{self.traced[1]} written to {self.directory} "
            f"(tensorboard --logdir {self.directory}, or perfetto_trace.json.gz in ui.perfetto.dev)",
            file=sys.stderr,
        )

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
