#!/bin/sh
# Install the Debian packages a target needs when they are missing.
# Usage: scripts/ensure-deps.sh GROUP...   (groups: venv, e2e, dist, deb, rpm, nspawn)
# Idempotent and quiet when everything is there; needs root only to install.
set -eu

pkgs_for() {
    case "$1" in
        venv)   echo "python3-venv python3-dev gcc" ;;
        e2e)    echo "containerd runc busybox-static containernetworking-plugins iptables gcc libc6-dev" ;;
        deb)    echo "debhelper dh-virtualenv devscripts build-essential python3-venv python3-dev python3-setuptools python3-wheel po-debconf lintian dpkg-dev" ;;
        dist)   echo "dpkg-dev python3-venv python3-setuptools python3-wheel" ;;
        rpm)    echo "rpm python3-venv python3-setuptools python3-wheel" ;;
        nspawn) echo "systemd-container debootstrap" ;;
        *) echo "ensure-deps: unknown group '$1' (allowed: venv e2e dist deb rpm nspawn)" >&2; exit 2 ;;
    esac
}

missing=""
for group in "$@"; do
    for p in $(pkgs_for "$group"); do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing="$missing $p"
        fi
    done
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
    echo "ensure-deps: missing Debian packages:$missing; run as root or install them" >&2
    exit 1
fi
echo "ensure-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# A stale package list makes installs fail with 404s; refresh once if needed.
apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing >/dev/null
}
