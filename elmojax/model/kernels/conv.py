"""Valid 1-D convolution followed by a max over positions (the character CNN's inner op)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from elmojax.model.kernels.dot import DEFAULT, Dot

Array = jax.Array


def conv1d(x: Array, w: Array, dot: Dot = DEFAULT) -> Array:
    """Valid 1-D convolution: ``x [N, C, E]``, ``w [k, E, n]`` -> ``[N, C - k + 1, n]`` (float32)."""
    return dot.conv1d(x, w)


def conv_max_pool_reference(x: Array, w: Array, dot: Dot = DEFAULT) -> Array:
    """The plain formulation, differentiated by JAX: ``x [N, C, E]``, ``w [k, E, n]`` -> ``[N, n]``."""
    return jnp.max(conv1d(x, w, dot), axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_max_pool(x: Array, w: Array, dot: Dot = DEFAULT) -> Array:
    """Valid 1-D convolution then max over positions: ``x [N, C, E]``, ``w [k, E, n]`` -> ``[N, n]``.

    The gradient goes to the first maximal position, as TensorFlow's ``max_pool`` gradient does,
    and is hand-written: one small GEMM pair per position instead of materialising the
    ``[N, C - k + 1, n]`` gradient of the convolution output, which is faster on CPU.
    """
    return conv_max_pool_reference(x, w, dot)


def _conv_max_pool_fwd(x, w, dot):
    y = conv1d(x, w, dot)
    idx = jnp.argmax(y, axis=1).astype(jnp.int32)
    return jnp.max(y, axis=1), (x, w, idx)


def _conv_max_pool_bwd(dot, saved, g):
    x, w, idx = saved
    k, e, n = w.shape
    w2_t = dot.cast(w.reshape(k * e, n).T)
    xc = dot.cast(x)
    dw = jnp.zeros((k * e, n), jnp.float32)
    dx = jnp.zeros(x.shape, jnp.float32)
    for p in range(x.shape[1] - k + 1):
        gp = jnp.where(idx == p, g, 0.0)  # [N, n]: the gradient of the positions p that won
        dw = dw + dot(xc[:, p : p + k, :].reshape(-1, k * e).T, gp)
        dx = dx.at[:, p : p + k, :].add(dot(gp, w2_t).reshape(-1, k, e))
    return dx.astype(x.dtype), dw.reshape(k, e, n).astype(w.dtype)


conv_max_pool.defvjp(_conv_max_pool_fwd, _conv_max_pool_bwd)
