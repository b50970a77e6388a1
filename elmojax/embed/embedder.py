"""Contextual embeddings from a trained biLM: the :class:`Embedder`.

The Embedder is **stateless** by default: every sentence starts from the model's fixed start state
(:mod:`elmojax.model.start_state`: ``warm``, the state after a warm-up text, or ``zero``), so its embedding
never depends on its batch mates, its position or earlier calls. bilm-tf and AllenNLP instead carry
each batch row's final LSTM state into the same row of the next batch, starting from zeros;
``stateful=True`` reproduces that exactly (it is how the bilm-tf reference embeddings were made).

Batches are padded to a few bucketed shapes (rows, time, distinct tokens; see
:mod:`elmojax.data.batches`) so a stream of ragged batches compiles a handful of times, and split
over all local devices along the batch axis (:mod:`elmojax.parallel`). HDF5 dumps are
:mod:`elmojax.embed.dump`'s.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import jax
import numpy as np

from elmojax import parallel
from elmojax.data.batches import sentence_arrays
from elmojax.data.chars import Batcher
from elmojax.data.tokenizers import DEFAULT as DEFAULT_TOKENIZER
from elmojax.data.tokenizers import read_record, tokenize_text
from elmojax.data.vocab import TokenBatcher, Vocabulary
from elmojax.errors import ElmoError
from elmojax.model.bilm import BiLM, LSTMState, zero_state
from elmojax.model.lm import LanguageModel
from elmojax.model.numerics import Numerics
from elmojax.model.start_state import rows_state
from elmojax.model.start_state import start_state as model_start_state
from elmojax.model.weights import load_weights
from elmojax.options import ElmoOptions, load_options


def forward(
    model: LanguageModel, params: dict, table: jax.Array, index: jax.Array, c: jax.Array, h: jax.Array
) -> tuple[jax.Array, LSTMState]:
    """One batch's layers (:meth:`~elmojax.model.lm.LanguageModel.sentences`): ``table [U, ...]``
    distinct token inputs, ``index [B, T]`` into them (0: padding), states ``c``, ``h`` ->
    ``([B, L + 1, T - 2, 2P]`` without BOS/EOS, the new states)``."""
    out, _, state = model.apply(params, table, LSTMState(c, h), index, method=LanguageModel.sentences)
    return out, state


#: :func:`forward` compiled once per model (its mesh included) and shape
jit_forward = jax.jit(forward, static_argnums=0)


class Embedder:
    """Embeds tokenized sentences with a biLM: one ``[n_layers + 1, n_tokens, 2P]`` array each.

    Build it from files with :meth:`from_files` (``options.json``, weights HDF5, optional
    vocabulary) or from an :class:`~elmojax.options.ElmoOptions` and a parameter tree. Layer 0 is
    the context-free token representation ``[x; x]``, layer ``k`` the ``k``-th LSTM layer of both
    directions ``[forward; backward]``. ``start_state`` (``warm`` or ``zero``) is where stateless
    embedding starts each sentence; stateful embedding starts from zeros and carries rows, as
    bilm-tf does. ``numerics`` defaults to full float32 matmul precision.
    """

    def __init__(
        self,
        options: ElmoOptions,
        params: dict,
        *,
        vocab: Vocabulary | None = None,
        batch_size: int = 64,
        stateful: bool = False,
        devices: Sequence[jax.Device] | None = None,
        numerics: Numerics | None = None,
        start_state: str = "warm",
        tokenizer: str | None = None,
        lowercase: bool = False,
    ):
        if options.char_cnn is None and vocab is None:
            raise ElmoError("word-level models (no char_cnn in options) need a vocabulary file")
        self.options = options
        #: how :meth:`embed_texts` cuts raw text: the tokenizer the corpus was prepared with
        self.tokenizer, self.lowercase = tokenizer or DEFAULT_TOKENIZER, lowercase
        self.batch_size = batch_size
        self.stateful = stateful
        # full float32 matmuls by default: embeddings are compared against references
        numerics = numerics or Numerics(precision="highest")
        if options.char_cnn is not None:
            self._batcher: Batcher | TokenBatcher = Batcher(options.char_cnn.max_characters_per_token)
            self._max_width: int | None = options.char_cnn.max_width
        else:
            self._batcher, self._max_width = TokenBatcher(vocab), None
        self.mesh = parallel.data_mesh(devices if devices is not None else jax.local_devices())
        #: the model on the embedder's devices (its forward: :meth:`elmojax.model.lm.LanguageModel.sentences`)
        self.model = LanguageModel(options, numerics, mesh=self.mesh)
        self.n_devices = self.mesh.devices.size
        self._rows = parallel.leading_rows(self.mesh)
        self._state_sharding = parallel.lstm_sharding(self.mesh)
        self.params = jax.device_put(params, parallel.replicated(self.mesh))
        self._forward = functools.partial(jit_forward, self.model)
        self.start_state = start_state
        # one warm-up row on one device: the biLM without the mesh's layout
        self._start = model_start_state(BiLM(options, numerics), self.params, start_state, self._batcher)
        self._state: LSTMState | None = None
        self.shapes_compiled: set[tuple[int, ...]] = set()

    @classmethod
    def from_files(
        cls,
        options_file: str | Path,
        weight_file: str | Path,
        vocab_file: str | Path | None = None,
        **kwargs,
    ) -> Embedder:
        """Load ``options.json`` + weights HDF5 (+ vocabulary) as bilm-tf/AllenNLP would. The
        tokenizer for raw text is the one recorded beside these files (``tokenizer.json``, written
        by ``prepare`` and kept by ``train`` and ``export``) unless ``tokenizer`` is given."""
        record = read_record(options_file, weight_file, vocab_file)
        if record is not None and kwargs.get("tokenizer") is None:
            kwargs["tokenizer"], kwargs["lowercase"] = record
        options = load_options(options_file)
        vocab = Vocabulary.from_file(vocab_file) if vocab_file else None
        if vocab is not None and options.char_cnn is None:
            options = options.with_vocab_size(len(vocab))
        return cls(options, load_weights(weight_file, options), vocab=vocab, **kwargs)

    # -- the compiled computation ----------------------------------------------------------------

    def reset_states(self) -> None:
        """Forget the carried LSTM states (only meaningful with ``stateful=True``)."""
        self._state = None

    def tokenize(self, text: str) -> list[str]:
        """The tokens of raw ``text`` (all its sentences), cut as the training corpus was."""
        return [
            t for sentence in tokenize_text(text, self.tokenizer, lowercase=self.lowercase) for t in sentence
        ]

    def embed_texts(self, texts: Iterable[str], batch_size: int | None = None) -> list[np.ndarray]:
        """Embed raw strings: each text cut by :meth:`tokenize` and embedded as one sequence,
        ``[n_layers + 1, len(self.tokenize(text)), 2P]``. A text without tokens is an error."""
        sentences = []
        for i, text in enumerate(texts):
            tokens = self.tokenize(text)
            if not tokens:
                raise ElmoError(f"text {i} ({text[:40]!r}) has no tokens; every text must hold one")
            sentences.append(tokens)
        return list(self.embed_sentences(sentences, batch_size))

    def embed_batch(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Embed one batch: ``[n_layers + 1, len(sentence), 2P]`` float32 per sentence.

        In stateful mode batch row ``k`` starts from the state row ``k`` reached in the previous
        call; rows beyond this batch keep their states.
        """
        if not sentences:
            return []
        return self._finish(self._dispatch(sentences))

    def _dispatch(self, sentences: Sequence[Sequence[str]]) -> tuple[jax.Array, Sequence[Sequence[str]]]:
        """Host arrays of a batch, then its computation started (JAX runs it asynchronously)."""
        table, index = sentence_arrays(sentences, self._batcher, self._max_width, self.n_devices)
        rows, steps = index.shape
        if self.stateful:
            state = self._stateful_rows(rows)
        else:
            state = rows_state(self._start, rows)
        state = jax.device_put(state, self._state_sharding)
        self.shapes_compiled.add((rows, steps, *table.shape))
        out, new_state = self._forward(
            self.params, jax.device_put(table, self._rows), jax.device_put(index, self._rows), *state
        )
        if self.stateful:
            self._state = LSTMState(
                *(old.at[:, :, :rows].set(new) for old, new in zip(self._state, new_state, strict=True))
            )
        return out, sentences

    @staticmethod
    def _finish(pending: tuple[jax.Array, Sequence[Sequence[str]]]) -> list[np.ndarray]:
        """Wait for a dispatched batch: one ``[n_layers + 1, len(sentence), 2P]`` array per sentence."""
        out, sentences = pending
        out = np.asarray(out)
        return [out[k, :, : len(s)] for k, s in enumerate(sentences)]

    def _stateful_rows(self, rows: int) -> LSTMState:
        if self._state is None or self._state.c.shape[2] < rows:
            grown = zero_state(self.options, rows)
            if self._state is not None:
                old = self._state.c.shape[2]
                grown = LSTMState(*(g.at[:, :, :old].set(s) for g, s in zip(grown, self._state, strict=True)))
            self._state = grown
        return LSTMState(self._state.c[:, :, :rows], self._state.h[:, :, :rows])

    def embed_sentences(
        self, sentences: Iterable[Sequence[str]], batch_size: int | None = None, sort_window: int = 8
    ) -> Iterator[np.ndarray]:
        """Embed a stream of sentences in batches, yielding one array per sentence in input order.

        Stateless embedders group sentences of similar length: ``sort_window`` batches' worth of
        sentences are sorted by length before batching (results do not depend on batch mates, so
        this only saves padded LSTM steps). Stateful ones keep the input order, which defines
        their results.
        """
        batch_size = batch_size or self.batch_size
        window = batch_size * (1 if self.stateful else max(1, sort_window))
        # one batch in flight: the next batch's host arrays are built while the device runs the
        # previous one, whose results are fetched only after the next is dispatched
        waiting: deque[list] = deque()  # per chunk, oldest first: [embeddings, batches left]
        pending = None

        def finish() -> None:
            handle, chunk_out, idx = pending
            for i, emb in zip(idx, self._finish(handle), strict=True):
                chunk_out[0][i] = emb
            chunk_out[1] -= 1

        for chunk in _chunks(sentences, window):
            batches = self._batches(chunk, batch_size)
            chunk_out: list = [[None] * len(chunk), len(batches)]
            waiting.append(chunk_out)
            for idx in batches:
                handle = self._dispatch([chunk[i] for i in idx])
                if pending is not None:
                    finish()
                pending = (handle, chunk_out, idx)
                while waiting and waiting[0][1] == 0:
                    yield from waiting.popleft()[0]
        if pending is not None:
            finish()
        while waiting:
            yield from waiting.popleft()[0]

    def _batches(self, chunk: list[Sequence[str]], batch_size: int) -> list[list[int]]:
        """The chunk's batches as lists of positions: by length unless stateful (input order)."""
        order = (
            list(range(len(chunk)))
            if self.stateful
            else sorted(range(len(chunk)), key=lambda i: len(chunk[i]))
        )
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def _chunks(sentences: Iterable[Sequence[str]], size: int) -> Iterator[list[Sequence[str]]]:
    chunk: list[Sequence[str]] = []
    for sent in sentences:
        chunk.append(sent)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
