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

#: dense peak TFLOP/s per chip: (bfloat16, float32 via TF32 on GPUs; TPUs run float32 matmuls as
#: bfloat16 passes, so their float32 figure is the bfloat16 one over three)
PEAK_TFLOPS: dict[str, tuple[float, float]] = {
    "H200": (989.0, 495.0),
    "H100": (989.0, 495.0),
    "A100": (312.0, 156.0),
    "TPU v5 lite": (197.0, 197.0 / 3),
    "TPU v5e": (197.0, 197.0 / 3),
    "TPU v5p": (459.0, 459.0 / 3),
    "TPU v5": (459.0, 459.0 / 3),
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


def peak_tflops(device_kind: str, dtype: str) -> float | None:
    """The chip's dense peak for ``dtype`` (``bfloat16`` or ``float32``) by its JAX ``device_kind``,
    or None when unknown (CPUs, other chips)."""
    for name, (bf16, f32) in PEAK_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return bf16 if dtype == "bfloat16" else f32
    return None
