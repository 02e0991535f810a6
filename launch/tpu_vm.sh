#!/usr/bin/env bash
# Start the same training job on every worker of a multi-host TPU VM slice.
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# WORKDIR must be shared by all workers (a gs:// bucket path or a mounted filesystem), and
# the repository must be checked out at ~/multichan_diff on every worker. Each worker runs
# `multichan-diff train`; the trainer calls jax.distributed.initialize() (TPU_WORKER_HOSTNAMES
# names the workers), builds one mesh over all chips and feeds this host's share of each batch.
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG WORKDIR [overrides]}
zone=${2:?}; config=${3:?}; workdir=${4:?}
shift 4
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/multichan_diff && python3 -m venv .venv && . .venv/bin/activate &&
  pip install -q -e . 'jax[tpu]' &&
  multichan-diff train --config $config --workdir $workdir $overrides"
