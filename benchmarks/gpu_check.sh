#!/usr/bin/env bash
# The first GPU run, prepared for its one chance: a preflight, then every figure the suite needs
# from a GPU in under 5 minutes, each written to the results file as soon as its step ends.
#
#   bash benchmarks/gpu_check.sh                        # on the GPU machine (any folder)
#   bash benchmarks/gpu_check.sh --device cpu --tiny    # the same steps at toy sizes (tests)
#   OUT=/some/dir PYTHON=python3 bash benchmarks/gpu_check.sh
#
# Steps (time limits in seconds; a step that fails or times out is recorded and the next runs;
# the whole stays within BUDGET = 290 s, later steps are skipped when it is spent):
#   preflight    GPU visible to the driver and to torch, driver CUDA >= torch's (stops if not)
#   resume       2-epoch CCL run of 16 ResNet-20 agents, SIGKILLed after epoch 1, resumed:
#                metrics.json's environment (device, vectorize path) and memory (estimate, peak)
#   vmap_ratio   loop / vmap step time for 16 and 32 agents, DSGDm-N and CCL; CCL's overhead
#   calibrate    seconds per iteration of the cifar10 family at 16 and 32 agents (plan input)
#   concurrency  throughput of 1, 2, 4 and 8 runs sharing the GPU (ring-16, 5 s each)
#   plan         the cifar10 grid's device-hours and wall time at 1, 4 and 8 slots
#   torchrun     torchrun --nproc_per_node 1 ... distributed=true (NCCL)
#   memory       R4: peak GPU memory of a 32-agent ResNet-20 run
# Results: $OUT/gpu_check.jsonl (one JSON object per line: each script's summary, then a
# {"step", "rc", "seconds"} line per step) and $OUT/gpu_check.log (all output); OUT defaults to
# ./gpu_check.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda
TINY=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=(--tiny); shift ;;
    *) echo "usage: gpu_check.sh [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEST=${OUT:-gpu_check}
mkdir -p "$DEST"
RESULTS="$DEST/gpu_check.jsonl"
LOG="$DEST/gpu_check.log"
: > "$RESULTS"
: > "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
BUDGET=${BUDGET:-290}   # seconds for all steps
SCALE=${LIMIT_SCALE:-1}  # multiplies every step's limit (a slow or shared machine: the tests)
START=$(date +%s)

step() {  # step NAME LIMIT command...: run, log, append its summaries to RESULTS at once
  local name=$1 limit=$(( $2 * SCALE )) left rc t0
  shift 2
  left=$(( START + BUDGET - $(date +%s) ))
  if [ "$left" -lt 5 ]; then
    echo "{\"step\": \"$name\", \"rc\": null, \"skipped\": \"budget spent\"}" >> "$RESULTS"
    return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s): $*" | tee -a "$LOG"
  t0=$(date +%s)
  timeout "$limit" "$@" > "$DEST/$name.out" 2>&1
  rc=$?
  tee -a "$LOG" < "$DEST/$name.out" | grep -E '^(BENCH|PREFLIGHT|PLAN) ' | sed -E 's/^[A-Z]+ //' \
    >> "$RESULTS"
  echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >> "$RESULTS"
  return $rc
}

bench=(--device "$DEVICE" "${TINY[@]}" --rounds 10 --warmup 3)
if [ ${#TINY[@]} -gt 0 ]; then  # a toy family instead of cifar10 (ResNet-20 is slow on a CPU)
  FAMILY=tiny; FAMILY_DIR="$DEST/family"; AGENTS=4,8; WINDOW=1; KS=1,2
  mkdir -p "$FAMILY_DIR"
  cat > "$FAMILY_DIR/tiny.yaml" <<'YAML'
run: {family: tiny, dataset: synthetic, model: mlp, epochs: 1, batch_size: 8,
      synthetic: {train_size: 256, test_size: 64, image_size: 8}}
grid: {alpha: [0.1], topologies: [{topology: ring, n_agents: 4}, {topology: ring, n_agents: 8}],
       methods: [dsgdm-n, ccl], seeds: [0]}
YAML
else
  FAMILY=cifar10; FAMILY_DIR=config; AGENTS=16,32; WINDOW=5; KS=1,2,4,8
fi
CAL="$DEST/calibration.json"
calibrate=("$PYTHON" -m benchmark calibrate --config-dir "$FAMILY_DIR" --family "$FAMILY"
           --device "$DEVICE" --out "$CAL" --iterations 3)

step preflight 30 "$PYTHON" benchmarks/preflight.py --device "$DEVICE" || {
  echo "preflight failed: see $LOG; nothing else is run" | tee -a "$LOG"; exit 1; }
step resume 75 "$PYTHON" benchmarks/e2e.py resume --device "$DEVICE" "${TINY[@]}" --out "$DEST"
step vmap_ratio 75 "$PYTHON" benchmarks/vmap_ratio.py "${bench[@]}"
step calibrate 60 "${calibrate[@]}" --agents "$AGENTS"
step concurrency 80 "${calibrate[@]}" --agents "${AGENTS%%,*}" --only-concurrency \
  --concurrency "$KS" --concurrency-seconds "$WINDOW"
step plan 20 "$PYTHON" -m benchmark plan "$FAMILY" --config-dir "$FAMILY_DIR" \
  --calibration "$CAL" --slots 1,4,8 --json
step torchrun 50 "$PYTHON" benchmarks/e2e.py torchrun --device "$DEVICE" "${TINY[@]}" --out "$DEST"
step memory 40 "$PYTHON" benchmarks/r4_memory.py "${bench[@]}"
echo "results: $RESULTS ($(( $(date +%s) - START )) s in all)" | tee -a "$LOG"
