"""A real systemd in a directory tree: the cached Debian root and booted machines.

Ownership: making (once) and reusing the Debian 12 root the package tests boot
(`ensure_root`), and `Machine`, one `systemd-nspawn --ephemeral` boot of it whose
commands run through `nsenter` (this host has no machined, see
/work/shared/systemd-container.md). Everything a machine starts is stopped by
`Machine.stop()`, which also removes the empty cgroups nspawn leaves behind and a
throwaway copy of the root a killed nspawn could not remove.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

#: Bump when the recipe changes: a root with another stamp is made again.
ROOT_PACKAGES = "systemd,systemd-sysv,dbus,containerd,python3.11,libstdc++6,debconf,rpm"
ROOT_RECIPE = "v2 bookworm minbase " + ROOT_PACKAGES
STAMP = ".packaging-test-root"
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "TERM": "dumb",
}


class NspawnError(Exception):
    """Making the root or booting a machine failed; the message says where to look."""


def apt_mirror() -> str:
    """The Debian mirror this host's apt uses (deb.debian.org if none is found)."""
    for path in glob.glob("/etc/apt/sources.list.d/*.sources"):
        for line in Path(path).read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    try:
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    except FileNotFoundError:
        pass
    return "http://deb.debian.org/debian"


def _nspawn_run(root: Path, *cmd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a command in the root without booting it (host network, nothing started)."""
    return subprocess.run(
        [
            "systemd-nspawn",
            "-q",
            "-D",
            str(root),
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "env",
            *(f"{k}={v}" for k, v in CONTAINER_ENV.items()),
            "DEBIAN_FRONTEND=noninteractive",
            *cmd,
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ensure_root(root: Path, log: Path) -> float:
    """Make the Debian root at `root` unless a root with the current recipe is there.

    Returns the seconds spent (0 when the cached root was reused)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(str(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = root / STAMP
        if stamp.is_file() and stamp.read_text().strip() == ROOT_RECIPE:
            return 0.0
        start = time.monotonic()
        tmp = Path(str(root) + ".tmp")
        for old in (tmp, root):
            if old.exists():
                shutil.rmtree(old)
        with open(log, "w") as out:
            done = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={ROOT_PACKAGES}",
                    "bookworm",
                    str(tmp),
                    apt_mirror(),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise NspawnError(f"debootstrap failed (exit {done.returncode}), log {log}:\n{tail}")
        (tmp / "etc/hostname").write_text("pkgtest\n")
        shutil.rmtree(tmp / "var/cache/apt/archives", ignore_errors=True)
        (tmp / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (tmp / STAMP).write_text(ROOT_RECIPE + "\n")
        tmp.rename(root)
        return time.monotonic() - start


def ensure_packages(root: Path, names: Sequence[str]) -> List[str]:
    """Install the Debian packages `names` into the root where missing (host network).

    Returns the names that were installed."""
    missing = []
    for name in names:
        status = subprocess.run(
            ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Status}", name],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "install ok installed" not in status:
            missing.append(name)
    if not missing:
        return []
    done = _nspawn_run(root, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing)
    if done.returncode != 0:
        done = _nspawn_run(
            root, "sh", "-c", "apt-get update -q && apt-get install -y -q " + " ".join(missing)
        )
    if done.returncode != 0:
        raise NspawnError(f"installing {missing} into {root} failed:\n{done.stdout}\n{done.stderr}")
    _nspawn_run(root, "apt-get", "clean")
    return missing


def remove_leftover_cgroups() -> None:
    """Remove the empty cgroups a stopped nspawn leaves at the top of the hierarchies."""
    for hierarchy in ("systemd", "unified"):
        for name in ("payload", "supervisor"):
            top = Path("/sys/fs/cgroup") / hierarchy / name
            if not top.is_dir():
                continue
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass  # still in use (another machine) or not empty


class Machine:
    """One boot of a throwaway copy of `root` with systemd as PID 1.

    `binds` maps host directories to read-only mount points inside. The machine has
    its own network namespace (loopback only)."""

    def __init__(self, root: Path, name: str, binds: Dict[str, str], log: Path) -> None:
        self.root = root
        self.name = name
        self.binds = binds
        self.log = log
        self.proc: Optional[subprocess.Popen] = None
        self.leader = 0
        self.boot_seconds = 0.0
        self._copies_before: set = set()

    def _copies(self) -> set:
        return set(glob.glob(os.path.join(self.root.parent, ".#" + self.root.name + "*")))

    def start(self, timeout: float = 90) -> None:
        start = time.monotonic()
        self._copies_before = self._copies()
        cmd = [
            "systemd-nspawn",
            "-D",
            str(self.root),
            "--ephemeral",
            "-b",
            "--register=no",
            "--keep-unit",
            "--console=pipe",
            "-M",
            self.name,
            "--private-network",
        ]
        cmd += [f"--bind-ro={host}:{inside}" for host, inside in self.binds.items()]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=open(self.log, "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = start + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise NspawnError(f"systemd-nspawn exited ({self.proc.returncode}), log {self.log}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            for pid in children.read_text().split() if children.exists() else ():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    self.leader = int(pid)
            if time.monotonic() > deadline:
                raise NspawnError(f"no systemd in the machine after {timeout} s, log {self.log}")
            time.sleep(0.05)
        state = ""
        while state not in ("running", "degraded"):
            if time.monotonic() > deadline:
                raise NspawnError(f"machine not running after {timeout} s (state {state!r})")
            time.sleep(0.1)
            state = self.run("systemctl is-system-running", check=False).stdout.strip()
        self.boot_seconds = time.monotonic() - start

    def run(
        self,
        command: Union[str, Sequence[str]],
        check: bool = True,
        input: Optional[Union[str, bytes]] = None,  # noqa: A002 - subprocess's name
        timeout: float = 180,
        env: Optional[Dict[str, str]] = None,
    ) -> subprocess.CompletedProcess:
        """Run a shell command line (str) or an argv inside the machine."""
        argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
        full_env = dict(CONTAINER_ENV, **(env or {}))
        done = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i"]
            + [f"{k}={v}" for k, v in full_env.items()]
            + argv,
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        result = subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"in the machine: {command!r} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def read(self, path: str) -> bytes:
        return subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "cat", path],
            capture_output=True,
            check=True,
        ).stdout

    def write(self, path: str, data: Union[str, bytes], mode: str = "0644") -> None:
        self.run(
            f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}' && chmod {mode} '{path}'",
            input=data,
        )

    def journal(self, unit: str) -> str:
        return self.run(f"journalctl -u {unit} --no-pager -o short-monotonic", check=False).stdout

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn: clean poweroff
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        for copy in self._copies() - self._copies_before:
            shutil.rmtree(copy, ignore_errors=True)
        remove_leftover_cgroups()
