"""The run's typed configuration: every knob in frozen dataclasses, validated once, and one table.

:class:`TrainConfig` (``train``), :class:`~elmojax.model.numerics.Numerics` (how the model computes,
for every command that runs it) and :class:`EmbedConfig` (``embed`` and ``probe``) hold every
setting of a run that is not part of ``options.json``. Each is checked in ``__post_init__``: a bad
value is one :class:`~elmojax.errors.ElmoError` line naming the field, which the command line
shows as its flag.

:data:`KNOBS` is the one table of these fields: each row names the field, the commands whose flag
sets it, its type or choices and what it does; the default is the dataclass's. The command line
derives its flags from it (:func:`elmojax.cli.flags.add_knobs`,
:func:`elmojax.cli.flags.config_from_args`) and the CLI reference's table of knobs is generated
from it (:func:`markdown`; ``python -m elmojax.config --markdown`` prints it).

Kept free of JAX imports, like :mod:`elmojax.options`: the command line reads it before JAX starts.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elmojax.errors import ElmoError
from elmojax.model.numerics import COMPUTE_DTYPES, Numerics

# Numerics is re-exported from elmojax.model.numerics (documented there)
__all__ = [
    "CONFIGS", "DistributedConfig", "EmbedConfig", "KNOBS", "Knob", "TrainConfig", "knobs_for", "markdown"
]  # fmt: skip

#: float32 matmul precisions (``--precision``; none given: the backend's default, TF32 on recent GPUs)
PRECISIONS = ("default", "high", "highest")
#: the names of :data:`elmojax.model.kernels.KERNELS`, here without importing JAX (a test keeps
#: the two equal)
KERNEL_NAMES = ("xla", "reference")
#: the names of :data:`elmojax.train.optim.OPTIMIZERS`, likewise
OPTIMIZER_NAMES = ("adagrad", "sgd", "adam")


def _check_counts(config: Any, names: tuple[str, ...]) -> None:
    """Each of ``names`` is None or a whole number >= 1, else one line naming it."""
    for name in names:
        value = getattr(config, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ElmoError(f"`{name}` must be >= 1, found {value!r}")


@dataclass(frozen=True)
class TrainConfig:
    """How to run training; the model and its training keys live in :class:`~elmojax.options.ElmoOptions`.

    ``optimizer`` names one of :data:`elmojax.train.optim.OPTIMIZERS` (bilm-tf's ``adagrad`` by
    default); ``sparse`` updates the softmax on the rows a step touches only, exact for some
    optimisers only (:mod:`elmojax.train.optim`). ``softmax_shards`` splits the softmax (and a
    word-level token embedding) over that many devices (default: one slice or host's devices; 1:
    replicated on every device; see :mod:`elmojax.parallel`). ``sparse_fraction``: see
    :class:`~elmojax.train.step.StepConfig`; ``prefetch_steps``: steps whose host arrays are
    prepared ahead of the device (:mod:`elmojax.data.prefetch`). ``max_bad_steps`` consecutive
    non-finite steps stop the run; ``agree_every``: steps between the stop-flag agreements of
    several processes without JAX's preemption service; ``restore_retry_s``: seconds before the
    one retry of a checkpoint read the storage did not answer. ``profile_steps`` ``(A, B)``: a
    ``jax.profiler`` trace of steps A to B. Every field is described in :data:`KNOBS`.
    """

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
    max_bad_steps: int = 10
    numerics: Numerics = Numerics()  # e.g. Numerics(compute_dtype="bfloat16")
    optimizer: str = "adagrad"
    sparse: bool = True
    sparse_fraction: float = 0.25
    prefetch_steps: int = 2
    softmax_shards: int | None = None
    # held-out perplexity while training (elmojax.train.heldout); eval_every defaults to checkpoint_every
    heldout_prefix: str | None = None
    eval_every: int | None = None
    heldout_tokens: int | None = None
    keep_best: bool = False
    agree_every: int = 10
    restore_retry_s: float = 2.0
    profile_steps: tuple[int, int] | None = None

    def __post_init__(self):
        _check_counts(self, (
            "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "max_bad_steps",
            "prefetch_steps", "eval_every", "heldout_tokens", "agree_every",
        ))  # fmt: skip
        if not isinstance(self.numerics, Numerics):
            raise ElmoError(f"`numerics` must be a Numerics, not {type(self.numerics).__name__}")
        if self.optimizer not in OPTIMIZER_NAMES:
            names = ", ".join(OPTIMIZER_NAMES)
            raise ElmoError(f"unknown `optimizer` {self.optimizer!r}; use one of {names}")
        if not 0 <= self.sparse_fraction <= 1:
            raise ElmoError(f"`sparse_fraction` must be between 0 and 1, not {self.sparse_fraction}")
        if not self.restore_retry_s >= 0:
            raise ElmoError(f"`restore_retry_s` must be >= 0 (seconds), not {self.restore_retry_s}")
        if self.profile_steps is not None:
            window = tuple(self.profile_steps)
            if not (
                len(window) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) for s in window)
                and 1 <= window[0] <= window[1]
            ):
                shown = ":".join(map(str, window)) if len(window) == 2 else repr(self.profile_steps)
                raise ElmoError(
                    f"`profile_steps` {shown}: the steps must be whole numbers A:B with 1 <= A <= B"
                )
            object.__setattr__(self, "profile_steps", window)


@dataclass(frozen=True)
class EmbedConfig:
    """How ``embed`` (and ``probe``'s features) run the embedder over a file.

    ``batch_size`` sentences a batch; ``chunk_batches`` batches read and embedded at a time, so host
    memory stays constant on any input (a multiple of the stateless sort window, 8 batches, groups
    sentences into batches exactly as streaming the whole file at once would).
    """

    batch_size: int = 64
    chunk_batches: int = 64

    def __post_init__(self):
        _check_counts(self, ("batch_size", "chunk_batches"))


@dataclass(frozen=True)
class DistributedConfig:
    """Several processes (``train``, ``evaluate``, ``embed``): ``distributed`` calls
    ``jax.distributed.initialize`` (:func:`elmojax.parallel.initialize`) with the rest, before
    anything touches JAX's devices. ``coordinator_address``, ``num_processes`` and ``process_id``
    None: JAX detects the cluster (TPU pods, SLURM) or reads ``JAX_COORDINATOR_ADDRESS``. The
    timeouts are seconds (see docs/training.md): without a heartbeat before JAX's coordination
    service declares a process gone, waiting for every process at start-up, and at exit for the
    others to finish. These defaults are :func:`elmojax.parallel.initialize`'s too.
    """

    distributed: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    heartbeat_timeout: int = 60
    initialization_timeout: int = 300
    shutdown_timeout: int = 60

    def __post_init__(self):
        for name in ("heartbeat_timeout", "initialization_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ElmoError(f"`{name}` must be >= 1 (seconds)")
        if not self.distributed:
            given = [f.name for f in dataclasses.fields(self)[1:] if getattr(self, f.name) != f.default]
            if given:
                raise ElmoError(f"`{given[0]}` needs `distributed`")


#: the run config dataclasses; every field of each is a row of :data:`KNOBS` (nested configs aside)
CONFIGS: tuple[type, ...] = (TrainConfig, Numerics, EmbedConfig, DistributedConfig)
#: the commands that run the model, and so take the :class:`Numerics` flags
MODEL_COMMANDS = ("train", "evaluate", "embed", "probe", "compile-check")
#: commands that compute the softmax (the full one is scanned in tiles)
SOFTMAX_COMMANDS = ("train", "evaluate", "compile-check")


def parse_profile_steps(text: str) -> tuple[int, int]:
    """``"A:B"`` as ``(A, B)``; else one line naming ``--profile-steps``."""
    first, sep, last = text.partition(":")
    try:
        if sep:
            return int(first), int(last)
    except ValueError:
        pass
    raise ElmoError(f"--profile-steps {text!r}: expected A:B, two step numbers such as 10:12")


@dataclass(frozen=True)
class Knob:
    """One row of :data:`KNOBS`: a config field and the flag that sets it.

    ``field`` is ``Class.name``; the flag is ``--name`` with dashes (``flag=False``: not settable
    from the command line, ``why_not`` says why). ``kind``: ``value`` (parsed by ``type``, or by
    ``parse`` from the text), ``switch`` (``--name`` sets True), ``toggle`` (``--name`` /
    ``--no-name``), ``progress`` (``--progress`` / ``--no-progress``; neither: only on a terminal).
    ``defaults`` overrides the dataclass default for some commands; ``required`` lists the commands
    where the flag must be given; ``notes`` adds a command's own words to its ``--help``.
    """

    field: str
    commands: tuple[str, ...]
    help: str
    kind: str = "value"
    type: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    parse: Callable[[str], Any] | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    flag: bool = True
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def owner(self) -> type:
        """The dataclass the field belongs to."""
        return next(c for c in CONFIGS if c.__name__ == self.field.split(".")[0])

    @property
    def name(self) -> str:
        """The field's name (and the parsed argument's)."""
        return self.field.split(".", 1)[1]

    @property
    def option(self) -> str:
        """The flag, ``--name-with-dashes`` (bilm-tf's ``--name_with_underscores`` works too)."""
        return "--" + self.name.replace("_", "-")

    def default(self, command: str | None = None) -> Any:
        """The value without the flag: the dataclass default, or ``command``'s own."""
        if command in self.defaults:
            return self.defaults[command]
        f = next(f for f in dataclasses.fields(self.owner) if f.name == self.name)
        return f.default if f.default is not dataclasses.MISSING else None


_T, _N, _E, _D = "TrainConfig.", "Numerics.", "EmbedConfig.", "DistributedConfig."
#: the commands that can run as several processes
DISTRIBUTED_COMMANDS = ("train", "evaluate", "embed")

#: every knob of a run: the one table the flags of ``train``, ``evaluate``, ``embed``, ``probe`` and
#: ``compile-check`` and the CLI reference's table of knobs are derived from
KNOBS: tuple[Knob, ...] = (
    # where the run is
    Knob(_T + "save_dir", ("train",), "run directory: options, vocabulary, checkpoints, metrics",
         metavar="DIR", required=("train",)),
    Knob(_T + "train_prefix", ("train",), "glob of training shards, e.g. 'data/train/shard_*.txt'",
         metavar="GLOB", required=("train",)),
    Knob(_T + "vocab_file", ("train",), "vocabulary (<S>, </S>, <UNK> first); required for a new run",
         metavar="F"),
    Knob(_T + "init_from", ("train",), "start from a weights HDF5 (continued pre-training)",
         metavar="WEIGHTS"),
    # how long, how often
    Knob(_T + "max_steps", ("train",),
         "stop after this many steps (none: n_epochs * n_train_tokens / tokens per step)",
         type=int, metavar="N"),
    Knob(_T + "seed", ("train",), "seed for initialisation, shuffling, dropout, sampling",
         type=int, metavar="S"),
    Knob(_T + "checkpoint_every", ("train",), "steps between checkpoints", type=int, metavar="N"),
    Knob(_T + "keep_checkpoints", ("train",), "checkpoints kept", type=int, metavar="K"),
    Knob(_T + "log_every", ("train",), "steps between metric lines", type=int, metavar="N"),
    Knob(_T + "progress", ("prepare", "train", "evaluate", "embed", "probe"),
         "--progress draws the progress bar on stderr even when it is not a terminal, --no-progress "
         "never (neither: only on a terminal)", kind="progress"),
    # held-out perplexity while training
    Knob(_T + "heldout_prefix", ("train",),
         "glob of held-out files: their perplexity (as `elmojax evaluate` computes it) goes to the "
         "metrics every --eval-every steps", metavar="GLOB"),
    Knob(_T + "eval_every", ("train",), "steps between held-out evaluations (none: --checkpoint-every)",
         type=int, metavar="N"),
    Knob(_T + "heldout_tokens", ("train",), "score only the first sentences, up to this many tokens",
         type=int, metavar="N"),
    Knob(_T + "keep_best", ("train",),
         "keep the checkpoint of the lowest held-out perplexity in SAVE_DIR/best, out of the rotation",
         kind="switch"),
    # the step
    Knob(_T + "optimizer", ("train",),
         "adagrad (bilm-tf's), sgd or adam; adam needs --no-sparse (a row-sparse Adam is another optimiser)",
         choices=OPTIMIZER_NAMES),
    Knob(_T + "sparse", ("train",),
         "update the softmax (and a word embedding) on the rows a step touches only; --no-sparse: "
         "the dense update of every row", kind="toggle"),
    Knob(_T + "sparse_fraction", ("train",),
         "a step whose distinct rows exceed this fraction of the vocabulary updates densely",
         type=float, metavar="X"),
    Knob(_T + "softmax_shards", ("train", "evaluate", "compile-check"),
         "split the softmax (and a word model's token embedding) over this many devices (none: the "
         "devices of one TPU slice or one host; compile-check: all the topology's chips; 1: the whole "
         "softmax on every device)", type=int, metavar="N"),
    Knob(_T + "prefetch_steps", ("train",), "steps whose batches are prepared ahead of the device",
         type=int, metavar="N"),
    # reliability
    Knob(_T + "max_bad_steps", ("train",),
         "consecutive steps with a non-finite loss or gradient after which training stops",
         type=int, metavar="N"),
    Knob(_T + "agree_every", ("train",),
         "several processes without JAX's preemption service: steps between their agreements on a stop",
         type=int, metavar="N"),
    Knob(_T + "restore_retry_s", ("train",),
         "seconds before the one retry of a checkpoint read that the storage did not answer",
         type=float, metavar="S"),
    Knob(_T + "profile_steps", ("train",),
         "write a jax.profiler trace of steps A to B into SAVE_DIR/profile (TensorBoard's profile "
         "plugin and ui.perfetto.dev open it)", metavar="A:B", parse=parse_profile_steps),
    Knob(_T + "numerics", (), "the Numerics rows below", flag=False),
    # how the model computes
    Knob(_N + "compute_dtype", MODEL_COMMANDS,
         "dtype of matmuls and convolutions (bfloat16: mixed precision for GPUs/TPUs; parameters, "
         "LSTM cell states and the loss stay float32)", choices=COMPUTE_DTYPES),
    Knob(_N + "param_dtype", (), "parameters (and optimiser state, gradients, exported weights) are "
         "float32: use --compute-dtype for bfloat16 matmuls", flag=False),
    Knob(_N + "precision", MODEL_COMMANDS,
         "float32 matmul precision (none: the backend's default, TF32 on recent GPUs; highest: full "
         "float32)", choices=PRECISIONS, defaults={"embed": "highest", "probe": "highest"}),
    Knob(_N + "kernels", MODEL_COMMANDS,
         "implementation of the LSTM and character convolution: xla (hand-written gradients) or "
         "reference (plain formulations differentiated by JAX)", choices=KERNEL_NAMES),
    Knob(_N + "conv_tokens", MODEL_COMMANDS,
         "a device's token table longer than this is convolved in blocks (bounds a temporary; same values)",
         type=int, metavar="N"),
    Knob(_N + "tile_logits", SOFTMAX_COMMANDS,
         "the full softmax is scanned in tiles of at most this many float32 logits (bounds a "
         "temporary; same values)", type=int, metavar="N"),
    # embedding
    Knob(_E + "batch_size", ("embed", "probe"), "sentences per batch", type=int, metavar="N"),
    Knob(_E + "chunk_batches", ("embed",),
         "batches read and embedded at a time (host memory stays constant on any input)",
         type=int, metavar="N"),
    # several processes
    Knob(_D + "distributed", DISTRIBUTED_COMMANDS,
         "call jax.distributed.initialize() first (several hosts; see docs/accelerators.md)",
         kind="switch", notes={
             "evaluate": "every process runs alike, process 0 prints",
             "embed": "each process embeds a contiguous block of lines into OUTPUT's part file "
                      "(emb.h5 -> emb.part-00000-of-00002.h5); process 0 writes the index emb.index.json",
         }),
    Knob(_D + "coordinator_address", DISTRIBUTED_COMMANDS, "with --distributed: host:port of process 0",
         metavar="HOST:PORT"),
    Knob(_D + "num_processes", DISTRIBUTED_COMMANDS, "with --distributed: number of processes",
         type=int, metavar="N"),
    Knob(_D + "process_id", DISTRIBUTED_COMMANDS, "with --distributed: this process's index",
         type=int, metavar="I"),
    Knob(_D + "heartbeat_timeout", DISTRIBUTED_COMMANDS,
         "with --distributed: seconds without a heartbeat after which a process counts as gone "
         "(see docs/training.md)", type=int, metavar="S"),
    Knob(_D + "initialization_timeout", DISTRIBUTED_COMMANDS,
         "with --distributed: seconds to wait for every process to start", type=int, metavar="S"),
    Knob(_D + "shutdown_timeout", DISTRIBUTED_COMMANDS,
         "with --distributed: seconds a finished process waits for the others at exit",
         type=int, metavar="S"),
)  # fmt: skip


def knobs_for(command: str) -> list[Knob]:
    """The rows whose flag ``command`` takes, in table order."""
    return [k for k in KNOBS if k.flag and command in k.commands]


def _shown(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= 2**16 and (value & (value - 1)) == 0:
        return f"2**{value.bit_length() - 1}"
    return str(value)


def markdown() -> str:
    """The CLI reference's table of knobs (docs/cli.md): flag, field, default, commands, what it does."""
    lines = ["| Flag | Field | Default | Commands | What it does |", "|---|---|---|---|---|"]
    for k in KNOBS:
        if not k.flag:
            flag = "(none)"
        elif k.kind == "toggle":
            flag = f"`{k.option}`, `--no-{k.option[2:]}`"
        elif k.kind == "progress":
            flag = "`--progress`, `--no-progress`"
        else:
            flag = f"`{k.option}" + (f" {k.metavar}`" if k.metavar else "`")
        if not k.flag:
            default = "—"
        elif k.required:
            default = "required"
        elif k.kind == "progress":
            default = "on a terminal"
        else:
            default = f"`{_shown(k.default())}`" + "".join(
                f"; {c}: `{_shown(v)}`" for c, v in k.defaults.items()
            )
        commands = ", ".join(k.commands) if k.commands else "—"
        what = k.help + (f"; one of {', '.join(k.choices)}" if k.choices else "")
        what = what.replace("<", "&lt;").replace(">", "&gt;").replace("*", r"\*")
        lines.append(f"| {flag} | `{k.field}` | {default} | {commands} | {what} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m elmojax.config --markdown
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m elmojax.config --markdown")
    sys.stdout.write(markdown())
