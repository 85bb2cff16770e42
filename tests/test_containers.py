"""Apptainer definitions: they parse (spython), install with the same script and pinned requirements as CI,
set up an offline environment, and their %test passes against this checkout's install.

Apptainer cannot run here, so the image itself is not built; `make sif` is checked to say so clearly.
"""
import re
import shutil
from pathlib import PurePosixPath

import pytest
from spython.main.parse.parsers import SingularityParser

import pneumo_hpc
from conftest import REPO, VENV_BIN, run, tool_env

DEFS = {"gpu": REPO / "containers" / "pneumo-hpc-gpu.def", "cpu": REPO / "containers" / "pneumo-hpc-cpu.def"}
VENV_IN_IMAGE = "/opt/pneumo-hpc/venv"


def recipe(kind):
    return SingularityParser(str(DEFS[kind])).recipe["spython-base"]


def sections(kind):
    """%name -> body lines (dedented), read directly: spython folds %help into comments and %test into %post."""
    out, name = {}, None
    for line in DEFS[kind].read_text().splitlines():
        match = re.match(r"^%(\w+)\s*$", line)
        if match:
            name = match.group(1)
            out[name] = []
        elif name:
            out[name].append(line.strip())
    return {k: [line for line in v if line] for k, v in out.items()}


def files_map(kind):
    return {src: dst for src, dst in (line.split() for line in recipe(kind).files)}


def torch_pin():
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    return pins["torch"]


@pytest.mark.parametrize("kind", DEFS)
def test_base_image_is_pinned(kind):
    base = recipe(kind).fromHeader
    name, _, tag = base.partition(":")
    assert tag and tag != "latest", f"{DEFS[kind]}: From {base} must name a fixed tag"
    if kind == "gpu":
        assert name == "pytorch/pytorch" and tag.startswith(torch_pin() + "-cuda") and "cudnn" in tag
    else:
        assert base in ("debian:bookworm-slim", "python:3.11-slim-bookworm")


@pytest.mark.parametrize("kind", DEFS)
def test_post_runs_the_ci_install_script_with_the_repo_requirements(kind):
    files = files_map(kind)
    for src in files:  # apptainer build fails on a missing %files source
        assert (REPO / src).exists(), f"{DEFS[kind]}: %files source {src} is not in the repository"
    install_sh = PurePosixPath(files["containers/install.sh"])
    src_root = install_sh.parent.parent  # install.sh reads $SRC/requirements.txt, SRC = its own dir/..
    assert files["requirements.txt"] == str(src_root / "requirements.txt")
    assert files["pyproject.toml"] == str(src_root / "pyproject.toml")
    assert files["pneumo_hpc"] == str(src_root / "pneumo_hpc")
    post = [line for line in recipe(kind).install if not line.startswith("#")]
    assert f"bash {install_sh} system" in post
    python_step = [l for l in post if l.endswith(f"VENV={VENV_IN_IMAGE} bash {install_sh} python")]
    assert len(python_step) == 1, post
    # the GPU image may reuse its base image's torch: VENV_ARGS is the only allowed extra
    assert python_step[0].replace("VENV_ARGS=--system-site-packages ", "") == f"VENV={VENV_IN_IMAGE} bash {install_sh} python"
    assert post.index(f"bash {install_sh} system") < post.index(python_step[0])


@pytest.mark.parametrize("kind", DEFS)
def test_environment_is_offline_and_finds_the_venv(kind, tmp_path):
    environ = recipe(kind).environ
    for setting in ("NO_ALBUMENTATIONS_UPDATE=1", "YOLO_OFFLINE=1", "YOLO_AUTOINSTALL=0", "HF_HUB_OFFLINE=1"):
        assert setting in environ, f"{DEFS[kind]}: %environment lacks {setting}"
    # Apptainer sources %environment with /bin/sh: run it the same way and read what it exports.
    script = "\n".join(sections(kind)["environment"])
    probe = f'{script}\necho "PATH=$PATH"\necho "CACHE=$PNEUMO_HPC_CACHE"\n'
    env = {"PATH": "/usr/bin:/bin", "USER": "alice"}
    out = run(["sh", "-c", probe], env=env).stdout
    assert f"PATH={VENV_IN_IMAGE}/bin:/usr/bin:/bin" in out
    assert "CACHE=/tmp/pneumo-hpc-alice" in out
    out = run(["sh", "-c", probe], env={**env, "PNEUMO_HPC_CACHE": str(tmp_path)}).stdout
    assert f"CACHE={tmp_path}" in out


@pytest.mark.parametrize("kind", DEFS)
def test_runscript_labels_help(kind):
    r = recipe(kind)
    assert r.cmd.strip() == 'exec pneumo-hpc "$@"'
    labels = dict(line.split(" ", 1) for line in r.labels)
    assert "org.opencontainers.image.version" not in labels and "Version" not in labels  # %post sets them
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["Variant"] == kind
    assert labels["org.opencontainers.image.base.name"].endswith(r.fromHeader)
    help_text = "\n".join(sections(kind)["help"])
    assert f"pneumo-hpc ({kind.upper()} image)" in help_text
    assert pneumo_hpc.__version__ not in DEFS[kind].read_text()  # pyproject.toml's, read at build time
    assert f"apptainer run {'--nv ' if kind == 'gpu' else ''}pneumo-hpc-{kind}.sif --help" in help_text
    assert "PNEUMO_HPC_CACHE" in help_text


def label_step(kind):
    """%post's version labelling, run against this checkout's venv instead of the image's."""
    post = sections(kind)["post"]
    start = next(i for i, line in enumerate(post) if line.startswith("version="))
    end = next(i for i, line in enumerate(post) if "_LABELS" in line)
    return "\n".join(post[start:end + 1]).replace(VENV_IN_IMAGE, str(VENV_BIN.parent))


@pytest.mark.parametrize("kind", DEFS)
def test_post_labels_the_image_with_the_installed_version(kind, tmp_path):
    labels, version = tmp_path / "labels", pneumo_hpc.__version__
    for builder in ("APPTAINER_LABELS", "SINGULARITY_LABELS"):  # Apptainer sets both, SingularityCE the second
        labels.write_text("Torch 2\n")
        run(["sh", "-eu", "-c", label_step(kind)], env={"PATH": "/usr/bin:/bin", builder: str(labels)})
        assert labels.read_text() == f"Torch 2\norg.opencontainers.image.version {version}\nVersion {version}\n"
    proc = run(["sh", "-eu", "-c", label_step(kind)], env={"PATH": "/usr/bin:/bin"}, check=False)
    assert proc.returncode != 0 and "the builder sets APPTAINER_LABELS" in proc.stderr


def test_cpu_and_gpu_images_install_and_run_the_same_way():
    gpu, cpu = sections("gpu"), sections("cpu")
    for name in ("files", "post", "environment", "runscript", "test"):
        g, c = gpu[name], cpu[name]
        if name == "post":  # the GPU image alone reuses its base image's torch
            g = [l.replace("VENV_ARGS=--system-site-packages ", "") for l in g if "--system-site-packages:" not in l]
        assert g == c, f"%{name} differs between the two definitions"


def test_the_test_section_passes_against_this_install():
    commands = sections("gpu")["test"]  # the cpu image's is the same (checked above)
    assert commands == ["pneumo-hpc --version", "pneumo-hpc selftest"]
    # In the image, %environment puts the venv first on PATH; here the checkout's venv plays that part.
    proc = run(["bash", "-euc", "\n".join(commands)], env=tool_env(), timeout=600)
    assert f"pneumo-hpc, version {pneumo_hpc.__version__}" in proc.stdout


@pytest.mark.skipif(bool(shutil.which("apptainer") or shutil.which("singularity")),
                    reason="apptainer is installed: make sif would really build")
@pytest.mark.parametrize("target", ["sif", "sif-cpu"])
def test_make_sif_without_apptainer_says_what_to_do(target):
    env = tool_env()
    env.pop("APPTAINER", None)
    proc = run(["make", "-s", "--no-print-directory", "-C", str(REPO), target], env=env, check=False)
    assert proc.returncode != 0
    assert "needs apptainer (or singularity) on PATH" in proc.stderr and "apptainer.org" in proc.stderr
