"""Table rows -> report.md: the results table, clinical and detector figures, details, Amdahl fits, time breakdown.

    from pneumo_hpc.report.markdown import render_markdown
    text = render_markdown(rows, fits, ["runs/results.jsonl"], plots=["speedup.png", "time.png", "accuracy.png"])
"""
from pneumo_hpc.report import reference as ref
from pneumo_hpc.report.amdahl import amdahl_speedup
from pneumo_hpc.report.record import BREAKDOWN_KEYS
from pneumo_hpc.report.runs import SERIES_KEYS
from pneumo_hpc.report.scaling_model import WORKERS, cost_hours

# Published figures on the REAL RSNA Pneumonia Detection Challenge data, shown beside the synthetic demo's
# (never compared as if the data were the same): the reference study's table lives in pneumo_hpc.report.reference.
PUBLISHED_RSNA = (
    ("detector", "YOLOv5s at 640 px, RSNA boxes", "mAP50 0.468, mAP50-95 0.149"),
    ("detector", "winning Kaggle RSNA Pneumonia entry (private leaderboard, an ensemble)", "RSNA metric 0.253"),
    ("classifier", "DenseNet-121 pneumonia classifier", "ROC AUC about 0.88"),
    ("classifier", "reference study, serial CNN (CPU), balanced ~12,000 images", "accuracy 87.2 %"),
    ("detector", "reference study, YOLOv8 nano (4 GPUs), 416 px", "training 5208 s; mAP not published"),
)
PLOT_TITLES = {"speedup.png": "speedup", "time.png": "training time", "accuracy.png": "accuracy",
               "curves.png": "ROC and precision-recall curves", "time_breakdown.png": "time breakdown per epoch",
               "scaling_model.png": "scaling model"}
STEP_KEYS = ("data_s", "compute_s", "comm_s", "optimizer_s")  # the parts of a training step


def fmt(value, spec, suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def md_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def _score(row, prefix=""):
    if row["kind"] == "detector" and not prefix:
        return fmt(row["map50"], ".3f") if row["map50"] is None else f"mAP50 {row['map50']:.3f}"
    return fmt(row[f"{prefix}accuracy_pct"], ".1f", " %")


def results_table(rows, reference=True) -> str:
    header = ["configuration", "workers", "training time", "accuracy / mAP", "throughput (img/s)", "speedup",
              "efficiency"]
    if reference:
        header += ["ref. study (published)", "ref. time", "ref. accuracy / mAP", "ref. speedup", "ref. efficiency"]
    lines = []
    for row in rows:
        mark = "" if row["speedup"] is None or row["_same_device_baseline"] else " †"
        line = [row["configuration"], row["workers"], fmt(row["train_time_s"], ".1f", " s"), _score(row),
                fmt(row["throughput"], ",.0f"), fmt(row["speedup"], ".2f", "x" + mark),
                fmt(row["efficiency"], ".2f", mark)]
        if reference:
            if row["ref_configuration"]:
                line += [row["ref_configuration"], fmt(row["ref_train_time_s"], ".0f", " s"), _score(row, "ref_"),
                         fmt(row["ref_speedup"], ".2f", "x"), fmt(row["ref_efficiency"], ".2f")]
            else:
                line += ["-"] * 5
        lines.append(line)
    return md_table(header, lines)


def details_table(rows) -> str:
    header = ["configuration", "runs", "launcher", "backend", "device", "dtype", "compiled", "nodes", "epochs",
              "batch", "precision", "recall", "f1", "roc_auc", "mAP50-95", "RSNA mAP", "baseline", "data"]
    lines = [[r["configuration"], r["runs"], r["launcher"] or "-", r["backend"] or "-", r["device"],
              r["compute_dtype"] or "-", {True: "yes", False: "no"}.get(r["compile"], "-"), r["nodes"],
              fmt(r["epochs"], ""), fmt(r["batch_size"], ""), fmt(r["precision"], ".3f"), fmt(r["recall"], ".3f"),
              fmt(r["f1"], ".3f"), fmt(r["roc_auc"], ".3f"), fmt(r["map50_95"], ".3f"), fmt(r["rsna_map"], ".3f"),
              r["baseline"] or "-", r["data"] or "-"] for r in rows]
    return md_table(header, lines)


def _cm_text(cm) -> str:
    if not cm:
        return "-"
    (tn, fp), (fn, tp) = cm
    return f"TP {tp} / FN {fn} / FP {fp} / TN {tn}"


def _classifier_section(clf) -> list[str]:
    has_op = any(r.get("operating_threshold") is not None for r in clf)
    header = ["configuration", "accuracy", "all-negative accuracy", "sensitivity @0.5", "specificity @0.5",
              "ROC AUC", "PR AUC", "confusion @0.5"]
    if has_op:
        header += ["target sens.", "operating threshold", "sensitivity @op", "specificity @op"]
    lines = []
    for r in clf:
        all_negative = None if r["all_negative_accuracy"] is None else 100 * r["all_negative_accuracy"]
        line = [r["configuration"], fmt(r["accuracy_pct"], ".1f", " %"), fmt(all_negative, ".1f", " %"),
                fmt(r["sensitivity"], ".3f"), fmt(r["specificity"], ".3f"), fmt(r["roc_auc"], ".3f"),
                fmt(r["pr_auc"], ".3f"), _cm_text(r.get("confusion_matrix"))]
        if has_op:
            line += [fmt(r.get("target_sensitivity"), "g"), fmt(r["operating_threshold"], ".3f"),
                     fmt(r["operating_sensitivity"], ".3f"), fmt(r["operating_specificity"], ".3f")]
        lines.append(line)
    return ["", "## What a clinician reads", "", md_table(header, lines), "",
            "Validation split. Sensitivity = recall of pneumonia, specificity = recall of normal images, at "
            "the 0.5 threshold; \"all-negative accuracy\" is what answering \"no pneumonia\" for every image "
            "scores on the same images (accuracy above it is the part the model earned). The operating "
            "threshold is chosen on the validation set for the target sensitivity (`--target-sensitivity`), "
            "so its figures are optimistic for new data."]


def _detector_section(det) -> list[str]:
    lines = [[r["configuration"], fmt(r["map50"], ".3f"), fmt(r["map50_95"], ".3f"), fmt(r["rsna_map"], ".3f"),
              fmt(r["precision"], ".3f"), fmt(r["recall"], ".3f")] for r in det]
    return ["", "## Detector", "", md_table(["configuration", "mAP50", "mAP50-95", "RSNA metric",
                                             "box precision", "box recall"], lines), "",
            "On the validation split of the data at hand; the RSNA metric is the competition's (mean over IoU "
            "0.40-0.75 of TP/(TP+FP+FN) per image)."]


def clinical_section(rows, reference=True) -> list[str]:
    """The classifier's sensitivity/specificity/PR AUC and confusion matrix, the all-negative baseline, the
    operating point; the detector's mAP and RSNA metric; published real-RSNA figures beside them, labelled."""
    clf = [r for r in rows if r["kind"] == "classifier"]
    det = [r for r in rows if r["kind"] == "detector"]
    parts = (_classifier_section(clf) if clf else []) + (_detector_section(det) if det else [])
    if not reference:
        return parts
    return parts + [
        "", "## Published figures on the real RSNA data (not this data)", "",
        md_table(["kind", "model / entry", "published figure"], [list(p) for p in PUBLISHED_RSNA]), "",
        "These were measured on the real RSNA Pneumonia Detection Challenge images, which are far harder than "
        "the synthetic set the demo makes: a synthetic figure above a published one says nothing about real "
        "X-rays."]


def fits_table(fits) -> str:
    lines = [[f["series"], ", ".join(f"{n}: {s:.2f}x" for n, s in f["points"]), f"{f['f']:.4f}",
              "unbounded" if f["f"] == 0 else f"{1 / f['f']:.1f}x"] for f in fits]
    return md_table(["series", "points (workers: speedup)", "serial fraction f", "max speedup 1/f"], lines)


def breakdown_table(rows) -> str:
    """Seconds per epoch of each part of the run, per configuration that recorded them, and the step's shares."""
    header = (["configuration", "runs"] + [k.removesuffix("_s") for k in BREAKDOWN_KEYS]
              + ["total", "data / step", "comm / step"])
    lines = []
    for r in rows:
        tb = r.get("time_breakdown")
        if not tb:
            continue
        step = sum(tb[k] for k in STEP_KEYS)
        share = (lambda k: fmt(100 * tb[k] / step, ".0f", " %")) if step else (lambda k: "-")
        measured = sum(1 for m in r["_runs"] if m["time_breakdown"] and m["epochs"])
        lines.append([r["configuration"], measured] + [fmt(tb[k], ".2f") for k in BREAKDOWN_KEYS]
                     + [fmt(sum(tb.values()), ".2f"), share("data_s"), share("comm_s")])
    return md_table(header, lines)


def breakdown_section(rows) -> list[str]:
    if not any(r.get("time_breakdown") for r in rows):
        return []
    return ["", "## Where the time goes", "", breakdown_table(rows), "",
            "Seconds per epoch, the mean over a configuration's runs that recorded a `time_breakdown` (runs from "
            "before record_version 1 are left out). data: waiting for the batch (loading and augmentation the "
            "prefetch did not hide); compute: forward and backward; comm: communication that did not overlap "
            "compute (the DDP all-reduce wait after backward, FSDP's all-gather / reduce-scatter wait); other: the "
            "rest of the training time. A step is data + compute + comm + optimizer."]


def _amdahl_section(fits) -> list[str]:
    if not fits:
        return ["", "## Amdahl's law", "",
                "No series to fit: it needs a parallel run and a serial baseline on the same device type."]
    return ["", "## Amdahl's law", "",
            "S(n) = 1 / (f + (1 - f) / n) fitted per series (least squares, f in [0, 1]), for series whose "
            "baseline ran on the same device type.", "", fits_table(fits)]


def _assumptions(m) -> str:
    beta = (f"beta {m.grad_bytes / m.beta_s / 1e9:.3g} GB/s for {m.grad_bytes / 1e6:.3g} MB of gradient"
            if m.grad_bytes and m.beta_s else "gradient bytes unknown")
    hidden = (f"overlap {100 * m.overlap:.0f} % (from the runs' time breakdown)" if m.source == "given"
              else "overlap folded into the fit (it fits the exposed communication)")
    split = (f"of which {m.replicated_s:.3g} s is the DDP optimizer step every rank repeats" if m.replicated_s
             else "all of it divided among the workers")
    return (f"serial step {m.parallel_s + m.replicated_s:.4g} s, {split}; alpha {1e6 * m.alpha_s:.3g} us per hop, "
            f"tau {1e3 * m.beta_s:.3g} ms per gradient message ({beta}); {hidden}; network {m.source}.")


def scaling_model_section(models, fits) -> list[str]:
    """Predicted step time, speedup and efficiency per series for 1..1024 workers, the assumptions beside them."""
    if not models:
        return []
    parts = ["", "## Scaling model", "",
             "step(W) = parallel / W + replicated + (1 - overlap) (2 (W-1)/W tau + 2 (W-1) alpha): the ring "
             "all-reduce (DDP) or all-gather + reduce-scatter (FSDP) of the gradient, with tau = bytes / bandwidth "
             "and alpha the latency of one hop (pneumo_hpc/report/scaling_model.py). A prediction far beyond the "
             "measured worker counts extrapolates the network: a real cluster's alpha and beta change between "
             "one node and many."]
    for m in models:
        f = next((fit["f"] for fit in fits if tuple(fit[k] for k in SERIES_KEYS) == m.key), None)
        measured = dict(m.measured)
        lines = [[w, fmt(float(m.step_s(w)), ".4g", " s"), fmt(float(m.speedup(w)), ".2f", "x"),
                  fmt(float(m.efficiency(w)), ".2f"),
                  fmt(None if f is None else float(amdahl_speedup(f, w)), ".2f", "x"),
                  fmt(measured.get(w), ".2f", "x")] for w in sorted(set(WORKERS) | set(measured))]
        parts += ["", f"### {m.series}", "", "Assumptions: " + _assumptions(m), "",
                  md_table(["workers", "step", "speedup", "efficiency", "Amdahl fit", "measured"], lines)]
    return parts


def cost_section(rows) -> list[str]:
    lines = [[r["configuration"], r["device"], r["workers"], fmt(r["train_time_s"], ".1f", " s"),
              f"{c[0]:.4g} {c[1]}"] for r in rows if (c := cost_hours(r))]
    if not lines:
        return []
    return ["", "## Cost", "", md_table(["configuration", "device", "workers", "training time", "cost"], lines), "",
            "train_time_s x workers / 3600 for one run (the mean of the configuration's runs): a CPU worker is one "
            "rank, whatever cores it used."]


def render_markdown(rows, fits, sources, baseline=None, reference=True, plots=(), extra=()) -> str:
    """report.md's text. `plots`: the PNG names written beside it, linked in this order; `extra`: further
    sections' lines (the scaling model), placed before the plots."""
    base_rule = (f"the mean time of the runs labelled `{baseline}` in the same kind/model/data/epochs group"
                 if baseline else
                 "the mean time of the serial runs (1 worker) of the same kind, model, data and epochs, on the "
                 "row's device type when there is one, else on any device")
    parts = [
        "# Scaling report", "",
        f"{sum(r['runs'] for r in rows)} runs from {', '.join(f'`{s}`' for s in sources)}.", "",
        "## Results", "", results_table(rows, reference), "",
        f"Speedup = baseline time / time, the baseline being {base_rule}; efficiency = speedup / workers. "
        "Repeated runs of one configuration are averaged (`runs` below). Accuracy is the classifier's validation "
        "accuracy; detectors show mAP50.",
    ]
    if any(r["speedup"] is not None and not r["_same_device_baseline"] for r in rows):
        parts += ["", "† against a serial baseline on another device type (named under Details): a change of "
                      "hardware as much as of parallelism."]
    if reference:
        parts += ["", f"`ref.` columns: the {ref.SOURCE} where kind, strategy, device type and workers match; "
                      f"{ref.CAVEAT}"]
    parts += clinical_section(rows, reference)
    parts += ["", "## Details", "", details_table(rows)]
    parts += _amdahl_section(fits) + breakdown_section(rows) + list(extra)
    parts += ["", "## Plots", ""]
    for name in plots:
        parts += [f"![{PLOT_TITLES.get(name, name)}]({name})", ""]
    return "\n".join(parts)
