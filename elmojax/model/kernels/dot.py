"""How the kernels and modules multiply: one hashable setting for every matmul and convolution.

Mixed precision as accelerators run it: the operands are cast to the compute dtype (bfloat16 runs on
the tensor cores / MXU), the products are accumulated and returned in float32, so everything
between matmuls (activations, the LSTM cell state and its clipping, the softmax's log-sum-exp, the
loss) and every parameter and gradient stays float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Dot:
    """Matmul settings: ``precision`` (``None``: the backend default, TF32 on recent GPUs;
    ``"highest"``: full float32) and ``dtype``, the operands' dtype (``"float32"`` or ``"bfloat16"``).
    Results are always float32. ``batch_groups``: over how many devices the batch's rows are
    split (:class:`elmojax.parallel.BatchLayout`); it changes how leading axes are contracted
    (:meth:`tn`), not the values."""

    precision: str | None = None
    dtype: str = "float32"
    batch_groups: int = 1

    @property
    def batch_is_sharded(self) -> bool:
        """Whether the batch's rows are split over several devices."""
        return self.batch_groups > 1

    def cast(self, x: Array) -> Array:
        """``x`` in the operand dtype; a weight cast once outside a loop is not cast again inside."""
        return x.astype(self.dtype)

    def __call__(self, a: Array, b: Array) -> Array:
        """``a @ b`` (``jnp.dot`` semantics) in float32."""
        a, b = self.cast(a), self.cast(b)
        return jnp.dot(a, b, precision=self.precision, preferred_element_type=jnp.float32)

    def nt(self, a: Array, b: Array) -> Array:
        """``a [..., k] @ b[n, k].T -> [..., n]``, without materialising the transpose."""
        return jax.lax.dot_general(
            self.cast(a),
            self.cast(b),
            (((a.ndim - 1,), (1,)), ((), ())),
            precision=self.precision,
            preferred_element_type=jnp.float32,
        )

    def rows(self, a: Array, b: Array) -> Array:
        """Row-wise dot products: ``a [N, k]``, ``b [N, k]`` -> ``[N]``."""
        return jnp.einsum(
            "nk,nk->n",
            self.cast(a),
            self.cast(b),
            precision=self.precision,
            preferred_element_type=jnp.float32,
        )

    def last(self, x: Array, w: Array) -> Array:
        """``x [..., k] @ w [k, n] -> [..., n]``; on one device through a merged 2-D product (faster
        on the CPU), with a sharded batch without merging the leading axes (see :meth:`tn`)."""
        if self.batch_is_sharded:
            return self(x, w)
        return self(x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[-1])

    def tn(self, a: Array, b: Array) -> Array:
        """``a [..., m]``, ``b [..., n]`` -> ``[m, n]``: the sum over all leading positions of the
        outer products (a weight gradient). The leading axes are contracted as they are, never
        merged by a reshape: one of them may be sharded (the batch), and merging it with another
        would make the partitioner gather the whole array onto every device. On one device the
        merged 2-D product is the faster one on the CPU, so it is kept there."""
        if not self.batch_is_sharded:
            return self(a.reshape(-1, a.shape[-1]).T, b.reshape(-1, b.shape[-1]))
        lead = tuple(range(a.ndim - 1))
        return jax.lax.dot_general(
            self.cast(a),
            self.cast(b),
            ((lead, lead), ((), ())),
            precision=self.precision,
            preferred_element_type=jnp.float32,
        )

    def conv1d(self, x: Array, w: Array) -> Array:
        """Valid 1-D convolution: ``x [N, C, E]``, ``w [k, E, n]`` -> ``[N, C - k + 1, n]``."""
        return jax.lax.conv_general_dilated(
            self.cast(x),
            self.cast(w),
            (1,),
            "VALID",
            dimension_numbers=("NWC", "WIO", "NWC"),
            precision=self.precision,
            preferred_element_type=jnp.float32,
        )


#: the backend's default float32 products
DEFAULT = Dot()
#: full float32 products, for comparisons against references
HIGHEST = Dot("highest")
