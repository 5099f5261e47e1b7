"""Fixtures for the resources tests: the real machines loaded once, small generated ones."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Dict

import pytest

from cri_resmgr.resources import synthetic
from cri_resmgr.resources.topology import Topology, load

REAL = ("desktop", "server", "2-socket-4-node-40-core")


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
def real_copy(topology_root: Callable[[str], Path], tmp_path: Path) -> Callable[[str], Path]:
    """Factory: a private, modifiable copy of a real machine's tree -> its root."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(topology_root(name), dest, symlinks=True)
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
    )
    return tmp_path / "small"
