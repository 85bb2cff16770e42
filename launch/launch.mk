# Cluster deployment kit: SLURM jobs, Apptainer images, Lmod/Tcl modules. Included by the top-level Makefile.
#
#   make sbatch-fsdp GPUS=3 DATA=/scratch/prep PARTITION=gpu       submit one experiment of the study's table
#   make sbatch-scaling DATA=/scratch/prep DRY_RUN=1               print every script instead of submitting
#   make sif && make module-install PREFIX=/opt/apps MODULEFILES=/opt/modulefiles SIF=build/pneumo-hpc-gpu.sif
#
# Every setting is a `?=` variable (the launch ones in launch/variables.mk): set it on the command line or in the
# environment. launch/render.py writes the scripts (directives + env-only config + launch/job.sbatch);
# launch/task.sh is the per-rank entry.
LAUNCH_DIR := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
KIT_ROOT := $(patsubst %/,%,$(dir $(LAUNCH_DIR)))
PYTHON ?= python3

# The launch variables with their defaults (one table, read by render.py too); LAUNCH_VARS: their names, in order
include $(LAUNCH_DIR)/variables.mk
LAUNCH_VARS := $(shell sed -n 's/^\([A-Z][A-Z0-9_]*\) ?=.*/\1/p' $(LAUNCH_DIR)/variables.mk)

quote = '$(subst ','"'"',$(1))'
render = $(PYTHON) $(LAUNCH_DIR)/render.py $(1) $(foreach v,$(LAUNCH_VARS),$(call quote,$(v)=$($(v))))

.PHONY: sbatch-serial sbatch-cpu-ddp sbatch-ddp sbatch-fsdp sbatch-yolo sbatch-preprocess sbatch-report \
  sbatch-scaling sbatch-doctor sif sif-cpu module-install

sbatch-serial: ## SLURM: serial CNN, one CPU task (DRY_RUN=1 prints the script, WAIT=1 waits for the job)
	@$(call render,serial)
sbatch-cpu-ddp: ## SLURM: CPU DDP over gloo, CPUS=N tasks
	@$(call render,cpu-ddp)
sbatch-ddp: ## SLURM: GPU DDP, GPUS=N per node x NODES (NCCL; gloo on CPU when no CUDA)
	@$(call render,ddp)
sbatch-fsdp: ## SLURM: FSDP2, GPUS=N per node x NODES
	@$(call render,fsdp)
sbatch-yolo: ## SLURM: YOLOv8 detector, one node with GPUS=N
	@$(call render,yolo)
sbatch-preprocess: ## SLURM: dask-mpi preprocessing RSNA=dir -> DATA=dir on NODES x PREP_TASKS ranks
	@$(call render,preprocess)
sbatch-report: ## SLURM: pneumo-hpc report on RUNS_DIR/results.jsonl
	@$(call render,report)
sbatch-scaling: ## SLURM: the whole table (SCALING="serial cpu-ddp:2 ...") then a report job after all of them
	@$(call render,scaling)
sbatch-doctor: ## SLURM: pneumo-hpc doctor on DATA, GPUS=N tasks per node x NODES (DOCTOR=1 runs it before any training)
	@$(call render,doctor)

# ---- Apptainer images (built from the repo root: %files paths are relative to it)
SIF_DIR ?= build
SIF_BUILD_ARGS ?= $(if $(filter 0,$(shell id -u)),,--fakeroot)
SIF_BUILDER = $(or $(shell command -v $(APPTAINER) 2>/dev/null),$(shell command -v singularity 2>/dev/null))
need_apptainer = $(if $(SIF_BUILDER),true,echo "make $@: building an image needs apptainer (or singularity) on PATH; \
  none found. Install it (https://apptainer.org/docs/admin/main/installation.html) or build on a machine that \
  has it, then copy the .sif here" >&2; exit 1)

sif: ## Apptainer image with CUDA (build/pneumo-hpc-gpu.sif)
	@$(need_apptainer)
	mkdir -p $(SIF_DIR)
	cd $(KIT_ROOT) && $(SIF_BUILDER) build $(SIF_BUILD_ARGS) $(abspath $(SIF_DIR))/pneumo-hpc-gpu.sif containers/pneumo-hpc-gpu.def
sif-cpu: ## Apptainer image, CPU only (build/pneumo-hpc-cpu.sif)
	@$(need_apptainer)
	mkdir -p $(SIF_DIR)
	cd $(KIT_ROOT) && $(SIF_BUILDER) build $(SIF_BUILD_ARGS) $(abspath $(SIF_DIR))/pneumo-hpc-cpu.sif containers/pneumo-hpc-cpu.def

# ---- environment modules: wrappers + modulefile (lua for Lmod, tcl for Environment Modules, or both)
PREFIX ?=
MODULEFILES ?=
MODULE_FORMAT ?= lua
MODULE_VENV ?= $(abspath $(or $(VENV),$(KIT_ROOT)/.venv))

module-install: ## install the pneumo-hpc module: PREFIX=dir MODULEFILES=dir [SIF=image] [MODULE_FORMAT=lua|tcl|both]
	@$(PYTHON) $(KIT_ROOT)/modules/install.py --prefix $(call quote,$(PREFIX)) --modulefiles $(call quote,$(MODULEFILES)) \
	  --sif $(call quote,$(SIF)) --venv $(call quote,$(MODULE_VENV)) --format $(call quote,$(MODULE_FORMAT)) \
	  --apptainer $(call quote,$(notdir $(APPTAINER)))
