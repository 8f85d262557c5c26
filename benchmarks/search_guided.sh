#!/usr/bin/env bash
# Search the shipped guided schedules of the class-conditional zoo, solver mode on digits-cond-xs (member 1) at
# guidance W = 4, at 4, 5, 6 and 8 steps (8..16 model calls), one search at a time (each is minutes on a 2-core CPU):
# 1. with the default metric, the reference FD to digits-cond-xs's own samples at guidance 4 from the same noise and
#    labels, every step at guidance 4: the user's target kept. Shipped as solver-w4-nfe{N}.json with its report (the
#    verdict against the best preset at guidance 4, paired over 3 held-out draws; the FD to data and the error rate
#    of the requested class beside it).
# 2. with the per-step guidance gene as well (--search-guidance: scales 1, 2, 4, 6; the same default metric), at the
#    steps GENE_NFES (6 when measured: 13 minutes), whose report compares the result with presets at guidance 1..4
#    with no more model calls on (FD to data, error rate); shipped as solver-w4-gene-nfe{N}.json only when no preset
#    dominates it there (on the Pareto front).
# Then `python benchmarks/bench_guided_search.py` tabulates both.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${OMSJAX_RUNS:-runs}
dest=checkpoints/digits-cond/schedules
mkdir -p "$dest"
for n in ${NFES:-4 5 6 8}; do
  omsjax search --zoo checkpoints/digits-cond --model 1 --guidance 4 --nfe "$n" --out "$runs/guided-w4-nfe$n" --quiet
  cp "$runs/guided-w4-nfe$n/schedule.json" "$dest/solver-w4-nfe$n.json"
  cp "$runs/guided-w4-nfe$n/report.json" "$dest/solver-w4-nfe$n.report.json"
done
for n in ${GENE_NFES:-6}; do
  out="$runs/guided-w4-gene-nfe$n"
  omsjax search --zoo checkpoints/digits-cond --model 1 --guidance 4 --search-guidance --nfe "$n" --out "$out" --quiet
  if python -c "import json, sys; sys.exit(bool(json.load(open('$out/report.json'))['guidance_tradeoff']['dominated_by']))"; then
    cp "$out/schedule.json" "$dest/solver-w4-gene-nfe$n.json"
    cp "$out/report.json" "$dest/solver-w4-gene-nfe$n.report.json"
  else
    rm -f "$dest/solver-w4-gene-nfe$n.json" "$dest/solver-w4-gene-nfe$n.report.json"
  fi
done
