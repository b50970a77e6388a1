import json

import pytest

from elmojax.errors import OptionsError
from elmojax.options import load_options, options_from_dict
from tests.helpers import tiny_options_dict


def test_fixture_options_load(fixture_dir):
    o = load_options(fixture_dir / "options.json")
    assert o.lstm.dim == 64 and o.lstm.projection_dim == 16 and o.lstm.n_layers == 2
    assert o.lstm.cell_clip == 3.0 and not o.lstm.use_skip_connections
    assert o.char_cnn.filters == ((1, 4), (2, 8), (3, 16), (4, 32), (5, 64))
    assert o.char_cnn.n_filters == 124 and o.char_cnn.n_highway == 2
    assert o.output_dim == 32 and o.is_char_model


def test_round_trip_through_dict():
    o = options_from_dict(tiny_options_dict(batch_size=7, n_train_tokens=100))
    again = options_from_dict(o.to_dict())
    assert again == o
    assert o.to_dict(for_export=True)["char_cnn"]["n_characters"] == 262


def test_training_defaults_are_bilm_tf():
    t = options_from_dict(tiny_options_dict()).training
    assert (t.dropout, t.all_clip_norm_val, t.unroll_steps, t.learning_rate) == (0.1, 10.0, 20, 0.2)
    assert t.n_negative_samples_batch == 8192 and t.bidirectional


def test_word_level_model_needs_vocab_size():
    """A word-level options file may leave n_tokens_vocab to its vocabulary (train and the Embedder
    fill it in); building the model without either is refused, naming the file and the key."""
    d = tiny_options_dict()
    del d["char_cnn"]
    o = options_from_dict(d, source="w.json")
    with pytest.raises(OptionsError, match="w.json: key 'n_tokens_vocab' is missing; word-level models"):
        o.require_vocab_size()
    assert o.with_vocab_size(10).n_tokens_vocab == 10
    o = options_from_dict({**d, "n_tokens_vocab": 10})
    assert not o.is_char_model and o.n_tokens_vocab == 10 and o.with_vocab_size(99).n_tokens_vocab == 10


@pytest.mark.parametrize(
    "mutate, key, problem",
    [
        (lambda d: d["lstm"].pop("dim"), "lstm.dim", "missing"),
        (lambda d: d["lstm"].update(dim="64"), "lstm.dim", "must be int"),
        (lambda d: d["char_cnn"].update(filters=[[1, "a"]]), "char_cnn.filters[0]", "width, n_filters"),
        (lambda d: d["char_cnn"].update(n_characters=300), "char_cnn.n_characters", "262"),
        (lambda d: d["char_cnn"].update(activation="gelu"), "char_cnn.activation", "relu"),
        (lambda d: d.update(batch_size=True), "batch_size", "must be int"),
        (lambda d: d.update(dropout=1.5), "dropout", "< 1.0"),
        (lambda d: d["lstm"].update(projection_dim=99), "lstm.projection_dim", "must not exceed"),
        (lambda d: d.update(bidirectional=False), "bidirectional", "set it to true"),
    ],
)
def test_bad_options_name_file_and_key(tmp_path, mutate, key, problem):
    d = tiny_options_dict()
    mutate(d)
    path = tmp_path / "options.json"
    path.write_text(json.dumps(d))
    with pytest.raises(OptionsError) as e:
        load_options(path)
    msg = str(e.value)
    assert str(path) in msg and f"'{key}'" in msg and problem in msg
    assert "\n" not in msg


def test_training_n_characters_261_accepted():
    d = tiny_options_dict()
    d["char_cnn"]["n_characters"] = 261
    assert options_from_dict(d).char_cnn.n_characters == 261


def test_unknown_key_warns(tmp_path):
    path = tmp_path / "o.json"
    path.write_text(json.dumps({**tiny_options_dict(), "mystery": 1}))
    with pytest.warns(UserWarning, match="unknown key 'mystery'"):
        load_options(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(OptionsError, match="not found"):
        load_options(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  'lstm': 1}")
    with pytest.raises(OptionsError, match=r"bad.json: invalid JSON at line 2"):
        load_options(bad)
    with pytest.raises(OptionsError, match="is a directory"):
        load_options(tmp_path)


def test_tied_softmax_refused_for_training_only(tmp_path):
    """share_embedding_softmax is never silently ignored: train and evaluate refuse it by name;
    inference, which has no softmax, loads the file."""
    from elmojax.cli import main

    d = tiny_options_dict(share_embedding_softmax=True)
    (tmp_path / "options.json").write_text(json.dumps(d))
    assert load_options(tmp_path / "options.json").training.share_embedding_softmax
    (tmp_path / "train.txt").write_text("a b c\n")
    (tmp_path / "vocab.txt").write_text("<S>\n</S>\n<UNK>\na\nb\nc\n")
    argv = ["train", "--options-file", str(tmp_path / "options.json"), "--no-progress",
            "--train-prefix", str(tmp_path / "train.txt"), "--vocab-file", str(tmp_path / "vocab.txt"),
            "--save-dir", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(OptionsError, match="'share_embedding_softmax' is true.*set it to false"):
        options_from_dict(d).check_trainable()
    assert main(argv) == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_numerics_accepts_bfloat16_compute_only():
    from elmojax.errors import OptionsError
    from elmojax.model.numerics import Numerics

    assert Numerics(compute_dtype="bfloat16").dot.dtype == "bfloat16"
    with pytest.raises(OptionsError, match="compute dtype 'float16'.*float32, bfloat16"):
        Numerics(compute_dtype="float16")
    with pytest.raises(OptionsError, match="param dtype 'bfloat16'.*parameters are float32"):
        Numerics(param_dtype="bfloat16")
