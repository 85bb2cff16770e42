"""Where a process runs: the launcher that started it, the process group, CPU binding, host memory and the
network interface.

    launchers/     one tiny class per launcher (torchrun, MPI, SLURM, local) and detect()
    dist.py        the process group: setup/teardown, device and backend, rank helpers
    interface.py   the interface named by IFNAME / *_SOCKET_IFNAME present on this node
    cpu_bind.py    an equal share of cores per rank unless the launcher bound them
    host_memory.py freed memory kept in the process for the next step (glibc)
    doctor.py      `pneumo-hpc doctor`: every rank's checks, then an all-reduce at a few sizes
    doctor_checks.py, doctor_report.py, doctor_store.py   its per-rank checks, rank 0's table, where ranks meet
    commands.py    `pneumo-hpc env` and `pneumo-hpc doctor` (click-only imports)
"""

BACKENDS = ("auto", "gloo", "nccl")  # auto: nccl when every rank has a CUDA device, else gloo
