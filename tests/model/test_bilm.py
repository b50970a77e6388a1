"""The linen modules against direct numpy implementations of bilm-tf's equations."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmojax.data.chars import Batcher
from elmojax.model.bilm import BiLM, init_params, reverse_within_length, zero_state
from elmojax.model.kernels import KERNELS
from elmojax.model.kernels.conv import conv1d, conv_max_pool
from elmojax.model.kernels.dot import Dot
from elmojax.model.kernels.lstm import lstm_layers, lstm_reference
from elmojax.model.numerics import Numerics

# float32 on GPUs defaults to TF32 matmuls; comparisons against numpy pin full precision
HIGHEST = Dot("highest")


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(x, w, b, w_p, c, h, cell_clip, proj_clip):
    """TensorFlow LSTMCell(num_proj, cell_clip, proj_clip): gates i, j, f, o and forget bias 1.0."""
    outs = []
    for t in range(x.shape[1]):
        z = np.concatenate([x[:, t], h], axis=1) @ w + b
        i, j, f, o = np.split(z, 4, axis=1)
        c = np.clip(sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j), -cell_clip, cell_clip)
        h = np.clip((sigmoid(o) * np.tanh(c)) @ w_p, -proj_clip, proj_clip)
        outs.append(h)
    return np.stack(outs, 1), c, h


def run_layer(x, mask, state, weights, cell_clip, proj_clip):
    """One direction of the LSTM kernel on batch-major ``x [B, T, in]``, ``mask [B, T]``."""
    (ys,), (c,), (h,) = lstm_layers(
        (x.swapaxes(0, 1),),
        (mask.T[..., None],),
        (state[0],),
        (state[1],),
        (weights,),
        cell_clip,
        proj_clip,
        HIGHEST,
    )
    return np.asarray(ys).swapaxes(0, 1), (c, h)


def test_lstm_layer_matches_tensorflow_equations():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4)).astype(np.float32)
    c0 = rng.normal(size=(2, 8)).astype(np.float32)
    h0 = rng.normal(size=(2, 3)).astype(np.float32)
    mask = np.ones((2, 5), bool)
    # W_0 [in + P, 4H], a non-zero bias to exercise the gate order, W_P_0 [H, P]
    p = {k: (0.5 * rng.normal(size=shape)).astype(np.float32) for k, shape in
         (("W_0", (7, 32)), ("B", (32,)), ("W_P_0", (8, 3)))}  # fmt: skip
    weights = (p["W_0"], p["B"], p["W_P_0"])
    ys, (c, h) = run_layer(x, mask, (c0, h0), weights, 0.5, 0.4)
    ys_ref, c_ref, h_ref = numpy_lstm(x, p["W_0"], p["B"], p["W_P_0"], c0, h0, 0.5, 0.4)
    np.testing.assert_allclose(ys, ys_ref, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, atol=1e-6)
    np.testing.assert_allclose(h, h_ref, atol=1e-6)
    # masked steps keep the state and output zeros (dynamic_rnn with sequence_length)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    ys_m, (c_m, h_m) = run_layer(x, mask, (c0, h0), weights, 0.5, 0.4)
    _, c3, h3 = numpy_lstm(x[:1, :3], p["W_0"], p["B"], p["W_P_0"], c0[:1], h0[:1], 0.5, 0.4)
    np.testing.assert_allclose(c_m[0], c3[0], atol=1e-6)
    np.testing.assert_allclose(h_m[0], h3[0], atol=1e-6)
    assert not np.asarray(ys_m[0, 3:]).any()


def test_reverse_within_length():
    x = jnp.arange(10).reshape(2, 5)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    np.testing.assert_array_equal(reverse_within_length(x, mask), [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]])
    np.testing.assert_array_equal(reverse_within_length(reverse_within_length(x, mask), mask), x)


def numpy_char_embedder(p, ids, filters, n_highway):
    x = p["char_embed"][ids]  # [N, C, E]
    cnn = p["CNN"]
    outs = []
    for i, (w, _) in enumerate(filters):
        k = cnn[f"W_cnn_{i}"][0]  # [w, E, n]
        conv = np.stack([np.einsum("nwe,wef->nf", x[:, s : s + w], k) for s in range(x.shape[1] - w + 1)], 1)
        outs.append(np.maximum(conv.max(1) + cnn[f"b_cnn_{i}"], 0))
    y = np.concatenate(outs, -1)
    for k in range(n_highway):
        hw = p[f"CNN_high_{k}"]
        g = sigmoid(y @ hw["W_carry"] + hw["b_carry"])
        y = g * np.maximum(y @ hw["W_transform"] + hw["b_transform"], 0) + (1 - g) * y
    return y @ p["CNN_proj"]["W_proj"] + p["CNN_proj"]["b_proj"]


def test_char_embedder_matches_numpy(tiny_options, tiny_params):
    ids = Batcher().batch_sentences([["hello", "wörld", "!"]])[0]
    got = BiLM(tiny_options, Numerics(precision="highest")).apply(tiny_params, ids, method=BiLM.embed_tokens)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tiny_params["params"]["token_embedder"])
    ref = numpy_char_embedder(p, ids, tiny_options.char_cnn.filters, tiny_options.char_cnn.n_highway)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_bilm_output_layout(tiny_options, tiny_params):
    model = BiLM(tiny_options)
    ids = Batcher().batch_sentences([["a", "b", "c"], ["d"]])
    x = model.apply(tiny_params, ids, method=BiLM.embed_tokens)
    mask = (ids > 0).any(-1)
    out, state = model.apply(tiny_params, x, mask, zero_state(tiny_options, 2))
    assert out.shape == (2, 3, 5, 12) and state.c.shape == (2, 2, 2, 12)
    np.testing.assert_allclose(out[:, 0, :, :6], out[:, 0, :, 6:])  # layer 0 is [x; x]
    assert not np.asarray(out[1, :, 3:]).any()  # padding zeroed
    # the backward direction of the short sentence equals running it alone
    alone, _ = model.apply(tiny_params, x[1:, :3], mask[1:, :3], zero_state(tiny_options, 1))
    np.testing.assert_allclose(out[1:, :, :3], alone, atol=1e-6)


@pytest.mark.parametrize("skip", [True, False])
def test_skip_connections(tiny_options, tiny_params, skip):
    lstm_opts = dataclasses.replace(tiny_options.lstm, use_skip_connections=skip)
    model = BiLM(tiny_options.replace(lstm=lstm_opts))
    ids = Batcher().batch_sentences([["a", "b"]])
    x = model.apply(tiny_params, ids, method=BiLM.embed_tokens)
    mask = np.ones((1, 4), bool)
    s = zero_state(tiny_options, 1)
    (layers, _), _ = model.apply(tiny_params, [x, x], [mask, mask], s, method=BiLM.lstm)  # forward's layers
    cell1 = tiny_params["params"]["RNN_0"]["Cell1"]
    weights = (cell1["W_0"], cell1["B"], cell1["W_P_0"])
    o = tiny_options.lstm
    y1, _ = run_layer(np.asarray(layers[0]), mask, (s.c[0, 1], s.h[0, 1]), weights, o.cell_clip, o.proj_clip)
    np.testing.assert_allclose(layers[1], y1 + layers[0] if skip else y1, atol=1e-6)


def test_kernel_choice_is_one_setting(tiny_options, tiny_params):
    """The reference kernels (plain formulations) give the biLM the same outputs as the default ones."""
    ids = Batcher().batch_sentences([["a", "bc", "def"], ["g"]])
    mask = (ids > 0).any(-1)
    outs = []
    for name in KERNELS:
        model = BiLM(tiny_options, Numerics(precision="highest", kernels=name))
        x = model.apply(tiny_params, ids, method=BiLM.embed_tokens)
        outs.append(model.apply(tiny_params, x, mask, zero_state(tiny_options, 2))[0])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)


@pytest.mark.parametrize("clips", [(None, None), (0.3, 0.2)])
def test_lstm_hand_written_gradient_matches_autodiff(clips):
    """Two directions in one loop, each with its own input, mask, state and weights."""
    rng = np.random.default_rng(0)
    t, b, n_in, h, p = 5, 3, 6, 8, 4

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], bool)[..., None]
    masks = (jnp.asarray(mask), jnp.asarray(mask[::-1]))
    xs, c0s, h0s = (
        (normal(t, b, n_in), normal(t, b, n_in)),
        (normal(b, h), normal(b, h)),
        (normal(b, p), normal(b, p)),
    )
    ws = tuple((normal(n_in + p, 4 * h), normal(4 * h), normal(h, p)) for _ in range(2))
    targets = [(normal(t, b, p), normal(b, h), normal(b, p)) for _ in range(2)]

    def loss(fn, xs, c0s, h0s, ws):
        ys, cs, hs = fn(xs, masks, c0s, h0s, ws, *clips, HIGHEST)[:3]
        return sum(
            jnp.sum(y * ty) + jnp.sum(c * tc) + jnp.sum(hh * th)
            for y, c, hh, (ty, tc, th) in zip(ys, cs, hs, targets, strict=True)
        )

    plain = lstm_reference
    args = (xs, c0s, h0s, ws)
    g_custom = jax.grad(lambda *a: loss(lstm_layers, *a), argnums=range(4))(*args)
    g_plain = jax.grad(lambda *a: loss(plain, *a), argnums=range(4))(*args)
    leaves = jax.tree_util.tree_leaves(g_plain)
    assert len(leaves) == 2 * 6
    for a, b_ in zip(jax.tree_util.tree_leaves(g_custom), leaves, strict=True):
        np.testing.assert_allclose(a, b_, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("width", [1, 3, 5])
def test_conv_max_pool_hand_written_gradient(width):
    """Against autodiff of conv + max (no ties in random data), and TF's first-maximum rule on ties."""
    rng = np.random.default_rng(width)
    x = jnp.asarray(rng.normal(size=(6, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(width, 4, 5)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    got = jax.grad(lambda x, w: jnp.sum(conv_max_pool(x, w, HIGHEST) * g), argnums=(0, 1))(x, w)
    want = jax.grad(lambda x, w: jnp.sum(jnp.max(conv1d(x, w, HIGHEST), axis=1) * g), argnums=(0, 1))(x, w)
    want_y = jnp.max(conv1d(x, w, HIGHEST), axis=1)
    np.testing.assert_allclose(conv_max_pool(x, w, HIGHEST), want_y, rtol=0, atol=0)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)

    # Equal windows tie; the whole gradient goes to the first of them, as TF's max_pool does.
    tied = jnp.ones((1, 4, 1), jnp.float32)
    dx = jax.grad(lambda x: jnp.sum(conv_max_pool(x, jnp.ones((1, 1, 1)))))(tied)
    np.testing.assert_array_equal(dx[0, :, 0], [1.0, 0.0, 0.0, 0.0])


def test_no_projection_means_no_projection_clip(tiny_options):
    """P == H: TensorFlow's LSTMCell has no projection, so proj_clip does not apply (cell_clip does)."""
    lstm = dataclasses.replace(tiny_options.lstm, dim=6, projection_dim=6, cell_clip=50.0, proj_clip=1e-3)
    options = tiny_options.replace(lstm=lstm)
    params = init_params(options, jax.random.PRNGKey(0))
    ids = Batcher().batch_sentences([["a", "b", "c"]])
    model = BiLM(options)
    x = model.apply(params, ids, method=BiLM.embed_tokens)
    out, _ = model.apply(params, x, (ids > 0).any(-1), zero_state(options, 1))
    assert np.abs(np.asarray(out[:, 1])).max() > 1e-2  # h = o * tanh(c), far beyond the clip


def test_export_options_name_both_clips(tiny_options):
    """AllenNLP reads lstm.cell_clip and lstm.proj_clip unconditionally: exports always carry them."""
    lstm = dataclasses.replace(tiny_options.lstm, cell_clip=None, proj_clip=None)
    exported = tiny_options.replace(lstm=lstm).to_dict(for_export=True)["lstm"]
    assert exported["cell_clip"] is None and exported["proj_clip"] is None


def test_large_tables_are_convolved_in_blocks_with_the_same_result(tiny_options, tiny_params):
    """An accelerator's fixed table is convolved in blocks of tokens (bounding the CNN's temporaries):
    the same token vectors and gradients as one convolution over the whole table."""
    from elmojax.data.chars import trim_char_ids

    ids = Batcher().batch_sentences([[f"w{i}" * (1 + i % 5) for i in range(38)]])[0]  # 40 tokens
    ids = trim_char_ids(ids, tiny_options.char_cnn.max_width)

    def vectors_and_grads(params, conv_tokens):
        model = BiLM(tiny_options, Numerics(precision="highest", conv_tokens=conv_tokens))
        vectors = model.apply(params, ids, method=BiLM.embed_tokens)
        return vectors, jax.grad(lambda p: jnp.sum(model.apply(p, ids, method=BiLM.embed_tokens) ** 2))(
            params
        )

    whole = jax.jit(vectors_and_grads, static_argnums=1)(tiny_params, 2048)
    blocked = jax.jit(vectors_and_grads, static_argnums=1)(tiny_params, 8)  # 5 blocks of 8
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(blocked), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
