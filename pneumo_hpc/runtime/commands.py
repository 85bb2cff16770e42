"""``pneumo-hpc env``: which launcher started this rank, and (with --init) whether the process group works.

    pneumo-hpc env
    torchrun --standalone --nproc_per_node 2 -m pneumo_hpc env --json --init
    mpirun -np 2 pneumo-hpc env --json --init
    srun -n 2 pneumo-hpc env --json --init
"""
import json
import sys

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
