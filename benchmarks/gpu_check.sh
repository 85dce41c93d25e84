#!/usr/bin/env bash
# R1-R3, R-peer and the vectorised-vs-loop comparison on one GPU: one prepared run, < 5 minutes.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; python from .venv if present
#   PYTHON=python3 bash benchmarks/gpu_check.sh
#
# Every script prints its figures and one "BENCH {json}" line; this script collects those lines in
# $OUT/gpu_check.jsonl (or ./gpu_check.jsonl) and the full output in gpu_check.log beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${OUT:-.}
LOG="$DEST/gpu_check.log"
: > "$LOG"
run() {  # one benchmark, at most 90 s, never stopping the others
  echo "== $*" | tee -a "$LOG"
  timeout 90 "$PYTHON" "$@" --device cuda --rounds 10 --warmup 3 2>&1 | tee -a "$LOG" || true
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$LOG"
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$LOG"

for v in loop vmap auto; do
  run benchmarks/r1_overhead.py --vectorize "$v"      # R1 + vectorised-vs-loop (DSGDm-N)
done
for v in loop vmap; do
  run benchmarks/r2_ccl.py --vectorize "$v"           # R2 + vectorised-vs-loop (CCL)
  run benchmarks/r3_scaling.py --vectorize "$v"       # R3
done
run benchmarks/rpeer.py                               # R-peer (vectorize auto)
grep -h '^BENCH ' "$LOG" | sed 's/^BENCH //' > "$DEST/gpu_check.jsonl"
echo "summaries: $DEST/gpu_check.jsonl"
