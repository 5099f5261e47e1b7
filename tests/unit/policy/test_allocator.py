"""CPUAllocator: packing by topology on the real and generated machines."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable, Set

import pytest

from cri_resmgr.errors import AllocationError
from cri_resmgr.policy import allocator, topology_aware
from cri_resmgr.policy.allocator import CPUAllocator
from cri_resmgr.resources import cpuset, synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load

from .conftest import ALL


def nodes_of(t: Topology, cpus: CPUSet) -> Set[int]:
    return {t.node_of(c) for c in cpus}


def packages_of(t: Topology, cpus: CPUSet) -> Set[int]:
    return {t.package_of(c) for c in cpus}


@pytest.fixture(params=ALL)
def topo(request: pytest.FixtureRequest, machine: Callable[[str], Topology]) -> Topology:
    return machine(request.param)


def test_every_count_is_exact_and_deterministic(topo: Topology) -> None:
    alloc = CPUAllocator(topo)
    for n in range(1, len(topo.online) + 1):
        got = alloc.take(topo.online, n)
        assert len(got) == n
        assert got <= topo.online
        assert alloc.take(topo.online, n) == got


def test_more_than_available_fails(topo: Topology) -> None:
    alloc = CPUAllocator(topo)
    with pytest.raises(AllocationError, match="only"):
        alloc.take(topo.online, len(topo.online) + 1)
    assert alloc.take(topo.online, 0) == CPUSet()


def test_whole_cores_when_the_request_is_a_core_multiple(topo: Topology) -> None:
    alloc = CPUAllocator(topo)
    tpc = topo.threads_per_core
    for cores in range(1, len(topo.cores) + 1):
        got = alloc.take(topo.online, cores * tpc)
        assert alloc.is_whole_cores(got), got


def test_one_node_when_the_request_fits_a_node(topo: Topology) -> None:
    alloc = CPUAllocator(topo)
    smallest = min(len(topo.node_cpus(n)) for n in topo.cpu_nodes)
    for n in range(1, smallest + 1):
        assert len(nodes_of(topo, alloc.take(topo.online, n))) == 1


def test_whole_nodes_and_packages(topo: Topology) -> None:
    alloc = CPUAllocator(topo)
    for node in topo.cpu_nodes:
        size = len(topo.node_cpus(node))
        got = alloc.take(topo.online, size)
        # some node, whole
        assert any(got == topo.node_cpus(n) for n in topo.cpu_nodes), got
    for package, cpus in topo.packages.items():
        got = alloc.take(topo.online, len(cpus))
        assert got in set(topo.packages.values()) or any(
            got == topo.node_cpus(n) for n in topo.cpu_nodes
        )
        del package


def test_server_whole_node_taken_from_the_busier_package(server: Topology) -> None:
    alloc = CPUAllocator(server)
    # one CPU of package 0 (node 0) is in use: a node-sized request takes node 2 (the
    # rest of package 0) rather than breaking package 1
    avail = server.online - CPUSet.of(0)
    got = alloc.take(avail, 28)
    assert got == server.node_cpus(2)
    # a package-sized request takes package 1 whole
    assert alloc.take(avail, 56) == server.packages[1]


def test_fewest_nodes_then_best_fit(snc80: Topology) -> None:
    t = snc80
    alloc = CPUAllocator(t)
    # node 0: 4 free CPUs (2 whole cores), node 1: 12 free, nodes 2, 3 whole
    n0 = t.node_cpus(0)
    keep0 = alloc.take(n0, 4)
    n1 = t.node_cpus(1)
    keep1 = alloc.take(n1, 12)
    avail = keep0 | keep1 | t.node_cpus(2) | t.node_cpus(3)
    # 4 CPUs: best fit is node 0 (fewest free that still fits)
    assert alloc.take(avail, 4) == keep0
    # 10 CPUs: node 0 cannot, node 1 fits with the fewest free
    assert nodes_of(t, alloc.take(avail, 10)) == {1}
    # 16 CPUs fit in one node of package 1 only (nodes 2/3 have 20 free each)
    assert len(nodes_of(t, alloc.take(avail, 16))) == 1
    # 24 CPUs need two nodes: package 1 has two whole nodes, package 0 needs 2 too
    got = alloc.take(avail, 24)
    assert len(nodes_of(t, got)) == 2
    assert len(packages_of(t, got)) == 1


def test_single_threads_prefer_partly_used_cores(desktop: Topology) -> None:
    alloc = CPUAllocator(desktop)
    # cores are (i, i+10); CPU 13's sibling 3 is in use
    avail = desktop.online - CPUSet.of(3)
    assert alloc.take(avail, 1) == CPUSet.of(13)
    # 3 CPUs: one whole core plus the lone thread
    got = alloc.take(avail, 3)
    assert 13 in got and len(got) == 3
    assert alloc.is_whole_cores(got - CPUSet.of(13))


def test_full_cores_only(desktop: Topology) -> None:
    alloc = CPUAllocator(desktop)
    avail = desktop.online - CPUSet.of(3, 4)  # cores 3 and 4 broken
    assert alloc.capacity(avail, full_cores=True) == 16
    got = alloc.take(avail, 16, full_cores=True)
    assert got == avail - CPUSet.of(13, 14)
    with pytest.raises(AllocationError, match="whole cores"):
        alloc.take(avail, 17, full_cores=True)
    with pytest.raises(AllocationError, match="whole cores"):
        alloc.take(avail, 3, full_cores=True)


def test_near_keeps_growth_local(snc80: Topology) -> None:
    t = snc80
    alloc = CPUAllocator(t)
    current = alloc.take(t.node_cpus(3), 4)
    avail = t.online - current
    more = alloc.take(avail, 4, near=current)
    assert nodes_of(t, more) == {3}
    # a lone thread grows into its sibling first
    lone = CPUSet.of(23)  # sibling 63
    assert alloc.take(t.online - lone, 1, near=lone) == CPUSet.of(63)


def test_keep_gives_back_stray_threads_first(desktop: Topology) -> None:
    alloc = CPUAllocator(desktop)
    cpus = CPUSet.of(0, 10, 1, 11, 2)  # two whole cores and a lone thread
    assert alloc.keep(cpus, 4) == CPUSet.of(0, 1, 10, 11)
    assert alloc.keep(cpus, 5) == cpus
    assert len(alloc.keep(cpus, 1)) == 1


def test_keep_keeps_the_bigger_node_part(snc80: Topology) -> None:
    t = snc80
    alloc = CPUAllocator(t)
    cpus = alloc.take(t.node_cpus(0), 6) | alloc.take(t.node_cpus(2), 2)
    kept = alloc.keep(cpus, 6)
    assert nodes_of(t, kept) == {0}


def test_mems_of(server: Topology) -> None:
    alloc = CPUAllocator(server)
    assert alloc.mems_of(server.node_cpus(1)) == CPUSet.of(1)
    assert alloc.mems_of(CPUSet.of(0, 1, 2)) == CPUSet.of(0, 1, 2)
    assert alloc.mems_of(server.online) == CPUSet.of(0, 1, 2, 3)  # PMEM nodes not included
    assert alloc.mems_of(CPUSet()) == CPUSet()


def test_generated_8_socket(machine: Callable[[str], Topology]) -> None:
    t = machine("8-socket-448")
    alloc = CPUAllocator(t)
    assert alloc.take(t.online, 56) == t.packages[0]
    got = alloc.take(t.online, 60)
    assert len(packages_of(t, got)) == 2
    # with package 0 partly used, small requests pack there
    avail = t.online - CPUSet.of(0)
    assert packages_of(t, alloc.take(avail, 8)) == {0}


@pytest.mark.parametrize("seed", range(5))
def test_random_avail_sets(topo: Topology, seed: int) -> None:
    rng = random.Random(seed)
    alloc = CPUAllocator(topo)
    ids = list(topo.online)
    for _ in range(50):
        avail = CPUSet(rng.sample(ids, rng.randint(1, len(ids))))
        n = rng.randint(1, len(avail))
        got = alloc.take(avail, n)
        assert len(got) == n and got <= avail
        full = alloc.capacity(avail, full_cores=True)
        tpc = topo.threads_per_core
        if full >= tpc:
            k = tpc * rng.randint(1, full // tpc)
            got = alloc.take(avail, k, full_cores=True)
            assert len(got) == k and alloc.is_whole_cores(got) and got <= avail
        kept = alloc.keep(got, len(got) // 2)
        assert len(kept) == len(got) // 2 and kept <= got


def test_whole_core_shortcut_matches_the_loop(topo: Topology) -> None:
    alloc = CPUAllocator(topo)
    rng = random.Random(1)
    ids = list(topo.online)
    for _ in range(200):
        a = CPUSet(rng.sample(ids, rng.randint(0, len(ids)))).bits
        slow = 0
        for core in alloc.cores:
            if core & a == core:
                slow |= core
        assert alloc._whole_bits(a) == slow


def test_l3_groups_inside_a_node(tmp_path: Path) -> None:
    """A node with two L3 caches (AMD CCX-like): requests stay within one L3 group."""
    root = tmp_path / "ccx"
    synthetic.write_sysfs(root, sockets=1, cores_per_node=8, threads_per_core=2)
    cpu_dir = root / "sys/devices/system/cpu"
    for cpu in range(16):
        group = (cpu % 8) // 4  # cores 0-3 and 4-7; threads are cpu and cpu + 8
        index3 = cpu_dir / f"cpu{cpu}/cache/index3"
        (index3 / "id").write_text(f"{group}\n")
        (index3 / "shared_cpu_list").write_text(("0-3,8-11" if group == 0 else "4-7,12-15") + "\n")
        (index3 / "shared_cpu_map").unlink()
    t = load(root)
    assert len(t.l3) == 2
    alloc = CPUAllocator(t)
    l3 = {key: cpus for key, cpus in t.l3.items()}
    # a whole L3 group when the request covers it
    assert alloc.take(t.online, 8) in set(l3.values())
    # with L3 0 partly used, a small request packs there (best fit), a 6-CPU one too
    avail = t.online - CPUSet.of(0, 8)
    got = alloc.take(avail, 2)
    assert got <= l3[0]
    got = alloc.take(avail, 6)
    assert got <= l3[0]
    # 7 CPUs do not fit L3 0 any more: L3 1 (one group) rather than both
    assert alloc.take(avail, 7) <= l3[1]


def test_one_popcount() -> None:
    """The policies count bits with `cpuset.popcount`, not copies of their own."""
    assert [cpuset.popcount(b) for b in (0, 1, 0b1011, (1 << 447) | 1)] == [0, 1, 3, 2]
    assert allocator.popcount is cpuset.popcount
    assert topology_aware.popcount is cpuset.popcount
    assert len(CPUSet.from_bits((1 << 448) - 1)) == 448
