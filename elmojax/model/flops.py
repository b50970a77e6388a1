"""Model FLOPs per token, counted as the field counts them for ELMo (and for MFU).

The count follows bilm-tf's graph: the character CNN runs at every position of both directions'
streams, each direction's LSTM stack and sampled softmax once per position, 2 FLOPs per multiply-add,
and a training step costs 3 forward passes (forward, and backward twice as much). elmojax does less
work than this (the character CNN once per distinct token of a batch, only over the character
windows that touch a real character); tokens/s is what users feel, and model FLOPs by this standard
count are how throughput compares across implementations and chips.
"""

from __future__ import annotations

from dataclasses import dataclass

from elmojax.options import N_DIRECTIONS, ElmoOptions


@dataclass(frozen=True)
class Peak:
    """A chip's dense (no structured sparsity) peak TFLOP/s: ``bf16`` on its tensor cores / MXU,
    ``f32`` for float32 matmuls at JAX's default precision, ``f32_full`` for full float32
    (``precision="highest"``); ``source`` says where the figures come from."""

    bf16: float
    f32: float
    f32_full: float
    source: str


#: chips by a substring of JAX's ``device_kind`` (case-insensitive), the more specific first:
#: ``NVIDIA H100 PCIe`` must not take the SXM row. NVIDIA's datasheets print tensor-core figures with
#: 2:4 sparsity; the dense peak is half. A float32 matmul at JAX's default precision is TF32 on these
#: GPUs and ONE bfloat16 pass on TPUs (``jax.lax.Precision.DEFAULT``), so its peak is the TF32 one on
#: GPUs and the bfloat16 one on TPUs; ``precision="highest"`` is plain FP32 on GPUs and six bfloat16
#: passes on TPUs (``"high"``, three passes, is bfloat16 / 3).
PEAKS: tuple[tuple[str, Peak], ...] = (
    # NVIDIA H100 Tensor Core GPU datasheet: H100 SXM BF16 1,979, TF32 989, FP32 67 TFLOPS;
    # H100 PCIe 1,513, 756, 51; H100 NVL 1,671, 835, 60 (tensor figures with sparsity)
    ("H100 PCIe", Peak(756.5, 378.0, 51.0, "NVIDIA H100 datasheet, H100 PCIe")),
    ("H100 NVL", Peak(835.5, 417.5, 60.0, "NVIDIA H100 datasheet, H100 NVL")),
    ("H100", Peak(989.5, 494.5, 67.0, "NVIDIA H100 datasheet, H100 SXM")),  # 'NVIDIA H100 80GB HBM3'
    # NVIDIA H200 Tensor Core GPU datasheet: H200 SXM as H100 SXM; H200 NVL BF16 1,671, TF32 835, FP32 60
    ("H200 NVL", Peak(835.5, 417.5, 60.0, "NVIDIA H200 datasheet, H200 NVL")),
    ("H200", Peak(989.5, 494.5, 67.0, "NVIDIA H200 datasheet, H200 SXM")),
    # NVIDIA GH200 Grace Hopper Superchip datasheet: the H100 SXM figures
    ("GH200", Peak(989.5, 494.5, 67.0, "NVIDIA GH200 datasheet")),
    # NVIDIA A100 Tensor Core GPU datasheet: BF16 312, TF32 156, FP32 19.5 TFLOPS dense, SXM and PCIe
    ("A100", Peak(312.0, 156.0, 19.5, "NVIDIA A100 datasheet")),
    # Google Cloud TPU system architecture pages, "peak compute per chip (bf16)"
    ("TPU v6 lite", Peak(918.0, 918.0, 918.0 / 6, "Cloud TPU v6e (Trillium) documentation")),
    ("TPU v6e", Peak(918.0, 918.0, 918.0 / 6, "Cloud TPU v6e (Trillium) documentation")),
    ("TPU v5 lite", Peak(197.0, 197.0, 197.0 / 6, "Cloud TPU v5e documentation")),
    ("TPU v5e", Peak(197.0, 197.0, 197.0 / 6, "Cloud TPU v5e documentation")),
    ("TPU v5p", Peak(459.0, 459.0, 459.0 / 6, "Cloud TPU v5p documentation")),
    ("TPU v5", Peak(459.0, 459.0, 459.0 / 6, "Cloud TPU v5p documentation")),  # v5p reports 'TPU v5'
    ("TPU v4", Peak(275.0, 275.0, 275.0 / 6, "Cloud TPU v4 documentation")),
)

#: bfloat16 passes of a float32 matmul on a TPU by JAX precision name (None: the default, one pass)
TPU_F32_PASSES = {
    None: 1,
    "default": 1,
    "bfloat16": 1,
    "high": 3,
    "tensorfloat32": 3,
    "highest": 6,
    "float32": 6,
}


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs per token of each part (per stream or per direction) and the totals."""

    token_encoder: float  # character CNN + highway + projection, per stream (0 for word models)
    lstm: float  # the LSTM stack, per direction
    softmax: float  # sampled (or full) softmax logits, per direction

    @property
    def forward(self) -> float:
        return N_DIRECTIONS * (self.token_encoder + self.lstm + self.softmax)

    @property
    def training(self) -> float:
        """FLOPs per token of a training step: forward and backward (twice the forward)."""
        return 3 * self.forward


def model_flops(options: ElmoOptions, sampled: bool = True, n_vocab: int | None = None) -> FlopCount:
    """The FLOP count per token of ``options``' biLM; ``sampled`` False counts a full softmax over
    ``n_vocab`` (default ``options.n_tokens_vocab``) words."""
    p = options.projection_dim
    encoder = 0.0
    c = options.char_cnn
    if c is not None:
        width = c.max_characters_per_token
        encoder += sum(2.0 * (width - w + 1) * w * c.embedding_dim * n for w, n in c.filters)
        f = c.n_filters
        encoder += c.n_highway * 2 * 2.0 * f * f
        if f != p:
            encoder += 2.0 * f * p
    o = options.lstm
    has_proj = o.projection_dim < o.dim
    out = o.projection_dim if has_proj else o.dim
    layer = 2.0 * (o.projection_dim + out) * 4 * o.dim + (2.0 * o.dim * o.projection_dim if has_proj else 0.0)
    t = options.training
    if sampled and t.sample_softmax:
        classes = t.n_negative_samples_batch + 1
    else:
        classes = n_vocab if n_vocab is not None else (options.n_tokens_vocab or 0)
    return FlopCount(token_encoder=encoder, lstm=o.n_layers * layer, softmax=2.0 * classes * out)


def chip_peak(device_kind: str) -> Peak | None:
    """The :data:`PEAKS` row of a chip by its JAX ``device_kind``, or None when unknown."""
    kind = device_kind.lower()
    for name, peak in PEAKS:
        if name.lower() in kind:
            return peak
    return None


def peak_tflops(device_kind: str, dtype: str, precision: str | None = None) -> float | None:
    """The chip's dense peak TFLOP/s for matmuls in ``dtype`` (``bfloat16`` or ``float32``) at
    ``precision`` (a :class:`~elmojax.model.numerics.Numerics` precision; None is JAX's default),
    by its JAX ``device_kind`` (``NVIDIA H100 80GB HBM3``, ``TPU v5 lite``), or None when unknown
    (CPUs, other chips)."""
    peak = chip_peak(device_kind)
    if peak is None:
        return None
    if dtype == "bfloat16":
        return peak.bf16
    if device_kind.lower().startswith("tpu"):
        return peak.bf16 / TPU_F32_PASSES[precision]
    return peak.f32_full if precision in ("highest", "float32") else peak.f32
