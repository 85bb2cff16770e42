"""Where a run ran and from which source: CPU, GPUs, host, nodes, git revision; the provenance every record gets.

    from pneumo_hpc.report.provenance import hardware_info, git_revision
    hardware_info()   # {"cpu_model": ..., "gpu_count": 0, "hostname": ..., "nodes": 1, ...}; never imports torch
"""
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                # x86 says "model name"; arm64/ppc64 kernels say "Model" / "cpu".
                if key.strip() in ("model name", "Model", "cpu") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def parse_visible_devices(value):
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset, else the list of entries up to the first empty one.

    "" and "-1" hide every GPU; entries are indices or UUIDs ("GPU-...", "MIG-...").
    """
    if value is None:
        return None
    entries = []
    for item in value.split(","):
        item = item.strip()
        if not item or item == "-1" or item.startswith("-"):
            break  # CUDA stops enumerating at the first invalid entry
        entries.append(item)
    return entries


def _nvml_gpus(visible):
    """(name of the first visible GPU, visible count) from NVML, which reads the driver without creating a CUDA
    context; None when NVML is unavailable (no NVIDIA driver, or nvidia-ml-py missing). NVML numbers GPUs in PCI
    order, CUDA fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID: on a mixed node the name may be another
    visible GPU's, the count is right."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - a missing library/driver raises library-specific errors
        return None
    try:
        total = pynvml.nvmlDeviceGetCount()
        if visible is None:
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(total)]
        else:
            handles = []
            for entry in visible:
                try:
                    handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(entry)) if entry.isdigit()
                                   else pynvml.nvmlDeviceGetHandleByUUID(entry))
                except Exception:  # noqa: BLE001 - CUDA, too, ignores everything after an unknown device
                    break
        if not handles:
            # Entries NVML cannot resolve (some MIG UUIDs on older drivers): unknown, let the caller try torch.
            return None if visible else (None, 0)
        name = pynvml.nvmlDeviceGetName(handles[0])
        return (name.decode() if isinstance(name, bytes) else name), len(handles)
    except Exception:  # noqa: BLE001
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


@lru_cache(maxsize=8)
def _gpus(visible_env):
    visible = parse_visible_devices(visible_env)
    if visible is not None and not visible:
        return None, 0  # GPUs hidden on purpose: do not touch the driver at all
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return torch.cuda.get_device_name(), torch.cuda.device_count()
    found = _nvml_gpus(visible)
    if found is not None:
        return found
    # No NVML (e.g. ROCm): ask torch only if the caller already paid for importing it; is_available() and
    # device_count() do not create a CUDA context, get_device_name() would, so the name stays unknown.
    if torch is not None and torch.cuda.is_available():
        return None, torch.cuda.device_count()
    return None, 0


def hardware_info() -> dict:
    """Where a run ran: CPU model and cores, GPUs, host, nodes. Never initializes CUDA, never imports torch
    (a CPU-only caller would pay seconds for it); GPUs are read through NVML, or through torch if already in use."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    gpu_name, gpu_count = _gpus(os.environ.get("CUDA_VISIBLE_DEVICES"))
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": affinity,
        "gpu_name": gpu_name,
        "gpu_count": gpu_count,
        "hostname": socket.gethostname(),
        "nodes": _int_env("SLURM_JOB_NUM_NODES", _int_env("SLURM_NNODES", 1)),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def _int_env(name, default):
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return default


def _installed_version() -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version
        try:
            return version("pneumo-hpc")
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    try:
        from pneumo_hpc import __version__
        return __version__
    except ImportError:
        return None


def _git(repo_dir, *args):
    proc = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=10,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip())
    return proc.stdout.strip()


def git_revision(repo_dir=None) -> str | None:
    """`git rev-parse --short HEAD` (+ "-dirty" when tracked files changed) of the source tree this package runs
    from, or the installed version when that is not a checkout (site-packages, a container). Never raises."""
    repo_dir = Path(repo_dir) if repo_dir is not None else _PACKAGE_DIR.parent
    try:
        top = Path(_git(repo_dir, "rev-parse", "--show-toplevel")).resolve()
        # A package installed into some other project's checkout must not report that project's commit.
        if top != repo_dir.resolve():
            return _installed_version()
        rev = _git(repo_dir, "rev-parse", "--short", "HEAD")
        dirty = _git(repo_dir, "status", "--porcelain", "--untracked-files=no")
        return rev + ("-dirty" if dirty else "")
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return _installed_version()


@lru_cache(maxsize=1)
def own_revision():
    return git_revision()  # once per process: a job appending many records need not fork git each time
