"""Per-sentence held-out perplexity from a zero LSTM state vs from "warm" states vs the one-row stream.

    PYTHONPATH=<elmojax checkout> python warm_start.py --save-dir RUN --test-file HELDOUT.txt \
        [--train-file TRAIN.txt] [--n-warm 20] [--out result.json]

The held-out sentences are split: the first ``--n-warm`` are warm-up text, the rest are scored. Each
scored sentence is run on its own row (as ``evaluate`` does with one sentence a row) from:

* ``zero``: the zero state;
* ``empty xK``: the state after K empty sentences ``<S> </S>`` (forward input ``<S>`` K times;
  backward ``</S>`` K times), K = 1, 5, 20;
* ``heldout20``: the state after the first ``--n-warm`` held-out sentences, fed as the stream feeds
  them (forward ``<S> t1..tn`` each, backward ``</S> tn..t1`` each);
* ``train20``: the same with the first ``--n-warm`` training sentences;
* ``paragraph``: the same with a fixed English paragraph (PARAGRAPH below).

``stream`` is the one-row stream over all held-out sentences in order (``evaluate --batch-size 1``),
scored on the same sentences. Inputs and targets are exactly those of the evaluation windows: a
sentence contributes inputs ``<S> t1..tn`` and targets ``t1..tn </S>`` (reversed backward). Also
reports ``zero``/``stream`` on all sentences, which must match ``evaluate`` at 512 and 1 rows, and
how many scored sentences are "broken": mean cross-entropy > 2 nats above the same sentence's in
the stream. Uses elmojax internals (``BiLM``, ``restore_params``).
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np

from elmojax.data.chars import Batcher
from elmojax.data.vocab import BOS, EOS
from elmojax.model.bilm import BiLM, LSTMState
from elmojax.train.checkpoints import load_run, restore_params

PARAGRAPH = [
    "My fellow citizens , we meet today at a moment of great challenge and great promise .",
    "Our economy is growing , and millions of families have found new work in the last year .",
    "But too many Americans still worry about the cost of health care and the future of their children .",
    "Tonight I ask the Congress to join me in a simple task : to keep our country safe and strong .",
    "We will not fail in this duty , because the American people have never failed before .",
]


def direction_inputs(sent: list[str], d: int) -> tuple[list[str], list[str]]:
    """A sentence's input tokens and target tokens in direction ``d`` (0 forward, 1 backward)."""
    toks = [BOS, *sent, EOS] if d == 0 else [EOS, *sent[::-1], BOS]
    return toks[:-1], toks[1:]


class Scorer:
    def __init__(self, save_dir: str):
        self.options, self.vocab = load_run(save_dir)
        self.params, self.step = restore_params(save_dir, options=self.options)
        self.model = BiLM(self.options)
        self.batcher = Batcher(self.options.char_cnn.max_characters_per_token, self.vocab)
        lstm = self.options.lstm
        self.L, self.H, self.P = lstm.n_layers, lstm.dim, lstm.projection_dim
        self._run = jax.jit(self._run_impl, static_argnums=0)

    def _run_impl(self, d, params, chars, mask, targets, c0, h0):
        model = self.model
        x = model.apply({"params": params["bilm"]}, chars, method=BiLM.embed_tokens)
        # BiLM.lstm runs both directions; the other one gets the same rows and is discarded
        state = LSTMState(jnp.stack([c0, c0]), jnp.stack([h0, h0]))
        outputs, new = model.apply({"params": params["bilm"]}, [x, x], [mask, mask], state, method=BiLM.lstm)
        top, c, h = outputs[d][-1], new.c[d], new.h[d]  # [B, T, P], [L, B, H], [L, B, P]
        w, b = params["softmax"]["W"], params["softmax"]["b"]

        def ce(row_top, row_tgt):
            logits = row_top @ w.T + b
            true = jnp.take_along_axis(logits, row_tgt[:, None], axis=1)[:, 0]
            return jax.nn.logsumexp(logits, axis=1) - true

        losses = jax.lax.map(lambda a: ce(*a), (top, targets))  # one row at a time: bounded memory
        return jnp.where(mask, losses, 0.0), c, h

    def run(self, d: int, rows: list[tuple[list[str], list[str]]], state=None, chunk: int = 64):
        """Per-row cross-entropies (list of arrays) and final states for input/target token rows."""
        out, cs, hs = [], [], []
        for s in range(0, len(rows), chunk):
            part = rows[s : s + chunk]
            t = max(len(r[0]) for r in part)
            t = -(-t // 16) * 16  # fewer compiled shapes
            n = len(part)
            chars = np.zeros((n, t, self.options.char_cnn.max_characters_per_token), np.int32)
            mask = np.zeros((n, t), bool)
            tgt = np.zeros((n, t), np.int32)
            for k, (inp, target) in enumerate(part):
                for j, tok in enumerate(inp):
                    chars[k, j] = self.batcher.char_ids(tok)
                mask[k, : len(inp)] = True
                tgt[k, : len(inp)] = [self.vocab.word_to_id(x) for x in target]
            if state is None:
                c0 = np.zeros((self.L, n, self.H), np.float32)
                h0 = np.zeros((self.L, n, self.P), np.float32)
            else:
                c0 = np.repeat(np.asarray(state[0]), n, axis=1)
                h0 = np.repeat(np.asarray(state[1]), n, axis=1)
            losses, c, h = self._run(d, self.params, chars, mask, tgt, c0, h0)
            losses = np.asarray(losses)
            out += [losses[k, : len(part[k][0])] for k in range(n)]
            cs.append(np.asarray(c))
            hs.append(np.asarray(h))
        return out, (np.concatenate(cs, axis=1), np.concatenate(hs, axis=1))

    def warm_state(self, d: int, sentences: list[list[str]]):
        """The state after feeding ``sentences`` as one row's stream (from zero)."""
        inp, tgt = [], []
        for s in sentences:
            i, t = direction_inputs(s, d)
            inp += i
            tgt += t
        _, state = self.run(d, [(inp, tgt)])
        return state

    def stream(self, d: int, sentences: list[list[str]]) -> list[np.ndarray]:
        """Per-sentence losses of the one-row stream over all sentences in order."""
        pairs = [direction_inputs(s, d) for s in sentences]
        inp = [t for p in pairs for t in p[0]]
        tgt = [t for p in pairs for t in p[1]]
        (losses,), _ = self.run(d, [(inp, tgt)])
        out, pos = [], 0
        for p in pairs:
            out.append(losses[pos : pos + len(p[0])])
            pos += len(p[0])
        return out


def read(path: str, n: int | None = None) -> list[list[str]]:
    with open(path, encoding="utf-8") as f:
        sents = [toks for line in f if (toks := line.split())]
    return sents if n is None else sents[:n]


def summarise(per_sent: list[np.ndarray], ref: list[np.ndarray] | None = None) -> dict:
    tot = sum(float(x.sum()) for x in per_sent)
    n = sum(len(x) for x in per_sent)
    r = {"perplexity": math.exp(tot / n), "n_targets": n}
    if ref is not None:
        excess = np.array([x.mean() - y.mean() for x, y in zip(per_sent, ref, strict=True)])
        r["n_broken"] = int((excess > 2.0).sum())
        r["max_excess_nats"] = float(excess.max())
        first = np.array([x[:5].mean() - y[:5].mean() for x, y in zip(per_sent, ref, strict=True)])
        r["mean_excess_first5_nats"] = float(first.mean())
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--save-dir", required=True)
    ap.add_argument("--test-file", required=True)
    ap.add_argument("--train-file", default=None)
    ap.add_argument("--n-warm", type=int, default=20)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    sc = Scorer(a.save_dir)
    sents = read(a.test_file)
    warm_ho, scored = sents[: a.n_warm], sents[a.n_warm :]
    warmups = {f"empty x{k}": [[]] * k for k in (1, 5, 20)}
    warmups[f"heldout{a.n_warm}"] = warm_ho
    if a.train_file:
        warmups[f"train{a.n_warm}"] = read(a.train_file, a.n_warm)
    warmups["paragraph"] = [s.split() for s in PARAGRAPH]
    result: dict = {"save_dir": a.save_dir, "step": sc.step, "n_scored": len(scored), "n_warm": a.n_warm}
    for d, name in ((0, "forward"), (1, "backward")):
        stream_all = sc.stream(d, sents)
        zero_all, _ = sc.run(d, [direction_inputs(s, d) for s in sents])
        ref = stream_all[a.n_warm :]
        res = {
            "all_sentences": {"stream": summarise(stream_all), "zero": summarise(zero_all, stream_all)},
            "scored": {"stream": summarise(ref), "zero": summarise(zero_all[a.n_warm :], ref)},
        }
        for wname, wsents in warmups.items():
            state = sc.warm_state(d, wsents)
            losses, _ = sc.run(d, [direction_inputs(s, d) for s in scored], state)
            res["scored"][wname] = summarise(losses, ref)
        result[name] = res
        print(name, json.dumps(res), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
