#%Module1.0
## pneumo-hpc @VERSION@: Tcl modulefile (Environment Modules; Lmod reads it too). Twin of the Lua one.
## Installed by `make module-install MODULE_FORMAT=tcl` from modules/pneumo-hpc/template.tcl (in the sources).
##   source:   @SOURCE@
##   image:    @IMAGE@
##   sha256:   @SIF_SHA256@
##   native:   @VENV@ (used when no image is set)
##   wrappers: @ROOT@/bin
## Edit by re-running `make module-install`, not by hand.

proc ModulesHelp { } {
    puts stderr "pneumo-hpc @VERSION@: train and measure pneumonia classifiers (small CNN, resnet18) and YOLOv8n"
    puts stderr "detectors on RSNA Pneumonia Detection Challenge chest X-rays, serial to multi-node."
    puts stderr ""
    puts stderr "`pneumo-hpc` runs in the Apptainer image named by PNEUMO_HPC_SIF (with --nv when this node has"
    puts stderr "an NVIDIA GPU), or from the native installation when no image is set."
    puts stderr ""
    puts stderr "  pneumo-hpc --help"
    puts stderr "  pneumo-hpc synth data/rsna --n 800 --seed 0"
    puts stderr "  pneumo-hpc preprocess --rsna data/rsna --out data/prep"
    puts stderr "  pneumo-hpc train --data data/prep --model small-cnn --epochs 10 --out runs/serial"
    puts stderr "  srun -n 4 pneumo-hpc train --data data/prep --strategy ddp --backend auto --out runs/ddp"
    puts stderr "  pneumo-hpc report runs/results.jsonl --out runs/report"
    puts stderr ""
    puts stderr "Set PNEUMO_HPC_CACHE to a writable directory when \$HOME is read-only on compute nodes."
    puts stderr "Please cite the software and the RSNA dataset (CITATION.cff in the sources)."
}

module-whatis "Name: pneumo-hpc"
module-whatis "Version: @VERSION@"
module-whatis "Category: machine learning, medical imaging, HPC"
module-whatis "Description: pneumonia classifiers and detectors on RSNA chest X-rays with DDP/FSDP, MPI and SLURM"
module-whatis "License: MIT"

conflict pneumo-hpc

set root "@ROOT@"
set sif "@SIF@"

setenv PNEUMO_HPC_ROOT $root
if { $sif ne "" } {
    setenv PNEUMO_HPC_SIF $sif
}
prepend-path PATH $root/bin
