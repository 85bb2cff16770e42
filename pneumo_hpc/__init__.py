"""pneumo-hpc: train and measure pneumonia classifiers and detectors on RSNA chest X-rays, from a laptop to SLURM."""
__version__ = "0.1.0"
