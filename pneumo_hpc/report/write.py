"""Run records -> the reference study's scaling table (time, accuracy / mAP, speedup, efficiency), plus plots.

    pneumo-hpc report runs/results.jsonl --out runs/report
    pneumo-hpc report runs/*.jsonl runs/serial --out report --baseline "serial CNN (CPU)" --no-reference

    from pneumo_hpc.report.write import write_report
    write_report(load_results("runs/results.jsonl"), "runs/report")

Rules (also stated in report.md):
- Rows: one per configuration. Runs repeated with the same configuration (same kind, model, data, epochs, label,
  strategy, device, workers, nodes, launcher, backend) are averaged; `runs` says how many. The same run read twice
  (results.jsonl and its run directory's metrics.json) counts once.
- Speedup = baseline time / time; efficiency = speedup / workers (workers: world_size; for detectors gpus, or 1).
  The baseline is the mean time of the serial runs (world_size 1, strategy serial; detectors: 1 GPU or CPU) of the
  same kind, model, data and epochs, preferring those on the row's device type (a 2-GPU run against a 1-GPU run) and
  falling back to any device (the reference study divided GPU times by its CPU serial time). `--baseline LABEL` makes
  the runs labelled LABEL the baseline of their group instead. No baseline: "-".
- Amdahl's law S(n) = 1 / (f + (1 - f) / n) is fitted per series (kind, model, data, epochs, strategy, device)
  whose baseline ran on the same device type: f in [0, 1] minimizing the squared speedup error.
- Reference rows (pneumo_hpc.report.reference) sit beside ours where kind, strategy, device type and workers match.
- Runs with a `time_breakdown` (record_version 1) get a breakdown table and time_breakdown.png; others are left out.
- The scaling model (pneumo_hpc.report.scaling_model) predicts 1..1024 workers per classifier DDP/FSDP series with a
  same-device serial baseline (scaling_model.png); the cost of a run is train_time_s x workers / 3600.
"""
from pathlib import Path

from pneumo_hpc.atomic import write_bytes
from pneumo_hpc.report import plots
from pneumo_hpc.report.markdown import cost_section, render_markdown, scaling_model_section
from pneumo_hpc.report.scaling_model import series_models
from pneumo_hpc.report.table import build_table, csv_text

atomic_write = write_bytes  # readers (a browser on report.md, a job globbing *.csv) never see half a file


def _plots(rows, fits, models, reference):
    """{png name: bytes} in the order report.md links them; optional plots only where there is data."""
    out = {"speedup.png": plots.plot_speedup(rows, fits, reference), "time.png": plots.plot_time(rows, reference),
           "accuracy.png": plots.plot_accuracy(rows, reference)}
    optional = {"curves.png": plots.plot_curves(rows), "time_breakdown.png": plots.plot_time_breakdown(rows),
                "scaling_model.png": plots.plot_scaling_model(models, fits)}
    out.update({name: png for name, png in optional.items() if png is not None})
    return out


def write_report(records, out_dir, sources=(), baseline=None, reference=True, alpha_s=None,
                 beta_bytes_s=None) -> dict:
    """Write report.md, report.csv and the PNG plots to out_dir; returns {"markdown": text, "rows", "fits",
    "models", "files": [paths]}. `alpha_s` (s) and `beta_bytes_s` (bytes/s): the network of the scaling model,
    fitted to the runs when not given."""
    rows, fits = build_table(records, baseline=baseline, reference=reference)
    models = series_models(rows, alpha_s=alpha_s, beta_bytes_s=beta_bytes_s)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = _plots(rows, fits, models, reference)
    markdown = render_markdown(rows, fits, list(sources) or ["(records)"], baseline=baseline, reference=reference,
                               plots=list(pngs), extra=scaling_model_section(models, fits) + cost_section(rows))
    outputs = {
        **pngs,
        "report.csv": csv_text(rows, reference).encode(),
        "report.md": markdown.encode(),  # last: its presence means the plots it links to exist
    }
    files = []
    for name, data in outputs.items():
        atomic_write(out_dir / name, data)
        files.append(out_dir / name)
    return {"markdown": markdown, "rows": rows, "fits": fits, "models": models, "files": files}
