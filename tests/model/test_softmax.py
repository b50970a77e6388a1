"""Sampled softmax (TensorFlow's log-uniform, unique sampler) and full softmax against numpy/optax."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from elmojax.data.negatives import sample_log_uniform
from elmojax.model.softmax import full_softmax_loss, log_expected_count, sampled_softmax_loss


def log_uniform_p(k, v):
    return np.log((k + 2.0) / (k + 1.0)) / np.log(v + 1.0)


def test_sampler_draw_distribution_is_log_uniform():
    rng = np.random.default_rng(0)
    v, n = 50, 20000
    first = np.array([sample_log_uniform(rng, v, 1)[0][0] for _ in range(n)])
    freq = np.bincount(first, minlength=v) / n
    p = log_uniform_p(np.arange(v), v)
    assert abs(p.sum() - 1) < 1e-12
    np.testing.assert_allclose(freq[:10], p[:10], atol=0.01)  # 3+ standard errors at n = 20000
    assert abs(freq[10:].sum() - p[10:].sum()) < 0.01


def test_sampler_unique_tries_and_determinism():
    ids, tries = sample_log_uniform(np.random.default_rng(5), 1000, 300)
    assert len(set(ids.tolist())) == 300 and ids.dtype == np.int32 and ids.min() >= 0 and ids.max() < 1000
    assert tries >= 300
    ids2, tries2 = sample_log_uniform(np.random.default_rng(5), 1000, 300)
    np.testing.assert_array_equal(ids, ids2)
    assert tries == tries2
    with pytest.raises(ValueError):
        sample_log_uniform(np.random.default_rng(0), 10, 10)


def test_expected_count_matches_inclusion_frequency():
    v, s, runs = 20, 5, 4000
    rng = np.random.default_rng(1)
    included = np.zeros(v)
    expected = np.zeros(v)
    for _ in range(runs):
        ids, tries = sample_log_uniform(rng, v, s)
        included[ids] += 1
        expected += np.exp(np.asarray(log_expected_count(jnp.arange(v), tries, v)))
    np.testing.assert_allclose(included / runs, expected / runs, atol=0.03)
    np.testing.assert_allclose(
        np.exp(log_expected_count(jnp.array([0, 7]), 3, v)),
        1 - (1 - log_uniform_p(np.array([0, 7]), v)) ** 3,
        rtol=1e-5,
    )


def numpy_sampled_loss(w, b, x, labels, sampled, tries):
    v = w.shape[0]

    def log_q(ids):
        return np.log(1 - (1 - log_uniform_p(ids.astype(np.float64), v)) ** tries)

    true = (x * w[labels]).sum(1) + b[labels] - log_q(labels)
    samp = x @ w[sampled].T + b[sampled] - log_q(sampled)[None]
    samp = np.where(labels[:, None] == sampled[None], -np.inf, samp)
    logits = np.concatenate([true[:, None], samp], 1)
    m = logits.max(1, keepdims=True)
    return (np.log(np.exp(logits - m).sum(1)) + m[:, 0]) - true


def test_sampled_loss_against_numpy_with_accidental_hit():
    rng = np.random.default_rng(2)
    v, p, n = 30, 4, 6
    w = rng.normal(size=(v, p))
    b = rng.normal(size=v)
    x = rng.normal(size=(n, p))
    labels = np.array([0, 3, 3, 7, 29, 1])
    sampled = np.array([3, 0, 12, 5])  # rows with labels 0 and 3 have accidental hits
    got = sampled_softmax_loss(
        *(jnp.asarray(a, jnp.float32) for a in (w, b, x)), jnp.asarray(labels), jnp.asarray(sampled), 9
    )
    np.testing.assert_allclose(got, numpy_sampled_loss(w, b, x, labels, sampled, 9), atol=1e-5)


def test_full_softmax_against_optax_and_finite_gradients():
    rng = np.random.default_rng(3)
    w, b, x = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((25, 4), (25,), (7, 4)))
    labels = jnp.asarray(rng.integers(0, 25, 7))
    ref = optax.softmax_cross_entropy_with_integer_labels(x @ w.T + b, labels)
    np.testing.assert_allclose(full_softmax_loss(w, b, x, labels), ref, atol=1e-6)
    sampled = jnp.asarray(sample_log_uniform(np.random.default_rng(0), 25, 8)[0])
    for fn in (
        lambda *a: full_softmax_loss(*a, labels),
        lambda *a: sampled_softmax_loss(*a, labels, sampled, 12),
    ):
        grads = jax.grad(lambda w, b, x, fn=fn: fn(w, b, x).sum(), argnums=(0, 1, 2))(w, b, x)
        assert all(bool(jnp.isfinite(g).all()) for g in grads)


def test_sampled_loss_approaches_full_loss_with_many_samples():
    """With nearly every class sampled, the corrected sampled loss is close to the full loss."""
    rng = np.random.default_rng(4)
    v = 40
    w, b, x = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in ((v, 8), (v,), (200, 8)))
    labels = jnp.asarray(rng.integers(0, v, 200))
    sampled, tries = sample_log_uniform(np.random.default_rng(1), v, v - 1)
    approx = float(sampled_softmax_loss(w, b, x, labels, jnp.asarray(sampled), tries).mean())
    full = float(full_softmax_loss(w, b, x, labels).mean())
    assert abs(approx - full) < 0.15 * full
