"""Click commands for the classifier: train, evaluate, selftest. Heavy imports happen inside the commands."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pneumo_hpc.classify.config import AUGMENTS, BACKENDS, GRAD_COMPRESS, MODELS, PRECISIONS, STRATEGIES
from pneumo_hpc.cli import fail


@click.command()
@click.option("--data", "data", type=click.Path(path_type=Path), required=True, help="--out of `pneumo-hpc preprocess`.")
@click.option("--model", type=click.Choice(MODELS), default="small-cnn", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path), help="resnet18: local torchvision weights file.")
@click.option("--epochs", type=int, default=10, show_default=True)
@click.option("--batch-size", "--batch", "batch_size", type=int, default=32, show_default=True, help="Global batch (split over ranks).")
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--strategy", type=click.Choice(STRATEGIES), default="serial", show_default=True)
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="auto: nccl when every rank has a CUDA device, else gloo.")
@click.option("--device", default="auto", show_default=True, help="auto|cpu|cuda")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 on GPUs and on CPUs with native bf16 (AMX/AVX512-BF16), else fp32.")
@click.option("--grad-compress", type=click.Choice(GRAD_COMPRESS), default="none", show_default=True,
              help="DDP: send gradients in bf16 (half the bytes, for slow networks; rounds them, so DDP no longer "
                   "computes exactly what serial does).")
@click.option("--augment", type=click.Choice(AUGMENTS), default="auto", show_default=True,
              help="auto: albumentations on CPU, tensor ops on the GPU.")
@click.option("--prefetch/--no-prefetch", default=True, show_default=True,
              help="CPU: augment the next batch in a background thread on CPU time the step leaves idle.")
@click.option("--compile/--no-compile", "compile_", default=False, show_default=True, help="torch.compile the model.")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from RUN/checkpoint if present (fresh start otherwise).")
@click.option("--results", type=click.Path(path_type=Path), help="JSON-lines results file [RUN/../results.jsonl].")
@click.option("--label", help="Configuration name in the report, e.g. '2-CPU DDP'.")
@click.option("--timeout", "timeout_s", type=int, default=300, show_default=True,
              help="Seconds any collective may wait before a dead rank fails the run.")
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True),
              help="Also report an operating threshold chosen on the validation set for this sensitivity, e.g. 0.9 "
                   "(operating_threshold, operating_sensitivity, operating_specificity); `threshold` stays 0.5.")
@click.option("--time-breakdown/--no-time-breakdown", default=True, show_default=True,
              help="Record where each epoch's seconds went (data, compute, communication, optimizer, checkpoint, "
                   "evaluation) in metrics.json time_breakdown.")
@click.option("--stop-after-steps", type=int, hidden=True)
def train(data, model, weights, epochs, batch_size, lr, weight_decay, strategy, backend, device, precision, grad_compress,
          augment, prefetch, compile_, channels_last, seed, out, resume, results, label, timeout_s, stop_after_steps,
          target_sensitivity, time_breakdown):
    """Train the pneumonia classifier (serial, DDP or FSDP; any launcher)."""
    from pneumo_hpc.classify.config import DataConfig, ModelConfig, OptimConfig, ParallelConfig, RunConfig, TrainConfig
    from pneumo_hpc.classify.train import train as run_train

    cfg = TrainConfig(
        data=DataConfig(path=data, augment=augment, prefetch=prefetch),
        model=ModelConfig(name=model, weights=weights),
        optim=OptimConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay),
        parallel=ParallelConfig(strategy=strategy, backend=backend, device=device, precision=precision,
                                compile=compile_, channels_last=channels_last, grad_compress=grad_compress,
                                timeout_s=timeout_s),
        run=RunConfig(out=out, seed=seed, resume=resume, results=results, label=label,
                      stop_after_steps=stop_after_steps, target_sensitivity=target_sensitivity,
                      time_breakdown=time_breakdown),
    )
    try:
        run_train(cfg)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)


@click.command()
@click.option("--run", "run_dir", type=click.Path(path_type=Path), required=True, help="--out of `pneumo-hpc train`.")
@click.option("--data", type=click.Path(path_type=Path), required=True, help="--out of `pneumo-hpc preprocess`.")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--target-sensitivity", type=click.FloatRange(0, 1, min_open=True),
              help="Also report an operating threshold chosen on the validation set for this sensitivity, e.g. 0.9 "
                   "(operating_threshold, operating_sensitivity, operating_specificity); `threshold` stays 0.5.")
def evaluate(run_dir, data, split, device, target_sensitivity):
    """Re-score a trained checkpoint; writes RUN/eval.json and prints it."""
    from pneumo_hpc.atomic import write_text
    from pneumo_hpc.classify.evaluate import evaluate_run

    try:
        metrics = evaluate_run(run_dir, data, split, device, target_sensitivity)
    except (ValueError, FileNotFoundError) as exc:
        fail(exc)
    write_text(Path(run_dir) / "eval.json", json.dumps(metrics, indent=1), durable=True)
    click.echo(json.dumps(metrics))


@click.command()
@click.option("--keep", type=click.Path(path_type=Path), help="Keep the work directory here.")
def selftest(keep):
    """A fast end-to-end check: synthetic DICOMs -> preprocess -> 1-epoch training -> evaluate."""
    import tempfile

    from pneumo_hpc.classify.config import DataConfig, OptimConfig, RunConfig, TrainConfig
    from pneumo_hpc.data.preprocess import PreprocessConfig, run_preprocess
    from pneumo_hpc.data.synth import generate
    from pneumo_hpc.classify.evaluate import evaluate_run
    from pneumo_hpc.classify.train import train as run_train

    with tempfile.TemporaryDirectory(prefix="pneumo-selftest-") as tmp:
        work = Path(keep) if keep else Path(tmp)
        generate(work / "rsna", n=24, seed=1, image_size=128)
        manifest = run_preprocess(PreprocessConfig(rsna=work / "rsna", out=work / "prep", size=32, yolo_size=64,
                                                   val_frac=0.25, seed=0, workers=1))
        cfg = TrainConfig(data=DataConfig(path=work / "prep", augment="none"),
                          optim=OptimConfig(epochs=1, batch_size=4),
                          run=RunConfig(out=work / "run", results=work / "results.jsonl"))
        metrics = run_train(cfg)
        scored = evaluate_run(work / "run", work / "prep")
        ok = manifest["n_ok"] + manifest["n_quarantined"] == 24 and abs(scored["accuracy"] - metrics["accuracy"]) < 1e-6
        click.echo(json.dumps({"selftest": "ok" if ok else "FAILED", "n_ok": manifest["n_ok"],
                               "accuracy": metrics["accuracy"], "python": sys.version.split()[0]}))
        if not ok:
            raise SystemExit(1)


@click.group()
def classify():
    """The classifier's commands by task, as `detect` groups the detector's: train, evaluate, selftest (the same
    commands as the top-level ones)."""


for _command in (train, evaluate, selftest):
    classify.add_command(_command)
