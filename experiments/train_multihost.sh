#!/usr/bin/env bash
# Data-parallel training on several devices and hosts.
#
# One host, all its devices (GPUs, TPU cores, or CPU devices): nothing special is needed, `elmojax
# train` uses every local device; batch_size in options.json is per device.
#
# Several hosts: start the same command on every host with --distributed, which calls
# jax.distributed.initialize(). On TPU pods and SLURM clusters JAX finds the coordinator itself;
# elsewhere set the three variables below on each host (process ids 0..N-1; the coordinator is
# process 0's address). Every process reads its own slice of the shards (shard i goes to process
# i mod N), so keep at least as many shards as processes (`elmojax prepare --sentences-per-shard`).
#
#   host 0: COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=0 bash experiments/train_multihost.sh
#   host 1: COORDINATOR=10.0.0.1:1234 NUM_PROCESSES=2 PROCESS_ID=1 bash experiments/train_multihost.sh
#
# Locally, simulate 4 devices on one CPU host:  SIMULATE_DEVICES=4 bash experiments/train_multihost.sh
set -euo pipefail
DATA=${DATA:-runs/quickstart/data}
RUN=${RUN:-runs/multihost}
OPTIONS=${OPTIONS:-experiments/configs/quickstart.json}
if [ -n "${SIMULATE_DEVICES:-}" ]; then
  export XLA_FLAGS="--xla_force_host_platform_device_count=${SIMULATE_DEVICES}" JAX_PLATFORMS=cpu
fi
EXTRA=()
if [ -n "${COORDINATOR:-}" ]; then
  EXTRA+=(--distributed --coordinator-address "$COORDINATOR" --num-processes "$NUM_PROCESSES"
          --process-id "$PROCESS_ID")
fi
elmojax train --options-file "$OPTIONS" --train-prefix "$DATA/train/shard_*.txt" --vocab-file "$DATA/vocab.txt" \
  --save-dir "$RUN" "${EXTRA[@]}" "$@"
