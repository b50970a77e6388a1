import hashlib
import json
import shutil

import h5py
import jax
import numpy as np
import pytest

from elmojax.errors import WeightsError
from elmojax.model.weights import load_weights, save_weights, standard_datasets
from elmojax.options import load_options
from tests.helpers import ROOT


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_fixture_round_trip_bit_for_bit(fixture_dir, tmp_path):
    options = load_options(fixture_dir / "options.json")
    params = load_weights(fixture_dir / "lm_weights.hdf5", options)
    assert params["params"]["token_embedder"]["char_embed"].shape == (262, 4)
    assert not params["params"]["token_embedder"]["char_embed"][0].any()
    out1, out2 = tmp_path / "a.hdf5", tmp_path / "b.hdf5"
    save_weights(params, options, out1)
    with h5py.File(fixture_dir / "lm_weights.hdf5", "r") as ref, h5py.File(out1, "r") as new:
        names = [n for n, _, _ in standard_datasets(options)]
        datasets = []
        ref.visititems(lambda n, o: datasets.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == sorted(datasets)  # every tensor of the file, nothing more
        for name in names:
            assert ref[name].dtype == new[name].dtype == np.float32
            assert ref[name][...].tobytes() == new[name][...].tobytes(), name
    save_weights(load_weights(out1, options), options, out2)
    assert md5(out1) == md5(out2)  # file -> params -> file is byte-identical


def test_padded_char_table_accepted(fixture_dir, tmp_path):
    options = load_options(fixture_dir / "options.json")
    path = tmp_path / "padded.hdf5"
    shutil.copy(fixture_dir / "lm_weights.hdf5", path)
    with h5py.File(path, "r+") as f:
        table = f["char_embed"][...]
        del f["char_embed"]
        f["char_embed"] = np.concatenate([np.zeros((1, 4), np.float32), table])
    a = load_weights(path, options)["params"]["token_embedder"]["char_embed"]
    b = load_weights(fixture_dir / "lm_weights.hdf5", options)["params"]["token_embedder"]["char_embed"]
    np.testing.assert_array_equal(a, b)


def corrupt(fixture_dir, tmp_path, fn):
    path = tmp_path / "w.hdf5"
    shutil.copy(fixture_dir / "lm_weights.hdf5", path)
    with h5py.File(path, "r+") as f:
        fn(f)
    return path


@pytest.mark.parametrize(
    "fn, pattern",
    [
        (lambda f: f.__delitem__("CNN_high_1/W_carry"), "dataset 'CNN_high_1/W_carry' is missing"),
        (
            lambda f: (
                f.__delitem__("CNN_proj/b_proj"),
                f.create_dataset("CNN_proj/b_proj", data=np.zeros(17, np.float32)),
            ),
            r"dataset 'CNN_proj/b_proj' has shape \(17,\), expected \(16,\)",
        ),
        (
            lambda f: (
                f.__delitem__("CNN/b_cnn_0"),
                f.create_dataset("CNN/b_cnn_0", data=np.zeros(4, np.int32)),
            ),
            "dataset 'CNN/b_cnn_0' has dtype int32",
        ),
    ],
)
def test_bad_weights_name_dataset(fixture_dir, tmp_path, fn, pattern):
    path = corrupt(fixture_dir, tmp_path, fn)
    with pytest.raises(WeightsError, match=pattern) as e:
        load_weights(path, load_options(fixture_dir / "options.json"))
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_options_that_do_not_fit_the_weights(fixture_dir, tmp_path):
    d = json.loads((fixture_dir / "options.json").read_text())
    d["lstm"]["projection_dim"] = 32
    (tmp_path / "o.json").write_text(json.dumps(d))
    with pytest.raises(WeightsError, match=r"'CNN_proj/W_proj' has shape \(124, 16\), expected \(124, 32\)"):
        load_weights(fixture_dir / "lm_weights.hdf5", load_options(tmp_path / "o.json"))


def test_nan_values_warn(fixture_dir, tmp_path):
    path = corrupt(fixture_dir, tmp_path, lambda f: f["CNN/b_cnn_1"].__setitem__(0, np.nan))
    with pytest.warns(UserWarning, match="'CNN/b_cnn_1' contains NaN"):
        load_weights(path, load_options(fixture_dir / "options.json"))


def test_not_hdf5_and_truncated(fixture_dir, tmp_path):
    options = load_options(fixture_dir / "options.json")
    bad = tmp_path / "bad.hdf5"
    bad.write_text("not hdf5")
    with pytest.raises(WeightsError, match="not a readable HDF5 file"):
        load_weights(bad, options)
    trunc = tmp_path / "trunc.hdf5"
    trunc.write_bytes((fixture_dir / "lm_weights.hdf5").read_bytes()[:20000])
    with pytest.raises(WeightsError, match="trunc.hdf5"):
        load_weights(trunc, options)
    with pytest.raises(WeightsError, match="not found"):
        load_weights(tmp_path / "missing.hdf5", options)


#: biLM parameters of the published ELMo models (AllenNLP's ELMo page: 13.6M, 28.0M, 93.6M)
PUBLISHED_MILLIONS = {"small": 13.6, "medium": 28.0, "original": 93.6}


@pytest.mark.parametrize("size", ["small", "medium", "original"])
def test_published_sizes_load(tmp_path, size):
    """Random weights in the published layouts (never downloaded) load with the published options,
    and have the published models' parameter counts."""
    options = load_options(ROOT / "experiments" / "configs" / f"{size}.json")
    rng = np.random.default_rng(0)
    path = tmp_path / f"{size}.hdf5"
    with h5py.File(path, "w") as f:
        for name, _, shape in standard_datasets(options):
            f.create_dataset(name, data=rng.standard_normal(shape, dtype=np.float32) * 0.01)
    params = load_weights(path, options)["params"]
    n_params = sum(a.size for a in jax.tree_util.tree_leaves(params)) - 16  # less the padding row
    assert round(n_params / 1e6, 1) == PUBLISHED_MILLIONS[size]
    w0 = params["RNN_1"]["Cell1"]["W_0"]
    p, h = options.lstm.projection_dim, options.lstm.dim
    assert w0.shape == (2 * p, 4 * h)
    assert params["token_embedder"]["char_embed"].shape == (262, 16)
    assert (
        len([k for k in params["token_embedder"] if k.startswith("CNN_high")]) == options.char_cnn.n_highway
    )
