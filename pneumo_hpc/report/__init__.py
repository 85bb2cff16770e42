"""Results and the scaling report.

    record.py      the run record (results.jsonl / metrics.json): append, load, normalise
    build.py       records -> report.md, report.csv and plots
    reference.py   published figures (the reference study, real-RSNA results) shown beside ours
    commands.py    `pneumo-hpc report` (click-only imports)
"""
