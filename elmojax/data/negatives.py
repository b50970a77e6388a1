"""The sampled softmax's negatives, drawn on the host: TensorFlow's log-uniform unique sampler.

Log-uniform (Zipf) over ids ``0..V-1``, ``P(k) = log((k + 2) / (k + 1)) / log(V + 1)``, drawn until
``S`` distinct ids are found, as ``tf.nn.sampled_softmax_loss`` does by default (``unique=True``).
A seeded numpy generator makes a step's negatives a pure function of (seed, step), so resuming
needs no sampler state. The loss that uses them is :mod:`elmojax.model.softmax`'s.
"""

from __future__ import annotations

import numpy as np


def sample_log_uniform(rng: np.random.Generator, n_classes: int, n_sampled: int) -> tuple[np.ndarray, int]:
    """Draw ``n_sampled`` distinct ids log-uniformly: ``(ids int32 [n_sampled], num_tries)``.

    ``num_tries`` counts every draw up to and including the one that completed the set, as
    TensorFlow's unique sampler reports it. Requires ``n_sampled < n_classes``.
    """
    if not 0 < n_sampled < n_classes:
        raise ValueError(f"n_sampled ({n_sampled}) must be between 1 and n_classes - 1 ({n_classes - 1})")
    log_range = np.log(n_classes + 1.0)
    seen = np.zeros(n_classes, bool)
    ids: list[np.ndarray] = []
    found, tries = 0, 0
    chunk = max(2 * n_sampled, 64)
    while found < n_sampled:
        draws = np.floor(np.exp(rng.random(chunk) * log_range)).astype(np.int64) - 1
        draws = np.clip(draws, 0, n_classes - 1)
        # first occurrences within the chunk, in draw order, that were not seen before
        _, first = np.unique(draws, return_index=True)
        first.sort()
        new = first[~seen[draws[first]]]
        need = n_sampled - found
        if len(new) >= need:
            take = new[:need]
            tries += int(take[-1]) + 1
        else:
            take = new
            tries += chunk
        seen[draws[take]] = True
        ids.append(draws[take])
        found += len(take)
    return np.concatenate(ids).astype(np.int32), tries


def sample_negatives(seed: int, step: int, n_vocab: int, n_sampled: int) -> tuple[np.ndarray, np.ndarray]:
    """Each direction's sampled softmax negatives for a step, a pure function of ``(seed, step)``:
    ``(ids int32 [2, S], num_tries float32 [2])``."""
    rng = np.random.default_rng([seed, step, 7])
    draws = [sample_log_uniform(rng, n_vocab, n_sampled) for _ in range(2)]
    return np.stack([d[0] for d in draws]), np.array([d[1] for d in draws], np.float32)
