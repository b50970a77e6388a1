"""The model FLOP count against the published configurations' figures."""

import pytest

from elmojax.model.flops import chip_peak, model_flops, peak_tflops
from elmojax.options import load_options
from tests.helpers import ROOT

CONFIGS = ROOT / "experiments" / "configs"


def test_original_and_small_flops_per_token():
    # original: token encoder 53.3 MFLOP a stream (convolutions 17.6, two highway layers 33.6,
    # projection 2.1), LSTM 75.5 a direction, sampled softmax 8.4 a direction; training = 3 x forward
    f = model_flops(load_options(CONFIGS / "original.json"))
    assert f.token_encoder == 17_616_896 + 33_554_432 + 2_097_152
    assert f.lstm == 2 * (1024 * 16384 * 2 + 4096 * 512 * 2)
    assert f.softmax == 8193 * 512 * 2
    assert f.training == pytest.approx(0.8229e9, rel=1e-4)
    assert model_flops(load_options(CONFIGS / "small.json")).training == pytest.approx(0.2504e9, rel=1e-3)
    # a full softmax counts the vocabulary
    full = model_flops(load_options(CONFIGS / "original.json"), sampled=False, n_vocab=793_471)
    assert full.softmax == 793_471 * 512 * 2


@pytest.mark.parametrize(
    "device_kind, bf16, f32",
    [
        # the dense (no 2:4 sparsity) datasheet figures; float32 at JAX's default precision is TF32
        ("NVIDIA H100 80GB HBM3", 989.5, 494.5),  # SXM
        ("NVIDIA H100 PCIe", 756.5, 378.0),  # not the SXM row
        ("NVIDIA H100 NVL", 835.5, 417.5),
        ("NVIDIA H200", 989.5, 494.5),
        ("NVIDIA H200 NVL", 835.5, 417.5),
        ("NVIDIA GH200 480GB", 989.5, 494.5),
        ("NVIDIA A100-SXM4-80GB", 312.0, 156.0),
        ("NVIDIA A100 80GB PCIe", 312.0, 156.0),
        # TPUs run a float32 matmul at the default precision as one bfloat16 pass: the bf16 peak
        ("TPU v4", 275.0, 275.0),
        ("TPU v5 lite", 197.0, 197.0),  # v5e
        ("TPU v5", 459.0, 459.0),  # v5p
        ("TPU v5p", 459.0, 459.0),
        ("TPU v6 lite", 918.0, 918.0),  # v6e
    ],
)
def test_peaks_by_device_kind(device_kind, bf16, f32):
    assert peak_tflops(device_kind, "bfloat16") == bf16
    assert peak_tflops(device_kind, "float32") == f32
    assert peak_tflops(device_kind, "float32", "default") == f32
    assert chip_peak(device_kind).source  # every row names its datasheet


def test_peaks_at_higher_float32_precision_and_unknown_chips():
    # "highest": plain FP32 on GPUs, six bfloat16 passes on TPUs; "high": TF32 / three passes
    assert peak_tflops("NVIDIA H100 80GB HBM3", "float32", "highest") == 67.0
    assert peak_tflops("NVIDIA H100 PCIe", "float32", "highest") == 51.0
    assert peak_tflops("NVIDIA A100-SXM4-40GB", "float32", "high") == 156.0
    assert peak_tflops("TPU v5 lite", "float32", "high") == pytest.approx(197.0 / 3)
    assert peak_tflops("TPU v6 lite", "float32", "highest") == pytest.approx(918.0 / 6)
    assert peak_tflops("TPU v5 lite", "bfloat16", "highest") == 197.0
    assert peak_tflops("cpu", "float32") is None and chip_peak("Tesla T4") is None
