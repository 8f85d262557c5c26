#!/usr/bin/env bash
# Train the shipped digits zoo (four U-Nets, 160k..1.4M parameters) and add each to checkpoints/digits.
# Resumable: rerun after an interruption and every run continues from its last orbax checkpoint.
# Latencies recorded while other work runs are noisy: afterwards run `omsjax zoo-latency --zoo checkpoints/digits`
# on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${OMSJAX_RUNS:-runs}
for cfg in digits-xs digits-s digits-m digits-l; do
  omsjax train --config "$cfg" --out "$runs/$cfg" --resume --add-to-zoo checkpoints/digits --quiet
done
