"""pneumo-hpc: train and measure pneumonia classifiers and detectors on RSNA chest X-rays, from a laptop to SLURM."""
from importlib.metadata import PackageNotFoundError, version as _installed_version


def _checkout_version():
    """pyproject.toml's version beside this package: a checkout run without `pip install` (PYTHONPATH=.)."""
    import tomllib
    from pathlib import Path

    try:
        return tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"][
            "version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


try:  # pyproject.toml is the one place the version is written; an install carries it as metadata
    __version__ = _installed_version("pneumo-hpc")
except PackageNotFoundError:
    __version__ = _checkout_version()
