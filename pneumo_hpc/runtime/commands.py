"""``pneumo-hpc env``: which launcher started this rank, and (with --init) whether the process group works.
``pneumo-hpc doctor``: every check a multi-node run needs, on every rank, in one table (runtime/doctor.py).

    pneumo-hpc env
    torchrun --standalone --nproc_per_node 2 -m pneumo_hpc env --json --init
    mpirun -np 2 pneumo-hpc env --json --init
    srun -n 2 pneumo-hpc env --json --init
    srun -N2 --ntasks-per-node=2 pneumo-hpc doctor --data /scratch/prep --out runs/doctor
"""
import json
import sys
from pathlib import Path

import click


def _allreduce_check(backend, device, timeout):
    """Init the group (world 1 too) and all-reduce rank+1: the sum must be W(W+1)/2 on every rank."""
    import torch
    import torch.distributed as tdist

    from pneumo_hpc.runtime import dist

    ctx = dist.setup(backend=backend, device=device, timeout_s=timeout, init_single=True)
    info = ctx.as_dict()
    try:
        value = torch.tensor([float(ctx.rank + 1)], device=ctx.device)
        tdist.all_reduce(value)
        total = value.item()
        info["allreduce"] = int(total) if total.is_integer() else total
        info["allreduce_ok"] = total == ctx.world_size * (ctx.world_size + 1) / 2
    except Exception as exc:  # a dead peer or a timeout: report it on this rank's line, exit non-zero
        info.update(allreduce=None, allreduce_ok=False, error=f"{type(exc).__name__}: {exc}")
    finally:
        dist.teardown(ctx)
    return info


def _table(info):
    width = max(map(len, info))
    return "\n".join(f"{key:<{width}}  {value}" for key, value in info.items())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (one line) per rank.")
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl"]), default="auto", show_default=True,
              help="auto: nccl on CUDA, gloo on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:<index>.")
@click.option("--init", "do_init", is_flag=True,
              help="Also start the process group (even at world size 1) and all-reduce rank+1 across ranks.")
@click.option("--timeout", type=float, default=None,
              help="Seconds a collective may wait before failing [default: $PNEUMO_DIST_TIMEOUT or 300].")
def env(as_json, backend, device, do_init, timeout):
    """Show the launcher (torchrun, mpi, slurm, local), ranks, rendezvous address, backend and device."""
    from pneumo_hpc.runtime import dist

    try:
        info = _allreduce_check(backend, device, timeout) if do_init else dist.describe(backend, device)
    except (ValueError, RuntimeError) as exc:  # setup errors (bad layout, init failure) carry their own hint
        raise click.ClickException(str(exc)) from None
    if as_json:
        sys.stdout.write(json.dumps(info) + "\n")  # one write per rank: lines from several ranks do not interleave
        sys.stdout.flush()
    else:
        head = f"[rank {info['rank']}/{info['world_size']}]" if info["world_size"] > 1 else "pneumo-hpc env"
        click.echo(f"{head}\n{_table(info)}")
    if do_init and not info["allreduce_ok"]:
        sys.exit(1)


@click.command()
@click.option("--data", type=click.Path(path_type=Path), required=True,
              help="PREP: the --out of `pneumo-hpc preprocess`, as the training would be given it.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run directory to check (shared by the nodes); doctor.json and doctor.txt are written there "
                   "[default: a temporary directory beside PREP, removed after].")
@click.option("--json", "as_json", is_flag=True, help="Also print the JSON document (rank 0, one line).")
@click.option("--sizes", default="4K,256K,4M,32M", show_default=True,
              help="All-reduce message sizes: bytes, or K/M/G (KiB/MiB/GiB), comma-separated.")
@click.option("--iters", type=click.IntRange(1, 10000), default=5, show_default=True,
              help="Timed all-reduces per size (after one warm-up).")
@click.option("--timeout", type=click.FloatRange(min=1), default=60.0, show_default=True,
              help="Seconds any step waits for the other ranks before failing.")
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl"]), default="auto", show_default=True,
              help="auto: nccl on CUDA, gloo on CPU.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:<index>.")
def doctor(data, out, as_json, sizes, iters, timeout, backend, device):
    """Check data, devices, launcher, network, CPUs, versions and the run directory on every rank, then time an
    all-reduce; rank 0 prints one table. Run it as the training runs (srun, mpirun, torchrun or alone).
    Exit 1 when a check fails."""
    from pneumo_hpc.runtime.doctor import DoctorConfig, parse_sizes, run

    try:
        parsed = parse_sizes(sizes)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from None
    sys.exit(run(DoctorConfig(data=data, out=out, as_json=as_json, sizes=parsed, iters=iters, timeout=timeout,
                              backend=backend, device=device)))
