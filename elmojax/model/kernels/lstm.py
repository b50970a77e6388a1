"""The LSTM recurrence: TensorFlow's ``LSTMCell`` with projection and clipping, masked like ``dynamic_rnn``.

Every argument is a tuple over directions (all with the same ``T``), so that all directions advance
in one time loop: ``x [T, B, in]`` (time-major), ``mask [T, B, 1]``, ``c0 [B, H]``, ``h0 [B, P]``,
``(W_0 [in + P, 4H], B [4H], W_P_0 [H, P])`` -> tuples of ``ys [T, B, P]``, ``c [B, H]``, ``h [B, P]``.
Gates are the column blocks ``i, j, f, o`` of ``[x, h] @ W_0 + B`` with a forget bias of 1.0 added at
run time; a masked step keeps the state and outputs zeros.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from elmojax.model.kernels.dot import DEFAULT, Dot

Array = jax.Array


def _clip(x: Array, bound: float | None) -> Array:
    return x if bound is None else jnp.clip(x, -bound, bound)


def _inside(x: Array, bound: float | None) -> Array:
    return 1.0 if bound is None else (jnp.abs(x) <= bound).astype(x.dtype)


def lstm_reference(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot: Dot = DEFAULT):
    """The plain formulation, differentiated by JAX (same arguments and results as :func:`lstm_layers`)."""
    ys, cs, hs, _ = _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot, False)
    return ys, cs, hs


def _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot, keep_residuals):
    # the input half of the gate matmul does not depend on the recurrence: one GEMM up front,
    # laid out time-major so the loop reads contiguous [B, 4H] slices
    xws, loop_weights = [], []
    for x, (w, b, w_p) in zip(xs, weights, strict=True):
        n_in = x.shape[-1]
        # [T, B, in] @ [in, 4H] without merging T and B (see Dot.tn): B may be sharded
        xws.append(dot.last(x, w[:n_in]))
        # the recurrent half, sliced (and cast to the compute dtype) once outside the loop
        loop_weights.append((dot.cast(w[n_in:]), b, dot.cast(w_p)))

    def cell(carry, inp, weights):
        (c_prev, h_prev), (xw_t, m), (w_h, b, w_p) = carry, inp, weights
        z = xw_t + b + dot(h_prev, w_h)
        i, j, f, og = jnp.split(z, 4, axis=-1)
        c_raw = jax.nn.sigmoid(f + 1.0) * c_prev + jax.nn.sigmoid(i) * jnp.tanh(j)
        c = _clip(c_raw, cell_clip)
        mid = jax.nn.sigmoid(og) * jnp.tanh(c)
        h_raw = dot(mid, w_p)
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
def lstm_layers(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot):
    """One LSTM layer per direction (see the module docstring for the arguments), all in one time loop.

    The gradient is hand-written: the reverse loop only produces the gate gradients, and the
    weight and input gradients are large GEMMs after it, instead of small GEMMs accumulated into
    weight-sized carries at every step, which is much faster on CPU
    (``experiments/bench/train_throughput.py`` measures the step).
    """
    ys, cs, hs, _ = _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot, False)
    return ys, cs, hs


def _lstm_fwd(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot):
    ys, cs, hs, res = _lstm_run(xs, masks, c0s, h0s, weights, cell_clip, proj_clip, dot, True)
    return (ys, cs, hs), (xs, masks, weights, res)


def _lstm_bwd(cell_clip, proj_clip, dot, saved, grads):
    xs, masks, weights, res = saved
    d_ys, d_cs, d_hs = grads
    # transposed once here: the loop's small GEMMs run faster on row-major right operands
    w_ts = [
        (dot.cast(jnp.transpose(w[x.shape[-1] :])), dot.cast(jnp.transpose(w_p)))
        for x, (w, _, w_p) in zip(xs, weights, strict=True)
    ]

    def cell(carry, inp, w_t):
        (dc, dh), (dy, m, (z_t, c_prev_t, c_raw_t, _, _, h_raw_t)), (w_h_t, w_p_t) = carry, inp, w_t
        i, j, f, og = jnp.split(z_t, 4, axis=-1)
        si, tj, sf, so = jax.nn.sigmoid(i), jnp.tanh(j), jax.nn.sigmoid(f + 1.0), jax.nn.sigmoid(og)
        tc = jnp.tanh(_clip(c_raw_t, cell_clip))
        d_hraw = jnp.where(m, dh + dy, 0.0) * _inside(h_raw_t, proj_clip)
        d_mid = dot(d_hraw, w_p_t)
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
        dh_prev = dot(dz, w_h_t) + jnp.where(m, 0.0, dh)
        # the bias gradient is summed after the loop: a [4H] reduction per step would sit on the
        # critical path of every iteration
        return (dc_prev, dh_prev), (dz, d_hraw)

    def step(carries, inps):
        return tuple(zip(*(cell(*a) for a in zip(carries, inps, w_ts, strict=True)), strict=True))

    # the residuals' ``mid`` and ``h_prev`` are only needed after the loop; pass them anyway,
    # unused scan inputs cost nothing
    init = tuple(zip(d_cs, d_hs, strict=True))
    carries, outs = jax.lax.scan(step, init, tuple(zip(d_ys, masks, res, strict=True)), reverse=True)
    d_xs, d_weights = [], []
    for x, (w, _, _), (dz, d_hraw), r in zip(xs, weights, outs, res, strict=True):
        n_in = x.shape[-1]
        mid, h_prev = r[3], r[4]
        xh = jnp.concatenate([x, h_prev], axis=-1)  # [T, B, in + P]
        d_w = dot.tn(xh, dz)  # [in + P, 4H], W_0's layout
        db = jnp.sum(dz, axis=(0, 1))
        d_xs.append(dot.last(dz, w[:n_in].T))
        d_wp = dot.tn(mid, d_hraw)
        d_weights.append((d_w, db, d_wp))
    d_c0s = tuple(c[0] for c in carries)
    d_h0s = tuple(c[1] for c in carries)
    return tuple(d_xs), tuple(None for _ in masks), d_c0s, d_h0s, tuple(d_weights)


lstm_layers.defvjp(_lstm_fwd, _lstm_bwd)
