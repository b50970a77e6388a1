"""Zero-state study: do bilm-tf-recipe models break from a zero LSTM state, and does elmojax more?

Trains elmojax (``python -m elmojax train``) and the original bilm-tf (``bilmtf_driver.py`` with the
TensorFlow venv) on the same prepared data with the same options and seeds, converts each bilm-tf
checkpoint into an elmojax run directory (``convert_bilmtf.py``), then evaluates EVERY model with
the same evaluator, ``python -m elmojax evaluate --batch-size N``, at 1, 8 and 32 rows and at one
N >= the number of held-out sentences (rows are filled as bilm-tf fills them, so a row that ends
a short sentence inside a window takes the next one: not every sentence starts a row).

    python experiments/zero_state/study.py --out OUT \
        --bilmtf-dir BILMTF_CHECKOUT --tf-python TFVENV/bin/python \
        [--configs quickstart,tiny] [--steps quickstart=2000,tiny=600] [--seeds 0,1] \
        [--bilmtf-seeds quickstart=0] [--systems elmojax,bilmtf] [--reevaluate] [--crosscheck]

Re-running skips finished training runs and cached evaluations (``--reevaluate`` redoes the
evaluations, e.g. against a newer elmojax). Writes OUT/results.json and OUT/results.md (one row per
system, config, seed) and prints the table. ``--crosscheck`` also runs bilm-tf's own
``bilm.training.test`` (batch 1) on the first bilm-tf model, to check the conversion.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {"quickstart": HERE.parent / "configs" / "quickstart.json", "tiny": HERE / "tiny.json"}
CORPUS = HERE.parent / "data" / "sample_corpus.csv"


def _kv(text: str, cast=str) -> dict:
    return {k: cast(v) for k, v in (item.split("=") for item in text.split(",") if item)}


def _run(cmd: list[str], log: Path, env: dict | None = None, nice: int = 0) -> float:
    """Run ``cmd`` with stdout+stderr to ``log``; returns the wall time; raises on failure."""
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    t = time.time()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    wall = time.time() - t
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")
    return wall


def _json_line(log: Path) -> dict:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{log}: no JSON result")


def final_losses(metrics: Path, steps: int) -> dict:
    """The logged training losses at the last step and their mean over the last 100 steps."""
    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    last = max(recs, key=lambda r: r["step"])
    tail = [r for r in recs if r["step"] > steps - 100]
    return {
        "final_step": last["step"],
        "loss_fwd": last["loss_forward"],
        "loss_bwd": last["loss_backward"],
        "loss_fwd_last100": sum(r["loss_forward"] for r in tail) / len(tail),
        "loss_bwd_last100": sum(r["loss_backward"] for r in tail) / len(tail),
    }


class Study:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.out = Path(a.out).absolute()
        self.out.mkdir(parents=True, exist_ok=True)
        self.py = a.elmojax_python
        self.data = Path(a.data).absolute() if a.data else self.out / "data"
        self.tf_env = {
            **os.environ,
            "TF_USE_LEGACY_KERAS": "1",
            "CUDA_VISIBLE_DEVICES": "",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.crosschecked = False

    @property
    def train_glob(self) -> str:
        return str(self.data / "train" / "shard_*.txt")

    @property
    def test_glob(self) -> str:
        return str(self.data / "heldout" / "shard_*.txt")

    @property
    def vocab(self) -> str:
        return str(self.data / "vocab.txt")

    def prepare(self) -> None:
        if (self.data / "vocab.txt").exists():
            return
        cmd = [
            self.py,
            "-m",
            "elmojax",
            "prepare",
            str(CORPUS),
            "--column",
            "transcript",
            "--out",
            str(self.data),
        ]
        cmd += ["--heldout-fraction", "0.02", "--seed", "0", "--no-progress"]
        _run(cmd, self.out / "prepare.log")

    def n_heldout_sentences(self) -> int:
        n = 0
        for f in glob.glob(self.test_glob):
            with open(f) as fh:
                n += sum(1 for line in fh if line.strip())
        return n

    # -- training --------------------------------------------------------------------------------

    def train_elmojax(self, cfg: str, seed: int, steps: int) -> tuple[Path, float | None]:
        run = self.out / f"elmojax-{cfg}-s{seed}"
        if (run / "checkpoints" / str(steps)).exists():
            return run, self._wall(run)
        cmd = [self.py, "-m", "elmojax", "train", "--options-file", str(CONFIGS[cfg])]
        cmd += ["--train-prefix", self.train_glob, "--vocab-file", self.vocab, "--save-dir", str(run)]
        cmd += ["--max-steps", str(steps), "--seed", str(seed), "--no-progress", "--checkpoint-every", "500"]
        wall = _run(cmd, self.out / f"elmojax-{cfg}-s{seed}.train.log", nice=self.a.nice)
        (run / "study_wall.json").write_text(json.dumps({"train_wall_s": wall}))
        return run, wall

    def train_bilmtf(self, cfg: str, seed: int, steps: int) -> tuple[Path, float | None]:
        tfdir = self.out / f"bilmtf-{cfg}-s{seed}-tf"
        run = self.out / f"bilmtf-{cfg}-s{seed}"
        driver = [self.a.tf_python, str(HERE / "bilmtf_driver.py"), self.a.bilmtf_dir]
        wall = self._wall(run)
        if not (tfdir / f"model.ckpt-{steps}.index").exists():
            tfdir.mkdir(parents=True, exist_ok=True)
            cmd = [
                *driver,
                "train",
                str(CONFIGS[cfg]),
                self.train_glob,
                self.vocab,
                str(tfdir),
                str(steps),
                str(seed),
            ]
            wall = _run(cmd, self.out / f"bilmtf-{cfg}-s{seed}.train.log", self.tf_env, nice=self.a.nice)
        if not (run / "checkpoints" / str(steps)).exists():
            h5, npz = tfdir / "weights.hdf5", tfdir / "softmax.npz"
            _run(
                [*driver, "dump", str(tfdir), str(h5), str(npz)],
                self.out / f"bilmtf-{cfg}-s{seed}.dump.log",
                self.tf_env,
            )
            cmd = [self.py, str(HERE / "convert_bilmtf.py"), "--weights", str(h5), "--softmax", str(npz)]
            cmd += ["--options", str(CONFIGS[cfg]), "--vocab", self.vocab, "--train-prefix", self.train_glob]
            cmd += ["--run-dir", str(run), "--metrics", str(tfdir / "metrics.jsonl")]
            _run(cmd, self.out / f"bilmtf-{cfg}-s{seed}.convert.log")
            (run / "study_wall.json").write_text(json.dumps({"train_wall_s": wall}))
        if self.a.crosscheck and not self.crosschecked:
            self.crosscheck(tfdir, run)
        return run, wall

    def crosscheck(self, tfdir: Path, run: Path) -> None:
        """bilm-tf's own test (batch 1) beside elmojax's evaluate of the converted run (batch 1)."""
        self.crosschecked = True
        path = self.out / "crosscheck.json"
        if path.exists() and not self.a.reevaluate:
            return
        log = self.out / f"{run.name}.bilmtf_test.log"
        driver = [self.a.tf_python, str(HERE / "bilmtf_driver.py"), self.a.bilmtf_dir]
        wall = _run([*driver, "test", str(tfdir), self.test_glob, self.vocab, "1"], log, self.tf_env)
        ppl = [x for x in log.read_text().splitlines() if x.startswith("TEST_PERPLEXITY")]
        ej = self.evaluate(run, 1)
        rec = {
            "run": str(run),
            "bilmtf_test_perplexity_batch1": float(ppl[-1].split()[1]),
            "bilmtf_test_wall_s": wall,
            "elmojax_evaluate_perplexity_batch1": ej["perplexity"],
        }
        path.write_text(json.dumps(rec, indent=2))
        print("crosscheck", json.dumps(rec), file=sys.stderr)

    def _wall(self, run: Path) -> float | None:
        p = run / "study_wall.json"
        return json.loads(p.read_text()).get("train_wall_s") if p.exists() else None

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self, run: Path, batch_size: int) -> dict:
        path = run / f"study_eval_bs{batch_size}.json"
        if path.exists() and not self.a.reevaluate:
            return json.loads(path.read_text())
        log = self.out / f"{run.name}.eval_bs{batch_size}.log"
        cmd = [self.py, "-m", "elmojax", "evaluate", "--save-dir", str(run), "--test-prefix", self.test_glob]
        wall = _run([*cmd, "--batch-size", str(batch_size)], log)
        r = {**_json_line(log), "wall_s": wall}
        path.write_text(json.dumps(r))
        return r


def markdown(rows: list[dict], batch_sizes: list[int], n_sent: int) -> str:
    head = ["system", "config", "seed", "steps", "train loss fwd/bwd (last step)", "(mean last 100)"]
    names = [f"{b} rows" for b in batch_sizes]
    head += [f"fwd ppl {n}" for n in names] + [f"bwd ppl {n}" for n in names] + ["train wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["system"], r["config"], str(r["seed"]), str(r["final_step"])]
        cells += [
            f"{r['loss_fwd']:.3f} / {r['loss_bwd']:.3f}",
            f"{r['loss_fwd_last100']:.3f} / {r['loss_bwd_last100']:.3f}",
        ]
        cells += [f"{r['eval'][str(b)]['forward_perplexity']:.1f}" for b in batch_sizes]
        cells += [f"{r['eval'][str(b)]['backward_perplexity']:.1f}" for b in batch_sizes]
        cells.append("" if r["train_wall_s"] is None else f"{r['train_wall_s']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (run dirs, logs, results.json/md)")
    ap.add_argument(
        "--data", default=None, help="prepared data folder (default OUT/data, prepared if missing)"
    )
    ap.add_argument("--configs", default="quickstart,tiny", help=f"names among {sorted(CONFIGS)}")
    ap.add_argument("--steps", default="quickstart=2000,tiny=600", help="training steps per config")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument(
        "--bilmtf-seeds", default="", help="per-config override of the bilm-tf seeds, e.g. quickstart=0"
    )
    ap.add_argument("--systems", default="elmojax,bilmtf")
    ap.add_argument(
        "--batch-sizes",
        default="1,8,32,sent",
        help="'sent': max(512, n_sentences) rows (see README: not all sentences start from zero)",
    )
    ap.add_argument("--bilmtf-dir", default=os.environ.get("BILMTF_DIR"))
    ap.add_argument("--tf-python", default=os.environ.get("BILMTF_PYTHON"))
    ap.add_argument("--elmojax-python", default=sys.executable)
    ap.add_argument("--nice", type=int, default=10, help="niceness of the training processes")
    ap.add_argument("--reevaluate", action="store_true", help="redo cached evaluations")
    ap.add_argument("--crosscheck", action="store_true", help="bilm-tf's own test on the first bilm-tf model")
    a = ap.parse_args()
    study = Study(a)
    study.prepare()
    n_sent = study.n_heldout_sentences()
    batch_sizes = [max(512, n_sent) if b == "sent" else int(b) for b in a.batch_sizes.split(",")]
    steps = _kv(a.steps, int)
    seeds = [int(s) for s in a.seeds.split(",")]
    bilmtf_seeds = {k: [int(s) for s in v.split(":")] for k, v in _kv(a.bilmtf_seeds).items()}
    systems = a.systems.split(",")
    if "bilmtf" in systems and not (a.bilmtf_dir and a.tf_python):
        raise SystemExit("bilmtf needs --bilmtf-dir and --tf-python (or drop it from --systems)")
    rows = []
    for system in systems:
        for cfg in a.configs.split(","):
            for seed in bilmtf_seeds.get(cfg, seeds) if system == "bilmtf" else seeds:
                s = steps[cfg]
                train = study.train_elmojax if system == "elmojax" else study.train_bilmtf
                run, wall = train(cfg, seed, s)
                row = {
                    "system": system,
                    "config": cfg,
                    "seed": seed,
                    "run_dir": str(run),
                    "train_wall_s": wall,
                }
                row.update(final_losses(run / "metrics.jsonl", s))
                row["eval"] = {str(b): study.evaluate(run, b) for b in batch_sizes}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {"n_heldout_sentences": n_sent, "batch_sizes": batch_sizes, "rows": rows}
    cc = study.out / "crosscheck.json"
    if cc.exists():
        result["crosscheck"] = json.loads(cc.read_text())
    (study.out / "results.json").write_text(json.dumps(result, indent=2))
    md = markdown(rows, batch_sizes, n_sent)
    (study.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
