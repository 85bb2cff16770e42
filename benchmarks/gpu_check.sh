#!/usr/bin/env bash
# GPU check (make gpu-check): on one CUDA GPU, the kit's classifier trainer with the NCCL backend at world size 1,
# bf16 + channels_last + torch.compile, batch 1024, 12,000 resident 128x128 images, for serial, ddp and fsdp.
# Prints one JSON line per run and the steady-state images/s (last epoch; the first one includes compilation).
# Needs only torch, numpy, scikit-learn, tqdm, click (no DICOM/albumentations: the data is made with numpy).
set -euo pipefail
PY=${PY:-python3}
WORK=${WORK:-/tmp/pneumo-gpu-check}
EPOCHS=${EPOCHS:-4}
BATCH=${BATCH:-1024}
N=${N:-12000}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

"$PY" - <<PYEOF
import sys; sys.path.insert(0, "tests")
from prep_fake import make_prep
make_prep("$WORK/prep", n_train=$N, n_val=2400, size=128)
PYEOF
"$PY" -m pneumo_hpc env --json --init --backend nccl
for strategy in serial ddp fsdp; do
  "$PY" -m pneumo_hpc train --data "$WORK/prep" --strategy "$strategy" --backend nccl --device cuda \
    --precision bf16 --compile --batch-size "$BATCH" --epochs "$EPOCHS" --lr 1e-3 --out "$WORK/$strategy" \
    --results "$WORK/results.jsonl"
done
"$PY" - <<PYEOF
import json
for s in ("serial", "ddp", "fsdp"):
    m = json.load(open("$WORK/" + s + "/metrics.json"))
    h = m["history"]
    print(f"gpu-check {s:6s} backend={m['backend']} world={m['world_size']} dtype={m['compute_dtype']} "
          f"steady={h[-1]['samples_per_s']:.0f} img/s  first-epoch={h[0]['samples_per_s']:.0f} img/s  "
          f"accuracy={m['accuracy']:.3f}")
PYEOF
