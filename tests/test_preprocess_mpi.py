"""dask-mpi preprocessing for real: mpirun and srun start 4 ranks (scheduler, client, 2 workers).

The output must be the same bytes as the local run's.
"""
import pytest
from conftest import VENV_BIN, run
from test_preprocess import CHUNK, SIZE, YOLO_SIZE, clean_prep, clean_rsna, digest_tree, run_stats  # noqa: F401


def cli_args(rsna, out):
    return [str(VENV_BIN / "pneumo-hpc"), "preprocess", "--rsna", str(rsna), "--out", str(out), "--size", str(SIZE),
            "--yolo-size", str(YOLO_SIZE), "--val-frac", "0.25", "--seed", "0", "--chunk-size", str(CHUNK),
            "--cluster", "mpi", "--interface", "lo"]


def check_same_as_local(out, clean_prep, launcher_output):  # noqa: F811
    assert launcher_output.count("40 ok") == 1  # only the client rank reports
    stats = run_stats(out)
    assert stats["cluster"] == "mpi" and stats["workers"] == 2 and stats["n_decoded"] == 40
    assert digest_tree(out) == digest_tree(clean_prep[0])


@pytest.mark.mpi
def test_mpirun_output_is_byte_identical_to_local(mpirun, clean_rsna, clean_prep, tmp_path):  # noqa: F811
    out = tmp_path / "prep"
    proc = run([*mpirun, "-np", "4", *cli_args(clean_rsna, out)], timeout=240)
    check_same_as_local(out, clean_prep, proc.stdout)


@pytest.mark.mpi
def test_mpi_with_too_few_ranks_says_how_to_fix(mpirun, clean_rsna, tmp_path):  # noqa: F811
    proc = run([*mpirun, "-np", "2", *cli_args(clean_rsna, tmp_path / "prep")], timeout=120, check=False)
    assert proc.returncode != 0
    assert "needs at least 3 MPI ranks" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slurm
def test_srun_output_is_byte_identical_to_local(slurm, clean_rsna, clean_prep, tmp_path):  # noqa: F811
    out = tmp_path / "prep"
    proc = run(["srun", "-n", "4", "--mpi=pmix", "--time=5", *cli_args(clean_rsna, out)], env=slurm, timeout=300)
    check_same_as_local(out, clean_prep, proc.stdout)
