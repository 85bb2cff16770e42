"""`pneumo-hpc synth` and `pneumo-hpc preprocess`. Only click at import time: the work is imported when run.

    pneumo-hpc synth data/rsna --n 800 --seed 0
    pneumo-hpc preprocess --rsna data/rsna --out data/prep --workers 2
    mpirun -np 4 pneumo-hpc preprocess --rsna data/rsna --out data/prep --cluster mpi
"""
from pathlib import Path

import click


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--n", "n", type=click.IntRange(min=1), required=True, help="Training patients to generate.")
@click.option("--seed", type=int, default=0, show_default=True, help="Everything derives from it (same bytes).")
@click.option("--image-size", type=click.IntRange(min=64), default=1024, show_default=True, help="Pixels per side.")
@click.option("--test-n", type=click.IntRange(min=0), default=0, show_default=True,
              help="Unlabelled test images (stage_2_test_images/ + sample submission).")
@click.option("--workers", "--processes", "workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Rendering processes.")
def synth(out, n, seed, image_size, test_n, workers):
    """Write a synthetic RSNA Pneumonia download (DICOMs + Kaggle CSVs) into OUT."""
    from pneumo_hpc.data.synth import generate

    s = generate(out, n, seed=seed, image_size=image_size, test_n=test_n, workers=workers)
    click.echo(f"synth: {s['n']} patients ({s['n_positive']} positive, {s['n_boxes']} boxes)"
               + (f" + {s['test_n']} test images" if s.get("test_n") else "")
               + f", {s['image_size']}x{s['image_size']}, seed {s['seed']} -> {s['out_dir']} in {s['seconds']:.1f} s")


@click.command()
@click.option("--rsna", "rsna_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="RSNA download: stage_2_train_labels.csv, stage_2_train_images/ (class info optional).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory.")
@click.option("--size", type=click.IntRange(min=8), default=128, show_default=True, help="Classifier image side.")
@click.option("--yolo-size", type=click.IntRange(min=32), default=416, show_default=True, help="YOLO image side.")
@click.option("--val-frac", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.2, show_default=True,
              help="Validation share, per class (split by patient).")
@click.option("--seed", type=int, default=0, show_default=True, help="Split and balancing seed.")
@click.option("--balance", is_flag=True,
              help="Downsample the majority class of the classifier's train split to the minority's count.")
@click.option("--workers", "--dask-workers", "workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Dask worker processes (--cluster local; 1 = in-process). With mpi: ranks - 2.")
@click.option("--cluster", type=click.Choice(["local", "mpi"]), default="local", show_default=True,
              help="local: LocalCluster; mpi: dask-mpi under mpirun/srun (rank 0 scheduler, rank 1 client).")
@click.option("--no-yolo", "no_yolo", is_flag=True, help="Skip the YOLO export (classifier arrays only).")
@click.option("--chunk-size", type=click.IntRange(min=1), default=64, show_default=True, help="Images per task.")
@click.option("--interface", default=None, help="dask-mpi network interface (ib0, lo, ...) "
              "[default: $PNEUMO_DASK_INTERFACE, else Dask's choice].")
def preprocess(rsna_dir, out, size, yolo_size, val_frac, seed, balance, workers, cluster, no_yolo, chunk_size,
               interface):
    """Decode and resize the RSNA images into classifier arrays and a YOLO set, with a quarantine report."""
    from pneumo_hpc.data import ClusterError, DataError
    from pneumo_hpc.data.preprocess import PreprocessConfig, run_preprocess

    cfg = PreprocessConfig(rsna=rsna_dir, out=out, size=size, yolo_size=yolo_size, val_frac=val_frac, seed=seed,
                           balance=balance, workers=workers, cluster=cluster, yolo=not no_yolo,
                           chunk_size=chunk_size, interface=interface)
    try:
        m = run_preprocess(cfg)
    except (DataError, ClusterError) as e:
        raise click.ClickException(str(e)) from None
    if m is None:  # a dask-mpi scheduler or worker rank: the client rank reports
        return
    click.echo(f"preprocess: {m['n_labelled_patients']} labelled patients: {m['n_ok']} ok "
               f"({m['n_positive']} positive), {m['n_quarantined']} quarantined, "
               f"{m['n_unlabelled_images']} unlabelled image(s); train {m['splits']['train']} / "
               f"val {m['splits']['val']} -> {cfg.out}")
