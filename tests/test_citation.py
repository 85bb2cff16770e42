"""CITATION.cff: valid CFF 1.2.0 (cffconvert), in step with the package, and citing the data and YOLOv8; the
package's version is pyproject.toml's, installed or not."""
import shutil
import sys
import tomllib

import pytest
import yaml

import pneumo_hpc
from conftest import REPO, VENV_BIN, run

CFF = REPO / "CITATION.cff"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module")
def cff():
    return yaml.safe_load(CFF.read_text())


def test_cffconvert_validates():
    out = run([str(VENV_BIN / "cffconvert"), "--validate", "-i", str(CFF)]).stdout
    assert "valid according to schema version 1.2.0" in out


def test_software_entry_matches_the_package(cff):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["title"] == project["name"] == "pneumo-hpc"
    assert cff["version"] == project["version"] == pneumo_hpc.__version__
    assert cff["license"] == project["license"]["text"] == "MIT"
    assert str(cff["date-released"]) == "2026-11-26"
    assert cff["authors"] == [{"name": "pneumo-hpc contributors"}]


def test_references_cite_the_rsna_data_its_paper_and_yolov8(cff):
    refs = {ref["type"]: ref for ref in cff["references"]}
    assert "RSNA Pneumonia Detection Challenge" in refs["data"]["title"] and refs["data"]["year"] == 2018
    paper = refs["article"]
    assert paper["doi"] == "10.1148/ryai.2019180041" and paper["journal"] == "Radiology: Artificial Intelligence"
    assert paper["authors"][0] == {"family-names": "Shih", "given-names": "George"} and paper["year"] == 2019
    assert refs["software"]["title"] == "Ultralytics YOLOv8" and refs["software"]["license"] == "AGPL-3.0"


@pytest.mark.parametrize("fmt, expected", [
    ("bibtex", "title = {pneumo-hpc}"),
    ("apalike", f"pneumo-hpc contributors (2026). pneumo-hpc (version {VERSION})."),
])
def test_converts_to_citation_formats(fmt, expected):
    out = run([str(VENV_BIN / "cffconvert"), "-i", str(CFF), "-f", fmt]).stdout
    assert expected in out


@pytest.mark.parametrize("pyproject, expected", [
    ('[project]\nname = "pneumo-hpc"\nlicense = { text = "MIT" }\nversion = "9.8.7"\n[tool.x]\nversion = "1"\n', "9.8.7"),
    ('[project]\nname = "pneumo-hpc"\n[tool.x]\nversion = "1"\n', "unknown"),
    (None, "unknown"),
])
def test_a_checkout_that_is_not_installed_reads_its_pyproject(tmp_path, pyproject, expected):
    # no site-packages (-S) and no egg-info beside it: importlib.metadata finds nothing, the fallback answers
    shutil.copytree(REPO / "pneumo_hpc", tmp_path / "pneumo_hpc", ignore=shutil.ignore_patterns("__pycache__"))
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    out = run([sys.executable, "-S", "-c", "import pneumo_hpc; print(pneumo_hpc.__version__)"], cwd=tmp_path).stdout
    assert out.strip() == expected
