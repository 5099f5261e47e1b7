"""Topology of the three real machines in tests/data/topologies, asserted fact by fact.

The facts were read from the tarballs' sysfs files (cpu/online, cpuN/topology/*,
cpuN/cache/index3/*, node/nodeN/{cpulist,distance,meminfo}, cpu/isolated).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.sysfs import Sysfs
from cri_resmgr.resources.topology import DRAM, HBM, PMEM, Topology, load

from .conftest import REAL

KIB = 1024
GIB = 1 << 30


def cpus(text: str) -> CPUSet:
    return CPUSet.parse(text)


def every(start: int, step: int, stop: int) -> CPUSet:
    return CPUSet(range(start, stop, step))


# -- desktop: 1 package, 10 cores x 2 threads, 1 node -----------------------------------


def test_desktop(desktop: Topology) -> None:
    t = desktop
    assert t.online == cpus("0-19")
    assert len(t.cpus) == 20
    assert not t.offline
    assert not t.isolated
    assert dict(t.packages) == {0: cpus("0-19")}
    assert dict(t.dies) == {(0, 0): cpus("0-19")}
    assert list(t.nodes) == [0]
    node = t.nodes[0]
    assert node.cpus == cpus("0-19")
    assert node.memory == 65621548 * KIB
    assert node.kind == DRAM
    assert dict(node.distances) == {0: 10}
    assert t.threads_per_core == 2
    assert len(t.cores) == 10
    # thread siblings are N and N+10; core keys are the lower ids
    assert dict(t.cores) == {i: CPUSet.of(i, i + 10) for i in range(10)}
    assert t.core_siblings(13) == CPUSet.of(3, 13)
    # the kernel's core_id skips 5-7
    assert sorted({c.core_id for c in t.cpus.values()}) == [0, 1, 2, 3, 4, 8, 9, 10, 11, 12]
    assert dict(t.l3) == {0: cpus("0-19")}
    assert all(c.l3 == 0 for c in t.cpus.values())
    assert t.cpu_nodes == (0,)
    assert t.memory_only_nodes == ()
    assert not t.sub_numa_clustering
    assert {c.base_freq_khz for c in t.cpus.values()} == {3_300_000}
    # two favoured cores turbo higher
    assert {c.id for c in t.cpus.values() if c.max_freq_khz == 4_500_000} == {3, 4, 13, 14}
    assert t.cpus_sorted_by_topology()[:4] == (0, 10, 1, 11)


# -- server: 2 packages, SNC-2 (4 CPU nodes), 2 PMEM nodes, isolated CPUs ---------------


def test_server_cpus(server: Topology) -> None:
    t = server
    assert t.online == cpus("0-111")
    assert not t.offline
    assert t.isolated == cpus("4-7,60-63")
    assert {c.id for c in t.cpus.values() if c.isolated} == set(cpus("4-7,60-63"))
    # packages interleave: even CPUs in package 0, odd in package 1
    assert dict(t.packages) == {0: every(0, 2, 112), 1: every(1, 2, 112)}
    assert dict(t.dies) == {(0, 0): every(0, 2, 112), (1, 0): every(1, 2, 112)}
    assert t.threads_per_core == 2
    assert len(t.cores) == 56
    assert all(t.cores[i] == CPUSet.of(i, i + 56) for i in range(56))
    assert dict(t.l3) == {0: every(0, 2, 112), 1: every(1, 2, 112)}
    assert {c.base_freq_khz for c in t.cpus.values()} == {2_700_000}


def test_server_nodes(server: Topology) -> None:
    t = server
    assert list(t.nodes) == [0, 1, 2, 3, 4, 5]
    assert t.cpu_nodes == (0, 1, 2, 3)
    for n in range(4):
        assert t.node_cpus(n) == every(n, 4, 112)
        assert len(t.node_cpus(n)) == 28
        assert t.nodes[n].kind == DRAM
    assert [t.nodes[n].memory // KIB for n in range(6)] == [
        32372996,
        33023416,
        33023424,
        33018848,
        130023424,
        130023424,
    ]
    # SNC: nodes 0 and 2 share package 0 (and its single die and L3), 1 and 3 package 1
    assert t.sub_numa_clustering
    assert t.package_nodes(0) == (0, 2)
    assert t.package_nodes(1) == (1, 3)
    assert t.die_nodes(0, 0) == (0, 2)
    assert (t.nodes[0].package, t.nodes[2].package) == (0, 0)
    assert t.distance(0, 2) == 11
    assert t.distance(0, 1) == 21
    assert dict(t.nodes[0].distances) == {0: 10, 1: 21, 2: 11, 3: 21, 4: 17, 5: 28}
    assert t.nodes_by_distance(0) == ((10, (0,)), (11, (2,)), (17, (4,)), (21, (1, 3)), (28, (5,)))


def test_server_pmem(server: Topology) -> None:
    t = server
    assert t.memory_only_nodes == (4, 5)
    assert t.nodes_of_kind(PMEM) == (4, 5)
    assert t.nodes_of_kind(HBM) == ()
    for n in (4, 5):
        node = t.nodes[n]
        assert node.memory_only and not node.has_cpus
        assert node.memory == 124 * GIB
        assert node.kind == PMEM
        assert "capacity" in node.kind_reason
        assert node.package is None
        assert node.normal_memory
    # both PMEM nodes hang off package 0: node 4 next to node 0, node 5 next to node 2
    assert t.closest_cpu_nodes(4) == (0,)
    assert t.closest_cpu_nodes(5) == (2,)
    assert t.closest_cpu_nodes(1) == (1,)
    assert t.attached_memory_nodes(0) == (4,)
    assert t.attached_memory_nodes(2) == (5,)
    assert t.attached_memory_nodes(1) == ()
    assert t.memory_nodes == (0, 1, 2, 3, 4, 5)


# -- 2-socket-4-node-40-core: 2 packages, SNC-2, 20 cores x 2 threads per package ------


def test_snc80(snc80: Topology) -> None:
    t = snc80
    assert t.online == cpus("0-79")
    assert not t.offline
    assert not t.isolated
    assert dict(t.packages) == {0: cpus("0-19,40-59"), 1: cpus("20-39,60-79")}
    assert dict(t.dies) == {(0, 0): cpus("0-19,40-59"), (1, 0): cpus("20-39,60-79")}
    assert t.threads_per_core == 2
    assert len(t.cores) == 40
    assert all(t.cores[i] == CPUSet.of(i, i + 40) for i in range(40))
    assert dict(t.l3) == {0: cpus("0-19,40-59"), 1: cpus("20-39,60-79")}
    assert {n: t.node_cpus(n) for n in t.nodes} == {
        0: cpus("0-2,5-6,10-12,15-16,40-42,45-46,50-52,55-56"),
        1: cpus("3-4,7-9,13-14,17-19,43-44,47-49,53-54,57-59"),
        2: cpus("20-22,25-26,30-32,35-36,60-62,65-66,70-72,75-76"),
        3: cpus("23-24,27-29,33-34,37-39,63-64,67-69,73-74,77-79"),
    }
    assert all(len(t.node_cpus(n)) == 20 for n in t.nodes)
    assert [t.nodes[n].memory // KIB for n in t.nodes] == [48005604, 49507804, 49540688, 49539172]
    assert t.memory_only_nodes == ()
    assert t.sub_numa_clustering
    assert t.package_nodes(0) == (0, 1)
    assert t.package_nodes(1) == (2, 3)
    # the SNC halves of a package share its one L3
    assert {t.cpus[c].l3 for c in t.node_cpus(0) | t.node_cpus(1)} == {0}
    assert dict(t.nodes[1].distances) == {0: 11, 1: 10, 2: 21, 3: 21}
    # a core never spans nodes
    for core in t.cores.values():
        assert len({t.node_of(c) for c in core}) == 1
    assert {c.base_freq_khz for c in t.cpus.values()} == {2_000_000}


# -- all three ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", REAL)
def test_invariants(name: str, real_topology: Callable[[str], Topology]) -> None:
    t = real_topology(name)
    assert CPUSet().union(*t.packages.values()) == t.online
    assert CPUSet().union(*t.dies.values()) == t.online
    assert CPUSet().union(*(n.cpus for n in t.nodes.values())) == t.online
    assert CPUSet().union(*t.cores.values()) == t.online
    assert sum(len(c) for c in t.cores.values()) == len(t.online)
    assert sorted(t.cpu_order) == list(t.online)
    for cpu in t.cpus.values():
        assert cpu.id in t.packages[cpu.package]
        assert cpu.id in t.dies[(cpu.package, cpu.die)]
        assert cpu.id in t.nodes[cpu.node].cpus
        assert cpu.threads == t.cores[cpu.core]
        assert cpu.core == cpu.threads.first()
        assert cpu.l3 is not None and cpu.id in t.l3[cpu.l3]
    for node in t.nodes.values():
        assert node.distances[node.id] == 10
        for other in t.nodes:
            assert t.distance(node.id, other) == t.distance(other, node.id)
    # the order keeps each core's threads together and each node contiguous
    order = t.cpus_sorted_by_topology()
    for i in range(0, len(order), t.threads_per_core):
        assert len({t.cpus[c].core for c in order[i : i + t.threads_per_core]}) == 1
    seen_nodes = [t.node_of(c) for c in order]
    changes = sum(1 for a, b in zip(seen_nodes, seen_nodes[1:]) if a != b)
    assert changes == len(t.cpu_nodes) - 1
    assert t.summary().count("\n") >= len(t.nodes)
    assert load(topology_root_of(t)) == t  # deterministic


def topology_root_of(t: Topology) -> Path:
    return Path(t.sysfs).parent


@pytest.mark.parametrize("name", REAL)
def test_thread_sibling_masks_match_lists(name: str, topology_root: Callable[[str], Path]) -> None:
    """CPUSet.from_mask agrees with the kernel's own list form on real files."""
    fs = Sysfs(topology_root(name))
    cpu_dirs = fs.indexed("devices/system/cpu", "cpu")
    assert len(cpu_dirs) > 0
    for rel in cpu_dirs.values():
        for stem in ("thread_siblings", "core_siblings", "package_cpus", "die_cpus"):
            mask = fs.read_mask(f"{rel}/topology/{stem}", "mask")
            listed = fs.read_cpuset(f"{rel}/topology/{stem}_list", "list")
            assert mask == listed
            assert CPUSet.from_mask(mask.to_mask()) == listed
    for rel in fs.indexed("devices/system/node", "node").values():
        assert fs.read_mask(f"{rel}/cpumap", "mask") == fs.read_cpuset(f"{rel}/cpulist", "list")


def test_sysfs_mount_point_accepted(topology_root: Callable[[str], Path]) -> None:
    """sysfs-root may name the directory containing sys/ or the sysfs mount itself."""
    root = topology_root("desktop")
    assert load(root / "sys") == load(root)
    assert load(str(root)).online == CPUSet.range(0, 19)
