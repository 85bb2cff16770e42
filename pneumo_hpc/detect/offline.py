"""Import ultralytics so that it never touches the network: not at import, training, validation or prediction.

What ultralytics reaches for, and what stops it (measured with every outbound socket call patched to fail):
- a DNS "am I online" probe at import            -> YOLO_OFFLINE=1 (pneumo_hpc.offline.ensure_offline)
- pip-installing missing extras                  -> YOLO_AUTOINSTALL=0
- a HEAD + download of Arial.ttf for plots/labels -> a local copy in <YOLO_CONFIG_DIR>/Ultralytics (even plots=False)
- telemetry, platform upload, integrations       -> settings sync/integrations off, no ULTRALYTICS_API_KEY
- the AMP check's yolo26n.pt download on CUDA     -> `amp_mode()`: fp32 on CPU, bf16 (no check) or a local check weight

Always import ultralytics through `import_ultralytics()`, and only inside detection functions: `import ultralytics`
also sets OMP_NUM_THREADS=1 when unset, which would silently make the classifier trainer single-threaded.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from pneumo_hpc.offline import ensure_offline

# Settings ultralytics persists in <YOLO_CONFIG_DIR>/Ultralytics/settings.json; each True one is a network client.
_SETTINGS = {"sync": False, "api_key": "", "clearml": False, "comet": False, "dvc": False, "mlflow": False,
             "raytune": False, "tensorboard": False, "wandb": False, "vscode_msg": False, "openvino_msg": False}
# Arial.Unicode.ttf is asked for when class names are not ASCII.
_FONTS = ("Arial.ttf", "Arial.Unicode.ttf")
AMP_CHECK_WEIGHT = "yolo26n.pt"


def config_dir() -> Path:
    """ultralytics' USER_CONFIG_DIR for this process (settings.json, fonts, DDP temp files)."""
    ensure_offline()
    return Path(os.environ["YOLO_CONFIG_DIR"]).expanduser() / "Ultralytics"


def _seed_fonts(target: Path) -> None:
    missing = [name for name in _FONTS if not (target / name).is_file()]
    if not missing:
        return
    import matplotlib  # ships DejaVuSans; ultralytics needs matplotlib anyway

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for name in missing:
        tmp = target / f".{name}.{os.getpid()}.tmp"  # several ranks/jobs may seed one shared dir at once
        shutil.copyfile(source, tmp)
        os.replace(tmp, target / name)


def prepare_ultralytics() -> Path:
    """Everything that must happen before `import ultralytics`; idempotent. Returns the config dir."""
    ensure_offline()
    # A user's key would switch on uploads to the Ultralytics platform during training.
    os.environ.pop("ULTRALYTICS_API_KEY", None)
    target = config_dir()
    target.mkdir(parents=True, exist_ok=True)
    _seed_fonts(target)
    return target


def import_ultralytics():
    """The ultralytics module, imported offline with its network-facing settings switched off."""
    prepare_ultralytics()
    import ultralytics
    from ultralytics.utils import SETTINGS

    stale = {k: v for k, v in _SETTINGS.items() if k in SETTINGS and SETTINGS[k] != v}
    if stale:  # update() rewrites settings.json: only when needed, so concurrent ranks rarely race on it
        SETTINGS.update(stale)
    return ultralytics


def amp_mode(device: str) -> bool | str:
    """The `amp=` value that trains in mixed precision where possible without ultralytics' downloading AMP check.

    CPU: False (AMP is a GPU feature). CUDA: True only when the check's weight is already on disk (the user put
    yolo26n.pt in ultralytics' weights_dir); otherwise "bf16", which ultralytics runs without the check, on GPUs
    that support it; fp32 (False) on older GPUs.
    """
    if device in ("cpu", ""):
        return False
    from ultralytics.utils import WEIGHTS_DIR

    if (Path(WEIGHTS_DIR) / AMP_CHECK_WEIGHT).is_file():
        return True
    import torch

    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else False
