"""What the kernel applied to a container: its cpuset cgroup, read from /proc and /sys.

`cpuset_of(pid)` returns the `cpuset.cpus` / `cpuset.mems` of the cgroup a process is
in (cgroup v1 `cpuset` controller, or the v2 unified hierarchy), plus the process's own
`Cpus_allowed_list`. Tests assert on these, not on what the relay said it did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Cpuset:
    cgroup: str  # the cgroup path (relative to the hierarchy root)
    cpus: str  # cpuset.cpus of that cgroup
    mems: str  # cpuset.mems
    allowed: str  # Cpus_allowed_list of the process


def _cgroup_path(pid: int) -> tuple[Path, str]:
    v2 = None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuset" in controllers.split(","):
            return CGROUP_ROOT / "cpuset", path
        if controllers == "":
            v2 = path
    if v2 is None:
        raise RuntimeError(f"process {pid} is in no cpuset cgroup")
    return CGROUP_ROOT, v2


def _allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    return ""


def cpuset_of(pid: int) -> Cpuset:
    root, path = _cgroup_path(pid)
    directory = root / path.lstrip("/")
    cpus = (directory / "cpuset.cpus").read_text().strip()
    mems = (directory / "cpuset.mems").read_text().strip()
    if not cpus and (directory / "cpuset.cpus.effective").exists():  # v2 inherits
        cpus = (directory / "cpuset.cpus.effective").read_text().strip()
        mems = (directory / "cpuset.mems.effective").read_text().strip()
    return Cpuset(path, cpus, mems, _allowed(pid))
