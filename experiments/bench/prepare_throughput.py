"""Throughput of `elmojax prepare` (MB of input a second) for English and Chinese text, by workers.

Each input is made by repeating the UD slices of tests/fixtures/ud (English EWT, Chinese GSD), a
paragraph of four random sentences a line, up to ``--mb`` MB. Every configuration runs
``python -m elmojax prepare FILE --out DIR --no-progress [--workers N]`` as its own process with
``PYTHONPATH=TREE`` (``--tree`` may name other checkouts, e.g. the main branch, to compare before
and after; a tree without ``--workers`` is run once, as ``workers 1``). Rounds are interleaved (every
configuration once, then again) so that a busy machine slows each alike; the median wall time is
reported with the CPU seconds of the process and its workers, and the ratio of the fastest rounds
(on a shared machine, the least disturbed ones) beside the paired ratios.

    python experiments/bench/prepare_throughput.py --mb 8 --rounds 3 --tree . --tree /path/to/main
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_corpus(language: str, mb: float, path: Path) -> int:
    """Write ``mb`` MB of paragraphs from the UD slice of ``language``; returns its bytes."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tokenizer_f1 import read_conllu

    folder = {"en": "English-EWT", "zh": "Chinese-GSD"}[language]
    (conllu,) = (ROOT / "tests/fixtures/ud" / folder).glob("*.conllu")
    texts = [t for t, _ in read_conllu(conllu)]
    rng = random.Random(0)
    joiner = " " if language == "en" else ""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        while n < mb * 1e6:
            line = joiner.join(rng.sample(texts, 4)) + "\n"
            f.write(line)
            n += len(line.encode("utf-8"))
    return n


def has_workers(tree: Path) -> bool:
    return "--workers" in (tree / "elmojax/cli/prepare.py").read_text(encoding="utf-8")


def run_once(tree: Path, src: Path, workers: int | None, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children) of one prepare."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "-m", "elmojax", "prepare", str(src), "--out", str(out), "--no-progress"]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    # cwd=tree: `python -m` puts the working directory first on sys.path, ahead of PYTHONPATH
    subprocess.run(cmd, env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=8.0, help="MB of text per language")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    ap.add_argument("--tree", action="append", default=None, help="checkout to run (repeatable; default .)")
    ap.add_argument("--languages", nargs="+", default=["en", "zh"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    trees = [Path(t).resolve() for t in (args.tree or [str(ROOT)])]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sizes = {lang: make_corpus(lang, args.mb, tmp / f"{lang}.txt") for lang in args.languages}
        configs = []
        for tree in trees:
            for lang in args.languages:
                for w in args.workers if has_workers(tree) else [None]:
                    configs.append((tree, lang, w))
        times: dict = {c: [] for c in configs}
        for _ in range(args.rounds):
            for c in configs:
                tree, lang, w = c
                times[c].append(run_once(tree, tmp / f"{lang}.txt", w, tmp / "out"))
        for tree in trees:  # paired ratios: each round's one worker against its own two workers
            for lang in args.languages:
                if has_workers(tree) and len(args.workers) > 1:
                    base, other = times[(tree, lang, args.workers[0])], times[(tree, lang, args.workers[-1])]
                    ratios = [a[0] / b[0] for a, b in zip(base, other, strict=True)]
                    # best: the fastest round of each, the least disturbed on a shared machine
                    best = min(r[0] for r in base) / min(r[0] for r in other)
                    print(json.dumps({
                        "tree": str(tree), "language": lang, "workers": args.workers,
                        "median_ratio": round(statistics.median(ratios), 2),
                        "ratios": [round(r, 2) for r in ratios], "best_ratio": round(best, 2),
                    }))  # fmt: skip
        for (tree, lang, w), runs in times.items():
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            print(json.dumps({
                "tree": str(tree), "language": lang, "workers": w or 1, "mb": round(sizes[lang] / 1e6, 2),
                "wall_s": round(wall, 2), "mb_per_s": round(sizes[lang] / 1e6 / wall, 3),
                "cpu_s": round(cpu, 2), "walls": [round(r[0], 2) for r in runs],
            }))  # fmt: skip


if __name__ == "__main__":
    main()
