"""pneumo-hpc: train and measure pneumonia classifiers and detectors on RSNA chest X-rays, from a laptop to SLURM."""
from importlib.metadata import PackageNotFoundError, version as _installed_version


def _checkout_version():
    """pyproject.toml's version beside this package: a checkout run without `pip install` (PYTHONPATH=.)."""
    import re
    from pathlib import Path

    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    text = pyproject.read_text() if pyproject.is_file() else ""
    match = re.search(r'(?ms)^\[project\]\s*$(?:(?!^\[).)*?^version\s*=\s*"([^"]+)"', text)
    return match.group(1) if match else "unknown"


try:  # pyproject.toml is the one place the version is written; an install carries it as metadata
    __version__ = _installed_version("pneumo-hpc")
except PackageNotFoundError:
    __version__ = _checkout_version()
