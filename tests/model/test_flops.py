"""The model FLOP count against the published configurations' figures."""

import pytest

from elmojax.model.flops import model_flops, peak_tflops
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


def test_peaks_by_device_kind():
    assert peak_tflops("NVIDIA H200", "bfloat16") == 989.0
    assert peak_tflops("NVIDIA H100 80GB HBM3", "float32") == 495.0
    assert peak_tflops("TPU v5 lite", "bfloat16") == 197.0
    assert peak_tflops("TPU v5p", "bfloat16") == 459.0
    assert peak_tflops("cpu", "float32") is None
