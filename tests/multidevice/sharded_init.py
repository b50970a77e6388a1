"""The train state created in its shardings on 8 simulated devices: each array in the sharding of
:data:`elmojax.parallel.STATE_RULES`, the values of the unsharded init, and a compiled init whose
outputs a device holds are its shards only.

Run by ``tests/train/test_sharding.py`` as ``python -m tests.multidevice.sharded_init CHECK TMP``
with ``CHECK`` one of ``values``, ``memory``, ``quick`` (the first case of ``values``, then ``memory``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from elmojax.model.bilm import init_params
from elmojax.options import options_from_dict
from elmojax.parallel import DataParallel, path_name, state_shardings
from elmojax.train import state as state_module
from elmojax.train.state import init_program, init_state
from elmojax.train.step import StepConfig
from tests.helpers import TRAIN_KEYS, tiny_options_dict

N_DEVICES = 8
#: a vocabulary whose softmax dominates the state (the model is tiny)
N_VOCAB = 40_003


def options_for(word_level: bool, rows_per_device: int = 2):
    d = tiny_options_dict(**{**TRAIN_KEYS, "batch_size": rows_per_device})
    if word_level:
        del d["char_cnn"]
    return options_from_dict(d).replace(n_tokens_vocab=N_VOCAB)


def unsharded(config: StepConfig, rows: int, key, bilm=None):
    """The init as it was before: jitted on one device without shardings, then placed."""
    if bilm is not None:
        bilm = jax.tree_util.tree_map(np.asarray, bilm)
    return state_module._init_state(*state_module._static(config, rows), key, bilm)


def leaves(tree) -> dict:
    return {path_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_values(tmp: Path, cases=((False, 8), (False, 4), (True, 8), (True, 4))) -> None:
    """For the character and the word-level model, the softmax in 8 and in 2 x 4 shards, random and
    ``--init-from`` weights: every array is born in its sharding and equals the unsharded init's."""
    del tmp
    for word_level, shards in cases:
        options = options_for(word_level)
        par = DataParallel(2, jax.devices(), softmax_shards=shards)
        config = StepConfig(options, N_VOCAB, mesh=par.mesh)
        given = jax.tree_util.tree_map(
            np.asarray, init_params(options, jax.random.PRNGKey(11))
        )  # a published model's weights, on the host
        for bilm in (None, given):
            key = jax.random.PRNGKey(3)
            state = init_state(config, par.global_rows, key, bilm)
            expected = leaves(state_shardings(state, par.mesh))
            old = leaves(unsharded(config, par.global_rows, key, bilm))
            got = leaves(state)
            assert got.keys() == old.keys() == expected.keys()
            n_split = 0
            for name, x in got.items():
                assert x.sharding.is_equivalent_to(expected[name], x.ndim), (name, x.sharding)
                np.testing.assert_array_equal(np.asarray(x), np.asarray(old[name]), err_msg=name)
                if (
                    x.ndim
                    and x.sharding.shard_shape(x.shape)[0] * shards == x.shape[0]
                    and "lstm" not in name
                ):
                    n_split += 1
            # W, b and their two Adagrad accumulators (and a word model's embedding and its)
            assert n_split == (6 if word_level else 4), n_split
            if bilm is not None:  # the given weights, the word embedding's padding rows aside
                for name, x in leaves(given["params"]).items():
                    np.testing.assert_array_equal(np.asarray(got[f"params/bilm/{name}"])[: len(x)], x)
            print(f"values {'word' if word_level else 'char'} shards={shards} init_from={bilm is not None}")
    print("values ok")


def per_device_bytes(tree) -> int:
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize
        for x in jax.tree_util.tree_leaves(tree)
    )


def check_memory(tmp: Path) -> None:
    """The compiled init's outputs on a device are the state's shards (XLA's memory analysis), an
    eighth of the vocabulary-sized arrays; the unsharded init's are all of it."""
    del tmp
    options = options_for(word_level=False)
    par = DataParallel(2, jax.devices(), softmax_shards=N_DEVICES)
    config = StepConfig(options, N_VOCAB, mesh=par.mesh)
    key = jax.random.PRNGKey(0)
    program = init_program(config, par.global_rows)
    sharded = program.lower(key).compile().memory_analysis()
    whole = jax.jit(program.init).lower(key, None).compile().memory_analysis()
    shapes = jax.eval_shape(program.init, key, None)
    state = par.abstract_state(shapes)
    total = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))
    print(
        f"init outputs per device: sharded {sharded.output_size_in_bytes}, whole {whole.output_size_in_bytes}"
    )
    print(f"temporaries per device: sharded {sharded.temp_size_in_bytes}, whole {whole.temp_size_in_bytes}")
    # the arrays' bytes, and XLA's table of the output buffers (8 bytes a leaf on the CPU)
    table = 8 * len(jax.tree_util.tree_leaves(shapes))
    assert sharded.output_size_in_bytes == per_device_bytes(state) + table, (per_device_bytes(state), table)
    assert whole.output_size_in_bytes == total + table, (total, table)
    softmax = N_VOCAB * 6 * 4 + N_VOCAB * 4  # W [V, P] and b [V], float32 (P = 6 in the tiny model)
    assert total > 2 * softmax and sharded.output_size_in_bytes < total / 4, (
        sharded.output_size_in_bytes,
        total,
    )
    # nothing vocabulary-sized is made whole on a device in between either
    assert sharded.temp_size_in_bytes < softmax / 2, sharded.temp_size_in_bytes
    print("memory ok")


def check_quick(tmp: Path) -> None:
    """The character model in 8 shards: values and shardings, then the compiled init's memory."""
    check_values(tmp, cases=((False, 8),))
    check_memory(tmp)


if __name__ == "__main__":
    assert jax.device_count() == N_DEVICES, jax.devices()
    {"values": check_values, "memory": check_memory, "quick": check_quick}[sys.argv[1]](Path(sys.argv[2]))
