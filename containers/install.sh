#!/usr/bin/env bash
# One install path for a laptop, CI (.ci/run via make) and both Apptainer images (%post).
#
#   containers/install.sh system     apt packages the kit runs with (Open MPI; root only, skipped when present)
#   containers/install.sh python     virtual environment $VENV with the pinned requirements + the kit
#   containers/install.sh test-deps  extra apt packages the test suite drives for real (SLURM, munge, PMIx, Lmod)
#   containers/install.sh all        system + python
#
# Knobs: VENV (default .venv), VENV_ARGS, PYTHON (python3), SRC (repo root), EXTRA_PIP (e.g. "-r requirements-dev.txt").
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${VENV:-$SRC/.venv}
PYTHON=${PYTHON:-python3}
SYSTEM_PKGS="openmpi-bin libopenmpi-dev python3-venv python3-dev build-essential git"
TEST_PKGS="slurmctld slurmd slurm-client munge libpmix-dev lmod"

apt_install() {  # apt_install PKG...: install only what is missing; needs root
  local missing="" p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" != 0 ]; then  # a laptop user without root still gets the Python side; tests say what they skip
    echo "install.sh: WARNING missing system packages:$missing (install them as root)" >&2
    return 0
  fi
  echo "install.sh: apt-get install$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  local log; log=$(mktemp)  # quiet when it works; the whole apt/dpkg output when it does not
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >"$log" 2>&1 || {
    cat "$log" >&2; rm -f "$log"; echo "install.sh: apt-get install$missing failed" >&2; return 1; }
  rm -f "$log"
}

install_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "install.sh: creating $VENV"
    "$PYTHON" -m venv ${VENV_ARGS:-} "$VENV"  # VENV_ARGS=--system-site-packages reuses a base image torch
  fi
  local pip="$VENV/bin/python -m pip"
  # shellcheck disable=SC2086
  $pip install -q -r "$SRC/requirements.txt" ${EXTRA_PIP:-}
  # ultralytics pulls the GUI build of OpenCV beside the headless one; both own cv2/. Clusters and
  # containers have no libGL, so the headless build must be the one left on disk.
  if $pip show -q opencv-python >/dev/null 2>&1; then
    $pip uninstall -q -y opencv-python
    $pip install -q --force-reinstall --no-deps "$(grep -E '^opencv-python-headless==' "$SRC/requirements.txt")"
  fi
  $pip install -q --no-deps -e "$SRC"
  "$VENV/bin/python" -c "import cv2, torch, pneumo_hpc; print('install.sh: torch', torch.__version__, 'cv2', cv2.__version__)"
}

case "${1:-all}" in
  system) apt_install $SYSTEM_PKGS ;;
  test-deps) apt_install $TEST_PKGS ;;
  python) install_python ;;
  all) apt_install $SYSTEM_PKGS; install_python ;;
  *) echo "usage: $0 system|python|test-deps|all" >&2; exit 2 ;;
esac
