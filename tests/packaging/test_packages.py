"""The built .deb and .rpm: contents, scriptlets, lintian, static unit checks,
reproducibility, and that the bundled virtualenvs run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = "cri-resource-manager.service"


def run(*cmd: str, **kwargs) -> str:  # type: ignore[no-untyped-def]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, **kwargs).stdout


def parse_unit(text: str) -> Dict[str, Dict[str, List[str]]]:
    """section -> key -> values (a key may repeat), continuation lines joined."""
    out: Dict[str, Dict[str, List[str]]] = {}
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


# --- make install -------------------------------------------------------------------


def test_make_install_layout(tmp_path: Path) -> None:
    """`make install DESTDIR` installs the non-Python files, as the packages use it."""
    for envdir, extra in (("/etc/default", {}), ("/etc/sysconfig", {"PRESETDIR": "/p"})):
        dest = tmp_path / envdir.strip("/").replace("/", "-")
        args = [f"DESTDIR={dest}", f"ENVDIR={envdir}"] + [f"{k}={v}" for k, v in extra.items()]
        run("make", "--no-print-directory", "-s", "install", *args, cwd=REPO)
        found = {
            "/" + str(p.relative_to(dest)): oct(p.stat().st_mode & 0o7777)
            for p in dest.rglob("*")
            if p.is_file()
        }
        expected = {
            f"/lib/systemd/system/{UNIT}": "0o644",
            "/usr/lib/tmpfiles.d/cri-resource-manager.conf": "0o644",
            "/etc/cri-resmgr/cri-resmgr.conf": "0o644",
            f"{envdir}/cri-resource-manager": "0o644",
            "/etc/logrotate.d/cri-resource-manager": "0o644",
            "/usr/share/cri-resource-manager/setup.sh": "0o755",
            "/usr/share/cri-resource-manager/clean.sh": "0o755",
            "/usr/share/cri-resource-manager/lib.sh": "0o644",
            "/usr/share/cri-resource-manager/kubelet/90-cri-resmgr.conf": "0o644",
            "/usr/share/man/man8/cri-resmgr.8": "0o644",
        }
        if extra:
            expected["/p/90-cri-resource-manager.preset"] = "0o644"
        assert found == expected
        # One source for both environment files (only the directory differs).
        assert (dest / envdir.lstrip("/") / "cri-resource-manager").read_bytes() == (
            REPO / "etc/cri-resource-manager.env"
        ).read_bytes()


def test_unit_file() -> None:
    """The unit as the issue specifies it (a typo here is silent until a node breaks)."""
    unit = parse_unit((REPO / "etc/systemd" / UNIT).read_text())
    u, s = unit["Unit"], unit["Service"]
    assert s["Type"] == ["notify"]
    assert "kubelet.service" in u["Before"][0].split()
    assert {"containerd.service", "crio.service"} <= set(u["After"][0].split())
    assert s["Restart"] == ["always"]
    assert "HUP" in s["ExecReload"][0] and "MAINPID" in s["ExecReload"][0]
    assert s["EnvironmentFile"] == [
        "-/etc/default/cri-resource-manager",
        "-/etc/sysconfig/cri-resource-manager",
    ]
    assert s["ExecStart"] == ["/usr/bin/cri-resmgr $CONFIG_OPTIONS $POLICY_OPTIONS $DEBUG_OPTIONS"]
    assert s["LogRateLimitIntervalSec"] == ["0"]
    assert s["StateDirectory"] == ["cri-resmgr"] and s["StateDirectoryMode"] == ["0700"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    tmpfiles = (REPO / "etc/tmpfiles.d/cri-resource-manager.conf").read_text()
    assert re.search(r"^d /run/cri-resmgr 0755 root root -$", tmpfiles, re.M)


def test_environment_file() -> None:
    """The environment file (/etc/default or /etc/sysconfig) defines the three
    variables, empty, and is valid sh."""
    out = run(
        "sh",
        "-c",
        '. ./etc/cri-resource-manager.env; printf "%s|%s|%s" "${CONFIG_OPTIONS-x}" '
        '"${POLICY_OPTIONS-x}" "${DEBUG_OPTIONS-x}"',
        cwd=REPO,
    )
    assert out == "||"


def test_logrotate_file() -> None:
    """The CRI dump install.sh turns on is rotated by size; the service reopens it on
    reload. (test_deb_install.py runs logrotate on it.)"""
    text = (REPO / "etc/logrotate.d/cri-resource-manager").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip()[0] != "#"]
    assert lines[0] == "/tmp/cri.dump {" and lines[-1] == "}"
    for directive in ("su root root", "size 100M", "rotate 3", "compress", "nocreate"):
        assert directive in lines, directive
    assert "systemctl reload cri-resource-manager.service >/dev/null 2>&1 || true" in lines
    install_sh = (REPO / "install.sh").read_text()
    assert "-dump-file=/tmp/cri.dump" in install_sh


def test_unit_security_offline(deb_package: Path, tmp_path: Path) -> None:
    """systemd-analyze security rates the shipped unit's exposure (lower is safer)."""
    run("dpkg-deb", "-x", str(deb_package), str(tmp_path))
    out = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=yes",
            str(tmp_path / "lib/systemd/system" / UNIT),
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
    assert match, out
    print(f"systemd-analyze security --offline=yes: exposure {match.group(1)}")
    assert float(match.group(1)) <= 3.5, out


# --- the .deb -------------------------------------------------------------------------


DEB_FILES = [
    "./opt/venvs/cri-resource-manager/bin/cri-resmgr",
    "./opt/venvs/cri-resource-manager/bin/python3.11 -> /usr/bin/python3.11",
    "./opt/venvs/cri-resource-manager/pyvenv.cfg",
    "./opt/venvs/cri-resource-manager/lib/python3.11/site-packages/cri_resmgr/cli.py",
    "./opt/venvs/cri-resource-manager/lib/python3.11/site-packages/grpc/__init__.py",
    "./usr/bin/cri-resmgr -> /opt/venvs/cri-resource-manager/bin/cri-resmgr",
    "./etc/cri-resmgr/cri-resmgr.conf",
    "./etc/default/cri-resource-manager",
    f"./lib/systemd/system/{UNIT}",
    "./usr/lib/tmpfiles.d/cri-resource-manager.conf",
    "./etc/logrotate.d/cri-resource-manager",
    "./usr/share/cri-resource-manager/setup.sh",
    "./usr/share/cri-resource-manager/clean.sh",
    "./usr/share/cri-resource-manager/lib.sh",
    "./usr/share/cri-resource-manager/kubelet/90-cri-resmgr.conf",
    "./usr/share/man/man8/cri-resmgr.8.gz",
    "./usr/share/doc/cri-resource-manager/README.md",
    "./usr/share/doc/cri-resource-manager/copyright",
]


def test_deb_contents(deb_package: Path) -> None:
    listing = run("dpkg-deb", "-c", str(deb_package))
    names = {" ".join(line.split()[5:]) for line in listing.splitlines()}
    missing = [f for f in DEB_FILES if f not in names]
    assert not missing, f"missing from {deb_package.name}: {missing}"
    # Not shipped: build tools in the venv, the RPM environment file, stray bytecode.
    for unwanted in ("site-packages/pip/", "site-packages/setuptools/", "/etc/sysconfig/"):
        assert not [n for n in names if unwanted in n], unwanted
    assert (
        "./opt/venvs/cri-resource-manager/lib/python3.11/site-packages/cri_resmgr/__pycache__/cli.cpython-311.pyc"
        in names
    )


def test_deb_control(deb_package: Path, tmp_path: Path) -> None:
    run("dpkg-deb", "-e", str(deb_package), str(tmp_path))
    control = (tmp_path / "control").read_text()
    assert re.search(r"^Depends:.*\bpython3\.11\b", control, re.M)
    assert (tmp_path / "conffiles").read_text().split() == [
        "/etc/cri-resmgr/cri-resmgr.conf",
        "/etc/default/cri-resource-manager",
        "/etc/logrotate.d/cri-resource-manager",
    ]
    assert (tmp_path / "triggers").read_text().split() == [
        "interest-noawait",
        "/usr/bin/python3.11",
    ]
    assert "Point kubelet at cri-resource-manager now?" in (tmp_path / "templates").read_text()
    prerm = (tmp_path / "prerm").read_text()
    # The kubelet is put back (lib.sh, as clean.sh does) before debhelper's part stops
    # the service.
    assert prerm.index("crm_kubelet_back remove") < prerm.index("deb-systemd-invoke stop")
    postinst = (tmp_path / "postinst").read_text()
    assert postinst.index("deb-systemd-invoke $_dh_action") < postinst.index("point_kubelet\n")
    assert '"$SHARE/setup.sh"' in postinst and "[ -S" not in postinst
    assert "deb-systemd-helper enable" in postinst
    assert "systemd-tmpfiles" in postinst
    postrm = (tmp_path / "postrm").read_text()
    assert "rm -rf /var/lib/cri-resmgr" in postrm and "deb-systemd-helper purge" in postrm


def test_lintian_clean(deb_package: Path) -> None:
    """No lintian tag at any level (overrides in debian/*.lintian-overrides say why)."""
    start = time.monotonic()
    done = subprocess.run(
        [
            "lintian",
            "--pedantic",
            "-I",
            "--fail-on",
            "error,warning,info,pedantic",
            str(deb_package),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    print(f"lintian: {time.monotonic() - start:.1f} s")
    tags = [line for line in done.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert done.returncode == 0 and not tags, done.stdout + done.stderr


# --- the .rpm -------------------------------------------------------------------------


RPM_FILES = [
    "/opt/cri-resource-manager/bin/cri-resmgr",
    "/opt/cri-resource-manager/bin/python3.11",
    "/opt/cri-resource-manager/pyvenv.cfg",
    "/opt/cri-resource-manager/lib/python3.11/site-packages/cri_resmgr/cli.py",
    "/usr/bin/cri-resmgr",
    "/etc/cri-resmgr/cri-resmgr.conf",
    "/etc/sysconfig/cri-resource-manager",
    f"/usr/lib/systemd/system/{UNIT}",
    "/usr/lib/systemd/system-preset/90-cri-resource-manager.preset",
    "/usr/lib/tmpfiles.d/cri-resource-manager.conf",
    "/etc/logrotate.d/cri-resource-manager",
    "/usr/share/cri-resource-manager/setup.sh",
    "/usr/share/cri-resource-manager/clean.sh",
    "/usr/share/cri-resource-manager/lib.sh",
    "/usr/share/cri-resource-manager/kubelet/90-cri-resmgr.conf",
    "/var/lib/cri-resmgr",
    "/run/cri-resmgr",
]


def test_rpm_contents(rpm_package: Path) -> None:
    names = set(run("rpm", "-qlp", str(rpm_package)).split())
    missing = [f for f in RPM_FILES if f not in names]
    assert not missing, f"missing from {rpm_package.name}: {missing}"
    assert not [n for n in names if "/site-packages/pip/" in n or n.startswith("/etc/default")]
    assert run("rpm", "-qp", "--configfiles", str(rpm_package)).split() == [
        "/etc/cri-resmgr/cri-resmgr.conf",
        "/etc/logrotate.d/cri-resource-manager",
        "/etc/sysconfig/cri-resource-manager",
    ]
    # The man page once (make install), not also from the spec (compressed or not:
    # brp-compress decides).
    assert len([n for n in names if "/man8/cri-resmgr.8" in n]) == 1
    requires = run("rpm", "-qp", "--requires", str(rpm_package)).split("\n")
    assert "/usr/bin/python3.11" in requires
    # Nothing generated from the venv's shared objects.
    assert not [r for r in requires if ".so" in r], requires
    dump = run("rpm", "-qp", "--dump", str(rpm_package))
    state = [line for line in dump.splitlines() if line.startswith("/var/lib/cri-resmgr ")]
    assert state and state[0].split()[4] == "040700"


def test_rpm_scriptlets(rpm_package: Path) -> None:
    scripts = run("rpm", "-qp", "--scripts", str(rpm_package))
    post = scripts[scripts.index("postinstall scriptlet") : scripts.index("preuninstall scriptlet")]
    preun = scripts[scripts.index("preuninstall scriptlet") : scripts.index("postuninstall")]
    postun = scripts[scripts.index("postuninstall scriptlet") :]
    # %systemd_post (preset), %systemd_preun (disable --now on erase),
    # %systemd_postun_with_restart (try-restart on upgrade).
    assert re.search(
        r"(systemctl --no-reload preset|systemd-update-helper install-system-units) .*" + UNIT, post
    )
    assert re.search(r"(disable --now|remove-system-units) .*" + UNIT, preun)
    assert re.search(r"(try-restart|mark-restart-system-units) .*" + UNIT, postun)
    # The kubelet is put back (lib.sh, as clean.sh does) before the service stops.
    assert preun.index("crm_kubelet_back remove") < preun.index(UNIT)
    assert "rm -rf /var/lib/cri-resmgr" in postun and "! -name kubelet-backup" in postun


# --- both -----------------------------------------------------------------------------


def test_bundled_venvs_run(deb_package: Path, rpm_package: Path, tmp_path: Path) -> None:
    """Unpacked, each venv imports its dependencies and runs the program."""
    deb_root = tmp_path / "deb"
    run("dpkg-deb", "-x", str(deb_package), str(deb_root))
    rpm_root = tmp_path / "rpm"
    run("rpm", "--root", str(rpm_root), "--initdb")
    run("rpm", "-i", "--root", str(rpm_root), "--nodeps", "--noscripts", str(rpm_package))
    for venv in (
        deb_root / "opt/venvs/cri-resource-manager",
        rpm_root / "opt/cri-resource-manager",
    ):
        python = str(venv / "bin/python")
        env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"}
        out = run(python, "-m", "cri_resmgr.cli", "-version", env=env)
        assert out.startswith("cri-resmgr "), out
        run(
            python,
            "-c",
            "import grpc, google.protobuf, yaml, daemon, hpack, prometheus_client",
            env=env,
        )
        # pip's record of the installed files matches them (also the rewritten scripts).
        check = (
            "import importlib.metadata as m, hashlib, base64, os\n"
            "bad = []\n"
            "for d in m.distributions():\n"
            "    for f in d.files or []:\n"
            "        if f.hash and os.path.isfile(f.locate()):\n"
            "            data = open(f.locate(), 'rb').read()\n"
            "            h = base64.urlsafe_b64encode(hashlib.sha256(data).digest())\n"
            "            h = h.rstrip(b'=').decode()\n"
            "            if h != f.hash.value: bad.append(str(f))\n"
            "print(bad)\n"
        )
        assert run(python, "-c", check, env=env).strip() == "[]"
        cfg = (venv / "pyvenv.cfg").read_text()
        assert "command" not in cfg and "home = /usr/bin" in cfg


def test_no_build_paths(deb_package: Path, rpm_package: Path, tmp_path: Path) -> None:
    """No file names the build directories (reproducible, relocatable)."""
    run("dpkg-deb", "-x", str(deb_package), str(tmp_path / "deb"))
    run("rpm", "--root", str(tmp_path / "rpm"), "--initdb")
    run("rpm", "-i", "--root", str(tmp_path / "rpm"), "--nodeps", "--noscripts", str(rpm_package))
    dbpath = run("rpm", "--eval", "%_dbpath").strip()
    shutil.rmtree(tmp_path / "rpm" / dbpath.lstrip("/"))  # the throwaway rpm database
    needles = [str(REPO).encode(), b"BUILDROOT", b"/build/deb/", b"/build/rpm/"]
    offenders = []
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            offenders += [f"{path.relative_to(tmp_path)}: {n!r}" for n in needles if n in data]
    assert not offenders, offenders[:20]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("kind", ["deb", "rpm"])
def test_rebuild_is_identical(
    kind: str, deb_package: Path, rpm_package: Path, tmp_path: Path, timings: Dict[str, float]
) -> None:
    """The same source builds the same bytes in another directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE="/dev/null", WHEELHOUSE=str(REPO / "build/wheelhouse"))
    start = time.monotonic()
    if kind == "deb":
        source = REPO / "build/deb" / f"cri-resource-manager-{deb_package.name.split('_')[1]}"
        other = tmp_path / "elsewhere" / source.name
        shutil.copytree(source, other, symlinks=True)
        subprocess.run(
            ["dpkg-buildpackage", "-us", "-uc", "-b"],
            cwd=other,
            env=env,
            capture_output=True,
            check=True,
        )
        rebuilt = other.parent / deb_package.name
        original = deb_package
    else:
        topdir = tmp_path / "elsewhere"
        shutil.copytree(REPO / "build/rpm/SOURCES", topdir / "SOURCES")
        version = rpm_package.name.split("-")[3]
        subprocess.run(
            [
                "rpmbuild",
                "--nodeps",
                "--define",
                f"_topdir {topdir}",
                "--define",
                f"upstream_version {version}",
                "--define",
                f"wheelhouse {REPO / 'build/wheelhouse'}",
                "-tb",
                str(topdir / f"SOURCES/cri-resource-manager-{version}.tar.gz"),
            ],
            env=env,
            capture_output=True,
            check=True,
        )
        (rebuilt,) = topdir.glob("RPMS/*/*.rpm")
        original = rpm_package
    timings[f"rebuild {kind}"] = time.monotonic() - start
    assert rebuilt.read_bytes() == original.read_bytes(), f"{rebuilt} differs from {original}"


def test_versions_and_dates_agree() -> None:
    """cri_resmgr/version.py, debian/changelog and the spec name the same release, and
    both changelogs the same day (the packages' timestamps come from them)."""
    ns: Dict[str, str] = {}
    exec((REPO / "cri_resmgr/version.py").read_text(), ns)  # noqa: S102 - our own file
    version = ns["__version__"]
    deb_version = run("dpkg-parsechangelog", "-l", str(REPO / "debian/changelog"), "-SVersion")
    assert deb_version.strip() == version
    spec = (REPO / "rpm/cri-resource-manager.spec").read_text()
    assert f"%global upstream_version {version}}}" in spec
    deb_epoch = int(run("dpkg-parsechangelog", "-l", str(REPO / "debian/changelog"), "-STimestamp"))
    entry = re.search(r"^%changelog\n\* (\w{3} \w{3} \d\d \d{4}) .* - (\S+)-\d+$", spec, re.M)
    assert entry and entry.group(2) == version
    assert time.strftime("%a %b %d %Y", time.gmtime(deb_epoch)) == entry.group(1)
    assert deb_epoch % 86400 == 0, "debian/changelog's time must be 00:00:00 +0000 (rpm's is)"
