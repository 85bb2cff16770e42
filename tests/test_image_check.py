"""The section reader behind `make image-check` (containers/def_sections.py) reads both definitions the way
spython does, and the GPU definition shares with the CPU one everything the image check verifies without
the GPU base image: %files, the install script in %post, %environment and %test.

The image check itself (mmdebstrap, %post, offline DDP, SIF) takes minutes; CI runs `make image-check` directly.
"""
import importlib.util
import subprocess
import sys

import pytest
from spython.main.parse.parsers import SingularityParser

from conftest import REPO

DEFS = {"cpu": REPO / "containers" / "pneumo-hpc-cpu.def", "gpu": REPO / "containers" / "pneumo-hpc-gpu.def"}
READER = REPO / "containers" / "def_sections.py"

_spec = importlib.util.spec_from_file_location("def_sections", READER)
def_sections = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(def_sections)


def parsed(kind):
    return def_sections.parse(DEFS[kind].read_text())


@pytest.mark.parametrize("kind", DEFS)
def test_reader_finds_the_sections_spython_finds(kind):
    header, sections, _ = parsed(kind)
    assert {"files", "post", "environment", "runscript", "test", "labels", "help"} <= set(sections)
    spy = SingularityParser(str(DEFS[kind])).recipe["spython-base"]
    assert header["Bootstrap"] == "docker" and header["From"] == spy.fromHeader
    assert def_sections.files_pairs(sections["files"]) == [tuple(line.split()) for line in spy.files]
    assert "install.sh system" in sections["post"] and "install.sh python" in sections["post"]
    assert "pneumo-hpc selftest" in sections["test"]


def test_cpu_base_is_a_debian_suite_the_check_can_bootstrap():
    header, _, _ = parsed("cpu")
    assert header["From"].startswith("debian:")  # image-check.sh turns debian:<suite>[-slim] into mmdebstrap <suite>


def test_gpu_def_shares_what_the_check_verifies():
    _, cpu, _ = parsed("cpu")
    _, gpu, _ = parsed("gpu")
    for name in ("files", "environment", "runscript", "test"):
        assert gpu[name] == cpu[name], f"%{name} differs between the CPU and GPU definitions"
    install = [line.split("install.sh")[-1].strip() for s in (cpu, gpu) for line in s["post"].splitlines()
               if "install.sh" in line]
    assert install == ["system", "python"] * 2


def test_reader_cli():
    out = subprocess.run([sys.executable, str(READER), str(DEFS["cpu"]), "files"], capture_output=True, text=True,
                         check=True).stdout
    assert "containers/install.sh\t/opt/pneumo-hpc/src/containers/install.sh" in out.splitlines()
    missing = subprocess.run([sys.executable, str(READER), str(DEFS["cpu"]), "section", "setup"],
                             capture_output=True, text=True)
    assert missing.returncode == 1 and "no %setup section" in missing.stderr


def test_reader_rejects_a_duplicate_section():
    with pytest.raises(ValueError, match="twice"):
        def_sections.parse("Bootstrap: docker\nFrom: debian:bookworm-slim\n%post\n  true\n%post\n  true\n")
