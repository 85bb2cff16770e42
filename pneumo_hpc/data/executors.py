"""Where the chunk tasks run; each executor returns (results in task order, seconds from the first submission to
the last result): in-process, a Dask LocalCluster, or a dask-mpi cluster (rank 0 scheduler, rank 1 client)."""
from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
import time

from pneumo_hpc.data.chunks import process_chunk
from pneumo_hpc.data import ClusterError, log
from pneumo_hpc.runtime.interface import check as check_interface

INTERFACE_ENV = "PNEUMO_DASK_INTERFACE"

def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="chunk", desc="preprocess", file=sys.stderr, mininterval=1.0)


# Each executor returns (results in task order, seconds from the first submission to the last result).

def run_serial(tasks: list[dict]) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    results = []
    with _progress(len(tasks)) as bar:
        for task in tasks:
            results.append(process_chunk(task))
            bar.update()
    return results, time.perf_counter() - t0


def _warm_up() -> None:
    """Import the decoders on a worker before the clock starts (cluster start-up is not decode time)."""
    import pneumo_hpc.data.dicom  # noqa: F401


def _run_dask(client, tasks: list[dict], retries: int) -> tuple[list[dict], float]:
    from distributed import as_completed

    client.run(_warm_up)
    t0 = time.perf_counter()
    futures = client.map(process_chunk, tasks, key=[f"pneumo-preprocess-chunk-{t['index']}" for t in tasks],
                         retries=retries, pure=False)
    results = {}
    with _progress(len(tasks)) as bar:
        for future in as_completed(futures):
            result = future.result()
            results[result["index"]] = result  # a chunk run twice (retry) lands on the same slot
            future.release()
            bar.update()
    return [results[t["index"]] for t in tasks], time.perf_counter() - t0


def run_local_cluster(tasks: list[dict], cfg) -> tuple[list[dict], float]:
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory(prefix="pneumo-dask-") as scratch, \
            LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                         local_directory=scratch) as cluster, Client(cluster) as client:
        return _run_dask(client, tasks, cfg.retries)


def start_mpi(cfg) -> tuple[bool, str]:
    """dask-mpi: rank 0 runs the scheduler, rank 1 returns (True, scratch) to run the client, others are workers.

    Scheduler and worker ranks return (False, scratch) once the client has shut the cluster down.
    """
    try:
        from dask_mpi import initialize
        from mpi4py import MPI
    except ImportError as e:
        raise ClusterError(f"--cluster mpi needs mpi4py and dask-mpi ({e}): pip install 'pneumo-hpc[mpi]' "
                           "with an MPI library present (e.g. apt install openmpi-bin libopenmpi-dev)") from None
    world = MPI.COMM_WORLD.Get_size()
    if world < 3:
        raise ClusterError(f"--cluster mpi needs at least 3 MPI ranks (scheduler, client, workers); this run has "
                           f"{world}: start it with `mpirun -np 4 ...` or `srun -n 4 --mpi=pmix ...`")
    # INFO chatter from every rank, and a CommClosedError traceback per worker at shutdown, bury the progress bar
    logging.getLogger("distributed").setLevel(os.environ.get("PNEUMO_DASK_LOG_LEVEL", "WARNING").upper())
    scratch = tempfile.mkdtemp(prefix=f"pneumo-dask-{MPI.COMM_WORLD.Get_rank()}-")
    interface = cfg.interface or os.environ.get(INTERFACE_ENV) or None
    if interface:  # a missing one leaves the workers waiting for a scheduler that never listens
        try:
            check_interface(MPI.COMM_WORLD.Get_rank(), {"--interface": interface}, variables=("--interface",))
        except ValueError as e:
            raise ClusterError(str(e)) from None
    is_client = initialize(interface=interface, nthreads=1, local_directory=scratch, dashboard=False, exit=False)
    return is_client, scratch


def run_mpi_client(tasks: list[dict], cfg) -> tuple[list[dict], float]:
    from distributed import Client
    from mpi4py import MPI

    n_workers = MPI.COMM_WORLD.Get_size() - 2
    with Client() as client:  # dask_mpi.initialize set the scheduler address in dask.config
        client.wait_for_workers(n_workers, timeout=300)
        log(f"dask-mpi cluster: {n_workers} worker(s) at {client.scheduler.address}")
        for address, host in sorted(client.run(socket.gethostname).items()):
            log(f"dask-mpi worker on {host} ({address})")
        return _run_dask(client, tasks, cfg.retries)
