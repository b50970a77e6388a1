"""How the model computes: dtypes, matmul precision and the kernel set, one setting for every module.

Kept free of JAX imports so that the command line can build its flags from :data:`COMPUTE_DTYPES`
before JAX starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from elmojax.errors import OptionsError

if TYPE_CHECKING:  # pragma: no cover
    from elmojax.model.kernels.dot import Dot

_PRECISIONS = (None, "default", "high", "highest")
#: matmul/convolution operand dtypes; parameters are always float32
COMPUTE_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Numerics:
    """How the model computes: one setting that reaches every module and kernel.

    ``compute_dtype`` is the dtype of matmul and convolution operands (``bfloat16``: mixed
    precision, products accumulated in float32); ``param_dtype`` that of the parameters, float32
    (and so the optimiser state, gradients and exported weights). The LSTM cell states and their
    clipping, everything between matmuls, the softmax's log-sum-exp and the loss are float32 in
    either case. ``precision`` is the float32 matmul precision (``None``: the backend's default,
    TF32 on recent GPUs; ``"highest"``: full float32), ``kernels`` the implementation of the custom
    ops, a name in :data:`elmojax.model.kernels.KERNELS`. ``conv_tokens`` and ``tile_logits`` bound
    the largest temporaries without changing any value: a token table of more than ``conv_tokens``
    tokens a device is convolved block by block (:class:`~elmojax.model.bilm.CharCNN`), and the
    full softmax is scanned in tiles of at most ``tile_logits`` float32 logits
    (:func:`~elmojax.model.softmax.full_softmax_loss`). Not part of ``options.json``: the same
    model file can be run with any numerics. How the batch is spread over devices is not a
    numerical setting: it is the model's :class:`~elmojax.parallel.BatchLayout`.
    """

    compute_dtype: str = "float32"
    param_dtype: str = "float32"
    precision: str | None = None
    kernels: str = "xla"
    conv_tokens: int = 2048
    tile_logits: int = 2**26

    def __post_init__(self):
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise OptionsError(
                f"numerics: compute dtype {self.compute_dtype!r} is not supported; "
                f"use one of {', '.join(COMPUTE_DTYPES)}"
            )
        if self.param_dtype != "float32":
            raise OptionsError(
                f"numerics: param dtype {self.param_dtype!r} is not supported; parameters are float32 "
                "(use compute_dtype for bfloat16 matmuls)"
            )
        for name in ("conv_tokens", "tile_logits"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise OptionsError(f"numerics: `{name}` must be an integer >= 1, not {getattr(self, name)!r}")
        if self.precision not in _PRECISIONS:
            raise OptionsError(f"numerics: precision {self.precision!r} is not one of default, high, highest")

    @property
    def dot(self) -> Dot:
        """The :class:`~elmojax.model.kernels.dot.Dot` every matmul and convolution of the model uses."""
        from elmojax.model.kernels.dot import Dot  # jax stays out of this module's imports

        return Dot(self.precision, self.compute_dtype)
