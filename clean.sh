#!/bin/sh
# clean.sh: point kubelet back at the runtime, restart kubelet, then stop
# cri-resource-manager. Undoes setup.sh (and the running part of install.sh).
#
# Usage, as root:  ./clean.sh
#
#   ROOT        a directory tree to change instead of this machine (nothing restarted
#               or stopped)
#   CRI_RESMGR  the cri-resmgr command (default /usr/bin/cri-resmgr, on a tree: from PATH)
#
# It runs `cri-resmgr kubelet disable`, which puts back the bytes `enable` saved
# (docs/kubelet.md). The service is stopped only once kubelet no longer points at it;
# it stays enabled (systemctl disable cri-resource-manager, or remove the package).
# Running it again changes nothing. Removing the package does the same kubelet steps
# (crm_kubelet_back in lib.sh, next to this script), then stops the service.
set -eu

HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=lib.sh
. "$HERE/lib.sh"
CRM_NAME=clean.sh

crm_script_init "it edits kubelet's configuration and restarts services" \
    " (removing the package already points kubelet back)"

crm_kubelet_back clean 0
if $crm_incomplete; then
    crm_die "kubelet could not be restored completely (see above); $CRM_UNIT left running"
fi

if ! $crm_host; then
    crm_say "changed $ROOT only; nothing restarted or stopped"
    exit 0
fi

if systemctl is-active --quiet "$CRM_UNIT"; then
    crm_say "stopping $CRM_UNIT"
    systemctl stop "$CRM_UNIT"
else
    crm_say "$CRM_UNIT is not running"
fi
crm_say "done: kubelet uses the runtime directly; $CRM_UNIT is stopped (still enabled: it starts"
crm_say "again at boot; systemctl disable $CRM_UNIT or remove the package to keep it off)"
