"""Atomic file writes: a temp file beside the target, then a rename, so readers never see half a file and a crash
leaves the previous version. Standard library only: every module (CLI-light ones too) can use it.

open(..., "xb") rather than mkstemp: mkstemp makes 0600 files, and outputs on a shared cluster filesystem must keep
the user's umask.
"""
from __future__ import annotations

import csv
import io
import os
import uuid
from pathlib import Path


def write_with(path, write, durable: bool = False) -> None:
    """write(binary file object) into a temp file beside path, then rename it over path.
    durable=True also fsyncs before the rename (checkpoint pointers: survive a node crash, not only a kill)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path, data: bytes, durable: bool = False) -> None:
    write_with(path, lambda f: f.write(data), durable)


def write_text(path, text: str, durable: bool = False) -> None:
    write_bytes(path, text.encode("utf-8"), durable)


def write_csv(path, header, rows) -> None:
    """A header row then rows, "\n" line ends (the Kaggle CSVs' own)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buf.getvalue())
