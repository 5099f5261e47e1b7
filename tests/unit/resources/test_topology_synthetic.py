"""Topology of generated machines: SNC, multi-die, 4+ sockets, memory-only nodes of
every kind and evidence, isolated and offline CPUs, no NUMA."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.synthetic import GIB, MemoryOnlyNode
from cri_resmgr.resources.topology import DRAM, HBM, PMEM, Topology, load


def cpus(text: str) -> CPUSet:
    return CPUSet.parse(text)


def check_against(t: Topology, s: synthetic.Synthetic) -> None:
    """Everything write_sysfs says it wrote is what load reads."""
    assert t.online == s.online
    assert t.offline == s.offline
    assert t.isolated == s.isolated & s.online
    assert {n: node.cpus for n, node in t.nodes.items()} == s.node_cpus
    if s.node_memory:
        assert {n: node.memory for n, node in t.nodes.items()} == s.node_memory
    assert {n: node.kind for n, node in t.nodes.items()} == s.node_kind
    for (a, b), d in s.distances.items():
        assert t.distance(a, b) == d
    for mem, near in s.attached.items():
        assert t.closest_cpu_nodes(mem) == (near,)


def test_single_socket_no_smt(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(tmp_path, cores_per_node=4, threads_per_core=1)
    t = load(tmp_path)
    check_against(t, s)
    assert t.online == cpus("0-3")
    assert t.threads_per_core == 1
    assert dict(t.cores) == {i: CPUSet.of(i) for i in range(4)}
    assert not t.sub_numa_clustering
    assert t.cpus_sorted_by_topology() == (0, 1, 2, 3)


def test_snc_two_sockets(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(
        tmp_path, sockets=2, nodes_per_die=2, cores_per_node=4, threads_per_core=2
    )
    t = load(tmp_path)
    check_against(t, s)
    assert len(t.online) == 32
    assert t.sub_numa_clustering
    assert t.package_nodes(0) == (0, 1)
    assert t.package_nodes(1) == (2, 3)
    assert t.distance(0, 1) == 11
    assert t.distance(0, 2) == 21
    # one L3 per die, shared by both SNC nodes
    assert len(t.l3) == 2
    assert t.l3[0] == t.node_cpus(0) | t.node_cpus(1)
    # first threads 0-15, second threads 16-31
    assert t.core_siblings(0) == CPUSet.of(0, 16)
    assert t.node_cpus(0) == cpus("0-3,16-19")


def test_multi_die_packages(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(
        tmp_path, sockets=2, dies_per_socket=2, cores_per_node=2, threads_per_core=2
    )
    t = load(tmp_path)
    check_against(t, s)
    assert list(t.dies) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert t.die_cpus(0, 1) == cpus("2-3,10-11")
    assert t.die_nodes(0, 1) == (1,)
    assert t.distance(0, 1) == 12  # dies of one package
    assert t.distance(0, 2) == 21
    assert len(t.l3) == 4
    assert not t.sub_numa_clustering
    # core_id counts within the package, so it repeats across packages
    assert t.cpus[0].core_id == t.cpus[4].core_id == 0
    assert t.cpus[0].core != t.cpus[4].core


def test_eight_sockets(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(
        tmp_path,
        sockets=8,
        cores_per_node=4,
        threads_per_core=2,
        memory_only_nodes=[("pmem", i) for i in range(8)],
        extras=False,
    )
    t = load(tmp_path)
    check_against(t, s)
    assert len(t.online) == 64
    assert len(t.packages) == 8
    assert t.cpu_nodes == tuple(range(8))
    assert t.memory_only_nodes == tuple(range(8, 16))
    assert t.nodes_of_kind(PMEM) == tuple(range(8, 16))
    assert [t.closest_cpu_nodes(n) for n in range(8, 16)] == [(i,) for i in range(8)]
    assert t.distance(0, 3) == 21
    assert t.distance(0, 4) == 31
    assert t.nodes_by_distance(0)[:2] == ((10, (0,)), (17, (8,)))
    assert len(t.cores) == 32
    assert t.memory == 8 * 16 * GIB + 8 * 64 * GIB


def test_smt_adjacent_numbering(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(tmp_path, cores_per_node=4, threads_per_core=4, smt_adjacent=True)
    t = load(tmp_path)
    check_against(t, s)
    assert t.threads_per_core == 4
    assert t.core_siblings(5) == cpus("4-7")
    assert t.cpus_sorted_by_topology() == tuple(range(16))


def test_isolated_and_offline(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(
        tmp_path,
        sockets=1,
        cores_per_node=8,
        threads_per_core=2,
        isolated="2-3,10",
        offline="3,7,12",
    )
    t = load(tmp_path)
    check_against(t, s)
    assert t.offline == cpus("3,7,12")
    assert t.online == cpus("0-2,4-6,8-11,13-15")
    assert t.isolated == cpus("2,10")  # offline CPU 3 is not reported isolated
    assert 3 not in t.cpus and 7 not in t.cpus
    # a core with one thread offline keeps the other
    assert t.core_siblings(11) == CPUSet.of(11)
    assert t.cores[4] == cpus("4")
    assert t.threads_per_core == 2
    assert t.cpus[2].isolated and not t.cpus[1].isolated
    assert 3 not in t.l3[0] and 12 not in t.node_cpus(0)
    assert 3 not in t.cpus_sorted_by_topology()


def test_node_with_all_cpus_offline_is_not_memory_only(tmp_path: Path) -> None:
    """Offlining every CPU of a node leaves a CPU-less DRAM node, not PMEM/HBM."""
    synthetic.write_sysfs(
        tmp_path,
        sockets=2,
        cores_per_node=2,
        threads_per_core=2,
        offline="2-3,6-7",  # all of node 1 (first threads 2-3, second threads 6-7)
        memory_only_nodes=[("pmem", 0)],
    )
    t = load(tmp_path)
    node = t.nodes[1]
    assert not node.cpus
    assert node.offline_cpus == cpus("2-3,6-7")
    assert not node.memory_only
    assert node.kind == DRAM
    assert "offline" in node.kind_reason
    assert t.cpu_nodes == (0,)
    assert t.memory_only_nodes == (2,)
    assert t.nodes_of_kind(PMEM) == (2,)
    assert t.nodes_of_kind(DRAM) == (0, 1)
    assert t.closest_cpu_nodes(1) == (0,)
    assert t.nodes[0].offline_cpus == CPUSet()
    assert "offline CPUs 2-3,6-7" in t.summary()


def test_offline_whole_core(tmp_path: Path) -> None:
    synthetic.write_sysfs(tmp_path, cores_per_node=2, threads_per_core=2, offline="1,3")
    t = load(tmp_path)
    assert dict(t.cores) == {0: cpus("0,2")}


@pytest.mark.parametrize(
    "kind, evidence",
    [
        (PMEM, "capacity"),
        (PMEM, "hmat"),
        (PMEM, "nvdimm"),
        (PMEM, "tier"),
        (HBM, "capacity"),
        (HBM, "hmat"),
        (HBM, "tier"),
    ],
)
def test_memory_only_kind_by_each_evidence(tmp_path: Path, kind: str, evidence: str) -> None:
    s = synthetic.write_sysfs(
        tmp_path,
        sockets=2,
        cores_per_node=2,
        memory_only_nodes=[MemoryOnlyNode(kind, socket=1, evidence=evidence)],
    )
    t = load(tmp_path)
    check_against(t, s)
    node = t.nodes[2]
    assert node.kind == kind
    assert node.memory_only
    key = {"capacity": "capacity", "hmat": "HMAT", "nvdimm": "NVDIMM", "tier": "tier"}[evidence]
    assert key in node.kind_reason
    assert t.closest_cpu_nodes(2) == (1,)
    assert t.attached_memory_nodes(1) == (2,)
    assert t.nodes_of_kind(kind) == (2,)


def test_evidence_beats_capacity(tmp_path: Path) -> None:
    """A small PMEM node (less than a DRAM node) is still PMEM when HMAT says so;
    a large HBM node likewise stays HBM."""
    synthetic.write_sysfs(
        tmp_path,
        sockets=1,
        cores_per_node=2,
        node_memory=64 * GIB,
        memory_only_nodes=[
            MemoryOnlyNode(PMEM, size=8 * GIB, evidence="hmat"),
            MemoryOnlyNode(HBM, size=128 * GIB, evidence="hmat"),
        ],
    )
    t = load(tmp_path)
    assert t.nodes[1].kind == PMEM
    assert t.nodes[2].kind == HBM


def test_cpu_less_dram_node(tmp_path: Path) -> None:
    """CXL-style DRAM without CPUs: HMAT says DRAM-like; by capacity alone it is PMEM."""
    synthetic.write_sysfs(
        tmp_path / "hmat",
        cores_per_node=2,
        memory_only_nodes=[MemoryOnlyNode(DRAM, evidence="hmat")],
    )
    assert load(tmp_path / "hmat").nodes[1].kind == DRAM
    synthetic.write_sysfs(
        tmp_path / "cap",
        cores_per_node=2,
        memory_only_nodes=[MemoryOnlyNode(DRAM, evidence="capacity")],
    )
    node = load(tmp_path / "cap").nodes[1]
    assert node.kind == PMEM  # equal size: the pkg/sysfs heuristic says PMEM
    assert "capacity" in node.kind_reason


def test_mixed_memory_only_nodes(tmp_path: Path) -> None:
    s = synthetic.write_sysfs(
        tmp_path,
        sockets=2,
        dies_per_socket=2,
        nodes_per_die=2,
        cores_per_node=3,
        memory_only_nodes=[
            ("pmem", 0),
            MemoryOnlyNode("hbm", socket=1, evidence="hmat"),
            MemoryOnlyNode("pmem", socket=1, node=7, evidence="nvdimm"),
            MemoryOnlyNode("hbm", socket=0, node=2, evidence="tier"),
            {"kind": "hbm", "socket": 0, "node": 3},
        ],
        offline="5,30",
        isolated="0-1",
    )
    t = load(tmp_path)
    check_against(t, s)
    assert t.memory_only_nodes == (8, 9, 10, 11, 12)
    assert t.nodes_of_kind(PMEM) == (8, 10)
    assert t.nodes_of_kind(HBM) == (9, 11, 12)
    assert t.nodes_of_kind(DRAM) == tuple(range(8))
    assert t.attached_memory_nodes(0) == (8,)
    assert t.attached_memory_nodes(7) == (10,)
    assert t.memory_nodes == tuple(range(13))
    with pytest.raises(ValueError, match="unknown memory kind"):
        t.nodes_of_kind("nvram")


def test_no_numa(tmp_path: Path) -> None:
    """A kernel without CONFIG_NUMA has no devices/system/node: one node 0."""
    synthetic.write_sysfs(tmp_path, cores_per_node=2, numa=False)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       8000000 kB\nMemFree: 1 kB\n")
    t = load(tmp_path)
    assert list(t.nodes) == [0]
    assert t.nodes[0].cpus == t.online == cpus("0-3")
    assert t.nodes[0].memory == 8000000 * 1024
    assert t.nodes[0].kind == DRAM
    assert dict(t.nodes[0].distances) == {0: 10}
    assert all(c.node == 0 for c in t.cpus.values())


def test_no_numa_no_proc(tmp_path: Path) -> None:
    synthetic.write_sysfs(tmp_path, cores_per_node=2, numa=False)
    assert load(tmp_path).nodes[0].memory == 0


def test_write_sysfs_validates(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sockets"):
        synthetic.write_sysfs(tmp_path, sockets=0)
    with pytest.raises(ValueError, match="no socket 3"):
        synthetic.write_sysfs(tmp_path / "a", memory_only_nodes=[("pmem", 3)])
    with pytest.raises(ValueError, match="not in socket"):
        synthetic.write_sysfs(
            tmp_path / "b", sockets=2, memory_only_nodes=[MemoryOnlyNode(socket=0, node=1)]
        )
    with pytest.raises(ValueError, match="kind"):
        MemoryOnlyNode("nvram")
    with pytest.raises(ValueError, match="evidence"):
        MemoryOnlyNode(evidence="guess")
    with pytest.raises(TypeError):
        synthetic.write_sysfs(tmp_path / "c", memory_only_nodes=["pmem"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="offline"):
        synthetic.write_sysfs(tmp_path / "d", cores_per_node=1, threads_per_core=1, offline="0")


def test_cpu_id_formula() -> None:
    def cid(socket: int, node: int, core: int, thread: int, smt_adjacent: bool = False) -> int:
        return synthetic.cpu_id(
            socket,
            0,
            node,
            core,
            thread,
            dies_per_socket=1,
            nodes_per_die=2,
            cores_per_node=4,
            threads_per_core=2,
            sockets=2,
            smt_adjacent=smt_adjacent,
        )

    assert cid(0, 0, 0, 1) == 16
    assert cid(1, 1, 3, 0) == 15
    assert cid(0, 0, 1, 1, smt_adjacent=True) == 3


def test_small_fixture(small: Path) -> None:
    t = load(small)
    assert t.node_cpus(0) == cpus("0-1,8-9")
    assert t.node_cpus(3) == cpus("6-7,14-15")
    assert t.nodes[4].kind == PMEM
    assert t.closest_cpu_nodes(4) == (0,)
