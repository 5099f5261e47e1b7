"""Fixtures for the resources tests: the real machines loaded once, small generated ones."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Set

import pytest

from cri_resmgr.resources import synthetic
from cri_resmgr.resources.topology import Topology, load

REAL = ("desktop", "server", "2-socket-4-node-40-core")

# Parts of a real tree topology.load never reads (copying all 20k files of the
# server tree takes seconds on a busy disk).
_UNREAD = {
    "cpuidle",
    "power",
    "hotplug",
    "microcode",
    "thermal_throttle",
    "acpi_cppc",
    "vulnerabilities",
    "hugepages",
    "numastat",
    "vmstat",
    "uevent",
    "cpumap",
    "thread_siblings",
    "core_siblings",
    "core_siblings_list",
    "core_cpus",
    "die_cpus",
    "die_cpus_list",
    "package_cpus",
    "package_cpus_list",
    "index0",
    "index1",
    "index2",
}
_UNREAD_RE = re.compile(r"memory[0-9]+\Z|scaling_|energy_")
_CPU_RE = re.compile(r"cpu[0-9]+\Z")


@pytest.fixture(scope="session")
def real_topology(topology_root: Callable[[str], Path]) -> Callable[[str], Topology]:
    """Factory: ``real_topology("server")`` -> the loaded `Topology` (cached)."""
    cache: Dict[str, Topology] = {}

    def get(name: str) -> Topology:
        if name not in cache:
            cache[name] = load(topology_root(name))
        return cache[name]

    return get


@pytest.fixture
def desktop(real_topology: Callable[[str], Topology]) -> Topology:
    return real_topology("desktop")


@pytest.fixture
def server(real_topology: Callable[[str], Topology]) -> Topology:
    return real_topology("server")


@pytest.fixture
def snc80(real_topology: Callable[[str], Topology]) -> Topology:
    return real_topology("2-socket-4-node-40-core")


@pytest.fixture
def real_copy(topology_root: Callable[[str], Path], tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``real_copy(name, skip=("cache",))`` -> root of a private, modifiable copy.

    Leaves out the parts topology never reads (cpuidle, power, memory blocks, ...) and
    any directory or file named in ``skip``: copying all 20k files of the server tree
    takes many seconds on a busy disk.
    """

    def copy(name: str, skip: Iterable[str] = ()) -> Path:
        extra = set(skip)

        def unread(directory: str, names: List[str]) -> Set[str]:
            out = {n for n in names if n in _UNREAD or n in extra or _UNREAD_RE.match(n)}
            if os.path.basename(directory).startswith("node"):
                out.update(n for n in names if _CPU_RE.match(n))  # nodeN/cpuK links
            return out

        dest = tmp_path / name
        shutil.copytree(
            topology_root(name),
            dest,
            symlinks=True,
            ignore=unread,
            copy_function=shutil.copyfile,  # no copystat: a third of the syscalls
        )
        return dest

    return copy


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A small generated machine: 2 sockets x 2 nodes x 2 cores x 2 threads + 1 PMEM node.

    CPUs 0-7 are the first threads, 8-15 their siblings (cpu N and N+8 share a core);
    node 0 = 0-1,8-9, node 1 = 2-3,10-11, node 2 = 4-5,12-13, node 3 = 6-7,14-15;
    node 4 is PMEM next to node 0.
    """
    synthetic.write_sysfs(
        tmp_path / "small",
        sockets=2,
        nodes_per_die=2,
        cores_per_node=2,
        threads_per_core=2,
        memory_only_nodes=[("pmem", 0)],
        extras=False,
    )
    return tmp_path / "small"
