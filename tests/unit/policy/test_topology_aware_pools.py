"""The topology-aware pool tree (cri_resmgr.policy.pools) on real and generated machines."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List

import pytest

from cri_resmgr.policy.pools import Pool, PoolTree
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.synthetic import MemoryOnlyNode
from cri_resmgr.resources.topology import Topology, load

from .conftest import ALL


def shape(tree: PoolTree) -> List[str]:
    return [f"{'  ' * p.depth}{p.name}" for p in tree.pools]


def mems(pool: Pool) -> Dict[str, str]:
    return {k: str(v) for k, v in pool.mem_nodes.items() if v}


def test_desktop_is_one_pool(desktop: Topology) -> None:
    tree = PoolTree.build(desktop)
    assert shape(tree) == ["socket0"]
    assert tree.root.cpus == desktop.online
    assert mems(tree.root) == {"dram": "0"}
    assert tree.surrogate == {0: tree.root}


def test_server_snc_with_pmem(server: Topology) -> None:
    tree = PoolTree.build(server)
    assert shape(tree) == [
        "root",
        "  socket0",
        "    node0",
        "    node2",
        "  socket1",
        "    node1",
        "    node3",
    ]
    by = tree.by_name
    assert by["node0"].cpus == server.nodes[0].cpus
    # each PMEM node belongs to the CPU node it is closest to (distance 17)
    assert tree.attached == {4: by["node0"], 5: by["node2"]}
    assert mems(by["node0"]) == {"dram": "0", "pmem": "4"}
    assert mems(by["node2"]) == {"dram": "2", "pmem": "5"}
    assert mems(by["socket0"]) == {"dram": "0,2", "pmem": "4-5"}
    assert mems(by["socket1"]) == {"dram": "1,3"}
    assert mems(tree.root) == {"dram": "0-3", "pmem": "4-5"}
    assert by["node0"].memory["pmem"] == server.nodes[4].memory
    assert tree.root.memory_of(["dram"]) == sum(server.nodes[n].memory for n in range(4))
    # depth-first, parents first; index = position
    assert [p.index for p in tree.pools] == list(range(7))
    assert by["node2"].ancestors == (by["socket0"], tree.root)
    assert set(by["socket0"].related) == {by["socket0"], by["node0"], by["node2"], tree.root}
    assert tree.distance[by["node0"].index][by["node2"].index] == 2
    assert tree.distance[by["node0"].index][by["node1"].index] == 4
    assert tree.distance[by["node0"].index][tree.root.index] == 2


def test_two_socket_snc(snc80: Topology) -> None:
    tree = PoolTree.build(snc80)
    assert [p.name for p in tree.pools] == [
        "root", "socket0", "node0", "node1", "socket1", "node2", "node3",
    ]  # fmt: skip
    assert all(not p.children for p in tree.pools if p.kind == "node")


def test_dies_and_snc(machine: Callable[[str], Topology]) -> None:
    tree = PoolTree.build(machine("2s-2d-snc"))
    assert shape(tree)[:7] == [
        "root",
        "  socket0",
        "    socket0/die0",
        "      node0",
        "      node1",
        "    socket0/die1",
        "      node2",
    ]
    assert len(tree.pools) == 1 + 2 * (1 + 2 * 3)
    die = tree.by_name["socket0/die1"]
    assert die.kind == "die" and die.cpu_nodes == CPUSet.parse("2-3")


def test_lone_nodes_are_not_pools(machine: Callable[[str], Topology]) -> None:
    topo = machine("8-socket-448")
    tree = PoolTree.build(topo)
    assert [p.name for p in tree.pools] == ["root"] + [f"socket{s}" for s in range(8)]
    # the socket stands in for its only node, memory included
    assert tree.surrogate[3] is tree.by_name["socket3"]
    assert mems(tree.by_name["socket3"]) == {"dram": "3"}


def test_lone_node_gets_its_memory_only_node(machine: Callable[[str], Topology]) -> None:
    topo = machine("smt4")  # 2 sockets, one node each, a PMEM node on socket 0
    tree = PoolTree.build(topo)
    assert [p.name for p in tree.pools] == ["root", "socket0", "socket1"]
    pmem = topo.memory_only_nodes[0]
    assert tree.attached == {pmem: tree.by_name["socket0"]}
    assert mems(tree.by_name["socket0"]) == {"dram": "0", "pmem": str(pmem)}


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    """2 sockets x 2 SNC nodes; PMEM on node 0, HBM on node 1 (HMAT), CXL DRAM on
    socket 1 (HMAT says it performs like DRAM)."""
    root = tmp_path_factory.mktemp("tiers")
    synthetic.write_sysfs(
        root,
        sockets=2,
        nodes_per_die=2,
        cores_per_node=2,
        memory_only_nodes=[
            MemoryOnlyNode("pmem", 0, node=0),
            MemoryOnlyNode("hbm", 0, node=1, evidence="hmat"),
            MemoryOnlyNode("dram", 1, node=3, evidence="hmat"),
        ],
        extras=False,
    )
    return load(root)


def test_memory_kinds_attach_to_their_nodes(tiers: Topology) -> None:
    assert [tiers.nodes[n].kind for n in (4, 5, 6)] == ["pmem", "hbm", "dram"]
    tree = PoolTree.build(tiers)
    by = tree.by_name
    assert mems(by["node0"]) == {"dram": "0", "pmem": "4"}
    assert mems(by["node1"]) == {"dram": "1", "hbm": "5"}
    assert mems(by["node3"]) == {"dram": "3,6"}  # CXL memory counts as DRAM
    assert by["node3"].memory["dram"] == tiers.nodes[3].memory + tiers.nodes[6].memory
    assert mems(tree.root) == {"dram": "0-3,6", "pmem": "4", "hbm": "5"}
    assert by["node1"].nodes_of(("dram", "hbm")) == CPUSet.parse("1,5")
    assert by["node1"].nodes_of(("pmem",)) == CPUSet()


def test_equally_close_memory_nodes_are_spread(tmp_path: Path) -> None:
    """Two PMEM nodes equally close to nodes 0 and 1: one each (fewest attached first)."""
    syn = synthetic.write_sysfs(
        tmp_path,
        nodes_per_die=2,
        cores_per_node=2,
        memory_only_nodes=[MemoryOnlyNode("pmem", 0, node=0), MemoryOnlyNode("pmem", 0, node=0)],
        extras=False,
    )
    node_dir = tmp_path / "sys/devices/system/node"
    matrix = {
        0: [10, 11, 17, 17],
        1: [11, 10, 17, 17],
        2: [17, 17, 10, 28],
        3: [17, 17, 28, 10],
    }
    for n, row in matrix.items():
        (node_dir / f"node{n}/distance").write_text(" ".join(map(str, row)) + "\n")
    topo = load(syn.root)
    assert topo.closest_cpu_nodes(2) == (0, 1)
    tree = PoolTree.build(topo)
    assert tree.attached == {2: tree.by_name["node0"], 3: tree.by_name["node1"]}


def test_offline_cpus_and_isolated(machine: Callable[[str], Topology]) -> None:
    topo = machine("nosmt-iso")  # 2 nodes, CPU 5 offline, 10-11 isolated
    tree = PoolTree.build(topo)
    assert [p.name for p in tree.pools] == ["socket0", "node0", "node1"]
    assert 5 not in tree.root.cpus
    assert tree.by_name["node1"].cpus == topo.nodes[1].cpus


@pytest.mark.parametrize("name", ALL)
def test_every_machine(machine: Callable[[str], Topology], name: str) -> None:
    topo = machine(name)
    tree = PoolTree.build(topo)
    assert tree.root.cpus == topo.online
    for p in tree.pools:
        if p.children:  # children partition their parent
            union = CPUSet()
            for c in p.children:
                assert not (union & c.cpus)
                union = union | c.cpus
            assert union == p.cpus
        assert tree.smallest_containing(p.cpus) is p
    # every node with memory belongs to exactly one pool's own memory
    leaves = [p for p in tree.pools if not p.children]
    owned = [n for p in leaves for k in p.mem_nodes for n in p.mem_nodes[k]]
    assert sorted(owned) == sorted(topo.memory_nodes)
    assert tree.smallest_containing(CPUSet.of(topo.online.first())) in leaves
    assert tree.describe().splitlines()[0].startswith(tree.root.name + ": CPUs ")
