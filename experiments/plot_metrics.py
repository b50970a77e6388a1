"""Training (and held-out) perplexity curves from a run's ``metrics.jsonl`` to a PNG.

    python experiments/plot_metrics.py runs/quickstart/run/metrics.jsonl --heldout perplexity.json \
        --out training_curve.png

Needs matplotlib (``pip install elmojax[plot]``). ``--heldout`` takes JSON objects as printed by
``elmojax evaluate`` (one per line, each with ``step`` and ``perplexity``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("metrics", type=Path)
    ap.add_argument("--heldout", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plotting needs matplotlib: pip install 'elmojax[plot]'") from None
    records = [json.loads(line) for line in args.metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in records if "train_perplexity" in r]  # train --heldout-prefix adds held-out records
    during = [r for r in records if "heldout_perplexity" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(
        [r["step"] for r in rows], [r["train_perplexity"] for r in rows], label="training (sampled softmax)"
    )
    if during:
        steps, ppl = [r["step"] for r in during], [r["heldout_perplexity"] for r in during]
        ax.plot(steps, ppl, "s-", label="held-out while training (full softmax)")
    if args.heldout and args.heldout.exists():
        evals = [json.loads(line) for line in args.heldout.read_text().splitlines() if line.strip()]
        ax.plot(
            [e["step"] for e in evals],
            [e["perplexity"] for e in evals],
            "o-",
            label="held-out (full softmax)",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"elmojax: {args.metrics.parent.name}")
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
