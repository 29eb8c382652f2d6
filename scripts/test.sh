#!/usr/bin/env bash
# THE test command (README, CI): from a fresh clone, install what the tests need, then run them.
#
#   bash scripts/test.sh [pytest args...]
#
# 1. scripts/install-deps.sh (Debian packages, npm-groovy-lint, HTCondor chroot; idempotent, needs root)
# 2. .venv (python3 -m venv) + pip install -e '.[test]'
# 3. mypy ecalstate (if the package exists)
# 4. python -m pytest "$@" with ECALSTATE_REQUIRE_SERVERS=1: a missing server fails, never skips
# Exit status: pytest's (exit 5, "no tests collected", counts as failure); 1 if only mypy failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
T0=$SECONDS
say() { echo "[test.sh] $*"; }

if [ "$(id -u)" = 0 ]; then
    bash scripts/install-deps.sh
else
    say "not root: skipping scripts/install-deps.sh (servers must already be installed)"
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv
fi
PY=$REPO/.venv/bin/python
t=$SECONDS
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
say "pip install -e '.[test]': $((SECONDS - t)) s"

# Stop the HTCondor pool at the end if this run started it (the pytest plugin normally does it
# itself; this covers an interrupted pytest). A pool that was already running is left alone.
POOL_WAS_RUNNING=0
bash scripts/htcondor-pool.sh status >/dev/null 2>&1 && POOL_WAS_RUNNING=1
cleanup() {
    if [ $POOL_WAS_RUNNING = 0 ] && [ "$(id -u)" = 0 ] &&
       { bash scripts/htcondor-pool.sh status >/dev/null 2>&1 || grep -q ' /var/cache/ecalstate-htcondor/' /proc/mounts; }; then
        bash scripts/htcondor-pool.sh stop || true
    fi
}
trap cleanup EXIT

MYPY_RC=0
if [ -d ecalstate ]; then
    t=$SECONDS
    "$PY" -m mypy ecalstate || MYPY_RC=$?
    say "mypy ecalstate: rc=$MYPY_RC ($((SECONDS - t)) s)"
fi

export ECALSTATE_REQUIRE_SERVERS=1
RC=0
"$PY" -m pytest --durations=25 "$@" || RC=$?   # the slowest tests, for whoever speeds the suite up

if [ $RC = 5 ]; then
    say "FAILED: pytest collected no tests (exit 5)"
    RC=1
fi
if [ $RC = 0 ] && [ $MYPY_RC != 0 ]; then
    say "FAILED: mypy ecalstate reported errors (see above)"
    RC=1
fi
[ $RC = 0 ] || say "exit $RC after $((SECONDS - T0)) s"
exit $RC
