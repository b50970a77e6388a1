"""The bidirectional language model as pure flax linen modules.

Parameter names mirror the standard weights HDF5 (bilm-tf ``dump_weights``) so that
:mod:`elmojax.weights` is a plain renaming: ``char_embed``, ``CNN/W_cnn_i``, ``CNN_high_k/...``,
``CNN_proj/...``, ``embedding`` (word-level models), ``RNN_d/Cell_l/{W_0,B,W_P_0}``.

Conventions used throughout:

* token inputs are **shifted** ids: 0 means "no token here" (padding). The character table has
  262 rows (row 0 is the zero padding row, rows 1..261 are bilm-tf's 261 characters); the
  word-level table has ``n_vocab + 1`` rows (row 0 padding).
* LSTM states are an :class:`LSTMState` of arrays ``c [n_dirs, n_layers, batch, H]`` and
  ``h [n_dirs, n_layers, batch, P]``; direction 0 is forward, 1 backward.
* A masked position (mask False) leaves the state untouched and outputs zeros, as TensorFlow's
  ``dynamic_rnn`` with ``sequence_length`` does; this is what makes stateful embedding of a batch
  with padded rows leave those rows' states alone.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from elmojax.options import N_CHARACTERS, PAD_CHAR, CharCNNOptions, ElmoOptions, LSTMOptions

Array = jax.Array
Precision = Any  # jax.lax.Precision | str | None


class LSTMState(NamedTuple):
    """Recurrent state of every LSTM layer of both directions."""

    c: Array  # [n_dirs, n_layers, batch, H]
    h: Array  # [n_dirs, n_layers, batch, P]


def zero_state(options: ElmoOptions, batch: int, n_dirs: int = 2) -> LSTMState:
    """All-zero :class:`LSTMState` for ``batch`` rows."""
    lstm = options.lstm
    return LSTMState(
        c=jnp.zeros((n_dirs, lstm.n_layers, batch, lstm.dim), jnp.float32),
        h=jnp.zeros((n_dirs, lstm.n_layers, batch, lstm.projection_dim), jnp.float32),
    )


# --- initialisers as bilm-tf uses them (FORMATS.md "Initialisation") ----------------------------


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


def _conv(x: Array, w: Array, precision: Precision) -> Array:
    return jax.lax.conv_general_dilated(
        x, w, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"), precision=precision
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_max_pool(x: Array, w: Array, precision: Precision = None) -> Array:
    """Valid 1-D convolution then max over positions: ``x [N, C, E]``, ``w [k, E, n]`` -> ``[N, n]``.

    The gradient goes to the first maximal position, as TensorFlow's ``max_pool`` gradient does,
    and is hand-written: one small GEMM pair per position instead of materialising the
    ``[N, C - k + 1, n]`` gradient of the convolution output, which is twice as fast on CPU.
    """
    return jnp.max(_conv(x, w, precision), axis=1)


def _conv_max_pool_fwd(x, w, precision):
    y = _conv(x, w, precision)
    idx = jnp.argmax(y, axis=1).astype(jnp.int32)
    return jnp.max(y, axis=1), (x, w, idx)


def _conv_max_pool_bwd(precision, saved, g):
    x, w, idx = saved
    k, e, n = w.shape
    w2 = w.reshape(k * e, n)
    dw = jnp.zeros((k * e, n), g.dtype)
    dx = jnp.zeros_like(x)
    for p in range(x.shape[1] - k + 1):
        gp = jnp.where(idx == p, g, 0.0)  # [N, n]: the gradient of the positions p that won
        dw = dw + jnp.dot(x[:, p : p + k, :].reshape(-1, k * e).T, gp, precision=precision)
        dx = dx.at[:, p : p + k, :].add(jnp.dot(gp, w2.T, precision=precision).reshape(-1, k, e))
    return dx, dw.reshape(k, e, n)


conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)


class CharCNN(nn.Module):
    """Convolutions over character embeddings, max-pooled over positions, then the activation.

    ``x [N, chars, E]`` (plus ``pad [E]``, the padding character's embedding) ``-> [N, F]``;
    parameters ``W_cnn_i [1, width, E, n_i]``, ``b_cnn_i [n_i]``. With fewer than
    ``max_characters_per_token`` columns the input must be trimmed as :func:`trim_char_ids` trims
    it: every token fits in the first ``chars - widest + 1`` columns. Then each filter only looks at
    windows starting there, and the windows made only of padding, which all share one value, are
    folded in as that single value; that is the same maximum for far less work.
    """

    options: CharCNNOptions
    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array, pad: Array) -> Array:
        e = self.options.embedding_dim
        relu = self.options.activation == "relu"
        trimmed = x.shape[1] < self.options.max_characters_per_token
        starts = x.shape[1] - self.options.max_width + 1
        outs = []
        for i, (width, num) in enumerate(self.options.filters):
            init = _uniform(0.05) if relu else _normal(float(np.sqrt(1.0 / (width * e))))
            w = self.param(f"W_cnn_{i}", init, (1, width, e, num))
            b = self.param(f"b_cnn_{i}", nn.initializers.zeros, (num,))
            if trimmed:
                y = conv_max_pool(x[:, : starts + width - 1], w[0], self.precision)
                pad_window = jnp.dot(pad, jnp.sum(w[0], axis=0), precision=self.precision)  # [n]
                y = jnp.where(pad_window > y, pad_window, y)
            else:
                y = conv_max_pool(x, w[0], self.precision)
            # adding the bias after the max is exact: rounding is monotonic, so the same element wins
            y = y + b
            outs.append(jax.nn.relu(y) if relu else jnp.tanh(y))
        return jnp.concatenate(outs, axis=-1)


class Highway(nn.Module):
    """``y = g * relu(x W_t + b_t) + (1 - g) * x`` with ``g = sigmoid(x W_c + b_c)``; ``[N, F] -> [N, F]``."""

    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f = x.shape[-1]
        init = _normal(float(np.sqrt(1.0 / f)))
        w_carry = self.param("W_carry", init, (f, f))
        b_carry = self.param("b_carry", nn.initializers.constant(-2.0), (f,))
        w_transform = self.param("W_transform", init, (f, f))
        b_transform = self.param("b_transform", nn.initializers.zeros, (f,))
        gate = jax.nn.sigmoid(jnp.dot(x, w_carry, precision=self.precision) + b_carry)
        transform = jax.nn.relu(jnp.dot(x, w_transform, precision=self.precision) + b_transform)
        return gate * transform + (1.0 - gate) * x


class Projection(nn.Module):
    """Linear map ``[N, F] -> [N, P]`` named as bilm-tf's ``CNN_proj``."""

    features: int
    precision: Precision = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        f = x.shape[-1]
        w = self.param("W_proj", _normal(float(np.sqrt(1.0 / f))), (f, self.features))
        b = self.param("b_proj", nn.initializers.zeros, (self.features,))
        return jnp.dot(x, w, precision=self.precision) + b


class CharTokenEmbedder(nn.Module):
    """Character ids ``[..., chars]`` (shifted, 0 = padding) -> token vectors ``[..., P]``."""

    options: CharCNNOptions
    projection_dim: int
    precision: Precision = None

    @nn.compact
    def __call__(self, char_ids: Array) -> Array:
        lead = char_ids.shape[:-1]
        c = self.options
        table = self.param("char_embed", _char_table_init, (N_CHARACTERS, c.embedding_dim))
        x = jnp.take(table, char_ids.reshape(-1, char_ids.shape[-1]), axis=0)  # [N, chars, E]
        x = CharCNN(c, self.precision, name="CNN")(x, table[PAD_CHAR + 1])  # [N, F]
        for k in range(c.n_highway):
            x = Highway(self.precision, name=f"CNN_high_{k}")(x)
        if c.n_filters != self.projection_dim:
            x = Projection(self.projection_dim, self.precision, name="CNN_proj")(x)
        return x.reshape(*lead, self.projection_dim)


class WordTokenEmbedder(nn.Module):
    """Shifted token ids ``[...]`` (0 = padding) -> token vectors ``[..., P]`` for word-level models."""

    n_vocab: int
    projection_dim: int

    @nn.compact
    def __call__(self, token_ids: Array) -> Array:
        table = self.param("embedding", _word_table_init, (self.n_vocab + 1, self.projection_dim))
        return jnp.take(table, token_ids, axis=0)


# --- recurrent layers -------------------------------------------------------------------------


class LSTMLayer(nn.Module):
    """TensorFlow's ``LSTMCell`` with projection and clipping, scanned over time (time-major).

    Gates are the column blocks ``i, j, f, o`` of ``[x, h] @ W_0 + B`` with a forget bias of 1.0
    added at run time. ``x [T, B, in]``, ``mask [T, B]``, state ``(c [B, H], h [B, P])`` ->
    ``(outputs [T, B, P], (c, h))``; masked steps keep the state and output zeros.
    """

    options: LSTMOptions
    precision: Precision = None

    @nn.compact
    def weights(self, n_in: int) -> tuple[Array, Array, Array]:
        """``(W_0 [in + P, 4H], B [4H], W_P_0 [H, P])``; an identity stands in for a missing projection."""
        o = self.options
        has_proj = o.projection_dim < o.dim
        out_dim = o.projection_dim if has_proj else o.dim
        w = self.param("W_0", nn.initializers.glorot_uniform(), (n_in + out_dim, 4 * o.dim))
        b = self.param("B", nn.initializers.zeros, (4 * o.dim,))
        if not has_proj:  # an identity keeps one code path (P == H)
            return w, b, jnp.eye(o.dim, dtype=w.dtype)
        return w, b, self.param("W_P_0", nn.initializers.glorot_uniform(), (o.dim, o.projection_dim))

    def __call__(
        self, x: Array, mask: Array, state: tuple[Array, Array]
    ) -> tuple[Array, tuple[Array, Array]]:
        o = self.options
        (ys,), (c,), (h,) = lstm_layers(
            (x,), (mask[..., None],), (state[0],), (state[1],), (self.weights(x.shape[-1]),),
            o.cell_clip, o.proj_clip, self.precision,
        )  # fmt: skip
        return ys, (c, h)


def _clip(x: Array, bound: float | None) -> Array:
    return x if bound is None else jnp.clip(x, -bound, bound)


def _inside(x: Array, bound: float | None) -> Array:
    return 1.0 if bound is None else (jnp.abs(x) <= bound).astype(x.dtype)


def _nt(a: Array, b: Array, precision: Precision) -> Array:
    """``a @ b.T`` without materialising the transpose."""
    return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=precision)


def _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, precision, keep_residuals):
    # the input half of the gate matmul does not depend on the recurrence: one GEMM up front,
    # laid out time-major so the loop reads contiguous [B, 4H] slices
    xws, loop_weights = [], []
    for x, (w, b, w_p) in zip(xs, weights, strict=True):
        t, batch, n_in = x.shape
        xws.append(jnp.dot(x.reshape(t * batch, n_in), w[:n_in], precision=precision).reshape(t, batch, -1))
        loop_weights.append((w[n_in:], b, w_p))  # the recurrent half, sliced once outside the loop

    def cell(carry, inp, weights):
        (c_prev, h_prev), (xw_t, m), (w_h, b, w_p) = carry, inp, weights
        z = xw_t + b + jnp.dot(h_prev, w_h, precision=precision)
        i, j, f, og = jnp.split(z, 4, axis=-1)
        c_raw = jax.nn.sigmoid(f + 1.0) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(j)
        c = _clip(c_raw, cell_clip)
        mid = jax.nn.sigmoid(og) * jnp.tanh(c)
        h_raw = jnp.dot(mid, w_p, precision=precision)
        h = _clip(h_raw, proj_clip)
        res = (z, c_prev, c_raw, mid, h_prev, h_raw) if keep_residuals else None
        return (jnp.where(m, c, c_prev), jnp.where(m, h, h_prev)), (jnp.where(m, h, 0.0), res)

    # every direction advances in the same loop: two independent chains per iteration keep both
    # cores busy and halve the loop overhead
    def step(carries, inps):
        return tuple(zip(*(cell(*a) for a in zip(carries, inps, loop_weights, strict=True)), strict=True))

    carries, outs = jax.lax.scan(step, tuple(zip(c0s, h0s, strict=True)), tuple(zip(xws, masks, strict=True)))
    ys, res = zip(*outs, strict=True)
    cs, hs = zip(*carries, strict=True)
    return ys, cs, hs, res


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def lstm_layers(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, precision):
    """One LSTM layer per direction, TensorFlow's ``LSTMCell`` with projection, masked like ``dynamic_rnn``.

    Each argument is a tuple over directions (all with the same ``T``): ``x [T, B, in]``,
    ``mask [T, B, 1]``, ``c0 [B, H]``, ``h0 [B, P]``, ``(W_0 [in + P, 4H], B [4H], W_P_0 [H, P])``
    -> tuples of ``ys [T, B, P]``, ``c [B, H]``, ``h [B, P]``. All directions run in one time
    loop. The gradient is hand-written: the reverse loop only produces the gate gradients, and the
    weight and input gradients are large GEMMs after it, instead of small GEMMs accumulated into
    weight-sized carries at every step (3x faster on CPU).
    """
    ys, cs, hs, _ = _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, precision, False)
    return ys, cs, hs


def _lstm_fwd(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, precision):
    ys, cs, hs, res = _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, precision, True)
    return (ys, cs, hs), (xs, masks, weights, res)


def _lstm_bwd(cell_clip, proj_clip, precision, saved, grads):
    xs, masks, weights, res = saved
    d_ys, d_cs, d_hs = grads
    # transposed once here: the loop's small GEMMs run faster on row-major right operands
    w_ts = [
        (jnp.transpose(w[x.shape[-1] :]), jnp.transpose(w_p))
        for x, (w, _, w_p) in zip(xs, weights, strict=True)
    ]

    def cell(carry, inp, w_t):
        (dc, dh), (dy, m, (z_t, c_prev_t, c_raw_t, _, _, h_raw_t)), (w_h_t, w_p_t) = carry, inp, w_t
        i, j, f, og = jnp.split(z_t, 4, axis=-1)
        si, tj, sf, so = jax.nn.sigmoid(i), jnp.tanh(j), jax.nn.sigmoid(f + 1.0), jax.nn.sigmoid(og)
        tc = jnp.tanh(_clip(c_raw_t, cell_clip))
        d_hraw = jnp.where(m, dh + dy, 0.0) * _inside(h_raw_t, proj_clip)
        d_mid = jnp.dot(d_hraw, w_p_t, precision=precision)
        d_c = (jnp.where(m, dc, 0.0) + d_mid * so * (1.0 - tc * tc)) * _inside(c_raw_t, cell_clip)
        dz = jnp.concatenate(
            [
                d_c * tj * si * (1.0 - si),
                d_c * si * (1.0 - tj * tj),
                d_c * c_prev_t * sf * (1.0 - sf),
                d_mid * tc * so * (1.0 - so),
            ],
            axis=-1,
        )
        dc_prev = d_c * sf + jnp.where(m, 0.0, dc)
        dh_prev = jnp.dot(dz, w_h_t, precision=precision) + jnp.where(m, 0.0, dh)
        # the bias gradient is summed after the loop: a [4H] reduction per step sat on the
        # critical path of every iteration (about 3% of a step)
        return (dc_prev, dh_prev), (dz, d_hraw)

    def step(carries, inps):
        return tuple(zip(*(cell(*a) for a in zip(carries, inps, w_ts, strict=True)), strict=True))

    # the residuals' ``mid`` and ``h_prev`` are only needed after the loop; pass them anyway,
    # unused scan inputs cost nothing
    init = tuple(zip(d_cs, d_hs, strict=True))
    carries, outs = jax.lax.scan(step, init, tuple(zip(d_ys, masks, res, strict=True)), reverse=True)
    d_xs, d_weights = [], []
    for x, (w, _, _), (dz, d_hraw), r in zip(xs, weights, outs, res, strict=True):
        t, batch, n_in = x.shape
        mid, h_prev = r[3], r[4]
        dz = dz.reshape(t * batch, -1)
        xh = jnp.concatenate([x, h_prev], axis=-1).reshape(t * batch, -1)
        d_w = jnp.dot(xh.T, dz, precision=precision)  # [in + P, 4H], W_0's layout
        db = jnp.sum(dz, axis=0)
        d_xs.append(_nt(dz, w[:n_in], precision).reshape(t, batch, n_in))
        d_wp = jnp.dot(mid.reshape(t * batch, -1).T, d_hraw.reshape(t * batch, -1), precision=precision)
        d_weights.append((d_w, db, d_wp))
    d_c0s = tuple(c[0] for c in carries)
    d_h0s = tuple(c[1] for c in carries)
    return tuple(d_xs), tuple(None for _ in masks), d_c0s, d_h0s, tuple(d_weights)


lstm_layers.defvjp(_lstm_fwd, _lstm_bwd)


class LSTMStack(nn.Module):
    """One direction's stack of LSTM layers (``Cell0``, ``Cell1``, ...).

    ``x [B, T, P]``, ``mask [B, T]``, state ``(c [L, B, H], h [L, B, P])`` ->
    ``(outputs [L, B, T, P], state)``. Layers after the first add their input to their output when
    ``use_skip_connections``; with dropout, each layer's input is dropped first (bilm-tf wraps the
    residual cell in the dropout cell, so the residual sees the dropped input).
    """

    options: LSTMOptions
    dropout: float = 0.0
    precision: Precision = None

    def setup(self):
        self.cells = [
            LSTMLayer(self.options, self.precision, name=f"Cell{k}") for k in range(self.options.n_layers)
        ]
        self.drop = nn.Dropout(self.dropout)

    def __call__(
        self, x: Array, mask: Array, state: tuple[Array, Array], deterministic: bool = True
    ) -> tuple[Array, tuple[Array, Array]]:
        return run_stacks([self], [x], [mask], [state], deterministic)[0]


def run_stacks(
    stacks: Sequence[LSTMStack],
    xs: Sequence[Array],
    masks: Sequence[Array],
    states: Sequence[tuple[Array, Array]],
    deterministic: bool = True,
) -> list[tuple[Array, tuple[Array, Array]]]:
    """Run several bound stacks of the same shape side by side, layer by layer, one time loop each.

    Per stack: ``x [B, T, P]``, ``mask [B, T]``, state ``(c [L, B, H], h [L, B, P])`` ->
    ``(outputs [L, B, T, P], state)``, as :class:`LSTMStack` computes it alone.
    """
    o = stacks[0].options
    # time-major inside: the layers' big [T, B, 4H] arrays then never need a transpose
    xs = [jnp.swapaxes(x, 0, 1) for x in xs]
    masks = tuple(jnp.swapaxes(m, 0, 1)[..., None] for m in masks)
    outs, cs, hs = [], [], []
    for layer in range(o.n_layers):
        if not deterministic and stacks[0].dropout > 0:
            xs = [s.drop(x, deterministic=False) for s, x in zip(stacks, xs, strict=True)]
        ys, c, h = lstm_layers(
            tuple(xs),
            masks,
            tuple(st[0][layer] for st in states),
            tuple(st[1][layer] for st in states),
            tuple(s.cells[layer].weights(x.shape[-1]) for s, x in zip(stacks, xs, strict=True)),
            o.cell_clip,
            o.proj_clip,
            stacks[0].precision,
        )
        if o.use_skip_connections and layer > 0:
            ys = tuple(y + x for y, x in zip(ys, xs, strict=True))
        outs.append(ys)
        cs.append(c)
        hs.append(h)
        xs = list(ys)
    return [
        (
            jnp.swapaxes(jnp.stack([y[d] for y in outs]), 1, 2),
            (jnp.stack([c[d] for c in cs]), jnp.stack([h[d] for h in hs])),
        )
        for d in range(len(stacks))
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
    where layer 0 is ``[x; x]``. Training uses :meth:`embed_tokens` and :meth:`run_direction`
    directly, since there each direction reads its own window stream.
    """

    options: ElmoOptions
    precision: Precision = None

    def setup(self):
        o = self.options
        if o.char_cnn is not None:
            self.token_embedder = CharTokenEmbedder(o.char_cnn, o.projection_dim, self.precision)
        else:
            self.token_embedder = WordTokenEmbedder(o.n_tokens_vocab, o.projection_dim)
        n_dirs = 2 if o.training.bidirectional else 1
        self.stacks = [
            LSTMStack(o.lstm, o.training.dropout, self.precision, name=f"RNN_{d}") for d in range(n_dirs)
        ]

    def embed_tokens(self, tokens: Array) -> Array:
        """Shifted char ids ``[..., chars]`` (or token ids ``[...]``) -> token vectors ``[..., P]``."""
        return self.token_embedder(tokens)

    def run_direction(
        self, direction: int, x: Array, mask: Array, state: tuple[Array, Array], deterministic: bool = True
    ) -> tuple[Array, tuple[Array, Array]]:
        """Run one direction's stack on ``x [B, T, P]`` in time order: ``-> ([L, B, T, P], state)``."""
        return self.stacks[direction](x, mask, state, deterministic)

    def run_directions(
        self,
        xs: Sequence[Array],
        masks: Sequence[Array],
        states: Sequence[tuple[Array, Array]],
        deterministic: bool = True,
    ) -> list[tuple[Array, tuple[Array, Array]]]:
        """Every direction's stack on its own input, in one time loop per layer.

        Per direction ``d``: ``xs[d] [B, T, P]`` in that direction's time order, ``masks[d] [B, T]``,
        ``states[d] = (c [L, B, H], h [L, B, P])`` -> ``([L, B, T, P], state)``.
        """
        return run_stacks(self.stacks, xs, masks, states, deterministic)

    def __call__(self, x: Array, mask: Array, state: LSTMState) -> tuple[Array, LSTMState]:
        x_rev = reverse_within_length(x, mask)
        (fw, (c0, h0)), (bw_rev, (c1, h1)) = self.run_directions(
            [x, x_rev], [mask, mask], [(state.c[0], state.h[0]), (state.c[1], state.h[1])]
        )
        bw = jax.vmap(reverse_within_length, in_axes=(0, None))(bw_rev, mask)
        layers = [jnp.concatenate([x, x], axis=-1)]
        layers += [jnp.concatenate([fw[k], bw[k]], axis=-1) for k in range(fw.shape[0])]
        out = jnp.stack(layers, axis=1) * mask[:, None, :, None]
        return out, LSTMState(jnp.stack([c0, c1]), jnp.stack([h0, h1]))


def remove_sentence_boundaries(layers: Array, mask: Array) -> tuple[Array, Array]:
    """Drop BOS/EOS: ``[B, L + 1, T, D]``, ``mask [B, T]`` -> ``[B, L + 1, T - 2, D]``, ``[B, T - 2]``.

    Token ``t`` of a sentence sits at position ``t + 1``; the EOS of a sentence of length ``n``
    falls at output position ``n``, which the new mask (``mask[:, 2:]``) zeroes.
    """
    new_mask = mask[:, 2:]
    return layers[:, :, 1:-1] * new_mask[:, None, :, None], new_mask


def init_params(options: ElmoOptions, key: Array) -> dict:
    """Randomly initialised biLM parameters (bilm-tf's initialisers) as a linen variable dict."""
    model = BiLM(options)
    c = options.char_cnn
    tokens = jnp.ones((1, 3, c.max_characters_per_token), jnp.int32) if c else jnp.ones((1, 3), jnp.int32)

    def _init(m: BiLM):
        x = m.embed_tokens(tokens)
        n_dirs = len(m.stacks)
        s = zero_state(options, 1, n_dirs)
        mask = jnp.ones((1, 3), bool)
        m.run_directions([x] * n_dirs, [mask] * n_dirs, [(s.c[d], s.h[d]) for d in range(n_dirs)])
        return x

    return jax.jit(lambda k: model.init(k, method=_init))(key)


def count_params(params: Any) -> int:
    """Number of scalars in a parameter tree."""
    return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def layer_names(options: ElmoOptions) -> Sequence[str]:
    """Names of the biLM output layers: ``token``, then ``lstm_1 .. lstm_L``."""
    return ["token"] + [f"lstm_{k + 1}" for k in range(options.lstm.n_layers)]
