-- pneumo-hpc @VERSION@: Lmod modulefile.
-- Installed by `make module-install` from modules/pneumo-hpc/template.lua (in the pneumo-hpc sources).
--   source:   @REPO@
--   image:    none (the native install below)
--   sha256:   -
--   native:   @VENV@ (used when no image is set)
--   wrappers: @TMP@/apps/pneumo-hpc/@VERSION@/bin
-- Edit by re-running `make module-install`, not by hand.

help([[
pneumo-hpc @VERSION@: train and measure pneumonia classifiers (small CNN, resnet18) and YOLOv8n
detectors on RSNA Pneumonia Detection Challenge chest X-rays, serial to multi-node.

`pneumo-hpc` runs in the Apptainer image named by PNEUMO_HPC_SIF (with --nv when this node has
an NVIDIA GPU), or from the native installation when no image is set.

  pneumo-hpc --help
  pneumo-hpc synth data/rsna --n 800 --seed 0
  pneumo-hpc preprocess --rsna data/rsna --out data/prep
  pneumo-hpc train --data data/prep --model small-cnn --epochs 10 --out runs/serial
  srun -n 4 pneumo-hpc train --data data/prep --strategy ddp --backend auto --out runs/ddp
  pneumo-hpc report runs/results.jsonl --out runs/report

Set PNEUMO_HPC_CACHE to a writable directory when $HOME is read-only on compute nodes.
Please cite the software and the RSNA dataset (CITATION.cff in the sources).
]])

whatis("Name: pneumo-hpc")
whatis("Version: @VERSION@")
whatis("Category: machine learning, medical imaging, HPC")
whatis("Description: pneumonia classifiers and detectors on RSNA chest X-rays with DDP/FSDP, MPI and SLURM")
whatis("License: MIT")

conflict(myModuleName())

local root = "@TMP@/apps/pneumo-hpc/@VERSION@"
local sif = ""

setenv("PNEUMO_HPC_ROOT", root)
if sif ~= "" then
  setenv("PNEUMO_HPC_SIF", sif)
end
prepend_path("PATH", pathJoin(root, "bin"))
