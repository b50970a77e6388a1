"""Linear probes of a biLM's layers on a token-tagging task (``elmojax probe``).

For each token of a training and a test file (:mod:`elmojax.data.conll`) the layers
``[L + 1, 2P]`` of :class:`~elmojax.embed.embedder.Embedder` are computed once, streamed to an
``.npy`` file in a cache directory (keyed by the contents of the options, weights, vocabulary and
data files) and memory-mapped from there. On them a softmax regression (one weight matrix and bias;
optax Adam, L2 penalty, a fixed seed) is trained for each layer alone, for the mean of the layers
and for a learned scalar mix (softmax weights and a scale, as
:class:`~elmojax.model.elmo.ScalarMix`), and scored on the test file: accuracy for CoNLL-U tasks,
conlleval's span F1 for ``ner``/``chunk``. Each layer is standardized with the training file's mean
and deviation first, so one learning rate suits all of them.

Baselines: the same options with random weights (``control``, as Hewitt and Liang's control
models: what the architecture alone gives) and each word's most frequent training tag.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from elmojax.data.conll import (
    SPAN_TASKS,
    TaggedFile,
    accuracy,
    check_known_tags,
    most_frequent_tags,
    read_tagged,
    span_f1,
)
from elmojax.fileio import atomic_path, check_room

#: the version of the cached feature files' layout; a change makes old cache entries unused
CACHE_VERSION = 1
#: tokens a probe step sees at most (a file this size or smaller is trained on full batches)
BLOCK_TOKENS = 32768


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/elmojax/probe`` (``~/.cache/elmojax/probe``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "elmojax" / "probe"


def _digest(*parts: bytes | str | Path | None) -> str:
    """SHA-256 over strings and files' contents (a cache key)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        else:
            h.update(str(part).encode() if not isinstance(part, bytes) else part)
        h.update(b"\0")
    return h.hexdigest()[:32]


def features(
    embedder,
    data: TaggedFile,
    cache_file: Path,
    *,
    progress: bool = False,
    desc: str = "features",
) -> np.ndarray:
    """Every token's layers ``[n_tokens, L + 1, 2P]`` float32, memory-mapped from ``cache_file``.

    Computed once: an existing ``cache_file`` is read back; otherwise the embeddings are streamed
    sentence by sentence into a temporary file renamed to ``cache_file`` when complete.
    """
    if cache_file.exists():
        return np.load(cache_file, mmap_mode="r")
    from tqdm import tqdm

    options = embedder.options
    shape = (data.n_tokens, options.lstm.n_layers + 1, 2 * options.lstm.projection_dim)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    check_room(cache_file, 4 * int(np.prod(shape)) + 4096)
    with atomic_path(cache_file) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        pos = 0
        with tqdm(total=data.n_tokens, disable=not progress, unit="tok", unit_scale=True, desc=desc) as bar:
            for emb in embedder.embed_sentences(data.tokens):
                n = emb.shape[1]
                out[pos : pos + n] = np.moveaxis(emb, 1, 0)
                pos += n
                bar.update(n)
        out.flush()
        del out
    return np.load(cache_file, mmap_mode="r")


# -- the probe ----------------------------------------------------------------------------------------


def _weights(params: dict, fixed: jax.Array, learn: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The layers' weights ``[L + 1]`` and scale: ``fixed`` (one layer, or their mean), or where
    ``learn`` is 1 the scalar mix's ``softmax(w)`` and ``gamma``. One traced program serves every
    representation, so a probe run compiles its step once."""
    mixing = learn * jax.nn.softmax(params["w"]) + (1 - learn) * fixed
    return mixing, learn * params["gamma"] + (1 - learn)


def _logits(params: dict, x: jax.Array, stats, fixed: jax.Array, learn: jax.Array) -> jax.Array:
    """``x [N, L + 1, D]`` -> logits ``[N, C]``: standardized layers, weighted, a linear map."""
    mean, std = stats
    mixing, scale = _weights(params, fixed, learn)
    rep = scale * jnp.einsum("l,nld->nd", mixing, (x - mean) / std)
    return rep @ params["kernel"] + params["bias"]


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


def _loss(params, x, y, stats, fixed, learn, l2):
    logits = _logits(params, x, stats, fixed, learn)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return ce + l2 * jnp.sum(params["kernel"] ** 2)


@functools.partial(jax.jit, static_argnames="learning_rate")
def _step(params, opt_state, x, y, stats, fixed, learn, l2, *, learning_rate: float):
    loss, grads = jax.value_and_grad(_loss)(params, x, y, stats, fixed, learn, l2)
    updates, opt_state = _adam(learning_rate).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@jax.jit
def _predict(params, x, stats, fixed, learn):
    return jnp.argmax(_logits(params, x, stats, fixed, learn), -1)


class Probe:
    """A softmax-regression probe of one representation (``"0"``, ``"1"``, …, ``"mean"``, ``"mix"``).

    ``fit(x [N, L + 1, D], y [N])`` trains it for ``steps`` Adam steps (full batch when ``N`` is at
    most :data:`BLOCK_TOKENS`, else contiguous blocks in a seeded order), ``predict`` gives class ids.
    """

    def __init__(
        self,
        mode: str,
        n_classes: int,
        *,
        l2: float = 1e-4,
        steps: int = 300,
        learning_rate: float = 0.05,
        seed: int = 0,
    ):
        self.mode, self.n_classes, self.l2, self.steps = mode, n_classes, l2, steps
        self.seed, self.learning_rate = seed, learning_rate
        self.params: dict | None = None
        self.stats: tuple[jax.Array, jax.Array] | None = None

    def _selection(self, n_layers: int) -> tuple[jax.Array, jax.Array]:
        if self.mode == "mix":
            return jnp.zeros(n_layers), jnp.ones(())
        if self.mode == "mean":
            return jnp.full(n_layers, 1.0 / n_layers), jnp.zeros(())
        return jax.nn.one_hot(int(self.mode), n_layers), jnp.zeros(())

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        """What a step reads: all layers for ``mix``; else the one representation ``[N, 1, D]``,
        standardized once here rather than in every step."""
        if self.mode == "mix":
            return x
        fixed = np.asarray(self._selection(x.shape[1])[0])
        mean, std = (np.asarray(a) for a in self.stats)
        return np.concatenate(
            [
                np.einsum("l,nld->nd", fixed, (np.asarray(x[s : s + BLOCK_TOKENS]) - mean) / std)[:, None]
                for s in range(0, len(x), BLOCK_TOKENS)
            ]
        ).astype(np.float32)

    def _step_args(self, n_layers: int) -> tuple:
        """``(stats, fixed, learn)`` of the step for :meth:`_inputs`' arrays."""
        if self.mode == "mix":
            return (self.stats, *self._selection(n_layers))
        dim = self.stats[0].shape[-1]
        return (jnp.zeros((1, dim)), jnp.ones((1, dim))), jnp.ones(1), jnp.zeros(())

    def fit(self, x: np.ndarray, y: np.ndarray) -> list[float]:
        """Train on ``x [N, L + 1, D]`` and tags ``y [N]``; returns the loss of every step."""
        n, n_layers, dim = x.shape
        self.stats = _layer_stats(x)
        x = self._inputs(x)
        stats, fixed, learn = self._step_args(n_layers)
        params = {
            "kernel": jax.random.normal(jax.random.PRNGKey(self.seed), (dim, self.n_classes)) * 0.01,
            "bias": jnp.zeros(self.n_classes),
            "w": jnp.zeros(x.shape[1]),
            "gamma": jnp.ones(()),
        }
        opt_state = _adam(self.learning_rate).init(params)
        blocks = [(s, min(s + BLOCK_TOKENS, n)) for s in range(0, n, BLOCK_TOKENS)]
        rng = np.random.default_rng(self.seed)
        resident = len(blocks) == 1
        if resident:  # the whole file fits one step: keep it on the device
            xb, yb = jnp.asarray(x), jnp.asarray(y)
        losses = []
        order: list[int] = []
        for _ in range(self.steps):
            if not resident:
                if not order:
                    order = list(rng.permutation(len(blocks)))
                s, e = blocks[order.pop()]
                xb, yb = jnp.asarray(x[s:e]), jnp.asarray(y[s:e])
            params, opt_state, loss = _step(
                params, opt_state, xb, yb, stats, fixed, learn, self.l2, learning_rate=self.learning_rate
            )
            losses.append(loss)
        self.params = params
        self.n_layers = n_layers
        return [float(v) for v in losses]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class ids ``[N]`` of ``x [N, L + 1, D]``."""
        args = self._step_args(x.shape[1])
        x = self._inputs(x)
        return np.concatenate(
            [
                np.asarray(_predict(self.params, jnp.asarray(x[s : s + BLOCK_TOKENS]), *args))
                for s in range(0, len(x), BLOCK_TOKENS)
            ]
        )

    def mix_weights(self) -> list[float]:
        """The layers' weights in this probe's representation (the learned ones for ``mix``)."""
        fixed, learn = self._selection(self.n_layers)
        if self.mode != "mix":
            return [float(v) for v in fixed]
        return [float(v) for v in _weights(self.params, fixed, learn)[0]]


def _layer_stats(x: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """Mean and standard deviation ``[L + 1, D]`` of each layer's features, block by block."""
    total = np.zeros(x.shape[1:], np.float64)
    sq = np.zeros(x.shape[1:], np.float64)
    for s in range(0, len(x), BLOCK_TOKENS):
        b = np.asarray(x[s : s + BLOCK_TOKENS], np.float64)
        total += b.sum(0)
        sq += (b**2).sum(0)
    mean = total / len(x)
    std = np.sqrt(np.maximum(sq / len(x) - mean**2, 0.0)) + 1e-6
    return jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)


# -- a whole probe run ---------------------------------------------------------------------------------


def _score(task: str) -> tuple[str, Callable]:
    return ("span_f1", span_f1) if task in SPAN_TASKS else ("accuracy", accuracy)


def _unflatten(ids: np.ndarray, lengths: Sequence[int], names: Sequence[str]) -> list[list[str]]:
    out, pos = [], 0
    for n in lengths:
        out.append([names[i] for i in ids[pos : pos + n]])
        pos += n
    return out


def probe_layers(
    embedder,
    train: TaggedFile,
    test: TaggedFile,
    task: str,
    cache_dir: Path,
    key: str,
    *,
    progress: bool = False,
    seed: int = 0,
    l2: float = 1e-4,
    steps: int = 300,
) -> dict:
    """Score a probe of every layer, the mean and the mix: ``{"layers": {...}, "mix_weights": [...]}``."""
    names = sorted({t for sent in train.tags for t in sent})
    ids = {t: i for i, t in enumerate(names)}
    y_train = np.array([ids[t] for sent in train.tags for t in sent], np.int32)
    t0 = time.perf_counter()
    # one cache entry per model and file (and how the file is read): another task on the same
    # CoNLL-U file reuses it
    reader = "columns" if task in SPAN_TASKS else "conllu"
    x_train, x_test = (
        features(
            embedder,
            data,
            cache_dir / f"{key}-{_digest(data.path, reader)}.npy",
            progress=progress,
            desc=f"features {data.path.name}",
        )
        for data in (train, test)
    )
    t1 = time.perf_counter()
    metric_name, metric = _score(task)
    lengths = [len(s) for s in test.tags]
    layers: dict[str, float] = {}
    mix_weights: list[float] = []
    for mode in [*(str(k) for k in range(x_train.shape[1])), "mean", "mix"]:
        probe = Probe(mode, len(names), l2=l2, steps=steps, seed=seed)
        probe.fit(x_train, y_train)
        guessed = _unflatten(probe.predict(x_test), lengths, names)
        layers[mode] = round(metric(test.tags, guessed), 4)
        if mode == "mix":
            mix_weights = [round(w, 4) for w in probe.mix_weights()]
    t2 = time.perf_counter()
    return {
        "layers": layers,
        "mix_weights": mix_weights,
        "seconds": {"features": round(t1 - t0, 2), "probes": round(t2 - t1, 2)},
    }


def run_probe(
    options_file: str | Path,
    weight_file: str | Path,
    train_file: str | Path,
    test_file: str | Path,
    task: str,
    *,
    vocab_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
    control: bool = False,
    batch_size: int = 64,
    start_state: str = "warm",
    seed: int = 0,
    l2: float = 1e-4,
    steps: int = 300,
    progress: bool = False,
    embedder_kwargs: dict | None = None,
) -> dict:
    """Probe a model's layers on ``task``: one dict with ``task``, ``metric``, ``layers`` and
    ``baselines`` (``most_frequent_tag``; ``control``, the same probes on random weights, if asked).
    """
    from elmojax.data.vocab import Vocabulary
    from elmojax.embed.embedder import Embedder
    from elmojax.model.bilm import init_params

    train = read_tagged(train_file, task)
    test = read_tagged(test_file, task)
    check_known_tags(train, test)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    kwargs = dict(batch_size=batch_size, start_state=start_state, **(embedder_kwargs or {}))
    embedder = Embedder.from_files(options_file, weight_file, vocab_file, **kwargs)
    model_files = [Path(options_file), Path(weight_file), Path(vocab_file) if vocab_file else ""]
    key = _digest(CACHE_VERSION, *model_files, start_state)
    metric_name, metric = _score(task)
    result = {
        "task": task,
        "metric": metric_name,
        "n_train_tokens": train.n_tokens,
        "n_test_tokens": test.n_tokens,
    }
    trained = probe_layers(
        embedder, train, test, task, cache_dir, key, progress=progress, seed=seed, l2=l2, steps=steps
    )
    result["layers"] = trained["layers"]
    result["mix_weights"] = trained["mix_weights"]
    seconds = {"features": trained["seconds"]["features"], "probes": trained["seconds"]["probes"]}
    baselines: dict = {
        "most_frequent_tag": round(metric(test.tags, most_frequent_tags(train, test.tokens)), 4)
    }
    if control:
        # the same options with random weights (bilm-tf's initialisers, seeded): what the
        # architecture alone gives a probe
        random_params = jax.device_get(init_params(embedder.options, jax.random.PRNGKey(seed)))
        vocab = Vocabulary.from_file(vocab_file) if vocab_file else None
        control_embedder = Embedder(embedder.options, random_params, vocab=vocab, **kwargs)
        control_key = _digest(CACHE_VERSION, "control", seed, Path(options_file), model_files[2], start_state)
        c = probe_layers(
            control_embedder,
            train,
            test,
            task,
            cache_dir,
            control_key,
            progress=progress,
            seed=seed,
            l2=l2,
            steps=steps,
        )
        baselines["control"] = c["layers"]
        seconds["control_features"] = c["seconds"]["features"]
        seconds["control_probes"] = c["seconds"]["probes"]
    result["baselines"] = baselines
    result["seconds"] = seconds
    return result


def format_table(result: dict) -> str:
    """The probe's result as a text table: one row per layer, the model's score and the control's."""
    control = result["baselines"].get("control")
    head = (
        f"{result['task']} {result['metric']} (probe trained on {result['n_train_tokens']} tokens, "
        f"scored on {result['n_test_tokens']})"
    )
    rows = [head, f"{'layer':<8}{'model':>8}" + (f"{'control':>10}" if control else "")]
    for name, score in result["layers"].items():
        row = f"{name:<8}{score:>8.3f}"
        if control:
            row += f"{control[name]:>10.3f}"
        rows.append(row)
    rows.append("mix weights: " + " ".join(f"{w:.2f}" for w in result["mix_weights"]))
    rows.append(f"most frequent tag of each word: {result['baselines']['most_frequent_tag']:.3f}")
    return "\n".join(rows)


def plot(result: dict, path: str | Path) -> None:
    """A bar per representation (model and control) with the most-frequent-tag line, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["layers"])
    control = result["baselines"].get("control")
    xs = np.arange(len(names))
    width = 0.4 if control else 0.6
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(xs - (width / 2 if control else 0), [result["layers"][n] for n in names], width, label="model")
    if control:
        ax.bar(xs + width / 2, [control[n] for n in names], width, label="control (random weights)")
    ax.axhline(result["baselines"]["most_frequent_tag"], color="k", ls="--", lw=1, label="most frequent tag")
    ax.set_xticks(xs, [f"layer {n}" if n.isdigit() else n for n in names])
    ax.set_ylabel(result["metric"])
    ax.set_title(f"probe: {result['task']}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
