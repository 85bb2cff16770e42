"""Keep every code path off the network: third-party libraries phone home unless told not to.

Called once at CLI start (and by anything importing ultralytics/albumentations), before those imports.
"""
import os
from pathlib import Path

_OFFLINE_ENV = {
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations checks PyPI for a newer version at import
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "0",  # ultralytics would pip-install missing extras at run time
    "HF_HUB_OFFLINE": "1",
    "TORCH_HOME_OFFLINE": "1",
    "MPLBACKEND": "Agg",
}


def cache_dir() -> Path:
    """Writable per-user state dir (ultralytics settings, fonts); overridable for read-only homes/containers."""
    base = os.environ.get("PNEUMO_HPC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pneumo-hpc")
    return Path(base)


def ensure_offline() -> None:
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
