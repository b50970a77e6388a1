"""The compiled one-device train step touches only its own rows of the vocabulary-sized arrays.

The softmax ``W [V, P]``, ``b [V]``, a word model's embedding and their Adagrad accumulators are
donated to the step, which gathers the rows its batch uses and scatters them back in place. Any
other instruction of the optimized HLO whose result has the vocabulary's rows (a copy, a pad or
concatenation, a select or an add over the whole table, a memory-space move) costs time in ``V``
every step: the step would no longer be flat in the vocabulary (experiments/bench/vocab_scaling.py).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

from elmojax.data.batches import StepBatch
from elmojax.options import N_DIRECTIONS, options_from_dict
from elmojax.parallel import DataParallel
from elmojax.train.state import init_state
from elmojax.train.step import StepConfig, jit_train_step
from tests.helpers import TRAIN_KEYS, tiny_options_dict

#: instructions that produce a vocabulary-sized array without touching every row of it
IN_PLACE = {"parameter", "tuple", "get-tuple-element", "bitcast", "scatter", "dynamic-update-slice"}


def _instruction(line: str) -> tuple[str, str] | None:
    """``(result type, opcode)`` of one HLO instruction line, or None for other lines."""
    if " = " not in line:
        return None
    rest = line.split(" = ", 1)[1].lstrip()
    if rest.startswith("("):  # a tuple type: up to its closing parenthesis
        depth, end = 0, 0
        while end < len(rest):
            depth += {"(": 1, ")": -1}.get(rest[end], 0)
            end += 1
            if depth == 0:
                break
        kind, rest = rest[:end], rest[end:]
    else:
        kind, _, rest = rest.partition(" ")
    match = re.match(r"\s*([\w\-]+)\(", rest)
    return (kind, match.group(1)) if match else None


def vocabulary_sized_ops(hlo: str, n_rows: set[int]) -> list[str]:
    """The instructions of compiled ``hlo`` whose result has an array with a leading dimension in
    ``n_rows`` and which are not in place: anything but parameters, tuples, bitcasts, scatters and
    dynamic-update-slices (or fusions whose root is one of the last two)."""
    roots: dict[str, str] = {}  # computation -> its root's opcode
    computation = None
    for line in hlo.splitlines():
        stripped = line.strip()
        if stripped.endswith("{") and " = " not in stripped.split("(")[0]:
            computation = stripped.removeprefix("ENTRY ").split(" ")[0].lstrip("%")
        elif stripped.startswith("ROOT ") and computation and (parsed := _instruction(stripped)):
            roots[computation] = parsed[1]
    found = []
    for line in hlo.splitlines():
        parsed = _instruction(line.strip())
        if parsed is None:
            continue
        kind, opcode = parsed
        if not any(int(d) in n_rows for d in re.findall(r"[a-z]\w*\[(\d+)", kind)):
            continue
        if opcode == "fusion":
            called = re.search(r"calls=%?([\w.\-]+)", line)
            if called and roots.get(called.group(1)) in ("scatter", "dynamic-update-slice"):
                continue
        elif opcode in IN_PLACE:
            continue
        found.append(line.strip()[:160])
    return found


def test_the_check_sees_copies_and_whole_table_passes():
    """The checker itself: a donated scatter passes; the same scatter without donation (a copy of
    the table), or after a select over the table, does not."""
    table, ids, rows = jnp.zeros((1000, 8)), jnp.arange(4) * 7, jnp.ones((4, 8))
    hlo = lambda f: f.lower(table, ids, rows).compile().as_text()  # noqa: E731
    put = lambda t, i, v: t.at[i].set(v, mode="drop")  # noqa: E731
    assert vocabulary_sized_ops(hlo(jax.jit(put, donate_argnums=0)), {1000}) == []
    assert vocabulary_sized_ops(hlo(jax.jit(put)), {1000})  # not donated: XLA copies the table first
    masked = lambda t, i, v: put(jnp.where(t > 0, t, 0.0), i, v)  # noqa: E731
    assert vocabulary_sized_ops(hlo(jax.jit(masked, donate_argnums=0)), {1000})


def compiled_step(n_vocab: int, sparse: bool) -> tuple[str, set[int]]:
    """The optimized HLO of the one-device train step of a tiny word model with ``n_vocab`` words
    (its softmax and embedding sparse, or not), and the tables' row counts."""
    d = tiny_options_dict(**TRAIN_KEYS)
    del d["char_cnn"]
    options = options_from_dict(d).replace(n_tokens_vocab=n_vocab)
    t = options.training
    par = DataParallel(t.batch_size, jax.devices()[:1])
    config = StepConfig(options, n_vocab, mesh=par.mesh, sparse=sparse)
    shapes = jax.eval_shape(lambda: init_state(config, par.global_rows, jax.random.PRNGKey(0)))
    state = par.abstract_state(shapes)
    b, steps, s = par.global_rows, t.unroll_steps, t.n_negative_samples_batch
    spec = jax.ShapeDtypeStruct
    batch = StepBatch(
        table=spec((64,), jnp.int32),
        index=spec((N_DIRECTIONS, 1, b, steps), jnp.int32),
        targets=spec((N_DIRECTIONS, b, steps), jnp.int32),
        mask=spec((N_DIRECTIONS, b, steps), jnp.bool_),
        sampled=spec((N_DIRECTIONS, s), jnp.int32),
        num_tries=spec((N_DIRECTIONS,), jnp.float32),
    )
    hlo = jit_train_step.lower(state, batch, config).compile().as_text()
    return hlo, {config.vocab_rows, config.embedding_rows}


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_the_compiled_step_writes_its_rows_in_place(sparse):
    """200,000 words: the sparse step (the default) has no instruction over a whole table but the
    in-place scatters of its rows; the dense update, the reference, has (so the check can fail)."""
    hlo, n_rows = compiled_step(200_000, sparse)
    found = vocabulary_sized_ops(hlo, n_rows)
    if sparse:
        assert found == [], "\n".join(found)
    else:
        assert any("200000,6]" in line for line in found), found
