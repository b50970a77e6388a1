"""A BiLSTM tagger over the `Elmo` layer: what an exported biLM is worth on a real task.

Reads CoNLL-U (``--task upos|xpos|deprel``) or CoNLL/BIO column files (``--task ner|chunk``) with
:mod:`elmojax.data.conll`, and trains (optax Adam) a flax tagger: word embeddings learned from the
training file, concatenated with the `Elmo` layer's scalar mix of a frozen biLM (dropout on it, as
Peters et al. 2018), a one-layer BiLSTM and a softmax over the tags. ``--no-elmo`` drops the biLM
(word embeddings only); ``--fine-tune`` trains the biLM too, at a tenth of the learning rate.
Prints one JSON object: accuracy (or conlleval span F1), the loss of each epoch and the seconds.

    python experiments/downstream/tagger.py --train dev.conllu --test test.conllu --task upos \
        --export-dir runs/quickstart/export [--no-elmo | --fine-tune] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from elmojax.data.chars import batch_to_ids
from elmojax.data.conll import SPAN_TASKS, TaggedFile, accuracy, check_known_tags, read_tagged, span_f1
from elmojax.model.elmo import Elmo, with_pretrained_bilm
from elmojax.options import ElmoOptions, load_options
from elmojax.runtime import skip_absent_tpu

skip_absent_tpu()  # as the command line does: libtpu would probe for TPU chips otherwise

#: sentence lengths are padded up to a multiple of this (a handful of compiled shapes)
LENGTH_BUCKET = 16


class Tagger(nn.Module):
    """``words [B, T]`` (0: padding) and ``chars [B, T + 2, 50]`` -> tag logits ``[B, T, C]`` and
    the scalar mix's L2 penalty. ``options`` None: no `Elmo` layer."""

    n_words: int
    n_tags: int
    options: ElmoOptions | None = None
    word_dim: int = 100
    hidden: int = 128
    dropout: float = 0.5
    fine_tune: bool = False

    @nn.compact
    def __call__(self, words: jax.Array, chars: jax.Array | None, train: bool = False):
        mask = words > 0
        x = nn.Embed(self.n_words, self.word_dim)(words)
        reg = jnp.zeros(())
        if self.options is not None:
            out = Elmo(self.options, dropout=self.dropout, fine_tune=self.fine_tune, name="elmo")(
                chars, deterministic=not train
            )
            x = jnp.concatenate([x, out["elmo_representations"][0]], axis=-1)
            reg = out["regularization"]
        x = nn.Dropout(self.dropout)(x, deterministic=not train)
        lengths = mask.sum(-1)
        h = nn.Bidirectional(
            nn.RNN(nn.OptimizedLSTMCell(self.hidden)), nn.RNN(nn.OptimizedLSTMCell(self.hidden))
        )(x, seq_lengths=lengths)
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        return nn.Dense(self.n_tags)(h), reg


def vocabularies(train: TaggedFile) -> tuple[dict[str, int], list[str]]:
    """Word ids (0: padding, 1: unknown; training words seen twice or more) and the tag names."""
    counts = Counter(w for s in train.tokens for w in s)
    words = {"<pad>": 0, "<unk>": 1}
    for w, c in counts.most_common():
        if c >= 2:
            words[w] = len(words)
    return words, sorted({t for s in train.tags for t in s})


def batches(data: TaggedFile, words: dict, tags: list[str], batch_size: int, rng=None, chars: bool = True):
    """``(word ids [B, T], char ids [B, T + 2, 50] or None, tag ids [B, T], sentence indices)``;
    shuffled by ``rng`` when given, the last batch padded with empty rows to ``batch_size``."""
    tag_ids = {t: i for i, t in enumerate(tags)}
    order = np.arange(len(data.tokens)) if rng is None else rng.permutation(len(data.tokens))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        sents = [data.tokens[i] for i in idx]
        t = -(-max(len(s) for s in sents) // LENGTH_BUCKET) * LENGTH_BUCKET
        w = np.zeros((batch_size, t), np.int32)
        y = np.zeros((batch_size, t), np.int32)
        for row, i in enumerate(idx):
            n = len(data.tokens[i])
            w[row, :n] = [words.get(tok, 1) for tok in data.tokens[i]]
            y[row, :n] = [tag_ids.get(tag, 0) for tag in data.tags[i]]
        c = None
        if chars:
            # the biLM's inputs: each sentence with <S> and </S>, padded to the bucket's length
            c = np.zeros((batch_size, t + 2, 50), np.int32)
            ids = batch_to_ids(sents)
            c[: len(sents), : ids.shape[1]] = ids
        yield w, c, y, idx


def train_tagger(args: argparse.Namespace) -> dict:
    """Train on ``args.train``, score on ``args.test``; the JSON-able result."""
    train = read_tagged(args.train, args.task)
    test = read_tagged(args.test, args.task)
    check_known_tags(train, test)
    if args.max_sentences:
        train.tokens, train.tags = train.tokens[: args.max_sentences], train.tags[: args.max_sentences]
    words, tags = vocabularies(train)
    options = None
    if not args.no_elmo:
        export = Path(args.export_dir)
        weight_file = Path(args.weight_file or export / "weights.hdf5")
        options = load_options(args.options_file or export / "options.json")
    model = Tagger(
        len(words), len(tags), options, hidden=args.hidden, dropout=args.dropout, fine_tune=args.fine_tune
    )
    use_chars = options is not None
    w0, c0, _, _ = next(batches(train, words, tags, args.batch_size, chars=use_chars))
    key = jax.random.PRNGKey(args.seed)
    params = model.init(key, w0, c0)["params"]
    if options is not None:
        params = {
            **params,
            "elmo": with_pretrained_bilm({"params": params["elmo"]}, weight_file, options)["params"],
        }
    # the biLM: frozen (no update at all) unless fine-tuned, then at a tenth of the learning rate
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: "bilm" if any(getattr(p, "key", None) == "bilm" for p in path) else "tagger", params
    )
    bilm_opt = optax.adam(args.lr / 10) if args.fine_tune else optax.set_to_zero()
    optimizer = optax.chain(
        optax.clip_by_global_norm(5.0),
        optax.multi_transform({"tagger": optax.adam(args.lr), "bilm": bilm_opt}, labels),
    )
    opt_state = optimizer.init(params)

    def loss_fn(params, w, c, y, rng):
        logits, reg = model.apply({"params": params}, w, c, train=True, rngs={"dropout": rng})
        mask = (w > 0).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return (ce * mask).sum() / jnp.maximum(mask.sum(), 1.0) + reg

    @jax.jit
    def step(params, opt_state, w, c, y, rng):
        loss, grads = jax.value_and_grad(loss_fn)(params, w, c, y, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, w, c):
        return jnp.argmax(model.apply({"params": params}, w, c)[0], -1)

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    epoch_losses, step_losses = [], []
    for _epoch in range(args.epochs):
        losses = []
        for w, c, y, _ in batches(train, words, tags, args.batch_size, rng, chars=use_chars):
            key, sub = jax.random.split(key)
            params, opt_state, loss = step(params, opt_state, w, c, y, sub)
            losses.append(float(loss))
            if args.max_steps and len(step_losses) + len(losses) >= args.max_steps:
                break
        step_losses += losses
        epoch_losses.append(round(float(np.mean(losses)), 4))
        if args.max_steps and len(step_losses) >= args.max_steps:
            break
    t1 = time.perf_counter()
    guessed: list[list[str] | None] = [None] * len(test.tokens)
    for w, c, _, idx in batches(test, words, tags, args.batch_size, chars=use_chars):
        pred = np.asarray(predict(params, w, c))
        for row, i in enumerate(idx):
            guessed[i] = [tags[k] for k in pred[row, : len(test.tokens[i])]]
    t2 = time.perf_counter()
    metric, score = ("span_f1", span_f1) if args.task in SPAN_TASKS else ("accuracy", accuracy)
    mix = None
    if options is not None:
        mix = [round(float(v), 3) for v in jax.nn.softmax(params["elmo"]["scalar_mix_0"]["w"])]
    return {
        "task": args.task,
        "metric": metric,
        "score": round(score(test.tags, guessed), 4),
        "elmo": "none" if options is None else ("fine-tuned" if args.fine_tune else "frozen"),
        "mix_weights": mix,
        "epochs": len(epoch_losses),
        "epoch_loss": epoch_losses,
        "step_loss": [round(v, 4) for v in step_losses],
        "n_train_sentences": len(train.tokens),
        "seconds": {"train": round(t1 - t0, 1), "test": round(t2 - t1, 1)},
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--task", required=True, choices=["upos", "xpos", "deprel", "ner", "chunk"])
    p.add_argument("--export-dir", default="runs/quickstart/export", help="options.json and weights.hdf5")
    p.add_argument("--options-file", default=None, help="default: EXPORT_DIR/options.json")
    p.add_argument("--weight-file", default=None, help="default: EXPORT_DIR/weights.hdf5")
    p.add_argument("--no-elmo", action="store_true", help="word embeddings only")
    p.add_argument("--fine-tune", action="store_true", help="train the biLM too (a tenth of --lr)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    p.add_argument("--max-sentences", type=int, default=0, help="train on the first N sentences only")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this file")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    result = train_tagger(args)
    text = json.dumps({k: v for k, v in result.items() if k != "step_loss"})
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
