#!/usr/bin/env bash
# Train on this machine (CPU, or the GPUs / TPU JAX finds here).
#   launch/local.sh configs/mibi_granuloma.py runs/granuloma [--config.train.steps=2000 ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [--config.key=value ...]}
shift 2
exec multichan-diff train --config "$config" --workdir "$workdir" "$@"
