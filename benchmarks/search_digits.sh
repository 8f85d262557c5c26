#!/usr/bin/env bash
# Search the shipped solver schedules of digits-m, checkpoints/digits/schedules/solver-nfe{3..10}.json: the default
# search (2 stages after the presets and 16 random schedules; --thorough is the full-size S3 loop) with the default
# metric, the reference FD to digits-m's own converged samples from the same
# noise (the zoo ships those references and the presets' evaluations at its default noise, `omsjax zoo
# --cache-presets`), one search at a time (each is minutes on a 2-core CPU). Each is returned only if it beats the
# best preset (+AFS variants included) beyond the selection noise; otherwise that preset is shipped, and its report
# says so. Then `python benchmarks/bench_reference.py` scores them against every preset on 3 held-out draws.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${OMSJAX_RUNS:-runs}
dest=checkpoints/digits/schedules
for n in ${NFES:-3 4 5 6 7 8 9 10}; do
  omsjax search --nfe "$n" --out "$runs/solver-nfe$n" --quiet
  cp "$runs/solver-nfe$n/schedule.json" "$dest/solver-nfe$n.json"
  cp "$runs/solver-nfe$n/report.json" "$dest/solver-nfe$n.report.json"
done
