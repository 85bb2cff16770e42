#!/usr/bin/env bash
# Device check (issue 14, on a lent machine with one GPU and 16 cores), in one call:
#   1. `pneumo-hpc doctor` on the GPU (world 1, NCCL) and on RANKS CPU ranks (gloo): the table and its all-reduce
#      latency/bandwidth, which step 3's model is given;
#   2. the time breakdown on the GPU: benchmarks/time_breakdown.py (with/without, paired) under CUDA events;
#   3. the scaling model against measured CPU DDP: serial and 2/4/8-rank DDP (1 thread per rank) on the same data,
#      then `pneumo-hpc report` with the doctor's alpha/beta: its model table predicts each measured point.
# DEVICE=cpu BACKEND=gloo N=512 RANKS="2": a dry run on a machine without a GPU.
set -euo pipefail
PY=${PY:-python3}
WORK=${WORK:-/tmp/pneumo-device-check}
N=${N:-6000} N_VAL=${N_VAL:-600} SIZE=${SIZE:-128} EPOCHS=${EPOCHS:-3} BATCH=${BATCH:-240}
RANKS=${RANKS:-2 4 8}
DEVICE=${DEVICE:-cuda} BACKEND=${BACKEND:-nccl}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
BIN=$(dirname "$(command -v "$PY")")
rm -rf "${WORK:?}" && mkdir -p "$WORK"

"$PY" - <<PYEOF
import sys; sys.path.insert(0, "tests")
from prep_fake import make_prep
make_prep("$WORK/prep", n_train=$N, n_val=$N_VAL, size=$SIZE)
PYEOF
"$PY" -m pneumo_hpc doctor --data "$WORK/prep" --backend "$BACKEND" --device "$DEVICE" --out "$WORK/doctor-$DEVICE" || true
top=${RANKS##* }
OMP_NUM_THREADS=1 "$BIN/torchrun" --standalone --nproc_per_node "$top" -m pneumo_hpc doctor --data "$WORK/prep" \
  --backend gloo --out "$WORK/doctor-cpu" || true

"$PY" benchmarks/time_breakdown.py --strategy ddp --ranks 1 --device "$DEVICE" --pairs 3 --n "$N" --size "$SIZE" \
  --batch "$BATCH" || true

results=$WORK/cpu/results.jsonl
OMP_NUM_THREADS=1 "$PY" -m pneumo_hpc train --data "$WORK/prep" --device cpu --precision fp32 --epochs "$EPOCHS" \
  --batch-size "$BATCH" --label "serial CNN (CPU)" --out "$WORK/cpu/serial" --results "$results"
for n in $RANKS; do
  OMP_NUM_THREADS=1 "$BIN/torchrun" --standalone --nproc_per_node "$n" -m pneumo_hpc train --data "$WORK/prep" \
    --device cpu --precision fp32 --epochs "$EPOCHS" --batch-size "$BATCH" --strategy ddp --label "$n-CPU DDP" \
    --out "$WORK/cpu/ddp-$n" --results "$results"
done
# the doctor's all-reduce on the CPU ranks: a ring's 2 (W - 1) hops in the smallest message's latency, the bus
# bandwidth of the largest
read -r alpha beta < <("$PY" - "$WORK/doctor-cpu/doctor.json" <<'PYEOF'
import json, sys
doc = json.load(open(sys.argv[1]))
rows = sorted(doc["allreduce"], key=lambda r: r["bytes"])
print(rows[0]["latency_s"] / (2 * (doc["world_size"] - 1)), rows[-1]["busbw_gbps"])
PYEOF
)
"$PY" -m pneumo_hpc report "$results" --out "$WORK/cpu/report" --alpha-s "$alpha" --beta-gb-s "$beta"
