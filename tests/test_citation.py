"""CITATION.cff: valid CFF 1.2.0 (cffconvert), in step with the package, and citing the data and YOLOv8."""
import tomllib

import pytest
import yaml

import pneumo_hpc
from conftest import REPO, VENV_BIN, run

CFF = REPO / "CITATION.cff"


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
    ("apalike", "pneumo-hpc contributors (2026). pneumo-hpc (version 0.1.0)."),
])
def test_converts_to_citation_formats(fmt, expected):
    out = run([str(VENV_BIN / "cffconvert"), "-i", str(CFF), "-f", fmt]).stdout
    assert expected in out
