"""Data: the RSNA reader, the synthetic generator, DICOM decoding, preprocessing and the preprocessed layout.

    rsna.py        the Kaggle download's CSVs and images -> patients, boxes, the patient-level split
    synth.py       a synthetic download of the same format (the default data)
    dicom.py       DICOM read/write, scaled decode, resize
    chunks.py      one preprocessing task: a chunk of DICOMs decoded once (or from the cache)
    executors.py   where the tasks run: in-process, Dask LocalCluster, dask-mpi
    preprocess.py  the whole preprocessing run: inventory, quarantine, split, outputs, manifest
    layout.py      the preprocessed classifier layout, written and read in one place
    yolo.py        the YOLO tree ultralytics trains from
    commands.py    `pneumo-hpc synth` and `pneumo-hpc preprocess` (click-only imports)

Importing this package is cheap; the errors and the log line below are shared by its modules.
"""
import sys


class DataError(ValueError):
    """Input data that cannot be used at all; the message names the file and what is wrong."""


class ClusterError(RuntimeError):
    """The requested cluster cannot start (missing MPI packages, too few ranks); the message says how to fix it."""


def log(msg: str) -> None:
    print(f"preprocess: {msg}", file=sys.stderr, flush=True)
