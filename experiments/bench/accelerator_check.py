"""One accelerator check in a few minutes of device time: numeric tests, then training and embedding
throughput of `original` and `small` in float32 and bfloat16, as one table.

Device time is scarce, so everything is prepared and run on the CPU first (``--tiny``: a tiny model,
a few steps; a test runs it so the script cannot rot). On a GPU or TPU, in at most ~8 minutes:

    python experiments/bench/accelerator_check.py                 # everything
    python experiments/bench/accelerator_check.py --skip-tests    # throughput only
    python experiments/bench/accelerator_check.py --tiny          # the CPU rehearsal

The numeric tests are :data:`NUMERIC_TESTS`: a listed file that does not exist stops the script
before anything runs (exit 2), a failing test makes it exit 1 once the table is printed. The
rehearsal collects the same list (``pytest --collect-only``, none may be skipped) instead of
running it, so a moved test file fails on the CPU, not on the device.

Each training run is the user's command (``elmojax.cli.main(["train", ...])``) in its own process,
on a synthetic Zipf corpus, at ``--rows`` rows per device over every local device; its figures come
from its ``metrics.jsonl``: end-to-end tokens/s (host pipeline included, the median of the
steady-state log intervals), model TFLOP/s by bilm-tf's FLOP count (:mod:`elmojax.model.flops`),
MFU against the chip's dense peak for the dtype (:func:`elmojax.model.flops.peak_tflops`: TF32 for
float32 on GPUs, one bfloat16 pass on TPUs), compile seconds, and the
process's peak device memory. Embedding is ``Embedder.embed_sentences`` on the same sentences with
random weights, after one warm-up pass (labelled: compilation excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CONFIGS = ROOT / "experiments" / "configs"
sys.path.insert(0, str(HERE))
from train_throughput import make_corpus  # noqa: E402  (the benches' one synthetic corpus)

#: the tests that touch numerics, run on the device first (paths from the repository root;
#: tests/test_accelerator_check.py collects them)
NUMERIC_TESTS = (
    "tests/model/test_bilm.py",
    "tests/model/test_elmo.py",
    "tests/model/test_softmax.py",
    "tests/train/test_numerics.py",
    "tests/embed/test_embed.py",
)

TINY = {
    "lstm": {"dim": 32, "projection_dim": 16, "n_layers": 2, "cell_clip": 3, "proj_clip": 3,
             "use_skip_connections": True},
    "char_cnn": {"activation": "relu", "embedding": {"dim": 4}, "filters": [[1, 8], [2, 8], [3, 16]],
                 "n_highway": 1, "n_characters": 262, "max_characters_per_token": 50},
    "unroll_steps": 10, "n_negative_samples_batch": 64, "dropout": 0.1,
}  # fmt: skip

TRAIN_CHILD = r"""
import json, sys
from elmojax.cli import main
import jax
code = main(sys.argv[1:])
stats = jax.local_devices()[0].memory_stats() or {}
print("CHECK " + json.dumps({"code": code, "peak_bytes": stats.get("peak_bytes_in_use"),
      "device_kind": jax.devices()[0].device_kind, "n_devices": jax.device_count()}))
"""

EMBED_CHILD = r"""
import json, sys, time
import jax
from elmojax.embed.embedder import Embedder
from elmojax.model.bilm import init_params
from elmojax.model.numerics import Numerics
from elmojax.options import load_options
options_file, text, dtype, batch = sys.argv[1:5]
options = load_options(options_file)
sentences = [line.split() for line in open(text) if line.strip()]
embedder = Embedder(options, init_params(options, jax.random.PRNGKey(0)), batch_size=int(batch),
                    numerics=Numerics(compute_dtype=dtype))
t = time.perf_counter(); list(embedder.embed_sentences(sentences, batch_size=int(batch)))
warm = time.perf_counter() - t
t = time.perf_counter(); out = list(embedder.embed_sentences(sentences, batch_size=int(batch)))
jax.block_until_ready(out[-1]); dt = time.perf_counter() - t
print("CHECK " + json.dumps({"tokens_per_s": sum(len(s) for s in sentences) / dt, "first_pass_s": warm}))
"""


def child(code: str, args: list[str], timeout: float, xla_flags: str = "") -> dict:
    """Run ``code`` in a fresh interpreter (clean peak memory); its ``CHECK`` line as a dict."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if xla_flags:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flags}".strip()
    r = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=env
    )
    for line in r.stdout.splitlines():
        if line.startswith("CHECK "):
            return json.loads(line[6:])
    raise RuntimeError(f"child failed (exit {r.returncode}):\n{r.stderr[-3000:]}")


def train_row(name: str, options_file: Path, corpus: Path, dtype: str, args, work: Path) -> dict:
    from elmojax.model.flops import model_flops, peak_tflops
    from elmojax.options import load_options

    run = work / f"run-{name}-{dtype}"
    log_every = max(1, args.steps // 3)
    cmd = ["train", "--options-file", str(options_file), "--train-prefix", str(corpus / "train.txt"),
           "--vocab-file", str(corpus / "vocab.txt"), "--save-dir", str(run), "--batch-size", str(args.rows),
           "--max-steps", str(3 * log_every), "--log-every", str(log_every), "--checkpoint-every", "100000",
           "--compute-dtype", dtype, "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    info = child(TRAIN_CHILD, cmd, timeout=args.timeout, xla_flags=args.xla_flags)
    wall = time.perf_counter() - t0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steady = [x["tokens_per_s"] for x in lines if x["step"] > log_every] or [lines[-1]["tokens_per_s"]]
    tokens_per_s = statistics.median(steady)
    flops = model_flops(load_options(options_file)).training
    tflops = tokens_per_s * flops / 1e12
    peak = args.peak_tflops or peak_tflops(info["device_kind"], dtype)
    return {
        "what": f"train {name}",
        "dtype": dtype,
        "rows": f"{args.rows} x {info['n_devices']}",
        "tokens_per_s": tokens_per_s,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "compile_s": lines[-1]["compile_s"],
        "peak_gib": info["peak_bytes"] / 2**30 if info["peak_bytes"] else None,
        "wall_s": wall,
        "device": info["device_kind"],
    }


def embed_row(name: str, options_file: Path, corpus: Path, dtype: str, args) -> dict:
    t0 = time.perf_counter()
    text = str(corpus / "embed.txt")
    info = child(EMBED_CHILD, [str(options_file), text, dtype, "64"], args.timeout, args.xla_flags)
    return {
        "what": f"embed {name} (warm)",
        "dtype": dtype,
        "rows": "64",
        "tokens_per_s": info["tokens_per_s"],
        "compile_s": info["first_pass_s"],
        "wall_s": time.perf_counter() - t0,
    }


def missing_tests(paths: list[str]) -> list[str]:
    """The test files of ``paths`` (relative to the repository root) that do not exist: pytest
    would exit 4 on them, which the script must not take for a pass."""
    return [p for p in paths if not (ROOT / p).is_file()]


def run_tests(paths: list[str], collect_only: bool) -> tuple[int, str]:
    """pytest on ``paths`` (relative to the repository root): ``(exit status, pytest's last line)``.

    Collecting only (the CPU rehearsal), a test skipped or deselected at collection counts as a
    failure too: the device would not run it.
    """
    mode = ["--collect-only", "-rs"] if collect_only else ["-x"]  # -rs: name what is skipped
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *mode, *paths], cwd=ROOT, capture_output=True, text=True
    )
    lines = r.stdout.strip().splitlines() or ["(no output)"]
    last, code = lines[-1], r.returncode
    skipped = [x for x in lines if x.startswith("SKIPPED")]
    if code == 0 and collect_only and (skipped or "deselected" in last):
        code, last = 1, f"{last}; not run on the device: {'; '.join(skipped) or last}"
    if code:
        sys.stdout.write(r.stdout[-3000:])
    return code, last


def table(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    head = ["what", "dtype", "rows/device x devices", "tokens/s", "model TFLOP/s", "MFU", "compile s",
            "peak GiB", "wall s"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append(
            f"| {r['what']} | {r['dtype']} | {r['rows']} | {r['tokens_per_s']:,.0f} | "
            f"{fmt(r.get('tflops'), '.3g')} | {fmt(r.get('mfu'), '.1%')} | "
            f"{fmt(r.get('compile_s'), '.1f')} | {fmt(r.get('peak_gib'), '.2f')} | {r['wall_s']:.0f} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU rehearsal: a tiny model, 4 rows, a few steps")
    p.add_argument("--configs", default="original,small", help="experiments/configs names")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--rows", type=int, default=None, help="rows per device (default 128; 4 with --tiny)")
    p.add_argument(
        "--steps", type=int, default=None, help="logged steps after the first (default 30; 6 --tiny)"
    )
    p.add_argument("--skip-tests", action="store_true", help="no numeric tests first")
    p.add_argument(
        "--tests",
        default=",".join(NUMERIC_TESTS),
        help="comma-separated test files from the repository root (default: NUMERIC_TESTS)",
    )
    p.add_argument("--skip-embed", action="store_true")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="the chip's peak, if elmojax.model.flops lacks it"
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per child process")
    p.add_argument("--out", default=None, help="also write the table (markdown) here")
    p.add_argument(
        "--xla-flags",
        default="",
        help="extra XLA_FLAGS for the runs, to compare variants (e.g. --xla_gpu_enable_command_buffer=)",
    )
    args = p.parse_args(argv)
    args.rows = args.rows or (4 if args.tiny else 128)
    args.steps = args.steps or (6 if args.tiny else 30)
    rows: list[dict] = []
    tests_code, tests_line = 0, "numeric tests skipped (--skip-tests)"
    if not args.skip_tests:
        missing = missing_tests(args.tests.split(","))
        if missing:  # stop before spending device time
            print(f"numeric test file not found: {', '.join(missing)} (fix NUMERIC_TESTS or --tests)")
            return 2
        t0 = time.perf_counter()
        tests_code, last = run_tests(args.tests.split(","), collect_only=args.tiny)
        what = "collected" if args.tiny else "run"
        tests_line = f"numeric tests {what}: exit {tests_code} in {time.perf_counter() - t0:.0f} s: {last}"
        print(tests_line, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus, *((500, 400) if args.tiny else (20000, 20000)))
        lines = (corpus / "train.txt").read_text().splitlines()
        (corpus / "embed.txt").write_text("\n".join(lines[: 64 if args.tiny else 2048]) + "\n")
        if args.tiny:
            configs = {"tiny": work / "tiny.json"}
            configs["tiny"].write_text(json.dumps(TINY))
        else:
            configs = {name: CONFIGS / f"{name}.json" for name in args.configs.split(",")}
        for name, options_file in configs.items():
            for dtype in args.dtypes.split(","):
                rows.append(train_row(name, options_file, corpus, dtype, args, work))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
            if not args.skip_embed:
                for dtype in args.dtypes.split(","):
                    rows.append(embed_row(name, options_file, corpus, dtype, args))
    text = table(rows)
    device = next((r["device"] for r in rows if "device" in r), "?")
    print(
        f"\ndevice: {device}; train = `elmojax train` end to end (metrics.jsonl), "
        "embed = Embedder after warm-up"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if tests_code:  # the table is still worth having, but the check failed
        print(f"FAILED: {tests_line}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
