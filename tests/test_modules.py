"""Environment modules: `make module-install` renders the Lmod and Tcl modulefiles and the pneumo-hpc wrapper,
and the real Lmod loads them, runs the kit through the wrapper and unloads them cleanly.

Regenerate the golden modulefiles after an intended change with: UPDATE_GOLDEN=1 pytest tests/test_modules.py
"""
import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from conftest import REPO, VENV_BIN, run, tool_env

import pneumo_hpc

LMOD_INIT = Path("/usr/share/lmod/lmod/init/bash")
GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
VERSION = pneumo_hpc.__version__
VENV = VENV_BIN.parent
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"  # no duplicates: Lmod folds repeated PATH entries on every change


@pytest.fixture(scope="module")
def lmod():
    if not LMOD_INIT.is_file():
        if os.geteuid() != 0:
            pytest.skip("Lmod is not installed and this user cannot install it (as root: make system)")
        run(["bash", str(REPO / "containers" / "install.sh"), "test-deps"], timeout=900)
    assert LMOD_INIT.is_file(), f"{LMOD_INIT} missing after installing Lmod"
    return LMOD_INIT


def make_env(**extra):
    env = tool_env()
    for key in ("PREFIX", "MODULEFILES", "SIF", "MODULE_FORMAT", "MODULE_VENV", "VENV", "APPTAINER",
                "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "PNEUMO_HPC_SIF", "PNEUMO_HPC_ROOT"):
        env.pop(key, None)
    env.update(extra)
    return env


def module_install(tmp_path, *variables, check=True):
    return run(["make", "-s", "--no-print-directory", "-C", str(REPO), "module-install", f"PREFIX={tmp_path}/apps",
                f"MODULEFILES={tmp_path}/modulefiles", f"MODULE_VENV={VENV}", *variables],
               env=make_env(), check=check)


def lmod_bash(lmod, script, path=CLEAN_PATH, **env_extra):
    """Run script in bash with Lmod's `module` function; set -u everywhere but around Lmod's own init."""
    env = {"HOME": os.environ.get("HOME", "/root"), "PATH": path, "LANG": "C.UTF-8", **env_extra}
    full = f"set -eo pipefail\nsource {lmod}\nset -u\n{script}\n"
    return run(["bash", "-c", full], env=env)


def test_lua_module_loads_runs_and_unloads_exactly(lmod, tmp_path):
    module_install(tmp_path)
    lua = tmp_path / "modulefiles" / "pneumo-hpc" / f"{VERSION}.lua"
    assert lua.is_file() and not (tmp_path / "modulefiles" / "pneumo-hpc" / VERSION).exists()
    out = lmod_bash(lmod, f"""
        before=$PATH
        module use {tmp_path}/modulefiles
        module load pneumo-hpc
        echo "which=$(command -v pneumo-hpc)"
        echo "root=$PNEUMO_HPC_ROOT sif=${{PNEUMO_HPC_SIF-unset}}"
        pneumo-hpc --version
        module unload pneumo-hpc
        [ "$PATH" = "$before" ] && echo "path restored"
        echo "after=${{PNEUMO_HPC_ROOT-unset}}"
        command -v pneumo-hpc || echo "gone"
    """).stdout
    root = tmp_path / "apps" / "pneumo-hpc" / VERSION
    assert f"which={root}/bin/pneumo-hpc" in out
    assert f"root={root} sif=unset" in out
    assert f"pneumo-hpc, version {VERSION}" in out
    assert "path restored" in out and "after=unset" in out and out.rstrip().endswith("gone")


def test_tcl_twin_loads_under_lmod(lmod, tmp_path):
    module_install(tmp_path, "MODULE_FORMAT=tcl")
    tcl = tmp_path / "modulefiles" / "pneumo-hpc" / VERSION
    assert tcl.read_text().startswith("#%Module")
    assert not tcl.with_name(f"{VERSION}.lua").exists()
    out = lmod_bash(lmod, f"""
        before=$PATH
        module use {tmp_path}/modulefiles
        module load pneumo-hpc/{VERSION}
        pneumo-hpc --version
        module whatis pneumo-hpc 2>&1
        module help pneumo-hpc 2>&1
        module unload pneumo-hpc
        [ "$PATH" = "$before" ] && echo "path restored"
    """).stdout
    assert f"pneumo-hpc, version {VERSION}" in out
    assert f"Version: {VERSION}" in out and "RSNA Pneumonia Detection Challenge" in out
    assert "path restored" in out


def test_lua_help_and_whatis(lmod, tmp_path):
    module_install(tmp_path)
    out = lmod_bash(lmod, f"module use {tmp_path}/modulefiles; module help pneumo-hpc 2>&1; "
                          "module whatis pneumo-hpc 2>&1").stdout
    assert "pneumo-hpc --help" in out and "PNEUMO_HPC_CACHE" in out
    assert "Name: pneumo-hpc" in out and "License: MIT" in out


def stub(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_image_install_copies_the_sif_and_the_wrapper_runs_apptainer(lmod, tmp_path):
    image = tmp_path / "built.sif"
    image.write_bytes(b"SIF stand-in " * 1000)
    module_install(tmp_path, f"SIF={image}", "MODULE_FORMAT=both")
    root = tmp_path / "apps" / "pneumo-hpc" / VERSION
    copy = root / f"pneumo-hpc-{VERSION}.sif"
    assert copy.read_bytes() == image.read_bytes()
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    for name in (f"{VERSION}.lua", VERSION):
        assert f"sha256:   {digest}" in (tmp_path / "modulefiles" / "pneumo-hpc" / name).read_text()
    # Apptainer cannot run on this machine: stand-ins on PATH record how the wrapper calls it.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    stub(bindir / "apptainer", 'echo "apptainer $*"\n')
    script = f"module use {tmp_path}/modulefiles; module load pneumo-hpc; echo sif=$PNEUMO_HPC_SIF; " \
             "pneumo-hpc train --out 'a b'"
    out = lmod_bash(lmod, script, path=f"{bindir}:{CLEAN_PATH}").stdout
    assert f"sif={copy}" in out
    assert f"apptainer exec {copy} pneumo-hpc train --out a b" in out  # no GPU here: no --nv
    stub(bindir / "nvidia-smi", 'echo "GPU 0: NVIDIA H100 80GB HBM3"\n')
    out = lmod_bash(lmod, script, path=f"{bindir}:{CLEAN_PATH}").stdout
    assert f"apptainer exec --nv {copy} pneumo-hpc train --out a b" in out


def test_wrapper_without_apptainer_says_what_is_missing(tmp_path):
    image = tmp_path / "x.sif"
    image.write_bytes(b"x")
    module_install(tmp_path, f"SIF={image}")
    wrapper = tmp_path / "apps" / "pneumo-hpc" / VERSION / "bin" / "pneumo-hpc"
    proc = run([str(wrapper), "--version"], env={"PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode == 127 and "needs apptainer or singularity" in proc.stderr


@pytest.mark.parametrize("variables, message", [
    (["PREFIX="], "needs both PREFIX=dir"),
    (["SIF=/nonexistent/image.sif"], "SIF=/nonexistent/image.sif: no such image file"),
    (["MODULE_FORMAT=yaml"], "MODULE_FORMAT='yaml'"),
    (["MODULE_VENV=/nonexistent/venv"], "no native install at /nonexistent/venv/bin/pneumo-hpc"),
])
def test_bad_install_settings_are_refused(tmp_path, variables, message):
    proc = module_install(tmp_path, *variables, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
    assert not (tmp_path / "modulefiles").exists()


@pytest.mark.parametrize("fmt, name", [
    ("lua", 'we$ird "dir" [1] {x} \'q\''),
    # Lmod's Tcl-to-Lua bridge itself breaks on a double quote or backslash in a value: not tested for Tcl
    ("tcl", "we$ird dir [1] {x} 'q'"),
])
def test_special_characters_in_the_install_root_survive(lmod, tmp_path, fmt, name):
    # The root lands inside Lua or Tcl strings and in the bash wrapper. Lmod cannot read a modulefile whose own
    # directory has spaces, so only the root is odd; make cannot pass a '$', so call the installer make calls.
    odd = tmp_path / name
    odd.mkdir()
    root = odd / "apps" / "pneumo-hpc" / VERSION
    mf = tmp_path / "modulefiles"
    run(["python3", str(REPO / "modules" / "install.py"), "--prefix", f"{odd}/apps", "--modulefiles", str(mf),
         "--venv", str(VENV), "--format", fmt])
    out = lmod_bash(lmod, f"module use {mf}; module load pneumo-hpc; "
                          'echo "root=$PNEUMO_HPC_ROOT"; pneumo-hpc --version').stdout
    assert f"root={root}" in out and f"version {VERSION}" in out


@pytest.mark.parametrize("name, fmt", [(f"{VERSION}.lua", "lua"), (VERSION, "tcl")])
def test_rendered_modulefile_matches_golden(tmp_path, name, fmt):
    module_install(tmp_path, "MODULE_FORMAT=both")
    text = (tmp_path / "modulefiles" / "pneumo-hpc" / name).read_text()
    text = text.replace(str(tmp_path), "@TMP@").replace(str(VENV), "@VENV@").replace(str(REPO), "@REPO@")
    text = text.replace(VERSION, "@VERSION@")  # a release changes the version, not the golden file
    golden = GOLDEN / f"modulefile-pneumo-hpc.{fmt}"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"{golden} differs (UPDATE_GOLDEN=1 if intended)"


def test_a_release_needs_only_its_pyproject_version(tmp_path):
    # a source tree whose pyproject.toml says 9.8.7: the module is installed as 9.8.7, with no other file touched
    src = tmp_path / "src"
    shutil.copytree(REPO / "modules", src / "modules", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "pyproject.toml").write_text('[project]\nname = "pneumo-hpc"\nversion = "9.8.7"\n')
    run(["python3", str(src / "modules" / "install.py"), "--prefix", f"{tmp_path}/apps", "--modulefiles",
         f"{tmp_path}/mf", "--venv", str(VENV), "--format", "both"])
    for name in ("9.8.7.lua", "9.8.7"):
        text = (tmp_path / "mf" / "pneumo-hpc" / name).read_text()
        assert "Version: 9.8.7" in text and f"{tmp_path}/apps/pneumo-hpc/9.8.7" in text and VERSION not in text
    assert "pneumo-hpc 9.8.7 command wrapper" in (tmp_path / "apps" / "pneumo-hpc" / "9.8.7" / "bin" /
                                                  "pneumo-hpc").read_text()


def test_templates_are_version_free_twins():
    lua = (REPO / "modules" / "pneumo-hpc" / "template.lua").read_text()
    tcl = (REPO / "modules" / "pneumo-hpc" / "template.tcl").read_text()
    assert VERSION not in lua and VERSION not in tcl  # pyproject.toml's, filled in by modules/install.py
    assert sorted(p.name for p in (REPO / "modules" / "pneumo-hpc").iterdir()) == ["template.lua", "template.tcl"]
    fields = lambda text: set(re.findall(r"@([A-Z0-9_]+)@", text))  # noqa: E731
    assert fields(lua) == fields(tcl) == {"VERSION", "SOURCE", "IMAGE", "SIF", "SIF_SHA256", "VENV", "ROOT"}
    for env_name in ("PNEUMO_HPC_ROOT", "PNEUMO_HPC_SIF", "PATH"):
        assert env_name in lua and env_name in tcl
    whatis = lambda text: re.findall(r'whatis\(?\s*"([^"]+)"', text)  # noqa: E731
    assert whatis(lua) == whatis(tcl) and "Version: @VERSION@" in whatis(lua)
