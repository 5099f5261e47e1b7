"""The pool tree of the topology-aware policy: root -> sockets -> dies -> NUMA nodes.

This module owns `PoolTree.build(topology)` and the `Pool` records it makes. A pool is
a part of the machine that containers can be placed in: its CPUs (all online CPUs of
its subtree) and its memory nodes by kind. It holds no allocations; the policy keeps
those (`topology_aware.py`).

Shape (as Intel's topology-aware policy built it):

* the **root** is a virtual pool over all sockets when there are several; on a
  single-socket machine the socket itself is the root;
* a **die** pool exists only in a socket with several dies;
* a **NUMA node** pool exists only where its die (or socket) has several CPU nodes
  (sub-NUMA clustering). A lone node is not a pool of its own: its parent stands in
  for it (its *surrogate*) and gets its memory;
* **memory-only nodes** (PMEM, HBM, CXL memory; also nodes whose CPUs are all
  offline) get no pool. Each is attached to the surrogate of its closest CPU node by
  distance; among equally close ones to the one with the fewest memory-only nodes
  attached so far, then the lowest node id;
* firmware whose NUMA nodes cross dies or packages gets a flat tree: root -> nodes.

Pools are listed depth first in topology order (`PoolTree.pools`, parents before
children); `Pool.index` is the position there and the last tie-breaker of the
policy. Names: ``root``, ``socket0``, ``socket0/die1``, ``node2``.

Units: CPU sets as `CPUSet` (and their bitmasks as ``int``), memory in bytes, memory
node sets as `CPUSet`s of node ids. Memory kinds are `topology.MEMORY_KINDS`.
"""

from __future__ import annotations

import logging
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, TypeVar

from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import MEMORY_KINDS, Topology

__all__ = ["Pool", "PoolTree"]

log = logging.getLogger(__name__)

K = TypeVar("K")


def _in_order(sets: Mapping[K, CPUSet], rank: Mapping[int, int]) -> List[K]:
    """The keys of ``sets`` by the topology rank of their first CPU."""
    return sorted(sets, key=lambda k: min(rank[c] for c in sets[k]))


class Pool:
    """One pool of the tree; see the module docstring. Read-only after `PoolTree.build`."""

    __slots__ = (
        "ancestors",
        "bits",
        "children",
        "cpu_nodes",
        "cpus",
        "depth",
        "index",
        "kind",
        "mem_nodes",
        "memory",
        "name",
        "parent",
        "related",
        "subtree",
        "_nodes_cache",
    )

    def __init__(self, name: str, kind: str, cpus: CPUSet, parent: Optional[Pool]) -> None:
        self.name = name
        self.kind = kind  # "root", "socket", "die" or "node"
        self.cpus = cpus  # every online CPU of the subtree
        self.bits = cpus.bits
        self.parent = parent
        self.children: List[Pool] = []
        self.depth: int = 0 if parent is None else parent.depth + 1
        self.index = 0
        #: CPU nodes of the subtree
        self.cpu_nodes: CPUSet = CPUSet()
        #: memory kind -> memory nodes of the subtree (CPU nodes and attached ones)
        self.mem_nodes: Dict[str, CPUSet] = {k: CPUSet() for k in MEMORY_KINDS}
        #: memory kind -> bytes of the subtree
        self.memory: Dict[str, int] = {k: 0 for k in MEMORY_KINDS}
        #: ancestors, parent first; the subtree (itself first, depth first); both
        #: together (itself once): the pools whose memory overlaps with this one's
        self.ancestors: Tuple[Pool, ...] = ()
        self.subtree: Tuple[Pool, ...] = ()
        self.related: Tuple[Pool, ...] = ()
        self._nodes_cache: Dict[Tuple[str, ...], CPUSet] = {}

    def nodes_of(self, kinds: Iterable[str]) -> CPUSet:
        """Memory nodes of these kinds in the subtree."""
        key = tuple(kinds)
        cached = self._nodes_cache.get(key)
        if cached is None:
            bits = 0
            for kind in key:
                bits |= self.mem_nodes[kind].bits
            cached = self._nodes_cache[key] = CPUSet.from_bits(bits)
        return cached

    def memory_of(self, kinds: Iterable[str]) -> int:
        """Bytes of memory of these kinds in the subtree."""
        return sum(self.memory[k] for k in kinds)

    def __repr__(self) -> str:
        return f"Pool({self.name}: CPUs {self.cpus})"


class PoolTree:
    """The pools of one machine. Build with `PoolTree.build(topology)`."""

    def __init__(self, topology: Topology, root: Pool) -> None:
        self.topology = topology
        self.root = root
        self.pools: List[Pool] = []
        self._walk(root)
        for i, pool in enumerate(self.pools):
            pool.index = i
        self.by_name: Dict[str, Pool] = {p.name: p for p in self.pools}
        n = len(self.pools)
        #: tree distance (links) between pools, by index
        self.distance: List[List[int]] = [[0] * n for _ in range(n)]
        for a in self.pools:
            up = {p.index: i for i, p in enumerate((a, *a.ancestors))}
            for b in self.pools:
                for j, p in enumerate((b, *b.ancestors)):
                    if p.index in up:
                        self.distance[a.index][b.index] = up[p.index] + j
                        break
        #: CPU node -> the pool that stands for it (its own pool or its surrogate)
        self.surrogate: Dict[int, Pool] = {}
        #: node without CPUs (memory-only or CPUs offline) -> the pool it is attached to
        self.attached: Dict[int, Pool] = {}

    def _walk(self, pool: Pool) -> None:
        self.pools.append(pool)
        ancestors = []
        p = pool.parent
        while p is not None:
            ancestors.append(p)
            p = p.parent
        pool.ancestors = tuple(ancestors)
        for child in pool.children:
            self._walk(child)

    # -- building ---------------------------------------------------------------

    @classmethod
    def build(cls, topology: Topology) -> PoolTree:
        """The pool tree of ``topology`` (see the module docstring)."""
        rank = {cpu: i for i, cpu in enumerate(topology.cpu_order)}
        cpu_nodes = {n: topology.nodes[n].cpus for n in topology.cpu_nodes}
        surrogate: Dict[int, Pool] = {}

        def node_pools(parent: Pool, nodes: List[int]) -> None:
            """Pools for these CPU nodes under ``parent`` (none for a lone node)."""
            if len(nodes) < 2:
                for n in nodes:
                    surrogate[n] = parent
                return
            for n in _in_order({n: cpu_nodes[n] for n in nodes}, rank):
                pool = Pool(f"node{n}", "node", cpu_nodes[n], parent)
                parent.children.append(pool)
                surrogate[n] = pool

        die_of: Dict[int, Tuple[int, int]] = {}
        nested = True
        for n, cpus in cpu_nodes.items():
            first = topology.cpus[cpus.first()]
            key = (first.package, first.die)
            if cpus.bits & ~topology.dies[key].bits:
                nested = False
                break
            die_of[n] = key

        root: Optional[Pool] = None
        if not nested:
            log.info("NUMA nodes cross dies or packages; the pool tree is root -> nodes")
            root = Pool("root", "root", topology.online, None)
            node_pools(root, list(cpu_nodes))
        else:
            packages = _in_order(topology.packages, rank)
            if len(packages) > 1:
                root = Pool("root", "root", topology.online, None)
            for package in packages:
                name = f"socket{package}"
                kind = "root" if root is None else "socket"
                socket = Pool(name, kind, topology.packages[package], root)
                if root is None:
                    root = socket
                else:
                    root.children.append(socket)
                dies = {k: v for k, v in topology.dies.items() if k[0] == package}
                die_keys = _in_order(dies, rank)
                if len(die_keys) > 1:
                    for key in die_keys:
                        die = Pool(f"{name}/die{key[1]}", "die", dies[key], socket)
                        socket.children.append(die)
                        node_pools(die, [n for n, k in die_of.items() if k == key])
                else:
                    node_pools(socket, [n for n, k in die_of.items() if k[0] == package])
        assert root is not None

        tree = cls(topology, root)
        tree.surrogate = surrogate
        tree._assign_memory()
        return tree

    def _assign_memory(self) -> None:
        """Give every pool the memory nodes of its subtree, memory-only ones attached."""
        topology = self.topology
        own: Dict[int, List[int]] = {p.index: [] for p in self.pools}  # pool -> memory nodes
        for n, pool in self.surrogate.items():
            own[pool.index].append(n)
        attached_count: Dict[int, int] = {}
        for node in topology.nodes.values():
            if node.cpus or not node.has_memory:
                continue
            closest = [c for c in topology.closest_cpu_nodes(node.id) if c in self.surrogate]
            if not closest:
                log.warning("node %d has memory but no CPU node to attach it to; unused", node.id)
                continue
            best = min(closest, key=lambda c: (attached_count.get(c, 0), c))
            attached_count[best] = attached_count.get(best, 0) + 1
            pool = self.surrogate[best]
            self.attached[node.id] = pool
            own[pool.index].append(node.id)
            log.debug(
                "node %d (%s) attached to pool %s (node %d)", node.id, node.kind, pool.name, best
            )
        for pool in reversed(self.pools):  # children before parents
            for n in own[pool.index]:
                node = topology.nodes[n]
                if node.cpus:
                    pool.cpu_nodes = pool.cpu_nodes | CPUSet.of(n)
                if node.has_memory:
                    pool.mem_nodes[node.kind] = pool.mem_nodes[node.kind] | CPUSet.of(n)
                    pool.memory[node.kind] += node.memory
            for child in pool.children:
                pool.cpu_nodes = pool.cpu_nodes | child.cpu_nodes
                for kind in MEMORY_KINDS:
                    pool.mem_nodes[kind] = pool.mem_nodes[kind] | child.mem_nodes[kind]
                    pool.memory[kind] += child.memory[kind]
        for pool in self.pools:
            sub: List[Pool] = []

            def walk(p: Pool, out: List[Pool] = sub) -> None:
                out.append(p)
                for c in p.children:
                    walk(c, out)

            walk(pool)
            pool.subtree = tuple(sub)
            pool.related = tuple(sub) + pool.ancestors

    # -- queries ----------------------------------------------------------------------

    def smallest_containing(self, cpus: CPUSet) -> Pool:
        """The deepest pool whose CPUs include all of ``cpus`` (the root if none)."""
        bits = cpus.bits
        pool = self.root
        while True:
            for child in pool.children:
                if bits & ~child.bits == 0 and bits:
                    pool = child
                    break
            else:
                return pool

    def describe(self) -> str:
        """One line per pool, indented by depth: name, CPUs, memory nodes by kind."""
        lines = []
        for p in self.pools:
            mems = ", ".join(f"{k} {p.mem_nodes[k]}" for k in MEMORY_KINDS if p.mem_nodes[k])
            lines.append(f"{'  ' * p.depth}{p.name}: CPUs {p.cpus}; memory nodes {mems or '-'}")
        return "\n".join(lines)
