"""Preprocessing throughput: the naive loop against the kit, with 1 and 2 Dask workers, in one run.

    python benchmarks/preprocess.py                        # 200 synthetic 1024x1024 DICOMs, workers 1 and 2
    python benchmarks/preprocess.py --n 2000 --workers 1 2 4 8 --data /scratch/rsna-bench

naive: serial `pydicom.dcmread(path).pixel_array` (pydicom's default decoder) + PIL resize to 128: what a notebook
does. pydicom's default for JPEG Baseline is pylibjpeg when installed (as in the platform's resolved stack:
`pip install -r benchmarks/requirements.txt`), else Pillow; naive-pillow forces its fastest plugin, Pillow, and is
printed beside it so both ratios are seen. kit: `run_preprocess` on a cold cache, classifier only (--no-yolo: the
same work as naive) and with the YOLO export at 416 px (decode once, two resizes, one PNG). images/s counts the
decode phase (run.json decode_seconds: cluster start-up excluded, shown apart as wall). Prints one JSON line per
setting, then a table with the ratios.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def naive(images: list[Path], size: int, plugin: str = "") -> float:
    import pydicom
    from PIL import Image

    t0 = time.perf_counter()
    for path in images:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array if not plugin else pydicom.pixels.pixel_array(ds, decoding_plugin=plugin)
        Image.fromarray(pixels).resize((size, size))
    return len(images) / (time.perf_counter() - t0)


def default_decoder() -> str:
    """The plugin `pixel_array` uses for JPEG Baseline: pydicom tries pylibjpeg before Pillow."""
    import pydicom

    plugins = pydicom.pixels.get_decoder(pydicom.uid.JPEGBaseline8Bit).available_plugins
    return next((p for p in ("gdcm", "pylibjpeg", "pillow") if p in plugins), "none")


def kit(rsna: Path, workers: int, yolo: bool, size: int) -> dict:
    from pneumo_hpc.data.preprocess import PreprocessConfig, run_preprocess

    with tempfile.TemporaryDirectory(prefix="pneumo-bench-") as out:
        t0 = time.perf_counter()
        run_preprocess(PreprocessConfig(rsna=rsna, out=Path(out), size=size, yolo_size=416, workers=workers,
                                        yolo=yolo, chunk_size=16))
        wall = time.perf_counter() - t0
        stats = json.loads((Path(out) / "run.json").read_text())
    return {"images_per_s": stats["images_per_s"], "wall_s": round(wall, 2), "n_decoded": stats["n_decoded"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="synthetic patients (1024x1024 JPEG Baseline DICOMs)")
    ap.add_argument("--data", type=Path, help="RSNA-layout dir to use (generated there when missing)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=2, help="naive/kit runs per setting; the best one counts")
    args = ap.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    scratch = None
    data = args.data
    if data is None:
        scratch = tempfile.mkdtemp(prefix="pneumo-bench-rsna-")
        data = Path(scratch)
    try:
        if not (data / "stage_2_train_labels.csv").exists():
            from pneumo_hpc.data.synth import generate

            t0 = time.perf_counter()
            generate(data, n=args.n, seed=0, image_size=1024, workers=max(args.workers))
            print(f"# generated {args.n} synthetic 1024x1024 DICOMs in {time.perf_counter() - t0:.1f} s",
                  file=sys.stderr)
        images = sorted((data / "stage_2_train_images").glob("*.dcm"))
        rows = [{"setting": "naive", "workers": 1, "decoder": default_decoder(),
                 "images_per_s": round(max(naive(images, args.size) for _ in range(args.repeat)), 1)},
                {"setting": "naive-pillow", "workers": 1, "decoder": "pillow",
                 "images_per_s": round(max(naive(images, args.size, "pillow") for _ in range(args.repeat)), 1)}]
        for r in rows:
            print(json.dumps(r), flush=True)
        for yolo in (False, True):
            for w in args.workers:
                best = max((kit(data, w, yolo, args.size) for _ in range(args.repeat)),
                           key=lambda r: r["images_per_s"])
                rows.append({"setting": "kit+yolo416" if yolo else "kit", "workers": w, **best})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    base, pillow = rows[0]["images_per_s"], rows[1]["images_per_s"]
    print(f"\n{len(images)} images, {os.cpu_count()} CPUs; ratios against naive ({base:.1f} images/s, pydicom's "
          f"default decoder: {rows[0]['decoder']}) and naive-pillow ({pillow:.1f} images/s). Target: 4x naive/worker")
    print(f"{'setting':<13} {'workers':>7} {'images/s':>9} {'per worker':>10} {'x naive/worker':>14} "
          f"{'x pillow/worker':>15}")
    for r in rows:
        ips = r["images_per_s"]
        print(f"{r['setting']:<13} {r['workers']:>7} {ips:>9.1f} {ips / r['workers']:>10.1f} "
              f"{ips / r['workers'] / base:>14.2f} {ips / r['workers'] / pillow:>15.2f}")


if __name__ == "__main__":
    main()
