#!/usr/bin/env bash
# GPU check (make gpu-check): on one CUDA GPU, the kit's classifier trainer with the NCCL backend at world size 1,
# bf16 + channels_last + torch.compile, batch 1024, 12,000 resident 128x128 images, for serial, ddp and fsdp.
# Prints one JSON line per run and the steady-state images/s (median of the epochs after the first, which includes
# compilation).
# Needs only torch, numpy, scikit-learn, tqdm, click (no DICOM/albumentations: the data is made with numpy).
set -euo pipefail
PY=${PY:-python3}
WORK=${WORK:-/tmp/pneumo-gpu-check}
EPOCHS=${EPOCHS:-4}
BATCH=${BATCH:-1024}
N=${N:-12000} N_VAL=${N_VAL:-2400}
STRATEGIES=${STRATEGIES:-serial ddp fsdp}
# DEVICE=cpu BACKEND=gloo COMPILE= AUGMENT=tensor: a dry run of this script on a machine without a GPU
DEVICE=${DEVICE:-cuda} BACKEND=${BACKEND:-nccl} COMPILE=${COMPILE---compile} AUGMENT=${AUGMENT:-auto}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

"$PY" - <<PYEOF
import sys; sys.path.insert(0, "tests")
from prep_fake import make_prep
make_prep("$WORK/prep", n_train=$N, n_val=$N_VAL, size=128)
PYEOF
"$PY" -m pneumo_hpc env --json --init --backend "$BACKEND"
failed=()
for strategy in $STRATEGIES; do  # one failing strategy must not hide the others' figures
  rm -rf "${WORK:?}/$strategy"
  "$PY" -m pneumo_hpc train --data "$WORK/prep" --strategy "$strategy" --backend "$BACKEND" --device "$DEVICE" \
    --precision bf16 $COMPILE --augment "$AUGMENT" --batch-size "$BATCH" --epochs "$EPOCHS" --lr 1e-3 \
    --out "$WORK/$strategy" --results "$WORK/results.jsonl" || failed+=("$strategy")
done
"$PY" - <<PYEOF
import json, statistics
for s in "$STRATEGIES".split():
    try:
        m = json.load(open("$WORK/" + s + "/metrics.json"))
    except FileNotFoundError:
        print(f"gpu-check {s:6s} FAILED (see its output above)")
        continue
    h = m["history"]
    steady = statistics.median(e["samples_per_s"] for e in h[1:] or h)
    print(f"gpu-check {s:6s} backend={m['backend']} world={m['world_size']} dtype={m['compute_dtype']} "
          f"steady={steady:.0f} img/s  first-epoch={h[0]['samples_per_s']:.0f} img/s  "
          f"accuracy={m['accuracy']:.3f}")
PYEOF
if ((${#failed[@]})); then echo "gpu-check: failed: ${failed[*]}" >&2; exit 1; fi
