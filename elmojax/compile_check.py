"""``compile-check``: the real steps compiled for a TPU topology on any machine, and what they need.

JAX compiles for a TPU topology without a TPU when ``libtpu`` is installed: the topology's
devices (:func:`jax.experimental.topologies.get_topology_desc`) carry a mesh, the steps are
lowered with abstract arrays laid out on it and compiled, and XLA's analysis of the compiled
program gives what each chip needs before anyone pays for a pod: memory (the state, temporaries,
outputs), the collectives a step runs and its FLOPs. The train step, the evaluation step and the
embedding forward are compiled exactly as ``train``, ``evaluate`` and ``embed`` run them (one
table size per run, as on every accelerator). MaxText's ``train_compile.py`` does the same for its
models.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from elmojax import parallel
from elmojax.data.batches import StepBatch, bucket_count, fixed_table_size
from elmojax.errors import ElmoError, first_line
from elmojax.model.bilm import zero_state
from elmojax.model.flops import model_flops
from elmojax.model.lm import LanguageModel
from elmojax.model.numerics import Numerics
from elmojax.options import N_DIRECTIONS, ElmoOptions
from elmojax.parallel import DataParallel
from elmojax.train.state import init_program, init_state
from elmojax.train.step import StepConfig, jit_eval_step, jit_train_step

GiB = 2**30
#: HBM per chip by JAX's ``device_kind`` (the first name contained in it wins)
HBM_BYTES: dict[str, int] = {
    "TPU v5 lite": 16 * GiB,  # v5e
    "TPU v6 lite": 32 * GiB,  # v6e (Trillium)
    "TPU v5": 95 * GiB,  # v5p
    "TPU v4": 32 * GiB,
    "TPU v3": 32 * GiB,
    "TPU v2": 16 * GiB,
}
#: the collectives of an optimized HLO module (a ``-start``/``-done`` pair counts once)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(rf"^\s*(?:ROOT )?\S+ = (.+?) ({'|'.join(COLLECTIVES)})(-start)?\(", re.M)
_ARRAY = re.compile(r"\b(pred|[subf]\d+|bf16)\[([\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "bf16": 2}
#: positions of an embedding batch in the check: sentences of up to 62 tokens
EMBED_STEPS = 64


@dataclass
class StepReport:
    """What one compiled step needs on each chip."""

    name: str
    argument_bytes: int
    temporary_bytes: int
    output_bytes: int
    aliased_bytes: int
    per_chip_bytes: int  # arguments + temporaries + outputs - aliased: the peak estimate
    state_bytes: int  # the arguments that persist from step to step (train state, parameters)
    collectives: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> count, bytes
    xla_flops: float | None = None  # per chip, XLA's count of the compiled program
    model_flops: float = 0.0  # per chip, the model's count (elmojax.model.flops)
    compile_s: float = 0.0
    placed: bool = True  # False: XLA refused the program for memory (the bytes are then its count)


@dataclass
class CompileReport:
    """The whole check: the layout, each step, and whether every step fits the chip's memory."""

    topology: str
    chips: int
    device_kind: str
    hbm_bytes: int | None
    softmax_shards: int
    batch_size: int
    n_vocab: int
    compute_dtype: str
    steps: list[StepReport]
    fits: bool
    per_chip_bytes: int  # the largest step's
    compile_s: float

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON: its fields, ``steps`` in order, and each step by name too
        (``init``, ``train``, ``eval``, ``embed``: ``per_chip_bytes`` and the rest)."""
        d = asdict(self)
        for step in d["steps"]:
            d[step["name"]] = step
        return d


def topology_devices(topology: str) -> list:
    """The devices of a TPU topology such as ``v5e:4x4`` or ``v5e:1x1`` (needs ``libtpu``, no TPU).

    libtpu starts up looking for the TPU VM it runs on and writes what it misses to the process's
    stderr (host bounds, worker hostnames, a "Source Location Trace"): on a machine without a TPU,
    which is this command's purpose, that is noise, so fd 2 goes to a scratch file meanwhile. A
    topology smaller than libtpu's default chips a host (``2x2x1``: ``v5e:1x1``, ``v6e:1x1``, a
    one-chip TPU VM) is asked for again with that many chips a host.
    """
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise ElmoError(
            "compile-check needs libtpu to compile for TPUs (no TPU needed): pip install 'elmojax[tpu]'"
        ) from None
    from jax.experimental import topologies

    def describe(**kwargs) -> list:
        with _stderr_to_scratch():
            desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
        return list(desc.devices)

    try:
        try:
            return describe()
        except Exception as e:  # noqa: BLE001 - a topology smaller than a host: retried below
            bounds = _host_bounds_for(topology, str(e))
            if bounds is None:
                raise
            return describe(chips_per_host_bounds=bounds)
    except Exception as e:  # noqa: BLE001 - libtpu's errors for a name it does not know vary
        first = first_line(e, 200)
        raise ElmoError(
            f"`topology` {topology!r}: not a TPU topology libtpu knows ({first}); use names such as "
            "v5e:1x1, v5e:2x2, v5e:4x4, v4:2x2x2, v5p:2x2x2, v6e:1x1, v6e:2x2"
        ) from None


def _host_bounds_for(topology: str, message: str) -> list[int] | None:
    """Chips a host for a topology libtpu refused as "not divisible by the given (or default)
    chips_per_host_bounds AxBxC": each bound cut to the topology's size, or None for another error."""
    default = re.search(r"chips_per_host_bounds\W+(\d+(?:x\d+)*)", message)
    dims = re.fullmatch(r"[^:]+:(\d+(?:x\d+)*)", topology.strip())
    if "not divisible" not in message or default is None or dims is None:
        return None
    bounds = [int(b) for b in default.group(1).split("x")]
    sizes = [int(d) for d in dims.group(1).split("x")]
    sizes += [1] * (len(bounds) - len(sizes))
    cut = [min(b, d) for b, d in zip(bounds, sizes, strict=False)]
    return None if cut == bounds else cut


@contextlib.contextmanager
def _stderr_to_scratch() -> Iterator[None]:
    """The process's fd 2 (C++ libraries' stderr too) to a temporary file for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def hbm_bytes(device_kind: str) -> int | None:
    """HBM per chip of ``device_kind``, or None for a chip this table does not know."""
    for name, size in HBM_BYTES.items():
        if name.lower() in device_kind.lower():
            return size
    return None


def collective_arrays(hlo: str) -> list[tuple[str, tuple[int, ...], int]]:
    """Every array a collective of the compiled module produces: ``(kind, shape, bytes)``."""
    out = []
    for m in _COLLECTIVE.finditer(hlo):
        for dtype, dims in _ARRAY.findall(m.group(1)):
            shape = tuple(int(d) for d in dims.split(",") if d)
            size = int(np.prod(shape)) * _DTYPE_BYTES.get(dtype, int(re.sub(r"\D", "", dtype) or 32) // 8)
            out.append((m.group(2), shape, size))
    return out


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """Per kind, how many collectives the compiled module runs and the bytes of their results."""
    count = Counter(m.group(2) for m in _COLLECTIVE.finditer(hlo))
    size: Counter = Counter()
    for kind, _, n_bytes in collective_arrays(hlo):
        size[kind] += n_bytes
    return {k: {"count": count[k], "bytes": size[k]} for k in sorted(count)}


def _analyse(name: str, lowered, state_bytes: int, model_flops_: float, t0: float) -> StepReport:
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost["flops"]) if cost and "flops" in cost else None
    args, temp = int(memory.argument_size_in_bytes), int(memory.temp_size_in_bytes)
    out, alias = int(memory.output_size_in_bytes), int(memory.alias_size_in_bytes)
    return StepReport(
        name=name,
        argument_bytes=args,
        temporary_bytes=temp,
        output_bytes=out,
        aliased_bytes=alias,
        per_chip_bytes=args + temp + out - alias,
        state_bytes=state_bytes,
        collectives=collectives(compiled.as_text()),
        xla_flops=flops,
        model_flops=model_flops_,
        compile_s=round(compile_s, 1),
    )


def _per_chip(tree: Any) -> int:
    """Bytes per device of an abstract tree laid out by its shardings."""
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
        shape = leaf.sharding.shard_shape(leaf.shape) if leaf.sharding is not None else leaf.shape
        total += int(np.prod(shape)) * jnp.dtype(leaf.dtype).itemsize
    return total


def _abstract(shape: tuple[int, ...], dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def step_batch_shapes(options: ElmoOptions, par: DataParallel, n_vocab: int, train: bool) -> StepBatch:
    """The abstract step batch an accelerator run feeds the step: one table size, all characters."""
    t, c = options.training, options.char_cnn
    rows, steps = par.rows_per_device, t.unroll_steps
    bucket = fixed_table_size(par.platform, rows, steps)
    table = (
        (par.n_devices * bucket, c.max_characters_per_token) if c is not None else (par.n_devices * bucket,)
    )
    sampled = train and t.sample_softmax and t.n_negative_samples_batch < n_vocab
    batch = StepBatch(
        table=jax.ShapeDtypeStruct(table, jnp.int32),
        index=jax.ShapeDtypeStruct((N_DIRECTIONS, par.n_devices, rows, steps), jnp.int32),
        targets=jax.ShapeDtypeStruct((N_DIRECTIONS, par.global_rows, steps), jnp.int32),
        mask=jax.ShapeDtypeStruct((N_DIRECTIONS, par.global_rows, steps), jnp.bool_),
        sampled=jax.ShapeDtypeStruct((N_DIRECTIONS, t.n_negative_samples_batch), jnp.int32)
        if sampled
        else None,
        num_tries=jax.ShapeDtypeStruct((N_DIRECTIONS,), jnp.float32) if sampled else None,
    )
    specs = parallel.shardings(batch, par.mesh, parallel.BATCH_RULES)
    return jax.tree_util.tree_map(lambda s, sh: _abstract(s.shape, s.dtype, sh), batch, specs)


def check(
    options: ElmoOptions,
    n_vocab: int,
    *,
    topology: str,
    batch_size: int,
    numerics: Numerics | None = None,
    softmax_shards: int | None = None,
    steps: tuple[str, ...] = ("init", "train", "eval", "embed"),
) -> CompileReport:
    """Compile ``steps`` of ``options`` with an ``n_vocab``-word vocabulary for ``topology`` at
    ``batch_size`` rows per chip, and report what each needs per chip (see the module docstring).

    A compilation that fails because the program does not fit in memory is reported as a step
    that XLA could not place (``placed=False``, its bytes what XLA's message says it needed).
    """
    numerics = numerics or Numerics()
    options = options.replace(n_tokens_vocab=n_vocab).replace_training(batch_size=batch_size)
    devices = topology_devices(topology)
    shards = len(devices) if softmax_shards is None else softmax_shards  # one slice: all of it
    par = DataParallel(batch_size, devices, shards)
    config = StepConfig(options, n_vocab, numerics=numerics, mesh=par.mesh)
    flops = model_flops(options, sampled=config.sample_softmax, n_vocab=n_vocab)
    tokens = batch_size * options.training.unroll_steps  # per chip per step
    reports: list[StepReport] = []
    shapes = jax.eval_shape(lambda: init_state(config, par.global_rows, jax.random.PRNGKey(0)))
    state = par.abstract_state(shapes)
    whole = parallel.replicated(par.mesh)
    t_all = time.perf_counter()
    for name in steps:
        t0 = time.perf_counter()
        try:
            if name == "init":
                lowered = init_program(config, par.global_rows).lower(_abstract((2,), jnp.uint32, whole))
                reports.append(_analyse(name, lowered, _per_chip(state), 0.0, t0))
            elif name == "train":
                lowered = jit_train_step.lower(state, step_batch_shapes(options, par, n_vocab, True), config)
                reports.append(_analyse(name, lowered, _per_chip(state), flops.training * tokens, t0))
            elif name == "eval":
                full = model_flops(options, sampled=False, n_vocab=n_vocab).forward * tokens
                batch = step_batch_shapes(options, par, n_vocab, False)
                lowered = jit_eval_step.lower(state.params, state.lstm, batch, config)
                reports.append(_analyse(name, lowered, _per_chip(state.params), full, t0))
            elif name == "embed":
                reports.append(_embed_report(options, par, numerics, state.params["bilm"], flops, t0))
            else:
                raise ElmoError(f"`steps`: unknown step {name!r}; use init, train, eval, embed")
        except ElmoError:
            raise
        except Exception as e:  # noqa: BLE001 - XLA reports running out of memory as a runtime error
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            persistent = state if name in ("init", "train") else state.params
            reports.append(out_of_memory(name, str(e), _per_chip(persistent), time.perf_counter() - t0))
    kind = devices[0].device_kind
    hbm = hbm_bytes(kind)
    peak = max(r.per_chip_bytes for r in reports)
    return CompileReport(
        topology=topology,
        chips=len(devices),
        device_kind=kind,
        hbm_bytes=hbm,
        softmax_shards=par.softmax_shards,
        batch_size=batch_size,
        n_vocab=n_vocab,
        compute_dtype=numerics.compute_dtype,
        steps=reports,
        fits=hbm is not None and peak <= hbm and all(r.placed for r in reports),
        per_chip_bytes=peak,
        compile_s=round(time.perf_counter() - t_all, 1),
    )


def _embed_report(
    options, par: DataParallel, numerics: Numerics, bilm_params, flops, t0: float
) -> StepReport:
    """The Embedder's forward on a batch of ``batch_size`` sentences a chip (replicated biLM)."""
    from elmojax.embed.embedder import jit_forward

    rows = par.global_rows
    whole = parallel.replicated(par.mesh)
    params = {"params": jax.tree_util.tree_map(lambda s: _abstract(s.shape, s.dtype, whole), bilm_params)}
    c = options.char_cnn
    n_tokens = bucket_count(rows * EMBED_STEPS)
    table = (n_tokens, c.max_characters_per_token) if c is not None else (n_tokens,)
    lstm = zero_state(options, rows)
    state = [_abstract(a.shape, a.dtype, parallel.lstm_sharding(par.mesh)) for a in lstm]
    lowered = jit_forward.lower(
        LanguageModel(options, numerics, mesh=par.mesh),
        params,
        _abstract(table, jnp.int32, parallel.leading_rows(par.mesh)),
        _abstract((rows, EMBED_STEPS), jnp.int32, parallel.leading_rows(par.mesh)),
        *state,
    )
    tokens = par.rows_per_device * EMBED_STEPS
    forward = N_DIRECTIONS * (flops.token_encoder + flops.lstm) * tokens
    return _analyse("embed", lowered, _per_chip(params), forward, t0)


def out_of_memory(name: str, message: str, state_bytes: int, compile_s: float) -> StepReport:
    """A step XLA refused for memory: the bytes its message says the program needs (TPU:
    ``... required for HLO temporaries (17.93G) exceeds available HBM (15.75G)``), at least the
    state's ``state_bytes`` a chip where it says nothing."""
    needed = 0
    m = re.search(r"([\d.]+)\s*([KMGT])i?B?\)?\s*(?:exceeds|is more than|more than|over)", message)
    m = m or re.search(r"requested\D*([\d.]+)\s*([KMGT])", message)
    if m:
        needed = int(float(m.group(1)) * 2 ** (10 * "KMGT".index(m.group(2)) + 10))
    return StepReport(
        name,
        argument_bytes=state_bytes,
        temporary_bytes=needed,
        output_bytes=0,
        aliased_bytes=0,
        per_chip_bytes=max(needed, state_bytes),
        state_bytes=state_bytes,
        compile_s=round(compile_s, 1),
        placed=False,
    )


def summary(report: CompileReport) -> str:
    """A table of the report for people."""
    gb = 1e9
    hbm = f"{report.hbm_bytes / gb:.1f} GB" if report.hbm_bytes else "unknown"
    lines = [
        f"{report.topology}: {report.chips} x {report.device_kind} ({hbm} HBM each), "
        + (
            f"softmax in {report.softmax_shards} shards"
            if report.softmax_shards > 1
            else "softmax on every chip"
        )
        + f", {report.batch_size} rows a chip, {report.n_vocab:,} words, {report.compute_dtype}",
        "| step | per chip | state | temporaries | outputs (aliased) | collectives "
        "| XLA / model GFLOP | compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report.steps:
        coll = (
            ", ".join(f"{k} x{v['count']} {v['bytes'] / 1e6:.1f} MB" for k, v in r.collectives.items())
            or "none"
        )
        xla = f"{r.xla_flops / 1e9:.1f}" if r.xla_flops is not None else "?"
        if not r.placed:
            lines.append(
                f"| {r.name} | {r.per_chip_bytes / gb:.2f} GB (XLA could not place it) | "
                f"{r.state_bytes / gb:.2f} GB | - | - | - | - | {r.compile_s} |"
            )
            continue
        lines.append(
            f"| {r.name} | {r.per_chip_bytes / gb:.2f} GB | {r.state_bytes / gb:.2f} GB | "
            f"{r.temporary_bytes / gb:.2f} GB | {r.output_bytes / gb:.2f} ({r.aliased_bytes / gb:.2f}) GB | "
            f"{coll} | {xla} / {r.model_flops / 1e9:.1f} | {r.compile_s} |"
        )
    verdict = "fits" if report.fits else "does NOT fit"
    lines.append(f"peak {report.per_chip_bytes / gb:.2f} GB per chip of {hbm}: {verdict}")
    return "\n".join(lines)


def does_not_fit(report: CompileReport) -> str:
    """The one line for a configuration that does not fit."""
    worst = max(report.steps, key=lambda r: (not r.placed, r.per_chip_bytes))
    hbm = f"{report.hbm_bytes / 1e9:.1f} GB" if report.hbm_bytes else "an unknown amount of"
    if worst.placed:
        need = (
            f"{worst.per_chip_bytes / 1e9:.2f} GB per chip (arguments {worst.argument_bytes / 1e9:.2f} + "
            f"temporaries {worst.temporary_bytes / 1e9:.2f} + outputs {worst.output_bytes / 1e9:.2f} - "
            f"aliased {worst.aliased_bytes / 1e9:.2f})"
        )
    else:
        need = (
            f"{worst.per_chip_bytes / 1e9:.2f} GB per chip by XLA's count, which it could not place "
            f"(the state alone is {worst.state_bytes / 1e9:.2f} GB)"
        )
    remedies = []
    if report.softmax_shards < report.chips:
        remedies.append(f"the softmax in more shards (`softmax_shards`, up to {report.chips})")
    remedies += ["more chips", "a smaller `batch_size`"]
    if report.compute_dtype != "bfloat16":
        remedies.append("bfloat16 `compute_dtype`")
    return (
        f"{report.topology}: the {worst.name} step needs {need}, a {report.device_kind} chip has {hbm} HBM; "
        f"use {', '.join(remedies[:-1])} or {remedies[-1]}"
    )
