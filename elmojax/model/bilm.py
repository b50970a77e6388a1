"""The bidirectional language model as pure flax linen modules.

Parameter names mirror the standard weights HDF5 (bilm-tf ``dump_weights``) so that
:mod:`elmojax.model.weights` is a plain renaming: ``char_embed``, ``CNN/W_cnn_i``,
``CNN_high_k/...``, ``CNN_proj/...``, ``embedding`` (word-level models), ``RNN_d/Cell_l/{W_0,B,W_P_0}``.
The custom ops (the LSTM recurrence, conv + max-pool) live in :mod:`elmojax.model.kernels`;
:class:`~elmojax.model.numerics.Numerics` picks their implementation, the matmul precision and
the dtypes.

Conventions used throughout:

* token inputs are **shifted** ids: 0 means "no token here" (padding). The character table has
  262 rows (row 0 is the zero padding row, rows 1..261 are bilm-tf's 261 characters); the
  word-level table has ``n_vocab + 1`` rows (row 0 padding).
* LSTM states are an :class:`LSTMState` of arrays ``c [2, n_layers, batch, H]`` and
  ``h [2, n_layers, batch, P]``; direction 0 is forward, 1 backward.
* A masked position (mask False) leaves the state untouched and outputs zeros, as TensorFlow's
  ``dynamic_rnn`` with ``sequence_length`` does; this is what makes stateful embedding of a batch
  with padded rows leave those rows' states alone.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from elmojax.model.kernels import get_kernels
from elmojax.model.kernels.dot import Dot
from elmojax.model.numerics import Numerics
from elmojax.options import N_CHARACTERS, N_DIRECTIONS, PAD_CHAR, CharCNNOptions, ElmoOptions, LSTMOptions
from elmojax.parallel import BatchLayout

Array = jax.Array
#: LSTM states stay float32 whatever the compute dtype: the cell state accumulates over the stream
STATE_DTYPE = jnp.float32


class LSTMState(NamedTuple):
    """Recurrent state of every LSTM layer of both directions."""

    c: Array  # [2, n_layers, batch, H]
    h: Array  # [2, n_layers, batch, P]


def zero_state(options: ElmoOptions, batch: int) -> LSTMState:
    """All-zero :class:`LSTMState` for ``batch`` rows."""
    lstm = options.lstm
    return LSTMState(
        c=jnp.zeros((N_DIRECTIONS, lstm.n_layers, batch, lstm.dim), STATE_DTYPE),
        h=jnp.zeros((N_DIRECTIONS, lstm.n_layers, batch, lstm.projection_dim), STATE_DTYPE),
    )


def layout_dot(numerics: Numerics, layout: BatchLayout) -> Dot:
    """``numerics.dot`` for a batch split as ``layout`` says (:class:`~elmojax.model.kernels.dot.Dot`)."""
    return dataclasses.replace(numerics.dot, batch_groups=layout.groups)


# --- initialisers as bilm-tf uses them (docs/formats.md, "Initialisation") ---------------------


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def _normal(stddev: float):
    def init(key, shape, dtype=jnp.float32):
        return stddev * jax.random.normal(key, shape, dtype)

    return init


def _char_table_init(key, shape, dtype=jnp.float32):
    # row 0 is the padding row that readers prepend: it stays zero
    table = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    return table.at[0].set(0.0)


def _word_table_init(key, shape, dtype=jnp.float32):
    table = nn.initializers.glorot_uniform()(key, (shape[0] - 1, shape[1]), dtype)
    return jnp.concatenate([jnp.zeros((1, shape[1]), dtype), table])


# --- token representations --------------------------------------------------------------------


class CharCNN(nn.Module):
    """Convolutions over character embeddings, max-pooled over positions, then the activation.

    ``x [N, chars, E]`` (plus ``pad [E]``, the padding character's embedding) ``-> [N, F]``;
    parameters ``W_cnn_i [1, width, E, n_i]``, ``b_cnn_i [n_i]``. With fewer than
    ``max_characters_per_token`` columns the input must be trimmed as :func:`trim_char_ids` trims
    it: every token fits in the first ``chars - widest + 1`` columns. Then each filter only looks at
    windows starting there, and the windows made only of padding, which all share one value, are
    folded in as that single value; that is the same maximum for far less work. A table of more
    than ``numerics.conv_tokens`` tokens (an accelerator's fixed table) is convolved in equal blocks of
    tokens, one after the other, so that a filter's ``[tokens, positions, n]`` outputs, the CNN's
    largest temporaries, exist for one block at a time; each token's maximum is the same.
    The table's rows are ``layout.groups`` equal per-device blocks.
    """

    options: CharCNNOptions
    numerics: Numerics = Numerics()
    layout: BatchLayout = BatchLayout()

    @nn.compact
    def __call__(self, x: Array, pad: Array) -> Array:
        conv_max_pool = get_kernels(self.numerics.kernels).conv_max_pool
        dot, dtype = self.numerics.dot, self.numerics.param_dtype
        e = self.options.embedding_dim
        relu = self.options.activation == "relu"
        trimmed = x.shape[1] < self.options.max_characters_per_token
        starts = x.shape[1] - self.options.max_width + 1
        outs = []
        for i, (width, num) in enumerate(self.options.filters):
            init = _uniform(0.05) if relu else _normal(float(np.sqrt(1.0 / (width * e))))
            w = self.param(f"W_cnn_{i}", init, (1, width, e, num), dtype)
            b = self.param(f"b_cnn_{i}", nn.initializers.zeros, (num,), dtype)
            if trimmed:
                y = _in_blocks(
                    conv_max_pool,
                    x[:, : starts + width - 1],
                    w[0],
                    dot,
                    self.numerics.conv_tokens,
                    self.layout.groups,
                )
                pad_window = dot(pad, jnp.sum(w[0], axis=0))  # [n]
                y = jnp.where(pad_window > y, pad_window, y)
            else:
                y = _in_blocks(conv_max_pool, x, w[0], dot, self.numerics.conv_tokens, self.layout.groups)
            # adding the bias after the max is exact: rounding is monotonic, so the same element wins
            y = y + b
            outs.append(jax.nn.relu(y) if relu else jnp.tanh(y))
        return jnp.concatenate(outs, axis=-1)


def _in_blocks(conv_max_pool, x: Array, w: Array, dot, max_tokens: int, groups: int = 1) -> Array:
    """``conv_max_pool(x, w, dot)`` over ``x [N, C, E]`` in the fewest equal blocks of at most
    ``max_tokens`` tokens a device (one block, the plain call, for small tables).

    The table's rows are split over ``groups`` devices of the batch (each device's block of
    distinct tokens): every block takes the same share of each device's rows, so no device reads
    another's.
    """
    n = x.shape[0]
    groups = groups if n % groups == 0 else 1
    per = n // groups
    blocks = next((k for k in range(1, per + 1) if per % k == 0 and per // k <= max_tokens), 1)
    if blocks == 1:
        return conv_max_pool(x, w, dot)
    rows = per // blocks
    xs = x.reshape(groups, blocks, rows, *x.shape[1:]).swapaxes(0, 1)  # [blocks, groups, rows, C, E]

    def block(b):  # [groups, rows, C, E]: the devices stay the leading axis
        return conv_max_pool(b.reshape(groups * rows, *b.shape[2:]), w, dot).reshape(groups, rows, -1)

    return jax.lax.map(block, xs).swapaxes(0, 1).reshape(n, -1)


class Highway(nn.Module):
    """``y = g * relu(x W_t + b_t) + (1 - g) * x`` with ``g = sigmoid(x W_c + b_c)``; ``[N, F] -> [N, F]``."""

    numerics: Numerics = Numerics()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f, dtype, dot = x.shape[-1], self.numerics.param_dtype, self.numerics.dot
        init = _normal(float(np.sqrt(1.0 / f)))
        w_carry = self.param("W_carry", init, (f, f), dtype)
        b_carry = self.param("b_carry", nn.initializers.constant(-2.0), (f,), dtype)
        w_transform = self.param("W_transform", init, (f, f), dtype)
        b_transform = self.param("b_transform", nn.initializers.zeros, (f,), dtype)
        gate = jax.nn.sigmoid(dot(x, w_carry) + b_carry)
        transform = jax.nn.relu(dot(x, w_transform) + b_transform)
        return gate * transform + (1.0 - gate) * x


class Projection(nn.Module):
    """Linear map ``[N, F] -> [N, P]`` named as bilm-tf's ``CNN_proj``."""

    features: int
    numerics: Numerics = Numerics()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f, dtype = x.shape[-1], self.numerics.param_dtype
        w = self.param("W_proj", _normal(float(np.sqrt(1.0 / f))), (f, self.features), dtype)
        b = self.param("b_proj", nn.initializers.zeros, (self.features,), dtype)
        return self.numerics.dot(x, w) + b


class CharTokenEmbedder(nn.Module):
    """Character ids ``[..., chars]`` (shifted, 0 = padding) -> token vectors ``[..., P]``."""

    options: CharCNNOptions
    projection_dim: int
    numerics: Numerics = Numerics()
    layout: BatchLayout = BatchLayout()

    @nn.compact
    def __call__(self, char_ids: Array) -> Array:
        lead = char_ids.shape[:-1]
        c, numerics = self.options, self.numerics
        table = self.param(
            "char_embed", _char_table_init, (N_CHARACTERS, c.embedding_dim), numerics.param_dtype
        )
        x = jnp.take(table, char_ids.reshape(-1, char_ids.shape[-1]), axis=0)  # [N, chars, E]
        x = CharCNN(c, numerics, self.layout, name="CNN")(x, table[PAD_CHAR + 1])  # [N, F]
        for k in range(c.n_highway):
            x = Highway(numerics, name=f"CNN_high_{k}")(x)
        if c.n_filters != self.projection_dim:
            x = Projection(self.projection_dim, numerics, name="CNN_proj")(x)
        return x.reshape(*lead, self.projection_dim)


class WordTokenEmbedder(nn.Module):
    """Shifted token ids ``[...]`` (0 = padding) -> token vectors ``[..., P]`` for word-level models."""

    n_vocab: int
    projection_dim: int
    numerics: Numerics = Numerics()

    @nn.compact
    def __call__(self, token_ids: Array) -> Array:
        shape = (self.n_vocab + 1, self.projection_dim)
        table = self.param("embedding", _word_table_init, shape, self.numerics.param_dtype)
        return jnp.take(table, token_ids, axis=0)


# --- recurrent layers -------------------------------------------------------------------------


class LSTMCell(nn.Module):
    """The parameters of one TensorFlow ``LSTMCell`` with projection (the recurrence is a kernel).

    ``() -> (W_0 [P + P, 4H], B [4H], W_P_0 [H, P])``: every layer's input is ``P`` wide (token
    vectors, or the layer below). Without a projection (``P == H``) an identity stands in for
    ``W_P_0``, which keeps one code path.
    """

    options: LSTMOptions
    numerics: Numerics = Numerics()

    @nn.compact
    def __call__(self) -> tuple[Array, Array, Array]:
        o, dtype = self.options, self.numerics.param_dtype
        has_proj = o.projection_dim < o.dim
        out_dim = o.projection_dim if has_proj else o.dim
        w = self.param(
            "W_0", nn.initializers.glorot_uniform(), (o.projection_dim + out_dim, 4 * o.dim), dtype
        )
        b = self.param("B", nn.initializers.zeros, (4 * o.dim,), dtype)
        if not has_proj:
            return w, b, jnp.eye(o.dim, dtype=w.dtype)
        return w, b, self.param("W_P_0", nn.initializers.glorot_uniform(), (o.dim, o.projection_dim), dtype)


class LSTMDirection(nn.Module):
    """One direction's cells ``Cell0 .. Cell{L-1}`` (the biLM names it ``RNN_d``): ``() -> [weights] * L``."""

    options: LSTMOptions
    numerics: Numerics = Numerics()

    @nn.compact
    def __call__(self) -> list[tuple[Array, Array, Array]]:
        return [
            LSTMCell(self.options, self.numerics, name=f"Cell{k}")() for k in range(self.options.n_layers)
        ]


def reverse_within_length(x: Array, mask: Array) -> Array:
    """Reverse each row of ``x [B, T, ...]`` within its true length (``mask [B, T]`` is a prefix).

    Like ``tf.reverse_sequence``: positions past the length stay where they are. Applying it twice
    gives back the input.
    """
    t = jnp.arange(mask.shape[1])[None, :]
    lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)[:, None]
    idx = jnp.where(t < lengths, lengths - 1 - t, t)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


class BiLM(nn.Module):
    """The ELMo biLM: token embedder plus a forward (``RNN_0``) and backward (``RNN_1``) LSTM stack.

    :meth:`__call__` is inference on whole sentences: ``token_vectors [B, T, P]`` (with BOS/EOS,
    from :meth:`embed_tokens`), ``mask [B, T]``, ``state`` -> ``(layers [B, L + 1, T, 2P], state)``
    where layer 0 is ``[x; x]``. Training calls :meth:`embed_tokens` and :meth:`lstm` directly,
    since there each direction reads its own window stream (see
    :class:`elmojax.model.lm.LanguageModel`, which assembles every forward). ``layout`` says over
    how many devices the batch (and the token table) is split; it is not a parameter and changes
    no value.
    """

    options: ElmoOptions
    numerics: Numerics = Numerics()
    layout: BatchLayout = BatchLayout()

    def setup(self):
        o = self.options
        if o.char_cnn is not None:
            self.token_embedder = CharTokenEmbedder(o.char_cnn, o.projection_dim, self.numerics, self.layout)
        else:
            self.token_embedder = WordTokenEmbedder(o.require_vocab_size(), o.projection_dim, self.numerics)
        self.directions = [LSTMDirection(o.lstm, self.numerics, name=f"RNN_{d}") for d in range(N_DIRECTIONS)]
        self.dropout = nn.Dropout(o.training.dropout)

    def embed_tokens(self, tokens: Array) -> Array:
        """Shifted char ids ``[..., chars]`` (or token ids ``[...]``) -> token vectors ``[..., P]``."""
        return self.token_embedder(tokens)

    def lstm(
        self, xs: Sequence[Array], masks: Sequence[Array], state: LSTMState, deterministic: bool = True
    ) -> tuple[list[Array], LSTMState]:
        """The bidirectional LSTM: each direction on its own input, all in one time loop per layer.

        ``xs[d] [B, T, P]`` in direction ``d``'s time order, ``masks[d] [B, T]``, ``state`` ->
        ``([L, B, T, P] per direction, state)``. Layers after the first add their input to their
        output when ``use_skip_connections``. With ``deterministic=False`` (training, needs a
        ``dropout`` rng) each layer's input and the top layer's output are dropped out, as bilm-tf
        does (its dropout cell wraps the residual cell, so the residual sees the dropped input).
        """
        o = self.options.lstm
        lstm_kernel = get_kernels(self.numerics.kernels).lstm
        train = not deterministic and self.options.training.dropout > 0
        # TensorFlow's LSTMCell clips the projection only when there is one
        proj_clip = o.proj_clip if o.projection_dim < o.dim else None
        # time-major inside: the layers' big [T, B, 4H] arrays then never need a transpose
        xs = [jnp.swapaxes(x, 0, 1) for x in xs]
        masks = tuple(jnp.swapaxes(m, 0, 1)[..., None] for m in masks)
        weights = [direction() for direction in self.directions]
        outs, cs, hs = [], [], []
        for layer in range(o.n_layers):
            if train:
                xs = [self.dropout(x, deterministic=False) for x in xs]
            ys, c, h = lstm_kernel(
                tuple(xs),
                masks,
                tuple(state.c[d, layer] for d in range(N_DIRECTIONS)),
                tuple(state.h[d, layer] for d in range(N_DIRECTIONS)),
                tuple(w[layer] for w in weights),
                o.cell_clip,
                proj_clip,
                layout_dot(self.numerics, self.layout),
            )
            if o.use_skip_connections and layer > 0:
                ys = tuple(y + x for y, x in zip(ys, xs, strict=True))
            outs.append(ys)
            cs.append(c)
            hs.append(h)
            xs = list(ys)
        if train:
            outs[-1] = tuple(self.dropout(y, deterministic=False) for y in outs[-1])
        layers = [jnp.swapaxes(jnp.stack([y[d] for y in outs]), 1, 2) for d in range(N_DIRECTIONS)]
        new_state = LSTMState(
            jnp.stack([jnp.stack([c[d] for c in cs]) for d in range(N_DIRECTIONS)]),
            jnp.stack([jnp.stack([h[d] for h in hs]) for d in range(N_DIRECTIONS)]),
        )
        return layers, new_state

    def __call__(self, x: Array, mask: Array, state: LSTMState) -> tuple[Array, LSTMState]:
        x_rev = reverse_within_length(x, mask)
        (fw, bw_rev), new_state = self.lstm([x, x_rev], [mask, mask], state)
        bw = jax.vmap(reverse_within_length, in_axes=(0, None))(bw_rev, mask)
        layers = [jnp.concatenate([x, x], axis=-1)]
        layers += [jnp.concatenate([fw[k], bw[k]], axis=-1) for k in range(fw.shape[0])]
        out = jnp.stack(layers, axis=1) * mask[:, None, :, None]
        return out, new_state

    def warm_state(self, table: Array, index: Array) -> LSTMState:
        """The state after reading a warm-up row from zeros (see :mod:`elmojax.model.start_state`).

        ``table [U, ...]`` distinct token inputs, ``index [1, T]`` into them (0 = padding) ->
        ``c [2, L, 1, H]``, ``h [2, L, 1, P]``.
        """
        x = jnp.take(self.embed_tokens(table), index, axis=0)
        _, state = self(x, index > 0, zero_state(self.options, 1))
        return state


def remove_sentence_boundaries(layers: Array, mask: Array) -> tuple[Array, Array]:
    """Drop BOS/EOS: ``[B, L + 1, T, D]``, ``mask [B, T]`` -> ``[B, L + 1, T - 2, D]``, ``[B, T - 2]``.

    Token ``t`` of a sentence sits at position ``t + 1``; the EOS of a sentence of length ``n``
    falls at output position ``n``, which the new mask (``mask[:, 2:]``) zeroes.
    """
    new_mask = mask[:, 2:]
    return layers[:, :, 1:-1] * new_mask[:, None, :, None], new_mask


def init_params(options: ElmoOptions, key: Array, numerics: Numerics | None = None) -> dict:
    """Randomly initialised biLM parameters (bilm-tf's initialisers) as a linen variable dict."""
    return _init_params(options, numerics or Numerics(), key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init_params(options: ElmoOptions, numerics: Numerics, key: Array) -> dict:
    # compiled once per model (the initialisers' random draws are many small programs)
    c = options.char_cnn
    tokens = jnp.ones((1, 3, c.max_characters_per_token), jnp.int32) if c else jnp.ones((1, 3), jnp.int32)

    def _init(m: BiLM):
        x = m.embed_tokens(tokens)
        mask = jnp.ones((1, 3), bool)
        m.lstm([x] * N_DIRECTIONS, [mask] * N_DIRECTIONS, zero_state(options, 1))
        return x

    return BiLM(options, numerics).init(key, method=_init)
