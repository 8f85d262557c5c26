#!/usr/bin/env bash
# Search the shipped guided schedules of the class-conditional zoo: solver mode on digits-cond-xs (member 1) at
# guidance W = 4 with the per-step guidance gene (scales 1, 2, 4, 6), at 4, 5, 6 and 8 steps (NFE 8..16 model
# calls), the default search sizes, and ship each as checkpoints/digits-cond/schedules/solver-w4-nfe{N}.json with
# its report. One search at a time (each is several minutes on a 2-core CPU).
# Then `python benchmarks/bench_guided_search.py --fixed-run runs/fixed-w4-nfe5 --accuracy-run
# runs/guided-w4-nfe5-acc20 --model-run runs/guided-model-0.7s` scores them against the presets on held-out noise.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${OMSJAX_RUNS:-runs}
dest=checkpoints/digits-cond/schedules
mkdir -p "$dest"
for n in ${NFES:-4 5 6 8}; do
  omsjax search --zoo checkpoints/digits-cond --model 1 --guidance 4 --search-guidance --nfe "$n" \
    --out "$runs/guided-w4-nfe$n" --quiet
  cp "$runs/guided-w4-nfe$n/schedule.json" "$dest/solver-w4-nfe$n.json"
  cp "$runs/guided-w4-nfe$n/report.json" "$dest/solver-w4-nfe$n.report.json"
done
# The other comparisons of bench_guided_search.py (kept under runs/, not shipped): the fixed-scale solver search at
# 5 steps (no guidance gene), the gene search at 5 steps with accuracy weight 20, and a model schedule over the zoo at a budget of 0.7 s, every step at guidance 4.
if [ -z "${NFES:-}" ]; then
  omsjax search --zoo checkpoints/digits-cond --model 1 --guidance 4 --nfe 5 --out "$runs/fixed-w4-nfe5" --quiet
  omsjax search --zoo checkpoints/digits-cond --model 1 --guidance 4 --search-guidance --nfe 5 --accuracy-weight 20 \
    --out "$runs/guided-w4-nfe5-acc20" --quiet
  omsjax search --zoo checkpoints/digits-cond --mode model --guidance 4 --budget 0.7 \
    --out "$runs/guided-model-0.7s" --quiet
fi
