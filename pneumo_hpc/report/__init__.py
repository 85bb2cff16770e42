"""Results and the scaling report.

    record.py         the run record (results.jsonl / metrics.json): build, append, load, upgrade old records
    provenance.py     where a run ran: hardware, host, nodes, git revision
    runs.py           a record -> the fields a report reads, validated; configuration labels
    table.py          runs -> one row per configuration: baseline, speedup, efficiency, time breakdown; report.csv
    amdahl.py         Amdahl's law fitted per series
    scaling_model.py  step time, speedup and efficiency predicted to 1024 workers from an alpha-beta network model
    markdown.py       rows -> report.md
    plots.py          rows -> the PNG plots
    write.py          write_report: all of it into one directory
    reference.py      published figures (the reference study, real-RSNA results) shown beside ours
    commands.py       `pneumo-hpc report` (click-only imports)
"""


class ReportError(ValueError):
    """Records that cannot make a report, or a results file that cannot be read; the message names the file
    (and line) and the problem. The report layer's one error type (record.ResultsError is the reading kind)."""
