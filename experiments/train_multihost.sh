#!/usr/bin/env bash
# Data-parallel training on several hosts: the same `elmojax train` command on every host, with
# --distributed (jax.distributed.initialize()). batch_size in options.json is per device; every
# process reads its own slice of the shards (shard i goes to process i mod N), so keep at least as
# many shards as processes (`elmojax prepare --sentences-per-shard`). Process 0 holds the run
# directory's lock and writes options.json, vocab.txt and metrics.jsonl; all processes write their
# part of each checkpoint, so SAVE_DIR (RUN) must be one shared filesystem path on every host.
#
#   bash experiments/train_multihost.sh local [N] [TRAIN FLAGS...]
#       smoke path: N (default 2) processes on this machine, one CPU device each, coordinator on
#       localhost; prepares the bundled sample corpus first if DATA has none.
#       e.g.  bash experiments/train_multihost.sh local 2 --max-steps 20
#   srun --nodes=2 --ntasks-per-node=1 bash experiments/train_multihost.sh slurm [TRAIN FLAGS...]
#       SLURM: process id from SLURM_PROCID, process count from SLURM_NTASKS, coordinator the first
#       host of SLURM_JOB_NODELIST on port PORT (default 12355).
#   gcloud compute tpus tpu-vm ssh NAME --worker=all \
#       --command="cd elmojax && bash experiments/train_multihost.sh tpu [TRAIN FLAGS...]"
#       TPU pods: jax.distributed.initialize() with no arguments finds the pod's workers itself.
#   COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 bash experiments/train_multihost.sh manual
#       anything else: one command per host, process ids 0..N-1, the coordinator is process 0's
#       address.
#
# Running it again resumes from the latest checkpoint in RUN, as a single-host run does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE=${1:?usage: train_multihost.sh local [N] | slurm | tpu | manual [TRAIN FLAGS...]}
shift
DATA=${DATA:-runs/multihost/data}
RUN=${RUN:-runs/multihost/run}
OPTIONS=${OPTIONS:-experiments/configs/quickstart.json}
ELMOJAX=${ELMOJAX:-elmojax}  # e.g. ELMOJAX="python -m elmojax" without the console script

train() {  # train EXTRA_FLAGS...: the one training command every process runs
  $ELMOJAX train --options-file "$OPTIONS" --train-prefix "$DATA/train/shard_*.txt" \
    --vocab-file "$DATA/vocab.txt" --save-dir "$RUN" --distributed "$@"
}

case "$MODE" in
  local)
    N=2
    if [[ "${1:-}" =~ ^[0-9]+$ ]]; then N=$1; shift; fi
    if [ ! -f "$DATA/vocab.txt" ]; then
      $ELMOJAX prepare experiments/data/sample_corpus.csv --column transcript --out "$DATA" \
        --sentences-per-shard 1000 --no-progress > /dev/null
    fi
    export JAX_PLATFORMS=cpu
    unset XLA_FLAGS  # one CPU device per process
    PORT=${PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')}
    pids=()
    for ((i = 0; i < N; i++)); do
      # only process 0 prints its progress bar and final metrics line
      if [ "$i" -eq 0 ]; then out=/dev/stdout; else out=/dev/null; fi
      train --coordinator-address "localhost:$PORT" --num-processes "$N" --process-id "$i" "$@" > "$out" &
      pids+=($!)
    done
    status=0
    for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
    exit "$status"
    ;;
  slurm)
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    train --coordinator-address "$head:${PORT:-12355}" --num-processes "$SLURM_NTASKS" \
      --process-id "$SLURM_PROCID" "$@"
    ;;
  tpu)
    train "$@"
    ;;
  manual)
    train --coordinator-address "$COORDINATOR" --num-processes "$NUM_PROCESSES" --process-id "$PROCESS_ID" "$@"
    ;;
  *)
    echo "train_multihost.sh: unknown mode '$MODE' (local, slurm, tpu or manual)" >&2
    exit 2
    ;;
esac
