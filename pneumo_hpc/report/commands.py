"""`pneumo-hpc report`: results records -> report.md, report.csv, speedup/time/accuracy plots.

    pneumo-hpc report runs/results.jsonl --out runs/report
    pneumo-hpc report runs/results.jsonl runs/old-serial --out report --baseline "serial CNN (CPU)"
    pneumo-hpc report runs/results.jsonl --out report --alpha-s 2e-5 --beta-gb-s 10   # the scaling model's network
"""
import click


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for report.md, report.csv, speedup.png, time.png, accuracy.png.")
@click.option("--baseline", default=None, metavar="LABEL",
              help='Configuration label whose runs are the speedup baseline, e.g. "serial CNN (CPU)". '
                   "Default: the serial runs of each kind/model/data/epochs group.")
@click.option("--no-reference", is_flag=True, help="Leave out the reference study's published figures.")
@click.option("--skip-bad-lines", is_flag=True,
              help="Warn about and skip unreadable JSONL lines instead of stopping at the first one.")
@click.option("--alpha-s", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Scaling model: collective latency per hop (e.g. from `pneumo-hpc doctor`). With --beta-gb-s; "
                   "default: fitted to the runs.")
@click.option("--beta-gb-s", type=click.FloatRange(min=0, min_open=True), default=None, metavar="GB/S",
              help="Scaling model: collective bus bandwidth, GB/s. With --alpha-s.")
def report(results, out_dir, baseline, no_reference, skip_bad_lines, alpha_s, beta_gb_s):
    """Scaling table (time, accuracy / mAP, throughput, speedup, efficiency, Amdahl fit) from RESULTS:
    JSON Lines files, metrics.json files or run directories."""
    from pneumo_hpc.report import ReportError
    from pneumo_hpc.report.record import load_results
    from pneumo_hpc.report.write import write_report

    if (alpha_s is None) != (beta_gb_s is None):
        raise click.UsageError("--alpha-s and --beta-gb-s go together (or neither: the model fits them)")
    try:
        records = load_results(results, strict=not skip_bad_lines)
        written = write_report(records, out_dir, sources=results, baseline=baseline, reference=not no_reference,
                               alpha_s=alpha_s, beta_bytes_s=beta_gb_s and beta_gb_s * 1e9)
    except ReportError as err:
        raise click.ClickException(str(err)) from None
    click.echo(written["markdown"])
    click.echo(f"wrote {', '.join(str(p) for p in written['files'])}", err=True)
