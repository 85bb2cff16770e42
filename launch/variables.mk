# The launch variables and their defaults: the one table that launch.mk includes, launch/render.py reads
# (read_table) and the tests compare with what make sees. One `NAME ?= value` per line; comments on their own
# lines, because make keeps the spaces before a trailing `#` in the value; literal values only (no `$`).

# ---- where and how big (GPUS is per node; CPUS is the number of CPU DDP ranks; THREADS cores per CPU rank)
PARTITION ?=
ACCOUNT ?=
QOS ?=
MEM ?=
TIME ?= 01:00:00
REPORT_TIME ?= 00:15:00
NODES ?= 1
GPUS ?= 2
CPUS ?= 2
THREADS ?= 1
CPUS_PER_GPU ?= 2
PREP_TASKS ?= 4
MPI ?= pmix
# srun (one task per rank), mpirun (Open MPI inside the allocation) or torchrun (one agent per node, c10d
# rendezvous on the first node)
LAUNCHER ?= srun
IFNAME ?=
SBATCH_ARGS ?=

# ---- what (the top-level Makefile's demo trains with the same EPOCHS, BATCH, LR)
DATA ?= data/prep
RSNA ?= data/rsna
MODEL ?= small-cnn
EPOCHS ?= 10
# the global batch: 48 splits evenly over 1, 2, 3, 4, 6, 8, 12, 16 and 24 ranks
BATCH ?= 48
LR ?= 1e-3
PRECISION ?= auto
GPU_BACKEND ?= auto
IMG_SIZE ?= 128
YOLO_SIZE ?= 416
YOLO_MODEL ?= yolov8n.yaml
YOLO_BATCH ?= 16
RUNS_DIR ?= runs
RESULTS ?=
SCALING ?= serial cpu-ddp:2 cpu-ddp:4 ddp:2 fsdp:3 yolo:4
LABEL ?=
# 1: every training job first runs `pneumo-hpc doctor` on its nodes and stops there when it fails
DOCTOR ?= 0

# ---- how it runs: SIF=image.sif runs every step in Apptainer; else PNEUMO_HPC_BIN or pneumo-hpc on PATH
SIF ?=
APPTAINER ?= apptainer
PNEUMO_HPC_BIN ?=
REQUEUE_EXIT ?= 99
MAX_REQUEUE ?= 3
SIGNAL_SECONDS ?= 120
DRY_RUN ?= 0
WAIT ?=
