"""The optimisers, and the truth of what OPTIMIZERS says about sparse row updates."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elmojax.options import options_from_dict
from elmojax.train.optim import OPTIMIZERS, make_optimizer
from elmojax.train.sparse import SparseView, gather_view, scatter_view
from tests.helpers import TRAIN_KEYS, tiny_options_dict


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_row_sparse_exactness_is_what_the_table_says(name):
    """Three steps whose gradients touch a few rows: updating only those rows (gather, update,
    scatter, as the sparse step does) equals the dense update exactly when OPTIMIZERS says so."""
    options = options_from_dict(tiny_options_dict(**TRAIN_KEYS))
    rng = np.random.default_rng(0)
    params = {"softmax": {"W": jnp.asarray(rng.normal(size=(50, 4)), "float32"), "b": jnp.zeros(50)}}
    opt = make_optimizer(options, name)
    dense_p, dense_s = params, opt.init(params)
    sparse_p, sparse_s = params, opt.init(params)
    for _ in range(3):
        rows = jnp.asarray(np.sort(rng.choice(50, size=6, replace=False)), jnp.int32)
        g_rows = {"softmax": {"W": jnp.asarray(rng.normal(size=(6, 4)), "float32"), "b": jnp.ones(6)}}
        dense_g = jax.tree_util.tree_map(lambda p, g, r=rows: jnp.zeros_like(p).at[r].set(g), params, g_rows)
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(g_rows)))
        extra = dict(global_norm=norm, finite=jnp.array(True))
        updates, dense_s = opt.update(dense_g, dense_s, dense_p, **extra)
        dense_p = jax.tree_util.tree_map(jnp.add, dense_p, updates)
        view = SparseView({("softmax", "W"): rows, ("softmax", "b"): rows}, None, False)
        p_view, s_view = gather_view(sparse_p, view), gather_view(sparse_s, view)
        updates, s_view = opt.update(g_rows, s_view, p_view, **extra)
        p_view = jax.tree_util.tree_map(jnp.add, p_view, updates)
        sparse_p, sparse_s = scatter_view(sparse_p, view, p_view), scatter_view(sparse_s, view, s_view)
    same = all(
        np.allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(
            jax.tree_util.tree_leaves((dense_p, dense_s)),
            jax.tree_util.tree_leaves((sparse_p, sparse_s)),
            strict=True,
        )
    )
    assert same == OPTIMIZERS[name].row_sparse_exact, name
