# pneumo-hpc: `make demo` runs the main job on built-in synthetic data; `make test` runs the test suite.
# Both create what they need (virtual environment, system packages when root) on a fresh machine.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo
N ?= 800
# BATCH, LR (and EPOCHS, in the other targets): the SLURM jobs' defaults (one table; launch.mk includes it too).
# The demo's classifiers train 5 epochs unless EPOCHS is given (command line or environment), to keep the whole
# demo near 10 minutes on 2 CPUs (docs/performance.md); the check comes before the table, which sets EPOCHS
ifeq ($(origin EPOCHS),undefined)
demo: EPOCHS := 5
endif
include launch/variables.mk
NPROC ?= 2
PYTEST_ARGS ?=
export NO_ALBUMENTATIONS_UPDATE := 1
export YOLO_OFFLINE := 1

.PHONY: help venv system demo demo-data demo-detect test test-fast gpu-check scaling-cpu cluster-up cluster-down image-check clean

help:
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	bash containers/install.sh system   # mpi4py builds against the system Open MPI: it must come first
	VENV=$(VENV) EXTRA_PIP="-r requirements-dev.txt" bash containers/install.sh python
	touch $@

venv: $(STAMP) ## create/refresh the virtual environment (.venv) with the pinned stack

system: ## install Open MPI (and, for the tests, SLURM, munge, Lmod) when root
	bash containers/install.sh system
	bash containers/install.sh test-deps

$(DEMO_DIR)/prep/manifest.json: | $(STAMP)
	$(BIN)/pneumo-hpc synth $(DEMO_DIR)/rsna --n $(N) --seed 0
	$(BIN)/pneumo-hpc preprocess --rsna $(DEMO_DIR)/rsna --out $(DEMO_DIR)/prep --workers 2

demo-data: $(DEMO_DIR)/prep/manifest.json ## synthetic RSNA download + preprocessing only

TARGET_SENS ?= 0.9
demo: $(STAMP) demo-data ## synthetic RSNA -> preprocess -> serial/DDP/FSDP classifier -> YOLOv8n -> predictions -> report
	rm -f $(DEMO_DIR)/runs/results.jsonl
	$(BIN)/pneumo-hpc train --data $(DEMO_DIR)/prep --model small-cnn --epochs $(EPOCHS) --batch-size $(BATCH) \
	  --lr $(LR) --strategy serial --target-sensitivity $(TARGET_SENS) --out $(DEMO_DIR)/runs/serial
	$(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m pneumo_hpc train --data $(DEMO_DIR)/prep \
	  --model small-cnn --epochs $(EPOCHS) --batch-size $(BATCH) --lr $(LR) --strategy ddp \
	  --target-sensitivity $(TARGET_SENS) --out $(DEMO_DIR)/runs/ddp
	$(BIN)/torchrun --standalone --nproc_per_node $(NPROC) -m pneumo_hpc train --data $(DEMO_DIR)/prep \
	  --model small-cnn --epochs $(EPOCHS) --batch-size $(BATCH) --lr $(LR) --strategy fsdp \
	  --target-sensitivity $(TARGET_SENS) --out $(DEMO_DIR)/runs/fsdp
	$(BIN)/pneumo-hpc evaluate --run $(DEMO_DIR)/runs/serial --data $(DEMO_DIR)/prep --target-sensitivity $(TARGET_SENS)
	$(detect-steps)
	$(BIN)/pneumo-hpc report $(DEMO_DIR)/runs/results.jsonl --out $(DEMO_DIR)/report
	$(detect-summary)

test: $(STAMP) system ## the whole suite, real SLURM/Open MPI/Lmod included
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP) ## unit tests only (no services, no slow trainings)
	$(BIN)/python -m pytest -m "not slurm and not mpi and not multinode and not slow" $(PYTEST_ARGS)

# enough epochs at 128 px from random init for mAP50 >= 0.6 and an RSNA metric >= 0.4 (figures: docs/performance.md)
DETECT_EPOCHS ?= 10
DETECT_IMGSZ ?= 128
DETECT_BATCH ?= 16
# the validation patients only (the preprocessed split), drawn beside their labelled boxes; with a classifier run,
# its Grad-CAM beside each image (--cls-threshold 0: drawn, not gating)
define detect-steps
$(BIN)/pneumo-hpc detect train --data $(DEMO_DIR)/prep/yolo --model yolov8n.yaml --epochs $(DETECT_EPOCHS) \
  --imgsz $(DETECT_IMGSZ) --batch $(DETECT_BATCH) --gpus 0 --out $(DEMO_DIR)/runs/yolo
CAM=$$([ -f $(DEMO_DIR)/runs/serial/checkpoint/model.pt ] && echo "--classifier $(DEMO_DIR)/runs/serial --cls-threshold 0 --cam" || true); \
  $(BIN)/pneumo-hpc predict --detector $(DEMO_DIR)/runs/yolo --out $(DEMO_DIR)/preds.csv \
  --patients $(DEMO_DIR)/prep/classifier/val.csv --labels $(DEMO_DIR)/rsna/stage_2_train_labels.csv \
  --overlays $(DEMO_DIR)/overlays $$CAM $(DEMO_DIR)/rsna/stage_2_train_images
$(BIN)/pneumo-hpc detect score --labels $(DEMO_DIR)/rsna/stage_2_train_labels.csv --submission $(DEMO_DIR)/preds.csv \
  --only-submitted > $(DEMO_DIR)/preds_score.json
endef
define detect-summary
@$(BIN)/python -c 'import json, sys; m, s = (json.load(open(f)) for f in sys.argv[1:]); \
  print("detector: YOLOv8n, %(epochs)d epochs at %(imgsz)d px; validation split (%(n_val)d images): " \
        "mAP50 %(map50).3f, mAP50-95 %(map50_95).3f, RSNA metric %(rsna_map).3f" % m); \
  print("predict on the validation DICOMs: RSNA metric %(rsna_map).3f (%(n_images)d images counted)" % s)' \
  $(DEMO_DIR)/runs/yolo/metrics.json $(DEMO_DIR)/preds_score.json
@echo "contact sheet: $(DEMO_DIR)/overlays/contact_sheet.png (green: labelled, red: predicted; one PNG per image beside it)"
endef
demo-detect: $(STAMP) demo-data ## YOLOv8n on the demo data (CPU, 128 px) -> val-patient predictions, overlays -> RSNA metric
	$(detect-steps)
	$(detect-summary)

SCALING_RANKS ?= 2
SCALING_DIR ?= $(DEMO_DIR)/scaling
scaling-cpu: $(STAMP) demo-data ## serial vs DDP/FSDP at SCALING_RANKS (1 thread per rank) on the demo data -> report
	rm -f $(SCALING_DIR)/results.jsonl
	OMP_NUM_THREADS=1 $(BIN)/pneumo-hpc train --data $(DEMO_DIR)/prep --epochs $(EPOCHS) --batch-size $(BATCH) \
	  --lr $(LR) --strategy serial --label "serial CNN (CPU)" --out $(SCALING_DIR)/serial --results $(SCALING_DIR)/results.jsonl
	for n in $(SCALING_RANKS); do for s in ddp fsdp; do \
	  OMP_NUM_THREADS=1 $(BIN)/torchrun --standalone --nproc_per_node $$n -m pneumo_hpc train --data $(DEMO_DIR)/prep \
	    --epochs $(EPOCHS) --batch-size $(BATCH) --lr $(LR) --strategy $$s --out $(SCALING_DIR)/$$s-$$n \
	    --results $(SCALING_DIR)/results.jsonl; done; done
	$(BIN)/pneumo-hpc report $(SCALING_DIR)/results.jsonl --out $(SCALING_DIR)/report

gpu-check: ## on a CUDA machine: serial/ddp/fsdp with NCCL + bf16 + compile, prints img/s
	PY=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash benchmarks/gpu_check.sh

CLUSTER_NODES ?= $(if $(filter command line,$(origin NODES)),$(NODES),3)
cluster-up: ## a real NODES-node SLURM cluster on this machine, in network namespaces (root; see docs/multinode.md)
	NODES=$(CLUSTER_NODES) bash .ci/start-multinode.sh start
	@echo "run clients on the login node: /tmp/pneumo-hpc-cluster/bin/pnc-exec make sbatch-ddp NODES=2 GPUS=2 IFNAME=pnc0"

cluster-down: ## stop the local multi-node cluster and remove its namespaces and route
	bash .ci/start-multinode.sh stop

clean:
	rm -rf $(DEMO_DIR) build .pytest_cache

image-check: ## CPU image root from containers/pneumo-hpc-cpu.def without Apptainer: %post, %test, offline DDP, SIF (root)
	bash containers/image-check.sh

-include launch/launch.mk
