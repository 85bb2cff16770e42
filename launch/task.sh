#!/bin/bash
# launch/task.sh ARGS...: the per-task entry every srun step runs, once per rank: `pneumo-hpc ARGS...`.
#
# Pins the math libraries to the cores SLURM gave this task (an unpinned rank spawns one thread per core of
# the node and the ranks fight over them), then execs pneumo-hpc: inside the Apptainer image when SIF is set
# (--nv when the job holds GPUs), else the native install (PNEUMO_HPC_BIN, else this checkout's .venv, else
# pneumo-hpc on PATH). exec, so the signals SLURM sends reach pneumo-hpc itself. The rank/world/process group
# come from the SLURM (or MPI) variables, which pneumo-hpc reads on its own.
#
# With PNEUMO_TORCHRUN_NPROC set (LAUNCHER=torchrun) this task is a node's torchrun agent instead: it starts
# torchrun with c10d rendezvous at PNEUMO_TORCHRUN_ENDPOINT and sees that the USR1 of the time limit reaches the
# workers, because torchrun does not pass USR1 on (and would die of it).
set -euo pipefail

threads=${SLURM_CPUS_PER_TASK:-1}
nproc=${PNEUMO_TORCHRUN_NPROC:-}
if [ -n "$nproc" ]; then threads=$(( threads / nproc > 0 ? threads / nproc : 1 )); fi
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads

# cmd: how this node runs pneumo-hpc (image or native)
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
  cmd=("$runtime" exec ${nv[@]+"${nv[@]}"} "$SIF" pneumo-hpc)
  torchrun=("$runtime" exec ${nv[@]+"${nv[@]}"} "$SIF" torchrun)
else
  bin=${PNEUMO_HPC_BIN:-}
  checkout_bin="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/pneumo-hpc"
  if [ -z "$bin" ] && [ -x "$checkout_bin" ]; then bin=$checkout_bin; fi   # the checkout's own `make venv`
  bin=${bin:-pneumo-hpc}
  if ! command -v "$bin" >/dev/null; then
    echo "task.sh: '$bin' not found on $(hostname): set PNEUMO_HPC_BIN=/path/to/venv/bin/pneumo-hpc" \
         "or SIF=/path/to/pneumo-hpc.sif (make sbatch-... PNEUMO_HPC_BIN=...), or run make venv in this checkout" >&2
    exit 127
  fi
  cmd=("$bin")
  torchrun=("$(dirname "$(command -v "$bin")")/torchrun")
fi

if [ -z "$nproc" ]; then exec "${cmd[@]}" "$@"; fi

: "${PNEUMO_TORCHRUN_NNODES:?}" "${PNEUMO_TORCHRUN_ENDPOINT:?}" "${SLURM_JOB_ID:?}"
# SLURM signals every process of the step: the agent must outlive USR1 (ignored, inherited through exec), the
# workers catch it with their own handler; for a launcher that signals this task only, the trap below forwards it
trap '' USR1
setsid "${torchrun[@]}" --nnodes "$PNEUMO_TORCHRUN_NNODES" --nproc-per-node "$nproc" --rdzv-backend c10d \
  --rdzv-endpoint "$PNEUMO_TORCHRUN_ENDPOINT" --rdzv-id "$SLURM_JOB_ID" --max-restarts 0 -m pneumo_hpc "$@" &
agent=$!
trap 'pkill -USR1 -P "$agent" || true' USR1
trap 'kill -TERM "$agent" 2>/dev/null || true' TERM INT
rc=0
while :; do
  wait "$agent" && rc=0 || rc=$?
  kill -0 "$agent" 2>/dev/null || break   # a trapped signal ended the wait, not the agent
done
exit "$rc"
