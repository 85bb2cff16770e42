"""Run records: one JSON line per finished run, appended safely by many jobs into one results file.

    from pneumo_hpc.report.record import append_result, load_results
    append_result("runs/results.jsonl", {"kind": "classifier", "strategy": "ddp", "world_size": 2, ...})
    records = load_results(["runs/results.jsonl", "runs/serial"])   # JSONL files, metrics.json files, run dirs

A JSON Lines file is appended to in place rather than rewritten atomically: jobs on several nodes write to it at the
same time, and an append under an exclusive `flock` in one `os.write` keeps each record whole. On NFS, Linux maps
flock to POSIX locks (works across nodes); Lustre needs the `flock` mount option.
"""
import datetime
import fcntl
import json
import math
import os
import platform
import socket
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
METRICS_NAME = "metrics.json"
SOURCE_KEY = "_source"  # "file:line" added by load_results so reports can say where a bad record came from


class ResultsError(ValueError):
    """A results file that cannot be read; the message names the file (and line) and the problem."""


# --- provenance ----------------------------------------------------------------------------------------------------

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
def _own_revision():
    return git_revision()  # once per process: a job appending many records need not fork git each time


# --- writing -------------------------------------------------------------------------------------------------------

def _jsonable(value):
    """JSON-safe copy: NaN/inf become null (strict JSON readers reject NaN), paths and numpy scalars plain values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # numpy / torch values, without importing either
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_result(path, record: dict) -> dict:
    """Append `record` plus provenance (timestamp, git_revision, hardware, nodes, hostname) as one JSON line to the
    JSON Lines file `path`; fields already in the record are kept. Safe with many concurrent writers. Returns the
    record as written."""
    full = dict(record)
    full.setdefault("timestamp", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"))
    full.setdefault("git_revision", _own_revision())
    hardware = full.setdefault("hardware", hardware_info())
    full.setdefault("nodes", hardware.get("nodes", 1) if isinstance(hardware, dict) else 1)
    full.setdefault("hostname", socket.gethostname())
    full = _jsonable(full)
    line = json.dumps(full, sort_keys=False, allow_nan=False).encode() + b"\n"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        # A writer killed mid-line (disk full, node crash) leaves no newline: start ours on a fresh line so only
        # the torn record is lost, not this one too.
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:  # one write in practice; the loop only guards against a short write, still under the lock
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the flock
    return full


# --- reading -------------------------------------------------------------------------------------------------------

def _read_jsonl(path: Path, strict: bool):
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"expected a JSON object, got {type(record).__name__}")
            except ValueError as err:
                message = f"{where}: not a valid result record ({err}): {line.strip()[:80]!r}"
                if strict:
                    raise ResultsError(message + " (fix or delete the line, or skip bad lines: --skip-bad-lines)") \
                        from None
                print(f"warning: skipped {message}", file=sys.stderr)
                continue
            record[SOURCE_KEY] = where
            records.append(record)
    return records


def _read_metrics(path: Path, strict: bool = True):
    """A file holding one (possibly pretty-printed) JSON object; a file of several lines is read as JSON Lines."""
    text = path.read_text(encoding="utf-8")
    try:
        record = json.loads(text)
    except ValueError as err:
        if len([line for line in text.splitlines() if line.strip()]) > 1 and text.lstrip().startswith("{"):
            return _read_jsonl(path, strict)
        raise ResultsError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(record).__name__}")
    record.setdefault("run_dir", str(path.parent))
    record[SOURCE_KEY] = str(path)
    return [record]


def load_results(paths, strict: bool = True) -> list[dict]:
    """Records from JSON Lines files (*.jsonl), single-object JSON files (metrics.json), and run directories (their
    metrics.json, else their *.jsonl files). Blank lines are skipped. A line that is not a JSON object raises
    ResultsError naming file and line when `strict` (the default: a silently dropped run skews a scaling table);
    with strict=False it is skipped with a warning on stderr. Each record gets `_source` ("file:line")."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    records = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if (path / METRICS_NAME).is_file():
                records += _read_metrics(path / METRICS_NAME, strict)
                continue
            found = sorted(path.glob("*.jsonl"))
            if not found:
                raise ResultsError(f"{path}: a directory without {METRICS_NAME} or *.jsonl results")
            for file in found:
                records += _read_jsonl(file, strict)
        elif path.is_file():
            if path.suffix == ".jsonl":
                records += _read_jsonl(path, strict)
            else:
                records += _read_metrics(path, strict)
        else:
            raise ResultsError(f"{path}: no such results file or run directory")
    return records
