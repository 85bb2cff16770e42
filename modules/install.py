#!/usr/bin/env python3
"""Install pneumo-hpc as an environment module: wrappers, optional Apptainer image, modulefile(s).

    python3 modules/install.py --prefix /opt/apps --modulefiles /opt/modulefiles [--sif build/pneumo-hpc-gpu.sif]
                               [--venv /path/to/venv] [--format lua|tcl|both]

(`make module-install PREFIX=... MODULEFILES=... [SIF=...]` calls this.) Lays out

    PREFIX/pneumo-hpc/VERSION/bin/pneumo-hpc          wrapper: apptainer exec [--nv] IMAGE pneumo-hpc, or the venv
    PREFIX/pneumo-hpc/VERSION/pneumo-hpc-VERSION.sif  copy of SIF, when given
    MODULEFILES/pneumo-hpc/VERSION.lua                Lmod (and/or MODULEFILES/pneumo-hpc/VERSION, Tcl)

from the templates beside this file (modules/pneumo-hpc/template.lua, template.tcl: version-free, as in
singularity-hpc), whose @NAME@ fields are filled with values quoted for each language; VERSION is
pyproject.toml's.
Every file is written to a temporary name in its directory and renamed, so a module is never seen half-written.
Standard library only.
"""
import argparse
import hashlib
import os
import re
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent
NAME = "pneumo-hpc"


class InstallError(ValueError):
    pass


def version():
    """The kit's version: pyproject.toml's [project] version (the one place it is written)."""
    try:
        return tomllib.loads((SOURCE / "pyproject.toml").read_text())["project"]["version"]
    except (KeyError, tomllib.TOMLDecodeError):
        raise InstallError(f"{SOURCE / 'pyproject.toml'}: no version in its [project] table") from None


# How a value is written inside a double-quoted string of each template language.
QUOTERS = {
    "bash": lambda s: re.sub(r'([\\"$`])', r"\\\1", s),
    "lua": lambda s: s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"),
    "tcl": lambda s: re.sub(r'([\\"$\[\]{}])', r"\\\1", s),
}


def fill(template, values, language):
    """Replace every @NAME@ field; a field without a value is a template bug, reported with the file."""
    text = template.read_text()
    quote = QUOTERS[language]
    out = re.sub(r"@([A-Z0-9_]+)@", lambda m: quote(values[m.group(1)]) if m.group(1) in values else m.group(0), text)
    left = sorted(set(re.findall(r"@([A-Z0-9_]+)@", out)))
    if left:
        raise InstallError(f"{template}: no value for the field(s) {', '.join(left)}")
    return out


def write_atomic(path, text=None, source=None, mode=0o644):
    """Write text (or copy the file source) to path via a temporary sibling and rename; returns sha256 of a copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            if source is None:
                out.write(text.encode())
            else:
                with open(source, "rb") as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        digest.update(block)
                        out.write(block)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return digest.hexdigest()


def install(prefix, modulefiles, sif="", venv="", fmt="lua", apptainer="apptainer"):
    if not prefix or not modulefiles:
        raise InstallError("needs both PREFIX=dir (wrappers, image) and MODULEFILES=dir (modulefiles), e.g. "
                           "make module-install PREFIX=/opt/apps MODULEFILES=/opt/modulefiles")
    if fmt not in ("lua", "tcl", "both"):
        raise InstallError(f"MODULE_FORMAT={fmt!r}: expected lua (Lmod), tcl (Environment Modules) or both")
    ver = version()
    root = Path(prefix).resolve() / NAME / ver
    sif_path, sif_sha = "", ""
    if sif:
        if not Path(sif).is_file():
            raise InstallError(f"SIF={sif}: no such image file (build one with make sif, or drop SIF)")
        target = root / f"{NAME}-{ver}.sif"
        if Path(sif).resolve() != target:
            print(f"module-install: copying {sif} -> {target}")
            sif_sha = write_atomic(target, source=sif, mode=0o644)
        else:
            sif_sha = hashlib.sha256(target.read_bytes()).hexdigest()
        sif_path = str(target)
    venv = str(Path(venv).resolve()) if venv else ""
    if not sif:
        if not venv or not os.access(Path(venv) / "bin" / NAME, os.X_OK):
            raise InstallError(f"no image (SIF=...) and no native install at {venv or '<VENV unset>'}/bin/{NAME}: "
                               "give SIF=image.sif, or VENV=/path/to/venv with pneumo-hpc installed (make venv)")
    values = {"VERSION": ver, "ROOT": str(root), "SIF": sif_path, "SIF_SHA256": sif_sha or "-",
              "IMAGE": sif_path or "none (the native install below)",
              "VENV": venv or "-",
              "APPTAINER": apptainer or "apptainer", "SOURCE": str(SOURCE)}
    wrapper = root / "bin" / NAME
    write_atomic(wrapper, fill(HERE / "bin" / f"{NAME}.in", values, "bash"), mode=0o755)
    written = [wrapper]
    moddir = Path(modulefiles).resolve() / NAME
    if fmt in ("lua", "both"):
        written.append(moddir / f"{ver}.lua")
        write_atomic(written[-1], fill(HERE / NAME / "template.lua", values, "lua"))
    if fmt in ("tcl", "both"):
        written.append(moddir / ver)
        write_atomic(written[-1], fill(HERE / NAME / "template.tcl", values, "tcl"))
    for path in written:
        print(f"module-install: wrote {path}")
    print(f"module-install: use it with: module use {Path(modulefiles).resolve()}; module load {NAME}/{ver}")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix", default="")
    ap.add_argument("--modulefiles", default="")
    ap.add_argument("--sif", default="")
    ap.add_argument("--venv", default="")
    ap.add_argument("--format", default="lua")
    ap.add_argument("--apptainer", default="apptainer")
    a = ap.parse_args(argv)
    try:
        install(a.prefix, a.modulefiles, a.sif, a.venv, a.format, a.apptainer)
    except (InstallError, OSError) as err:
        sys.exit(f"make module-install: {err}")


if __name__ == "__main__":
    main()
