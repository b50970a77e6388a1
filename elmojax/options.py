"""ELMo ``options.json`` loaded into frozen dataclasses, validated once at the edge.

The schema is bilm-tf's: an ``lstm`` block, an optional ``char_cnn`` block (absent for word-level
models) and the training keys at the top level (``batch_size``, ``unroll_steps``, ...). Everything
past :func:`load_options` works with :class:`ElmoOptions`; no raw dict travels deeper.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elmojax.errors import OptionsError

#: Character ids: UTF-8 bytes 0..255 and five specials (see docs/formats.md).
BOS_CHAR, EOS_CHAR, BOW_CHAR, EOW_CHAR, PAD_CHAR = 256, 257, 258, 259, 260
N_CHARACTERS_TRAIN = 261  # bilm-tf's table while training, without the padding row
N_CHARACTERS = 262  # the exported value: +1 row for id 0 = "no token here"
#: ELMo's layers are ``[forward; backward]``: every model has exactly these two LSTM directions
N_DIRECTIONS = 2
#: where a sentence's LSTM states start without a carried state (see elmojax.model.start_state);
#: the first is the default
START_STATES = ("warm", "zero")


@dataclass(frozen=True)
class CharCNNOptions:
    """The character CNN: embedding, convolutions ``[(width, n_filters), ...]``, highway layers."""

    filters: tuple[tuple[int, int], ...]
    n_highway: int
    embedding_dim: int
    n_characters: int = N_CHARACTERS
    max_characters_per_token: int = 50
    activation: str = "relu"

    @property
    def n_filters(self) -> int:
        """Total number of filters ``F``: the width of the CNN output."""
        return sum(n for _, n in self.filters)

    @property
    def max_width(self) -> int:
        """The widest filter."""
        return max(w for w, _ in self.filters)


@dataclass(frozen=True)
class LSTMOptions:
    """The stacked LSTMs with projection, one stack per direction."""

    dim: int
    projection_dim: int
    n_layers: int = 2
    cell_clip: float | None = None
    proj_clip: float | None = None
    use_skip_connections: bool = False


@dataclass(frozen=True)
class TrainingOptions:
    """bilm-tf's training keys (top level of ``options.json``), with bilm-tf's defaults."""

    bidirectional: bool = True
    dropout: float = 0.1
    all_clip_norm_val: float = 10.0
    n_epochs: int = 10
    n_train_tokens: int | None = None
    batch_size: int = 128
    unroll_steps: int = 20
    n_negative_samples_batch: int = 8192
    learning_rate: float = 0.2
    sample_softmax: bool = True
    share_embedding_softmax: bool = False


@dataclass(frozen=True)
class ElmoOptions:
    """A whole ``options.json``: the model (``lstm``, ``char_cnn``) and the training settings."""

    lstm: LSTMOptions
    char_cnn: CharCNNOptions | None = None
    n_tokens_vocab: int | None = None
    training: TrainingOptions = field(default_factory=TrainingOptions)
    source: str = field(default="options", compare=False, repr=False)  # where the options came from

    @property
    def is_char_model(self) -> bool:
        """True for character models, False for word-level ones (token embedding table)."""
        return self.char_cnn is not None

    @property
    def projection_dim(self) -> int:
        return self.lstm.projection_dim

    @property
    def output_dim(self) -> int:
        """Width of one biLM layer's output, ``2P``."""
        return 2 * self.lstm.projection_dim

    def require_vocab_size(self) -> int:
        """``n_tokens_vocab``; a word-level model without it is an error (its embedding needs the size)."""
        if self.n_tokens_vocab is None:
            raise OptionsError(
                f"{self.source}: key 'n_tokens_vocab' is missing; word-level models (no char_cnn) need the "
                "vocabulary size: add the key, or give the vocabulary file it comes from"
            )
        return self.n_tokens_vocab

    def with_vocab_size(self, n_vocab: int) -> ElmoOptions:
        """These options with ``n_tokens_vocab`` filled in from a vocabulary when absent."""
        return self if self.n_tokens_vocab is not None else self.replace(n_tokens_vocab=n_vocab)

    def check_trainable(self) -> None:
        """Raise for keys that inference ignores but training cannot honour (checked by train/evaluate)."""
        if self.training.share_embedding_softmax:
            raise OptionsError(
                "options key 'share_embedding_softmax' is true, which elmojax does not implement (it trains "
                "an untied softmax, as bilm-tf does for character models); set it to false"
            )

    def replace(self, **changes: Any) -> ElmoOptions:
        return dataclasses.replace(self, **changes)

    def replace_training(self, **changes: Any) -> ElmoOptions:
        return dataclasses.replace(self, training=dataclasses.replace(self.training, **changes))

    def to_dict(self, *, for_export: bool = False) -> dict[str, Any]:
        """The ``options.json`` dict. ``for_export`` writes ``n_characters`` 262 as readers expect."""
        lstm = {
            "dim": self.lstm.dim,
            "projection_dim": self.lstm.projection_dim,
            "n_layers": self.lstm.n_layers,
            "use_skip_connections": self.lstm.use_skip_connections,
        }
        if self.lstm.cell_clip is not None or for_export:  # AllenNLP reads both keys (null: no clip)
            lstm["cell_clip"] = self.lstm.cell_clip
        if self.lstm.proj_clip is not None or for_export:
            lstm["proj_clip"] = self.lstm.proj_clip
        out: dict[str, Any] = {"lstm": lstm}
        if self.char_cnn is not None:
            c = self.char_cnn
            out["char_cnn"] = {
                "activation": c.activation,
                "embedding": {"dim": c.embedding_dim},
                "filters": [list(f) for f in c.filters],
                "n_highway": c.n_highway,
                "n_characters": N_CHARACTERS if for_export else c.n_characters,
                "max_characters_per_token": c.max_characters_per_token,
            }
        t = self.training
        out.update(
            bidirectional=t.bidirectional,
            dropout=t.dropout,
            all_clip_norm_val=t.all_clip_norm_val,
            n_epochs=t.n_epochs,
            batch_size=t.batch_size,
            unroll_steps=t.unroll_steps,
            n_negative_samples_batch=t.n_negative_samples_batch,
            learning_rate=t.learning_rate,
            sample_softmax=t.sample_softmax,
            share_embedding_softmax=t.share_embedding_softmax,
        )
        if t.n_train_tokens is not None:
            out["n_train_tokens"] = t.n_train_tokens
        if self.n_tokens_vocab is not None:
            out["n_tokens_vocab"] = self.n_tokens_vocab
        return out

    def save(self, path: str | Path, *, for_export: bool = False) -> None:
        """Write ``options.json`` atomically (temporary name, then rename)."""
        from elmojax.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(for_export=for_export), indent=2) + "\n")


# --- validation -------------------------------------------------------------------------------

_TOP_KEYS = {"lstm", "char_cnn", "n_tokens_vocab"} | {f.name for f in dataclasses.fields(TrainingOptions)}
_LSTM_KEYS = {f.name for f in dataclasses.fields(LSTMOptions)}
_CNN_KEYS = {"activation", "embedding", "filters", "n_highway", "n_characters", "max_characters_per_token"}


class _Reader:
    """Typed access to a JSON dict that reports problems as ``file: key 'a.b': ...``."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str) -> OptionsError:
        return OptionsError(f"{self.source}: key '{key}' {problem}")

    def get(self, d: dict, key: str, path: str, kind: type, default: Any = ..., minimum: float | None = None):
        full = f"{path}{key}"
        if key not in d or (d[key] is None and default is not ...):
            if default is ...:
                raise self.fail(full, "is missing; add it (see docs/formats.md for the options.json schema)")
            return default
        value = d[key]
        if kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            value = float(value) if ok else value
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            if not ok and isinstance(value, float) and value.is_integer():
                ok, value = True, int(value)
        else:
            ok = isinstance(value, kind)
        if not ok:
            raise self.fail(full, f"must be {kind.__name__}, found {type(value).__name__} {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(full, f"must be >= {minimum}, found {value!r}")
        return value

    def warn_unknown(self, d: dict, known: set[str], path: str) -> None:
        for key in sorted(set(d) - known):
            warnings.warn(f"{self.source}: unknown key '{path}{key}' ignored", stacklevel=4)


def options_from_dict(d: Any, source: str = "options") -> ElmoOptions:
    """Validate a parsed ``options.json`` dict into :class:`ElmoOptions` (errors name ``source``)."""
    r = _Reader(source)
    if not isinstance(d, dict):
        raise OptionsError(f"{source}: must be a JSON object, found {type(d).__name__}")
    r.warn_unknown(d, _TOP_KEYS, "")
    lstm_d = r.get(d, "lstm", "", dict)
    r.warn_unknown(lstm_d, _LSTM_KEYS, "lstm.")
    lstm = LSTMOptions(
        dim=r.get(lstm_d, "dim", "lstm.", int, minimum=1),
        projection_dim=r.get(lstm_d, "projection_dim", "lstm.", int, minimum=1),
        n_layers=r.get(lstm_d, "n_layers", "lstm.", int, 2, minimum=1),
        cell_clip=r.get(lstm_d, "cell_clip", "lstm.", float, None),
        proj_clip=r.get(lstm_d, "proj_clip", "lstm.", float, None),
        use_skip_connections=r.get(lstm_d, "use_skip_connections", "lstm.", bool, False),
    )
    if lstm.projection_dim > lstm.dim:
        raise r.fail("lstm.projection_dim", f"({lstm.projection_dim}) must not exceed lstm.dim ({lstm.dim})")

    char_cnn = None
    if d.get("char_cnn") is not None:
        c = r.get(d, "char_cnn", "", dict)
        r.warn_unknown(c, _CNN_KEYS, "char_cnn.")
        emb = r.get(c, "embedding", "char_cnn.", dict)
        filters_raw = r.get(c, "filters", "char_cnn.", list)
        filters = []
        for i, f in enumerate(filters_raw):
            if (
                not isinstance(f, list | tuple)
                or len(f) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in f)
            ):
                raise r.fail(
                    f"char_cnn.filters[{i}]", f"must be [width, n_filters] positive ints, found {f!r}"
                )
            filters.append((int(f[0]), int(f[1])))
        if not filters:
            raise r.fail("char_cnn.filters", "must list at least one [width, n_filters]")
        max_chars = r.get(c, "max_characters_per_token", "char_cnn.", int, 50, minimum=3)
        if max(w for w, _ in filters) > max_chars:
            raise r.fail("char_cnn.filters", f"has a width wider than max_characters_per_token ({max_chars})")
        activation = r.get(c, "activation", "char_cnn.", str, "relu")
        if activation not in ("relu", "tanh"):
            raise r.fail("char_cnn.activation", f"must be 'relu' or 'tanh', found {activation!r}")
        n_chars = r.get(c, "n_characters", "char_cnn.", int, N_CHARACTERS)
        if n_chars not in (N_CHARACTERS_TRAIN, N_CHARACTERS):
            raise r.fail(
                "char_cnn.n_characters",
                f"must be {N_CHARACTERS} (261 while training with bilm-tf), found {n_chars}",
            )
        char_cnn = CharCNNOptions(
            filters=tuple(filters),
            n_highway=r.get(c, "n_highway", "char_cnn.", int, minimum=0),
            embedding_dim=r.get(emb, "dim", "char_cnn.embedding.", int, minimum=1),
            n_characters=n_chars,
            max_characters_per_token=max_chars,
            activation=activation,
        )

    def top(key, kind, minimum=None):
        return r.get(d, key, "", kind, getattr(TrainingOptions(), key), minimum=minimum)

    training = TrainingOptions(
        bidirectional=top("bidirectional", bool),
        dropout=top("dropout", float, 0.0),
        all_clip_norm_val=top("all_clip_norm_val", float, 0.0),
        n_epochs=top("n_epochs", int, 1),
        n_train_tokens=top("n_train_tokens", int, 1),
        batch_size=top("batch_size", int, 1),
        unroll_steps=top("unroll_steps", int, 1),
        n_negative_samples_batch=top("n_negative_samples_batch", int, 1),
        learning_rate=top("learning_rate", float, 0.0),
        sample_softmax=top("sample_softmax", bool),
        share_embedding_softmax=top("share_embedding_softmax", bool),
    )
    if not training.bidirectional:
        raise r.fail(
            "bidirectional",
            "is false: elmojax models have both directions (ELMo's layers are [forward; backward] and "
            "AllenNLP loads only such files); set it to true",
        )
    if training.dropout >= 1.0:
        raise r.fail("dropout", f"must be < 1.0, found {training.dropout}")
    # a word-level model without the key gets it from its vocabulary (train, the Embedder);
    # what builds the model without one refuses (ElmoOptions.require_vocab_size)
    n_vocab = r.get(d, "n_tokens_vocab", "", int, None, minimum=1)
    return ElmoOptions(lstm=lstm, char_cnn=char_cnn, n_tokens_vocab=n_vocab, training=training, source=source)


def load_options(path: str | Path) -> ElmoOptions:
    """Read and validate an ``options.json`` file; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise OptionsError(f"{path}: options file not found")
    if path.is_dir():
        raise OptionsError(f"{path}: is a directory, expected an options.json file")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise OptionsError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise OptionsError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return options_from_dict(d, source=str(path))
