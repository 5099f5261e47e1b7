"""A booted machine as a Kubernetes node: helpers shared by the booted tests.

A fake kubelet (a shell script under a kubeadm-style kubelet.service) records every
start: its arguments and whether the relay socket existed at that moment.
"""

from __future__ import annotations

import time
from typing import Dict

from kubelet_files import KUBELET_UNIT, kubeadm_dropin
from nspawn import Machine

UNIT = "cri-resource-manager.service"
SOCKET = "/var/run/cri-resmgr/cri-resmgr.sock"
RELAY = "unix://" + SOCKET
CONTAINERD = "unix:///var/run/containerd/containerd.sock"
VENV_PYTHON = "/opt/venvs/cri-resource-manager/bin/python"

FAKE_KUBELET = """#!/bin/sh
# A stand-in for kubelet: records how it was started, then idles.
if [ -S /var/run/cri-resmgr/cri-resmgr.sock ]; then relay=up; else relay=down; fi
echo "start relay=$relay args=$*" >> /var/log/fake-kubelet.log
while :; do sleep 3600; done
"""

KUBELET_FILES: Dict[str, str] = {
    "/lib/systemd/system/kubelet.service": KUBELET_UNIT,
    "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(),
    "/var/lib/kubelet/kubeadm-flags.env": (
        f'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint={CONTAINERD} '
        '--pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
    ),
    "/var/lib/kubelet/config.yaml": (
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
        "cgroupDriver: systemd\ncpuManagerPolicy: none\n"
        f"containerRuntimeEndpoint: {CONTAINERD}\n"
    ),
    "/etc/default/kubelet": "KUBELET_EXTRA_ARGS=\n",
}

CRI_VERSION = """
from cri_resmgr.cri.client import CriClient
v = CriClient("unix://{socket}").version(timeout=10)
print(v.runtime_name, v.runtime_version)
"""


def setup_kubelet(m: Machine) -> None:
    m.write("/usr/bin/kubelet", FAKE_KUBELET, "0755")
    for path, content in KUBELET_FILES.items():
        m.write(path, content)
    m.run("systemctl daemon-reload && systemctl enable --now kubelet.service")
    wait_for(lambda: kubelet_starts(m) >= 1, "kubelet to start")


def kubelet_log(m: Machine) -> str:
    return m.run("cat /var/log/fake-kubelet.log", check=False).stdout


def kubelet_starts(m: Machine) -> int:
    return kubelet_log(m).count("start ")


def kubelet_files(m: Machine) -> Dict[str, str]:
    """sha256 of every kubelet file, and the names in kubelet's directories."""
    out = m.run(
        "sha256sum " + " ".join(KUBELET_FILES) + "; ls -A /etc/systemd/system/kubelet.service.d "
        "/var/lib/kubelet; ls -A /etc/default | grep kubelet"
    ).stdout
    return {"listing": out}


def wait_for(predicate, what: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def cri_version(m: Machine, socket: str = SOCKET) -> str:
    return m.run([VENV_PYTHON, "-c", CRI_VERSION.format(socket=socket)]).stdout.strip()


def main_pid(m: Machine, unit: str = UNIT) -> str:
    return m.run(f"systemctl show -p MainPID --value {unit}").stdout.strip()


def apt(m: Machine, *args: str) -> str:
    done = m.run(
        ["apt-get", "-y", "-q", *args],
        env={"DEBIAN_FRONTEND": "noninteractive"},
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, f"apt-get {args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr
