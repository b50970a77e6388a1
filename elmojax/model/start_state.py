"""Where a sentence's LSTM states start when no state is carried: a fixed warm state per model.

bilm-tf trains each batch row as one endless stream of sentences and carries the LSTM states from
window to window, so a sentence always starts from the state the previous sentence left; an
all-zero state is seen once, at the first step. Started from zeros, a trained model is outside
what it learnt, and some models (chaotic in this respect) lose the thread for a whole sentence.

``warm`` starts every sentence from the state the model reaches after reading :data:`WARMUP`, a
fixed English text, as one stream with states carried (forward reads it in order, backward
reversed, as in training): deterministic, computed once per model, and the kind of state sentences
start from in training. It works for any model, published files included; a model of another
language still gets a state reached by reading real sentences, which is what matters most.
``zero`` is bilm-tf's and AllenNLP's start (and elmojax's before), kept for comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from elmojax.data.batches import sentence_arrays
from elmojax.data.chars import Batcher
from elmojax.data.vocab import BOS, EOS, SPECIALS, TokenBatcher, Vocabulary
from elmojax.errors import ElmoError
from elmojax.model.bilm import BiLM, LSTMState, zero_state
from elmojax.options import START_STATES, ElmoOptions

#: The warm-up text: five plain, tokenized English sentences. Read as a stream, they leave the
#: LSTMs in the kind of state a sentence starts from in training (after an ordinary sentence's
#: ``</S>``). A text of sentence markers only (``<S> </S>`` repeated) is no substitute: empty
#: sentences never occur in training, and on some models that text itself leads the forward LSTM
#: into the saturated regime a zero state can (see docs/start-state.md).
WARMUP: tuple[tuple[str, ...], ...] = tuple(
    tuple(sentence.split())
    for sentence in (
        "The committee met on Tuesday to review the annual report .",
        "It was a cold morning , and the streets were quiet .",
        "She said that the results would be published next month .",
        "Many people have asked how the new system will work .",
        "We will discuss these questions in the next section .",
    )
)


def warmup_arrays(
    options: ElmoOptions,
    batcher: Batcher | TokenBatcher | None = None,
    warmup: Sequence[Sequence[str]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The warm-up text as one row of model inputs: ``(table [U, ...], index [1, T])``.

    The row reads ``<S> s1 </S> <S> s2 ... </S>``; its reverse, which the backward LSTM reads, is
    the backward stream of the same text. Without a ``batcher``, word-level models use a
    vocabulary of the three specials only (the warm-up's words become ``<UNK>``), taking ``<S>``,
    ``</S>`` and ``<UNK>`` to be the first three vocabulary lines, as in every training vocabulary.
    """
    if batcher is None:
        if options.char_cnn is None:
            batcher = TokenBatcher(Vocabulary(SPECIALS))
        else:
            batcher = Batcher(options.char_cnn.max_characters_per_token)
    tokens: list[str] = []
    for k, sent in enumerate(WARMUP if warmup is None else warmup):
        tokens += ([EOS, BOS] if k else []) + list(sent)
    width = options.char_cnn.max_width if options.char_cnn is not None else None
    table, index = sentence_arrays([tokens], batcher, width, 1)
    return table, index[:1]


def start_state(
    model: BiLM, params: dict, kind: str = "warm", batcher: Batcher | TokenBatcher | None = None
) -> LSTMState:
    """The state every sentence starts from, ``c [2, L, 1, H]``, ``h [2, L, 1, P]`` (one row).

    ``params`` is the biLM's variable dict ``{"params": ...}``; ``batcher`` maps tokens to model
    inputs (see :func:`warmup_arrays`).
    """
    if kind not in START_STATES:
        raise ElmoError(f"unknown start state {kind!r}; use one of {', '.join(START_STATES)}")
    if kind == "zero":
        return zero_state(model.options, 1)
    table, index = warmup_arrays(model.options, batcher)
    return _run(model, params, jnp.asarray(table), jnp.asarray(index))


@functools.partial(jax.jit, static_argnums=0)
def _run(model: BiLM, params: dict, table: jax.Array, index: jax.Array) -> LSTMState:
    return model.apply(params, table, index, method=BiLM.warm_state)


def rows_state(start: LSTMState, rows: int) -> LSTMState:
    """``start`` (one row) repeated for ``rows`` rows."""
    return LSTMState(*(jnp.repeat(a, rows, axis=2) for a in start))
