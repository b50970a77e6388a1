"""The Embedder on 4 simulated devices equals one device, stateless and stateful.

Run by ``tests/embed/test_embed.py::test_sharded_embedder_equals_single_device`` as
``python -m tests.multidevice.embedder``.
"""

from __future__ import annotations

import jax
import numpy as np

from elmojax.embed.embedder import Embedder
from elmojax.model.bilm import init_params
from elmojax.options import options_from_dict
from tests.helpers import tiny_options_dict


def main() -> None:
    assert jax.local_device_count() == 4, jax.local_devices()
    options = options_from_dict(tiny_options_dict())
    params = init_params(options, jax.random.PRNGKey(0))
    sentences = [[f"s{i}"] * (1 + i % 7) for i in range(10)]
    for stateful in (False, True):
        sharded = Embedder(options, params, stateful=stateful)
        single = Embedder(options, params, stateful=stateful, devices=jax.local_devices()[:1])
        for batch in (sentences, sentences[:3]):
            for a, b in zip(sharded.embed_batch(batch), single.embed_batch(batch), strict=True):
                np.testing.assert_allclose(a, b, atol=1e-6)
    print("ok", sharded.n_devices)


if __name__ == "__main__":
    main()
