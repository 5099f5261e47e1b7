"""The .rpm's scriptlets on a real systemd.

There is no Fedora/RHEL root here, so the .rpm is installed with `rpm --nodeps` into
the booted Debian root (which has rpm): the scriptlets (%systemd_post with the preset,
the kubelet safety in %preun, %systemd_postun_with_restart, the clean-up on erase),
the unit and the venv run for real, only the dependency resolution of dnf is missing.
"""

from __future__ import annotations

import pytest
from node import CONTAINERD, RELAY, UNIT, kubelet_files, kubelet_log, setup_kubelet
from nspawn import Machine

VENV_PYTHON = "/opt/cri-resource-manager/bin/python"
CRI_VERSION = (
    "from cri_resmgr.cri.client import CriClient; "
    "print(CriClient('unix:///var/run/cri-resmgr/cri-resmgr.sock').version(timeout=10).runtime_name)"
)


@pytest.fixture(scope="module")
def m(machine_factory, rpm_package) -> Machine:  # type: ignore[no-untyped-def]
    machine = machine_factory("rpm")
    setup_kubelet(machine)
    return machine


@pytest.mark.timeout(600)
def test_rpm_install_start_erase(m: Machine, rpm_package) -> None:  # type: ignore[no-untyped-def]
    before = kubelet_files(m)
    out = m.run(["rpm", "-i", "--nodeps", f"/src/dist/{rpm_package.name}"]).stdout
    assert "systemctl start cri-resource-manager" in out
    # %systemd_post applied the preset: enabled, not started (the RPM convention).
    assert m.run(f"systemctl is-enabled {UNIT}").stdout.strip() == "enabled"
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive"
    assert m.run("stat -c %a /var/lib/cri-resmgr /run/cri-resmgr").stdout.split() == ["700", "755"]

    m.run(f"systemctl start {UNIT}")
    assert m.run([VENV_PYTHON, "-c", CRI_VERSION]).stdout.strip() == "containerd"
    assert m.run("stat -c %a /var/run/cri-resmgr/cri-resmgr.sock").stdout.strip() == "660"

    m.run("/usr/share/cri-resource-manager/setup.sh")
    assert RELAY in kubelet_log(m).splitlines()[-1]

    # Erase while kubelet uses the relay: %preun points it back while the relay runs.
    out = m.run("rpm -e cri-resource-manager 2>&1").stdout
    assert "pointing kubelet back at the runtime first" in out
    last = kubelet_log(m).splitlines()[-1]
    assert last.startswith("start relay=up ") and CONTAINERD in last, last
    assert kubelet_files(m) == before
    assert m.run(f"systemctl is-active {UNIT}", check=False).stdout.strip() == "inactive"
    left = m.run(
        "ls -d /etc/cri-resmgr /etc/sysconfig/cri-resource-manager /var/lib/cri-resmgr "
        f"/run/cri-resmgr /opt/cri-resource-manager /usr/lib/systemd/system/{UNIT} "
        "/etc/systemd/system/multi-user.target.wants/" + UNIT + " 2>&1",
        check=False,
    ).stdout
    assert left.count("No such file") == 7, left


BACKUP = "/var/lib/cri-resmgr/kubelet-backup"


def refused_erase(m: Machine) -> str:
    done = m.run("rpm -e cri-resource-manager 2>&1", check=False)
    assert done.returncode != 0, done.stdout
    assert "CRI_RESMGR_FORCE_REMOVE=1" in done.stdout, done.stdout
    assert m.run("rpm -q cri-resource-manager", check=False).returncode == 0
    assert m.run(f"systemctl is-active {UNIT}").stdout.strip() == "active"
    assert RELAY in kubelet_log(m).splitlines()[-1]
    return done.stdout


@pytest.mark.timeout(600)
def test_rpm_erase_refused_then_forced_keeps_backup(m: Machine, rpm_package) -> None:  # type: ignore[no-untyped-def]
    """%preun refuses while `kubelet status` says "the relay" (a damaged manifest) or
    cannot tell (exit 1); a forced erase keeps the kubelet backups and says where."""
    m.run(["rpm", "-i", "--nodeps", f"/src/dist/{rpm_package.name}"])
    m.run(f"systemctl start {UNIT}")
    m.run("/usr/share/cri-resource-manager/setup.sh")
    assert RELAY in kubelet_log(m).splitlines()[-1]

    m.run(f"cp {BACKUP}/manifest.json /root/manifest.json && echo '{{' > {BACKUP}/manifest.json")
    out = refused_erase(m)
    assert "could not be restored completely and still points at the relay" in out, out
    m.run(f"cp /root/manifest.json {BACKUP}/manifest.json")

    config = "/var/lib/kubelet/config.yaml"
    m.run(f"echo 'foo: [' >> {config}")
    out = refused_erase(m)
    assert "cannot tell whether kubelet uses the relay" in out, out

    done = m.run("rpm -e cri-resource-manager 2>&1", env={"CRI_RESMGR_FORCE_REMOVE": "1"})
    assert "removing anyway (CRI_RESMGR_FORCE_REMOVE=1)" in done.stdout, done.stdout
    assert f"kept {BACKUP}" in done.stdout, done.stdout
    assert m.run("rpm -q cri-resource-manager", check=False).returncode != 0
    # Only the backups are left of the state, with the copy needed to undo by hand.
    assert m.run("ls -A /var/lib/cri-resmgr").stdout.split() == ["kubelet-backup"]
    assert m.run(f"ls {BACKUP}/files{config} {BACKUP}/manifest.json", check=False).returncode == 0
    assert m.run("ls -d /opt/cri-resource-manager /run/cri-resmgr", check=False).returncode != 0
