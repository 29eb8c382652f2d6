#!/usr/bin/env bash
# The main job on the embedded defaults (SQLite, local backend, line protocol to a file):
# a simulated day of ECAL PhiSym processing, from a fresh clone.
#
#   bash scripts/demo.sh [--out DIR] [--fills N]
#
# Creates .venv if missing, installs ecalstate into it (pip install -e .), then runs
# handlers/demo.py. Everything it writes (database, job folders, plots, overview.html,
# ecalstate.lp) goes to demo-output/ (or --out); a second run starts afresh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
if [ ! -x .venv/bin/python ]; then
    echo "[demo.sh] creating .venv"
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/python handlers/demo.py "$@"
