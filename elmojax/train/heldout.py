"""Held-out perplexity while training: ``evaluate``'s figure, every N steps, on the parameters in memory.

``train --heldout-prefix GLOB --eval-every N`` scores the held-out files at steps N, 2N, ... exactly
as ``elmojax evaluate`` scores that step's checkpoint (the full softmax, every row from the warm
start state, the run's own global batch; :func:`elmojax.evaluate.heldout_perplexity` on the
train state's parameters, no checkpoint read back) and writes one record a time to the run's
writers (``metrics.jsonl`` and TensorBoard, process 0): ``heldout_perplexity`` (exp of the mean of
the two directions' cross-entropies, bilm-tf's figure), ``heldout_perplexity_forward``,
``heldout_perplexity_backward`` and ``heldout_tokens`` (targets per direction). ``heldout_tokens``
bounds a big set to its first sentences, in order, so every evaluation scores the same text.

With ``keep_best`` the checkpoint of the lowest held-out perplexity so far is copied out of the
rotation into ``SAVE_DIR/best``: a run directory of its own (``options.json``, ``vocab.txt``,
``checkpoints/STEP``, and ``heldout.json`` with its record), so ``evaluate`` and ``export`` take
``--save-dir SAVE_DIR/best`` as they take the run. It is replaced whole (written under a temporary
name, then renamed), and a resumed run compares against the record kept there.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax

from elmojax.data.streams import resolve_files
from elmojax.data.vocab import Vocabulary
from elmojax.errors import ElmoError
from elmojax.fileio import atomic_write_text
from elmojax.parallel import DataParallel
from elmojax.train.step import StepConfig

if TYPE_CHECKING:
    from elmojax.config import TrainConfig
    from elmojax.train.checkpoints import Checkpointer
    from elmojax.train.metrics import Writers

#: the run directory, inside a training run's, that holds its best checkpoint (``keep_best``)
BEST_DIR = "best"
#: the record of the best checkpoint, in :data:`BEST_DIR`
BEST_RECORD = "heldout.json"


@dataclass
class HeldOut:
    """The held-out evaluations of one training run (see the module's docstring)."""

    prefix: str
    every: int
    max_tokens: int | None
    keep_best: bool
    config: StepConfig
    par: DataParallel
    vocab: Vocabulary
    save_dir: Path
    best: float | None = None  # the lowest held-out perplexity kept so far

    @classmethod
    def create(
        cls, config: TrainConfig, step_config: StepConfig, par: DataParallel, vocab: Vocabulary
    ) -> HeldOut | None:
        """The run's held-out evaluations, or None without ``heldout_prefix``; bad settings are one
        line (:func:`check_settings`)."""
        if check_settings(config) is None:
            return None
        every = config.eval_every or config.checkpoint_every
        # evaluate's step: the full softmax, in the run's numerics, on the run's mesh
        eval_config = StepConfig(
            step_config.options, step_config.n_vocab, numerics=step_config.numerics, mesh=par.mesh
        )
        save_dir = Path(config.save_dir)
        best = read_best(save_dir) if config.keep_best else None
        return cls(
            config.heldout_prefix, every, config.heldout_tokens, config.keep_best, eval_config, par, vocab,
            save_dir, best and best["heldout_perplexity"],
        )  # fmt: skip

    def due(self, step: int) -> bool:
        """Whether ``step`` is an evaluation step (every ``every`` steps)."""
        return step % self.every == 0

    def __call__(self, step: int, params: Any, writers: Writers, ckpt: Checkpointer) -> dict:
        """Score the held-out files with ``params`` (the train state's, after ``step``), write the
        record and, with ``keep_best``, keep the step's checkpoint if it is the best so far. Every
        process calls it (the evaluation is a collective); process 0 writes."""
        from elmojax.evaluate import heldout_perplexity

        result = heldout_perplexity(
            params, self.config, self.par, self.vocab, self.prefix, max_tokens=self.max_tokens
        )
        record = {
            "step": step,
            "heldout_perplexity": result["perplexity"],
            "heldout_perplexity_forward": result["forward_perplexity"],
            "heldout_perplexity_backward": result["backward_perplexity"],
            "heldout_tokens": result["n_tokens"],
        }
        writers.write(record)
        if self.keep_best and (self.best is None or record["heldout_perplexity"] < self.best):
            self.best = record["heldout_perplexity"]
            ckpt.wait()  # the step's checkpoint complete on disk (saved asynchronously)
            if jax.process_index() == 0:
                keep_checkpoint(self.save_dir, Path(ckpt.manager.directory) / str(step), record)
        return record


def check_settings(config: TrainConfig) -> list[str] | None:
    """Refuse inconsistent held-out settings of ``config`` in one line, before a run starts; the
    held-out files (None without ``heldout_prefix``)."""
    if config.heldout_prefix is None:
        for name in ("eval_every", "heldout_tokens", "keep_best"):
            if getattr(config, name):
                raise ElmoError(f"`{name}` needs `heldout_prefix` (the held-out files to score)")
        return None
    every = config.eval_every or config.checkpoint_every
    for name, value in (("eval_every", every), ("heldout_tokens", config.heldout_tokens)):
        if value is not None and value < 1:
            raise ElmoError(f"`{name}` must be >= 1, found {value}")
    if config.keep_best and every % config.checkpoint_every:
        raise ElmoError(
            f"`keep_best` keeps a checkpoint of an evaluated step: `eval_every` ({every}) must be a "
            f"multiple of `checkpoint_every` ({config.checkpoint_every})"
        )
    return resolve_files(config.heldout_prefix, arg="heldout_prefix")


def read_best(save_dir: Path) -> dict | None:
    """The record of the checkpoint kept in ``save_dir/best`` (None if there is none)."""
    path = Path(save_dir) / BEST_DIR / BEST_RECORD
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def keep_checkpoint(save_dir: Path, checkpoint: Path, record: dict) -> Path | None:
    """Copy ``checkpoint`` (a step's directory) with the run's options and vocabulary into
    ``save_dir/best``, replacing what was there as a whole; None (after a note) if the step has no
    checkpoint (a step with non-finite values is not saved)."""
    if not checkpoint.is_dir():
        print(
            f"note: step {record['step']} has the best held-out perplexity so far but no checkpoint "
            f"({checkpoint}); {save_dir / BEST_DIR} keeps step {(read_best(save_dir) or {}).get('step')}",
            file=sys.stderr,
        )
        return None
    best = save_dir / BEST_DIR
    tmp, old = save_dir / f".{BEST_DIR}.tmp-{os.getpid()}", save_dir / f".{BEST_DIR}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint, tmp / "checkpoints" / checkpoint.name)
    for name in ("options.json", "vocab.txt"):
        shutil.copy2(save_dir / name, tmp / name)
    atomic_write_text(tmp / BEST_RECORD, json.dumps(record) + "\n")
    if best.exists():
        best.rename(old)
    tmp.rename(best)
    shutil.rmtree(old, ignore_errors=True)
    return best
