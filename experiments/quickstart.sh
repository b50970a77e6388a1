#!/usr/bin/env bash
# The whole elmojax workflow on the bundled sample corpus, as in the bilm-tf tutorial:
# CSV `transcript` column -> shards + vocab -> train -> held-out perplexity -> export -> embeddings
# -> distances of one word in different contexts. About ten minutes on 2 CPU cores.
#
#   bash experiments/quickstart.sh [OUT_DIR] [MAX_STEPS]        (defaults: runs/quickstart, 2000)
#
# SEED (default 0) seeds the training run (initialisation, sentence order, dropout, negatives);
# the preparation and its held-out split stay the same.
# CORPUS (a CSV with a `transcript` column) and OPTIONS (a training options file) override the
# bundled corpus and experiments/configs/quickstart.json; the tests use them for a seconds-long run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-runs/quickstart}
STEPS=${2:-2000}
CORPUS=${CORPUS:-experiments/data/sample_corpus.csv}
OPTIONS=${OPTIONS:-experiments/configs/quickstart.json}
SEED=${SEED:-0}
start=$(date +%s)
mkdir -p "$OUT"

echo "== prepare: $CORPUS (column transcript) -> $OUT/data"
elmojax prepare "$CORPUS" --column transcript --out "$OUT/data" --heldout-fraction 0.02 --seed 0 --no-progress \
  > "$OUT/prepare_stats.json"
cat "$OUT/prepare_stats.json"

echo "== train: $OPTIONS, $STEPS steps -> $OUT/run"
elmojax train --options-file "$OPTIONS" --train-prefix "$OUT/data/train/shard_*.txt" \
  --vocab-file "$OUT/data/vocab.txt" --save-dir "$OUT/run" --max-steps "$STEPS" --checkpoint-every 500 \
  --log-every 20 --seed "$SEED" > "$OUT/train_last.json"

echo "== evaluate: held-out perplexity (full softmax; stream, and every sentence on its own)"
elmojax evaluate --save-dir "$OUT/run" --test-prefix "$OUT/data/heldout/shard_*.txt" --per-sentence \
  | tee "$OUT/perplexity.json"

echo "== export -> $OUT/export"
elmojax export --save-dir "$OUT/run" --outfile "$OUT/export/weights.hdf5"

echo "== embed: the first held-out sentences -> $OUT/embeddings.hdf5"
head -n 100 "$OUT/data/heldout/shard_00000.txt" > "$OUT/sentences.txt"
elmojax embed "$OUT/sentences.txt" "$OUT/embeddings.hdf5" --options-file "$OUT/export/options.json" \
  --weight-file "$OUT/export/weights.hdf5" --vocab-file "$OUT/export/vocab.txt" --all --no-progress

echo "== similarity: 'dress' in fashion vs technology contexts"
python experiments/similarity.py --export-dir "$OUT/export" \
  --json "$OUT/similarity.json"

if python -c "import matplotlib" 2>/dev/null; then
  python experiments/plot_metrics.py "$OUT/run/metrics.jsonl" --heldout "$OUT/perplexity.json" \
    --out "$OUT/training_curve.png"
else
  echo "(matplotlib not installed: pip install 'elmojax[plot]' for $OUT/training_curve.png)"
fi
echo "== done in $(( $(date +%s) - start )) s; everything is under $OUT"
