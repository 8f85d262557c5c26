#!/usr/bin/env bash
# Train the shipped digits zoo (four U-Nets, 63k..634k parameters) and add each to checkpoints/digits.
# Resumable: rerun after an interruption and every run continues from its last orbax checkpoint.
# Latencies recorded while other work runs are noisy: afterwards run `omsjax zoo --remeasure-latency`
# on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${OMSJAX_RUNS:-runs}
for cfg in digits-xxs digits-xs digits-s digits-m; do
  omsjax train --config "$cfg" --out "$runs/$cfg" --resume --add-to-zoo checkpoints/digits --quiet
done
