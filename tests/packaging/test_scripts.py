"""install.sh, setup.sh and clean.sh on directory trees (ROOT=), and their checks.

Every kubelet layout `cri-resmgr kubelet` knows is set up in a tree; setup.sh must
point it at the relay, a second setup.sh must change nothing, clean.sh must restore
every byte, a second clean.sh must change nothing. These run without booting anything
(the booted tests in test_deb_install.py cover restarts)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest
from kubelet_files import KUBELET_UNIT, kubeadm_dropin, kubelet_config

REPO = Path(__file__).resolve().parents[2]
RELAY = "unix:///var/run/cri-resmgr/cri-resmgr.sock"
CONTAINERD = "unix:///var/run/containerd/containerd.sock"

FLAGS_ENV = (
    'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=' + CONTAINERD + " "
    '--pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
)
FLAGS_ENV_NO_ENDPOINT = (
    'KUBELET_KUBEADM_ARGS="--pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
)

#: layout name -> {path: content}
LAYOUTS: Dict[str, Dict[str, str]] = {
    # kubeadm (deb), endpoint flag in kubeadm-flags.env
    "kubeadm-flags": {
        "/lib/systemd/system/kubelet.service": KUBELET_UNIT,
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(),
        "/var/lib/kubelet/kubeadm-flags.env": FLAGS_ENV,
        "/var/lib/kubelet/config.yaml": kubelet_config(),
        "/etc/default/kubelet": "KUBELET_EXTRA_ARGS=\n",
    },
    # newer kubeadm: drop-in under /usr/lib, endpoint in the KubeletConfiguration
    "kubeadm-config": {
        "/usr/lib/systemd/system/kubelet.service": KUBELET_UNIT,
        "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(),
        "/var/lib/kubelet/kubeadm-flags.env": FLAGS_ENV_NO_ENDPOINT,
        "/var/lib/kubelet/config.yaml": kubelet_config(CONTAINERD),
    },
    # KUBELET_EXTRA_ARGS in /etc/default/kubelet (deb)
    "extra-args-deb": {
        "/lib/systemd/system/kubelet.service": KUBELET_UNIT,
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(),
        "/var/lib/kubelet/kubeadm-flags.env": FLAGS_ENV_NO_ENDPOINT,
        "/var/lib/kubelet/config.yaml": kubelet_config(),
        "/etc/default/kubelet": (
            "# local overrides\nKUBELET_EXTRA_ARGS='--v=2 "
            "--container-runtime-endpoint=unix:///run/containerd/containerd.sock'\n"
        ),
    },
    # KUBELET_EXTRA_ARGS in /etc/sysconfig/kubelet (rpm)
    "extra-args-rpm": {
        "/usr/lib/systemd/system/kubelet.service": KUBELET_UNIT,
        "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(
            "/etc/sysconfig/kubelet"
        ),
        "/var/lib/kubelet/kubeadm-flags.env": FLAGS_ENV_NO_ENDPOINT,
        "/var/lib/kubelet/config.yaml": kubelet_config(),
        "/etc/sysconfig/kubelet": (
            "KUBELET_EXTRA_ARGS=--container-runtime-endpoint=unix:///var/run/crio/crio.sock\n"
        ),
    },
    # --config-dir drop-ins (kubelet 1.28+)
    "config-dir": {
        "/etc/systemd/system/kubelet.service": KUBELET_UNIT.replace(
            "ExecStart=/usr/bin/kubelet",
            "ExecStart=/usr/bin/kubelet --config=/etc/kubernetes/kubelet.yaml "
            "--config-dir=/etc/kubernetes/kubelet.conf.d",
        ),
        "/etc/kubernetes/kubelet.yaml": kubelet_config(),
        "/etc/kubernetes/kubelet.conf.d/10-runtime.conf": (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
            "containerRuntimeEndpoint: unix:///var/run/crio/crio.sock\n"
        ),
        "/etc/kubernetes/kubelet.conf.d/20-other.conf": (
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nmaxPods: 50\n"
        ),
    },
    # the flag in an Environment= line of the unit
    "unit-environment": {
        "/etc/systemd/system/kubelet.service": KUBELET_UNIT.replace(
            "ExecStart=/usr/bin/kubelet",
            'Environment="KUBELET_ARGS=--container-runtime-endpoint=unix:///run/crio/crio.sock '
            '--config=/etc/kubernetes/kubelet.yaml"\n'
            "ExecStart=/usr/local/bin/kubelet $KUBELET_ARGS",
        ),
        "/etc/kubernetes/kubelet.yaml": kubelet_config(),
    },
    # the flag on the ExecStart= line, continued over two lines
    "unit-execstart": {
        "/etc/systemd/system/kubelet.service": KUBELET_UNIT.replace(
            "ExecStart=/usr/bin/kubelet",
            "ExecStart=/usr/bin/kubelet --config=/etc/kubernetes/kubelet.yaml \\\n"
            "    --container-runtime-endpoint=" + CONTAINERD,
        ),
        "/etc/kubernetes/kubelet.yaml": kubelet_config(),
    },
    # kubeadm layout, endpoint set nowhere, no /etc/default/kubelet: enable creates it
    "unset-kubeadm": {
        "/lib/systemd/system/kubelet.service": KUBELET_UNIT,
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(),
        "/var/lib/kubelet/kubeadm-flags.env": FLAGS_ENV_NO_ENDPOINT,
        "/var/lib/kubelet/config.yaml": kubelet_config(),
    },
    # --config-dir in use, endpoint set nowhere: enable creates a drop-in there
    "unset-config-dir": {
        "/etc/systemd/system/kubelet.service": KUBELET_UNIT.replace(
            "ExecStart=/usr/bin/kubelet",
            "ExecStart=/usr/bin/kubelet --config=/etc/kubernetes/kubelet.yaml "
            "--config-dir=/etc/kubernetes/kubelet.conf.d",
        ),
        "/etc/kubernetes/kubelet.yaml": kubelet_config(),
        "/etc/kubernetes/kubelet.conf.d/.keep": "",
    },
    # several places at once: every one is pointed at the relay, and back
    "everywhere": {
        "/lib/systemd/system/kubelet.service": KUBELET_UNIT,
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf": kubeadm_dropin(),
        "/var/lib/kubelet/kubeadm-flags.env": FLAGS_ENV,
        "/var/lib/kubelet/config.yaml": kubelet_config(CONTAINERD).replace("\n", "\r\n"),
        "/etc/default/kubelet": "KUBELET_EXTRA_ARGS=--container-runtime-endpoint=" + CONTAINERD,
    },
}


def make_tree(root: Path, files: Dict[str, str]) -> None:
    for path, content in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode())
    # a usr-merged tree, as on current distributions
    (root / "lib").exists() or (root / "lib").symlink_to("usr/lib")


def snapshot(root: Path) -> Dict[str, Tuple[bytes, int]]:
    """Every file outside /var/lib/cri-resmgr (the relay's state): bytes and mode."""
    out = {}
    for path in root.rglob("*"):
        rel = "/" + str(path.relative_to(root))
        if rel.startswith("/var/lib/cri-resmgr") or path.is_dir():
            continue
        out[rel] = (
            path.read_bytes() if not path.is_symlink() else b"->" + os.readlink(path).encode(),
            path.lstat().st_mode,
        )
    return out


def script(
    name: str, root: Optional[Path], cri_resmgr: Optional[str], **env: str
) -> subprocess.CompletedProcess:
    full = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    if root is not None:
        full["ROOT"] = str(root)
    if cri_resmgr is not None:
        full["CRI_RESMGR"] = cri_resmgr
    full.update(env)
    return subprocess.run(
        [str(REPO / name)], env=full, capture_output=True, text=True, check=False, timeout=120
    )


def status(cri_resmgr: str, root: Path) -> int:
    return subprocess.run(
        [cri_resmgr, "kubelet", "status", "--root", str(root)], capture_output=True, check=False
    ).returncode


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_setup_clean_roundtrip(layout: str, tmp_path: Path, cri_resmgr: str) -> None:
    root = tmp_path / "root"
    make_tree(root, LAYOUTS[layout])
    original = snapshot(root)
    assert status(cri_resmgr, root) == 3

    first = script("setup.sh", root, cri_resmgr)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "enable: done" in first.stdout, first.stdout
    assert "nothing restarted" in first.stdout
    assert status(cri_resmgr, root) == 0
    pointed = snapshot(root)
    assert pointed != original
    assert any(RELAY.encode() in data for data, _ in pointed.values())

    again = script("setup.sh", root, cri_resmgr)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "enable: nothing changed" in again.stdout, again.stdout
    assert snapshot(root) == pointed

    back = script("clean.sh", root, cri_resmgr)
    assert back.returncode == 0, back.stdout + back.stderr
    assert "disable: done" in back.stdout, back.stdout
    assert snapshot(root) == original
    assert not (root / "var/lib/cri-resmgr/kubelet-backup/manifest.json").exists()
    assert status(cri_resmgr, root) == 3

    again = script("clean.sh", root, cri_resmgr)
    assert again.returncode == 0, again.stdout + again.stderr
    assert snapshot(root) == original


def test_kubelet_template_points_at_relay(tmp_path: Path, cri_resmgr: str) -> None:
    """The shipped kubelet drop-in template, copied into a kubeadm layout, wins."""
    root = tmp_path / "root"
    make_tree(root, LAYOUTS["kubeadm-flags"])
    assert status(cri_resmgr, root) == 3
    shutil.copy(
        REPO / "etc/kubelet/90-cri-resmgr.conf",
        root / "etc/systemd/system/kubelet.service.d/90-cri-resmgr.conf",
    )
    assert status(cri_resmgr, root) == 0


def test_clean_refuses_when_kubelet_still_points_at_relay(tmp_path: Path, cri_resmgr: str) -> None:
    """A relay endpoint setup.sh did not write: clean.sh says so and exits 1."""
    root = tmp_path / "root"
    files = dict(LAYOUTS["kubeadm-flags"])
    files["/var/lib/kubelet/kubeadm-flags.env"] = FLAGS_ENV.replace(CONTAINERD, RELAY)
    make_tree(root, files)
    done = script("clean.sh", root, cri_resmgr)
    assert done.returncode == 1
    assert "still points at the relay" in done.stderr


# --- install.sh on a tree ---------------------------------------------------------------


def package_tree(root: Path, kind: str) -> None:
    """The files of an installed package that install.sh reads, in a tree."""
    run_make = ["make", "-s", "--no-print-directory", "install", f"DESTDIR={root}"]
    envdir = "/etc/default" if kind == "deb" else "/etc/sysconfig"
    subprocess.run(run_make + [f"ENVDIR={envdir}"], cwd=REPO, check=True)
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/cri-resmgr").symlink_to("/opt/venvs/cri-resource-manager/bin/cri-resmgr")
    if kind == "deb":
        (root / "var/lib/dpkg").mkdir(parents=True)


@pytest.mark.parametrize("kind", ["deb", "rpm"])
def test_install_sh_on_tree(kind: str, tmp_path: Path, cri_resmgr: str) -> None:
    root = tmp_path / "root"
    package_tree(root, kind)
    envfile = root / ("etc/default" if kind == "deb" else "etc/sysconfig") / "cri-resource-manager"
    shipped = envfile.read_text()

    done = script("install.sh", root, cri_resmgr)
    assert done.returncode == 0, done.stdout + done.stderr
    conf = (root / "etc/cri-resmgr/90-install.conf").read_text()
    assert "[runtime]\nrunner = containerd\n" in conf and "[policy]\nname = null\n" in conf
    env = envfile.read_text()
    assert "POLICY_OPTIONS=\"-dump='reset,full:.*' -dump-file=/tmp/cri.dump\"\n" in env
    assert 'DEBUG_OPTIONS=""\n' in env
    # Every other line of the shipped file is kept, in place.
    changed = [a for a, b in zip(shipped.splitlines(), env.splitlines()) if a != b]
    assert changed == ['POLICY_OPTIONS=""']
    assert (
        root / "etc/systemd/system/multi-user.target.wants/cri-resource-manager.service"
    ).is_symlink()
    # The values reach the program as the unit passes them (split, quotes removed).
    out = subprocess.run(
        [
            "sh",
            "-c",
            f'set -f; . "{envfile}"; "$0" $POLICY_OPTIONS -config-dir="$1" -print-config',
            cri_resmgr,
            str(root / "etc/cri-resmgr"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "rules = reset,full:.*" in out and "file = /tmp/cri.dump" in out

    before = snapshot(root)
    again = script("install.sh", root, cri_resmgr)
    assert again.returncode == 0 and "wrote" not in again.stdout, again.stdout
    assert snapshot(root) == before

    other = script(
        "install.sh",
        root,
        cri_resmgr,
        RUNNER="crio",
        CRI_RESMGR_POLICY="static",
        CRI_RESMGR_DEBUG_OPTIONS="-log-level=debug",
    )
    assert other.returncode == 0, other.stdout + other.stderr
    assert "runner = crio" in (root / "etc/cri-resmgr/90-install.conf").read_text()
    assert 'DEBUG_OPTIONS="-log-level=debug"' in envfile.read_text()

    # A later file overrides install.sh's: it says so.
    (root / "etc/cri-resmgr/local.conf").write_text("[policy]\nname = balloons\n")
    over = script(
        "install.sh",
        root,
        cri_resmgr,
        RUNNER="crio",
        CRI_RESMGR_POLICY="static",
        CRI_RESMGR_DEBUG_OPTIONS="-log-level=debug",
    )
    assert over.returncode == 0
    assert "warning: [policy] name is 'balloons' from " in over.stdout, over.stdout


@pytest.mark.parametrize(
    "env,message",
    [
        ({"RUNNER": "docker"}, "RUNNER must be containerd or crio"),
        ({"CRI_RESMGR_POLICY": "bogus"}, "not valid; nothing was written"),
        ({"CRI_RESMGR_POLICY_OPTIONS": "-no-such-flag"}, "not valid; nothing was written"),
        ({"CRI_RESMGR_DEBUG_OPTIONS": '-debug="x"'}, "may not contain"),
    ],
)
def test_install_sh_rejects_bad_settings(
    env: Dict[str, str], message: str, tmp_path: Path, cri_resmgr: str
) -> None:
    root = tmp_path / "root"
    package_tree(root, "deb")
    before = snapshot(root)
    done = script("install.sh", root, cri_resmgr, **env)
    assert done.returncode == 1
    assert message in done.stderr, done.stderr
    assert snapshot(root) == before


# --- root and tools ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["install.sh", "setup.sh", "clean.sh"])
def test_needs_root(name: str) -> None:
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(REPO / name)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert "run as root" in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["setup.sh", "clean.sh"])
def test_missing_cri_resmgr(name: str, tmp_path: Path) -> None:
    done = script(name, tmp_path, "/nonexistent/cri-resmgr")
    assert done.returncode == 1
    assert "/nonexistent/cri-resmgr is needed but not found" in done.stderr


@pytest.mark.parametrize("name", ["install.sh", "setup.sh", "clean.sh"])
def test_missing_systemctl(name: str, tmp_path: Path) -> None:
    """On the host, without systemctl: a clear message before anything is done."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for directory in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        for tool in Path(directory).iterdir():
            if tool.name != "systemctl" and not (bindir / tool.name).exists():
                (bindir / tool.name).symlink_to(tool)
    fake = tmp_path / "cri-resmgr"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    done = subprocess.run(
        [str(REPO / name)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(bindir), "CRI_RESMGR": str(fake)},
    )
    assert done.returncode == 1
    assert "systemctl is needed" in done.stderr, done.stderr


def test_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt install shellcheck)")
    files = ["lib.sh", "install.sh", "setup.sh", "clean.sh", "debian/finish-venv.sh"]
    files += [f"debian/cri-resource-manager.{s}" for s in ("config", "postinst", "prerm", "postrm")]
    done = subprocess.run(
        ["shellcheck", "-x", "-s", "sh", *files],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout


def test_rpm_scriptlets_shellcheck(tmp_path: Path) -> None:
    """The spec's %preun and %postun, with the macros expanded, are clean sh too."""
    if shutil.which("shellcheck") is None or shutil.which("rpmspec") is None:
        pytest.skip("shellcheck or rpmspec is not installed")
    spec = subprocess.run(
        ["rpmspec", "-P", str(REPO / "rpm/cri-resource-manager.spec")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("preun", "postun"):
        body = spec.split(f"\n%{name}\n", 1)[1]
        body = body.split("\n%", 1)[0]
        script = tmp_path / name
        # SC2086: the systemd macros write [ $1 -eq 0 ], as RPM scriptlets usually do.
        script.write_text("#!/bin/sh\n# shellcheck disable=SC2086,SC1091\n" + body + "\n")
        done = subprocess.run(
            ["shellcheck", "-s", "sh", str(script)], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"%{name}:\n{body}\n{done.stdout}"


# --- the configured relay socket (no socket path in the scripts) -----------------------


def test_setup_clean_use_the_configured_relay_socket(tmp_path: Path, cri_resmgr: str) -> None:
    """[relay] socket in the tree's /etc/cri-resmgr is what setup.sh points kubelet at
    and what clean.sh (and so package removal) recognizes as the relay."""
    root = tmp_path / "root"
    make_tree(root, LAYOUTS["kubeadm-flags"])
    conf = root / "etc/cri-resmgr"
    conf.mkdir(parents=True)
    (conf / "local.conf").write_text("[relay]\nsocket = /run/cri-resmgr/other.sock\n")
    original = snapshot(root)
    done = script("setup.sh", root, cri_resmgr)
    assert done.returncode == 0, done.stdout + done.stderr
    flags = (root / "var/lib/kubelet/kubeadm-flags.env").read_text()
    assert "--container-runtime-endpoint=unix:///run/cri-resmgr/other.sock " in flags, flags
    assert RELAY not in flags
    assert status(cri_resmgr, root) == 0
    back = script("clean.sh", root, cri_resmgr)
    assert back.returncode == 0, back.stdout + back.stderr
    assert snapshot(root) == original


@pytest.mark.parametrize(
    "path",
    ["lib.sh", "install.sh", "setup.sh", "clean.sh"]
    + [f"debian/cri-resource-manager.{s}" for s in ("postinst", "prerm", "postrm", "config")],
)
def test_no_relay_socket_path_in_scripts(path: str) -> None:
    """The socket comes from the configuration (`cri-resmgr kubelet` reads it)."""
    text = (REPO / path).read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "cri-resmgr.sock" not in code
    spec = (REPO / "rpm/cri-resource-manager.spec").read_text()
    assert "cri-resmgr.sock" not in spec.split("%preun", 1)[1].split("%files", 1)[0]


# --- lib.sh: the removal path of prerm and %preun, on trees ----------------------------


def kubelet_back(root: Path, cri_resmgr: str, force: str = "0") -> subprocess.CompletedProcess:
    """crm_kubelet_back remove, as prerm and %preun run it, but on a tree."""
    return subprocess.run(
        [
            "sh",
            "-ec",
            f'. "{REPO}/lib.sh"; crm_package_init; ROOT="$1"; crm_host=false; '
            'CRI_RESMGR="$2"; crm_kubelet_back remove "$3"; echo "incomplete=$crm_incomplete"',
            "sh",
            str(root),
            cri_resmgr,
            force,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": os.environ["PATH"], "LANG": "C.UTF-8"},
    )


def enabled_tree(tmp_path: Path, cri_resmgr: str) -> Tuple[Path, Dict]:
    root = tmp_path / "root"
    make_tree(root, LAYOUTS["kubeadm-flags"])
    original = snapshot(root)
    assert script("setup.sh", root, cri_resmgr).returncode == 0
    assert status(cri_resmgr, root) == 0
    return root, original


def test_removal_points_kubelet_back(tmp_path: Path, cri_resmgr: str) -> None:
    root, original = enabled_tree(tmp_path, cri_resmgr)
    done = kubelet_back(root, cri_resmgr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pointing kubelet back at the runtime first" in done.stdout
    assert "disable: done" in done.stdout and "incomplete=false" in done.stdout
    assert snapshot(root) == original
    # Nothing to do the second time: quiet.
    again = kubelet_back(root, cri_resmgr)
    assert again.returncode == 0 and again.stdout == "incomplete=false\n", again.stdout


def test_removal_refuses_with_a_damaged_manifest(tmp_path: Path, cri_resmgr: str) -> None:
    """The confirmed case: a damaged manifest.json. status still says "points at the
    relay" (exit 0), disable cannot restore: the removal stops, kubelet untouched."""
    root, _ = enabled_tree(tmp_path, cri_resmgr)
    manifest = root / "var/lib/cri-resmgr/kubelet-backup/manifest.json"
    manifest.write_text("{damaged")
    pointed = snapshot(root)
    done = kubelet_back(root, cri_resmgr)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "could not be restored completely and still points at the relay" in done.stderr
    assert "CRI_RESMGR_FORCE_REMOVE=1" in done.stderr
    assert snapshot(root) == pointed
    forced = kubelet_back(root, cri_resmgr, force="1")
    assert forced.returncode == 0, forced.stderr
    assert "removing anyway (CRI_RESMGR_FORCE_REMOVE=1)" in forced.stderr
    assert "/var/lib/cri-resmgr/kubelet-backup" in forced.stderr
    assert manifest.read_text() == "{damaged"


def test_removal_refuses_when_status_fails(tmp_path: Path, cri_resmgr: str) -> None:
    """`kubelet status` exits 1 (kubelet's config unreadable): nobody can tell whether
    kubelet uses the relay, so the removal stops (it used to warn and go on)."""
    root, _ = enabled_tree(tmp_path, cri_resmgr)
    (root / "var/lib/kubelet/config.yaml").write_text("kind: KubeletConfiguration\nfoo: [\n")
    done = kubelet_back(root, cri_resmgr)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot tell whether kubelet uses the relay" in done.stderr
    assert "exit 1" in done.stderr and "CRI_RESMGR_FORCE_REMOVE=1" in done.stderr
    assert "config.yaml" in done.stderr
    assert kubelet_back(root, cri_resmgr, force="1").returncode == 0


def test_removal_refuses_for_a_foreign_relay_setting(tmp_path: Path, cri_resmgr: str) -> None:
    root, _ = enabled_tree(tmp_path, cri_resmgr)
    extra = root / "etc/default/kubelet"
    extra.write_text(f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={RELAY}\n")
    done = kubelet_back(root, cri_resmgr)
    assert done.returncode == 1
    assert "did not make" in done.stderr and "CRI_RESMGR_FORCE_REMOVE=1" in done.stderr


def test_removal_goes_on_when_kubelet_is_off_the_relay(tmp_path: Path, cri_resmgr: str) -> None:
    """disable cannot restore a file that was removed after enable, but kubelet no
    longer points at the relay: the removal is safe, a warning, the backup stays."""
    root, _ = enabled_tree(tmp_path, cri_resmgr)
    # kubeadm-flags.env (the file enable changed) was deleted since: not recreated.
    (root / "var/lib/kubelet/kubeadm-flags.env").unlink()
    done = kubelet_back(root, cri_resmgr)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "incomplete=true" in done.stdout
    assert "some files could not be restored" in done.stderr
    assert (root / "var/lib/cri-resmgr/kubelet-backup/manifest.json").exists()


# --- lib.sh: the installed version, the venv re-link -------------------------------------


def test_installed_version_of_a_missing_rpm(tmp_path: Path) -> None:
    """`rpm -q --qf` prints "package X is not installed" on stdout: not a version."""
    if shutil.which("rpm") is None:
        pytest.skip("rpm is not installed")
    dbpath = tmp_path / "rpmdb"
    subprocess.run(["rpm", "--dbpath", str(dbpath), "--initdb"], check=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "rpm").write_text(f'#!/bin/sh\nexec {shutil.which("rpm")} --dbpath {dbpath} "$@"\n')
    (fake / "rpm").chmod(0o755)
    done = subprocess.run(
        [
            "sh",
            "-c",
            f'. "{REPO}/lib.sh"; crm_installed_version rpm cri-resource-manager; echo "rc=$?"',
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert done.stdout == "rc=0\n", done.stdout


VENV_CFG_311 = (
    "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.0\n"
    "executable = /usr/bin/python3.11\n"
)


@pytest.mark.parametrize(
    "cfg,link",
    [
        (VENV_CFG_311, "/usr/bin/python3.11-gone"),
        # Python < 3.11 venvs have no `executable =`: home and version
        (
            "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.0\n",
            "/usr/bin/python3.11-gone",
        ),
        # nor a usable home: where the venv's python3 link leads
        (
            "home = /nonexistent\ninclude-system-site-packages = false\nversion = 3.11.0\n",
            "/usr/bin/python3.11",
        ),
    ],
    ids=["executable", "home-version", "links"],
)
def test_relink_venv(tmp_path: Path, cfg: str, link: str) -> None:
    """postinst triggered (python3.11 upgraded) re-points the venv's broken links."""
    python = Path("/usr/bin/python3.11")
    if not python.exists():
        pytest.skip("no /usr/bin/python3.11 here")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(cfg)
    (venv / "bin/python3.11").symlink_to(link)
    (venv / "bin/python3").symlink_to("python3.11")
    (venv / "bin/python").symlink_to("python3.10")  # broken: the old interpreter
    done = subprocess.run(
        ["sh", "-ec", f'. "{REPO}/lib.sh"; crm_relink_venv "{venv}"'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert os.readlink(venv / "bin/python3.11") == str(python)
    assert os.readlink(venv / "bin/python") == "python3.11"
    assert os.readlink(venv / "bin/python3") == "python3.11"
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f"version = {version}\n" in (venv / "pyvenv.cfg").read_text()
    assert "missing" not in done.stderr
