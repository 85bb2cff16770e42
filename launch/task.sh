#!/bin/bash
# launch/task.sh ARGS...: the per-task entry every srun step runs, once per rank: `pneumo-hpc ARGS...`.
#
# Pins the math libraries to the cores SLURM gave this task (an unpinned rank spawns one thread per core of
# the node and the ranks fight over them), then execs pneumo-hpc: inside the Apptainer image when SIF is set
# (--nv when the job holds GPUs), else the native install (PNEUMO_HPC_BIN, or pneumo-hpc on PATH).
# exec, so the signals SLURM sends reach pneumo-hpc itself. The rank/world/process group come from the SLURM
# variables, which pneumo-hpc reads on its own.
set -euo pipefail

threads=${SLURM_CPUS_PER_TASK:-1}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads

if [ -n "${SIF:-}" ]; then
  runtime=${APPTAINER:-apptainer}
  if ! command -v "$runtime" >/dev/null; then
    runtime=$(command -v apptainer || command -v singularity || true)
    if [ -z "$runtime" ]; then
      echo "task.sh: SIF=$SIF needs apptainer or singularity on PATH on $(hostname) (module load apptainer?)" >&2
      exit 127
    fi
  fi
  nv=()
  if [ "${PNEUMO_GPU:-0}" = 1 ]; then nv=(--nv); fi
  exec "$runtime" exec ${nv[@]+"${nv[@]}"} "$SIF" pneumo-hpc "$@"
fi

bin=${PNEUMO_HPC_BIN:-pneumo-hpc}
if ! command -v "$bin" >/dev/null; then
  echo "task.sh: '$bin' not found on $(hostname): set PNEUMO_HPC_BIN=/path/to/venv/bin/pneumo-hpc" \
       "or SIF=/path/to/pneumo-hpc.sif (make sbatch-... PNEUMO_HPC_BIN=...)" >&2
  exit 127
fi
exec "$bin" "$@"
