#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian 12 (bookworm) machine, as root.
# Idempotent: every step checks first and does nothing when already done.
#   - Debian packages: influxdb (1.6.7), victoria-metrics, debootstrap, postgresql (15), chromium, chromium-driver (Selenium), bindfs
#   - npm-groovy-lint@16.2.0 into $REPO/.tools (gitignored)
#   - a Debian 13 (trixie) chroot with htcondor, built once in a persistent cache
#     /var/cache/ecalstate-htcondor/trixie (bookworm has no htcondor package)
# See shared/reference/infrastructure.md for the why of each step.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HTC_CACHE=${ECALSTATE_HTC_CACHE:-/var/cache/ecalstate-htcondor}
CHROOT=$HTC_CACHE/trixie
GROOVY_LINT_VERSION=16.2.0
export DEBIAN_FRONTEND=noninteractive

T0=$(date +%s.%N)
step_start() { STEP=$1; STEP_T=$(date +%s.%N); echo "[install-deps] $STEP ..."; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
step_end() { echo "[install-deps] $STEP: $1 ($(elapsed "$STEP_T") s)"; }

if [ "$(id -u)" != 0 ]; then
    echo "[install-deps] must run as root (apt-get, debootstrap, chroot)" >&2
    exit 1
fi

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

APT_UPDATED=0
apt_install() {  # apt_install PKG...  (installs only the missing ones, apt-get update at most once)
    local missing=() p
    for p in "$@"; do is_installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ $APT_UPDATED = 0 ]; then apt-get update -q; APT_UPDATED=1; fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------- Debian packages
step_start "apt packages"
PKGS=(influxdb victoria-metrics debootstrap postgresql chromium chromium-driver bindfs)   # bindfs: a real FUSE mount for the SQLite path guard test
command -v npm >/dev/null || PKGS+=(npm)                       # node 20 is preinstalled on the image
command -v java >/dev/null || PKGS+=(openjdk-17-jre-headless)  # npm-groovy-lint runs CodeNarc on Java
command -v curl >/dev/null || PKGS+=(curl)
apt_install "${PKGS[@]}"
# The Debian packages may auto-start system services on some images: we never use them
# (tests run their own servers on free loopback ports), so leave them alone.
step_end "ok ($(dpkg-query -W -f='${Package} ${Version}\n' influxdb victoria-metrics postgresql chromium | tr '\n' ';'))"

# ---------------------------------------------------------------- a second Unix user
# "Another person on the same host" for the permission tests (database files, job folders, secrets).
step_start "second user ecaltest"
if id -u ecaltest >/dev/null 2>&1; then step_end "exists"; else useradd --system --no-create-home ecaltest; step_end "created"; fi

# ---------------------------------------------------------------- npm-groovy-lint
step_start "npm-groovy-lint@$GROOVY_LINT_VERSION"
TOOLS=$REPO/.tools
have_lint_version() {
    [ -x "$TOOLS/node_modules/.bin/npm-groovy-lint" ] &&
    grep -q "\"version\": \"$GROOVY_LINT_VERSION\"" "$TOOLS/node_modules/npm-groovy-lint/package.json" 2>/dev/null
}
if have_lint_version; then
    step_end "already installed"
else
    mkdir -p "$TOOLS"
    npm install --no-audit --no-fund --loglevel=error --prefix "$TOOLS" "npm-groovy-lint@$GROOVY_LINT_VERSION"
    step_end "installed into $TOOLS"
fi

# ---------------------------------------------------------------- HTCondor chroot
# Safety: the chroot lives in a persistent cache and is never deleted while anything is
# mounted under it (a bind-mounted /dev would be wiped with it).
mounts_under() { awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts; }

step_start "HTCondor trixie chroot in $CHROOT"
if [ -x "$CHROOT/usr/sbin/condor_master" ] && [ -e "$HTC_CACHE/.htcondor-ok" ]; then
    step_end "already built ($(chroot "$CHROOT" dpkg-query -W -f='${Version}' htcondor))"
else
    mkdir -p "$HTC_CACHE"
    if [ -e "$CHROOT" ] && [ ! -e "$HTC_CACHE/.debootstrap-ok" ]; then
        # half-built leftover of an interrupted debootstrap: remove it, but only when nothing is mounted inside
        if [ -n "$(mounts_under "$CHROOT")" ]; then
            echo "[install-deps] refusing to remove $CHROOT: mounts under it:" >&2
            mounts_under "$CHROOT" >&2
            exit 1
        fi
        echo "[install-deps] removing incomplete chroot $CHROOT"
        rm -rf --one-file-system "$CHROOT"
    fi
    if [ ! -e "$HTC_CACHE/.debootstrap-ok" ]; then
        t=$(date +%s.%N)
        debootstrap --variant=minbase trixie "$CHROOT" http://deb.debian.org/debian >"$HTC_CACHE/debootstrap.log" 2>&1 || {
            echo "[install-deps] debootstrap failed, tail of $HTC_CACHE/debootstrap.log:" >&2
            tail -n 30 "$HTC_CACHE/debootstrap.log" >&2
            exit 1
        }
        touch "$HTC_CACHE/.debootstrap-ok"
        echo "[install-deps]   debootstrap minbase trixie: $(elapsed "$t") s"
    fi
    t=$(date +%s.%N)
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        apt-get update -q
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends htcondor python3-minimal
    chroot "$CHROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin apt-get clean
    echo "[install-deps]   apt-get install htcondor in chroot: $(elapsed "$t") s"
    touch "$HTC_CACHE/.htcondor-ok"
    step_end "built ($(chroot "$CHROOT" dpkg-query -W -f='${Version}' htcondor))"
fi

echo "[install-deps] done in $(elapsed "$T0") s"
