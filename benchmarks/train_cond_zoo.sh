#!/usr/bin/env bash
# Train the shipped class-conditional digits zoo (three U-Nets with a class embedding, 10% label dropout,
# 64k..635k parameters) and add each to checkpoints/digits-cond.
# Resumable: rerun after an interruption and every run continues from its last orbax checkpoint.
# Latencies recorded while other work runs are noisy: afterwards run
# `omsjax zoo --zoo checkpoints/digits-cond --remeasure-latency` on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${OMSJAX_RUNS:-runs}
for cfg in digits-cond-xxs digits-cond-m digits-cond-xs; do
  omsjax train --config "$cfg" --out "$runs/$cfg" --resume --add-to-zoo checkpoints/digits-cond --quiet
done
