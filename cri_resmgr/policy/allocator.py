"""Topology-aware picking of CPUs: which N of the available CPUs a container gets.

This module owns `CPUAllocator`, shared by the static, topology-aware and balloons
policies. It knows nothing about containers or pools: callers pass the CPUs that may
be handed out (``avail``) and a count, and get back a `CPUSet`. All work is done on
the integer bitmasks of `CPUSet` (bit N = CPU N); a decision on a 448-CPU machine
takes a few hundred microseconds.

The machine is seen as a tree: machine -> packages -> dies -> NUMA nodes -> L3 groups
(only where a node holds several L3 caches, e.g. AMD CCXs) -> cores -> threads.
`CPUAllocator.take` picks, in this order (the idea of kubelet's ``takeByTopology``,
extended to NUMA nodes and L3 groups):

1. **Whole groups.** While the request covers a whole package, die, NUMA node or L3
   group whose CPUs are all available, take it (largest groups first). Among equal
   groups the one whose parent has the fewest available CPUs goes first, so that
   whole parents stay whole for later requests.
2. **Fewest NUMA nodes, best fit.** Descend the tree. At each level, if some children
   can satisfy the rest of the request on their own, pick one of them, ranked by
   (a) the fewest NUMA nodes the rest needs inside it, (b) it contains CPUs the
   request already has or `near` names (growing a container stays local),
   (c) it can give the rest as whole cores, (d) *the fewest available CPUs*
   (best fit: the least fragmentation, big holes stay big for big requests),
   (e) topology order. If no child can, take everything of the child with the most
   available CPUs and repeat with the others.
3. **Inside a node (or L3 group): whole cores, then single threads.** Whole free
   cores in topology order while the rest needs at least a core; then single threads,
   first siblings of CPUs the request already has (or `near`), then threads of
   cores that are already partly used (leaving whole cores whole), then topology
   order.

With ``full_cores=True`` only cores whose online threads are all available are
considered (kubelet's ``full-pcpus-only``); a request that cannot be made of whole
cores exactly fails.

`CPUAllocator.keep` chooses which CPUs of a set to keep when it shrinks (the same
packing applied to the set itself: whole groups and cores are kept, stray threads and
the smaller NUMA node parts are given back), and `CPUAllocator.mems_of` gives the
memory nodes for a set of CPUs (``cpuset.mems``).

Errors: `errors.AllocationError` when the available CPUs cannot satisfy the count;
callers that want to name a container check the capacity (`capacity`) first.
"""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

from cri_resmgr.errors import AllocationError
from cri_resmgr.resources.cpuset import CPUSet, popcount
from cri_resmgr.resources.topology import Topology

__all__ = ["CPUAllocator"]

log = logging.getLogger(__name__)

_EMPTY = CPUSet()


class _Group:
    """A node of the topology tree: the machine, a package, die, NUMA node or L3 group."""

    __slots__ = ("bits", "children", "cores", "ident", "index", "kind", "node_bits", "parent")

    def __init__(self, kind: str, ident: object, bits: int, index: int) -> None:
        self.kind = kind  # "machine", "package", "die", "node", "l3"
        self.ident = ident
        self.bits = bits  # all online CPUs of the group
        self.index = index  # position in topology order (tie-breaker)
        self.children: List[_Group] = []
        self.cores: Tuple[int, ...] = ()  # core bitmasks, topology order (leaves)
        self.node_bits: Tuple[int, ...] = ()  # NUMA nodes (at or below: itself) inside
        self.parent: Optional[_Group] = None

    @property
    def size(self) -> int:
        return popcount(self.bits)

    def __repr__(self) -> str:
        return f"{self.kind} {self.ident} ({CPUSet.from_bits(self.bits)})"


class CPUAllocator:
    """Picks CPUs by topology for one machine; see the module docstring.

    Build once per `Topology` (the tree and the core masks are precomputed); the
    methods keep no state between calls.
    """

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.online_bits = topology.online.bits
        #: the most threads any core has (1 without SMT)
        self.threads_per_core = max(1, topology.threads_per_core)

        order = topology.cpus_sorted_by_topology()
        rank = {cpu: i for i, cpu in enumerate(order)}
        cores: List[int] = []
        seen = set()
        for cpu in order:
            core = topology.cpus[cpu].core
            if core not in seen:
                seen.add(core)
                cores.append(topology.cores[core].bits)
        #: every core's thread mask, topology order
        self.cores: Tuple[int, ...] = tuple(cores)
        self._core_of: Dict[int, int] = {}
        for core_bits in cores:
            for cpu in CPUSet.from_bits(core_bits):
                self._core_of[cpu] = core_bits

        self._stride, self._first_threads = self._regular_smt(cores)
        self.root = self._build_tree(topology, rank)
        self._whole_groups = self._collect_whole_groups()
        self._node_bits: Dict[int, int] = {
            n: topology.nodes[n].cpus.bits for n in topology.cpu_nodes
        }
        self._mems_cache: Dict[int, CPUSet] = {}

    # -- tree ----------------------------------------------------------------------

    def _build_tree(self, topology: Topology, rank: Dict[int, int]) -> _Group:
        counter = [0]

        def group(kind: str, ident: object, bits: int) -> _Group:
            counter[0] += 1
            return _Group(kind, ident, bits, counter[0])

        def first_rank(bits: int) -> int:
            return min(rank[c] for c in CPUSet.from_bits(bits))

        root = group("machine", 0, self.online_bits)

        nodes: List[_Group] = []
        for node_id in sorted(topology.cpu_nodes, key=lambda n: first_rank(self._nbits(n))):
            nbits = self._nbits(node_id)
            node = group("node", node_id, nbits)
            node.node_bits = (nbits,)
            l3s: Dict[int, int] = {}
            for cpu in CPUSet.from_bits(nbits):
                l3 = topology.cpus[cpu].l3
                if l3 is not None:
                    l3s[l3] = l3s.get(l3, 0) | (1 << cpu)
            if len(l3s) > 1:
                for l3_id, l3_bits in sorted(l3s.items(), key=lambda kv: first_rank(kv[1])):
                    child = group("l3", l3_id, l3_bits)
                    child.node_bits = (l3_bits,)
                    child.cores = self._cores_in(l3_bits)
                    node.children.append(child)
            else:
                node.cores = self._cores_in(nbits)
            nodes.append(node)

        # packages -> dies -> nodes, if every node lies inside one die
        dies: Dict[Tuple[int, int], List[_Group]] = {}
        nested = True
        for node in nodes:
            first = topology.cpus[CPUSet.from_bits(node.bits).first()]
            key = (first.package, first.die)
            if node.bits & ~topology.dies[key].bits:
                nested = False
                break
            dies.setdefault(key, []).append(node)
        if not nested:
            # nodes span packages (rare firmware setups): machine -> nodes
            root.children = nodes
        else:
            for package_id in sorted(
                topology.packages, key=lambda p: first_rank(topology.packages[p].bits)
            ):
                package = group("package", package_id, topology.packages[package_id].bits)
                die_keys = [k for k in dies if k[0] == package_id]
                die_keys.sort(key=lambda k: first_rank(topology.dies[k].bits))
                for key in die_keys:
                    die = group("die", key, topology.dies[key].bits)
                    die.children = dies[key]
                    package.children.append(die)
                root.children.append(package)

        def finish(g: _Group, parent: Optional[_Group]) -> None:
            g.parent = parent
            for child in g.children:
                finish(child, g)
            if g.kind not in ("node", "l3"):
                g.node_bits = tuple(b for c in g.children for b in c.node_bits)

        finish(root, None)
        return root

    def _nbits(self, node_id: int) -> int:
        return self.topology.nodes[node_id].cpus.bits

    def _cores_in(self, bits: int) -> Tuple[int, ...]:
        return tuple(c & bits for c in self.cores if c & bits)

    def _collect_whole_groups(self) -> List[_Group]:
        """Packages, dies, nodes and L3 groups, one per distinct CPU set, largest first."""
        out: List[_Group] = []
        seen = set()

        def walk(g: _Group) -> None:
            if g.kind != "machine" and g.bits not in seen:
                seen.add(g.bits)
                out.append(g)
            for child in g.children:
                walk(child)

        walk(self.root)
        out.sort(key=lambda g: (-g.size, g.index))
        return out

    @staticmethod
    def _parent_bits(g: _Group) -> int:
        """CPUs of the nearest ancestor that is larger than ``g``."""
        parent = g.parent
        while parent is not None and parent.bits == g.bits:
            parent = parent.parent
        return parent.bits if parent is not None else g.bits

    # -- public helpers ------------------------------------------------------------

    def whole_cores(self, avail: CPUSet) -> CPUSet:
        """The CPUs of ``avail`` whose cores are entirely (all online threads) in it."""
        return CPUSet.from_bits(self._whole_bits(avail.bits & self.online_bits))

    def _regular_smt(self, cores: List[int]) -> Tuple[int, int]:
        """``(stride, first threads)`` if every core is threads t, t+k, t+2k, ... with the
        same count and the same k (Intel's numbering k = cores, AMD's/ARM's k = 1):
        then whole cores are found with a few shifts instead of a loop. (0, 0) if not."""
        tpc = self.threads_per_core
        if tpc < 2:
            return 0, 0
        stride = 0
        first = 0
        for core in cores:
            ids = CPUSet.from_bits(core).ids
            if len(ids) != tpc:
                return 0, 0
            step = ids[1] - ids[0]
            if any(b - a != step for a, b in zip(ids, ids[1:])) or stride not in (0, step):
                return 0, 0
            stride = step
            first |= 1 << ids[0]
        return stride, first

    def _whole_bits(self, a: int) -> int:
        """The bits of ``a`` whose cores are entirely in ``a``."""
        stride = self._stride
        if stride:
            tpc = self.threads_per_core
            lead = a & self._first_threads
            for j in range(1, tpc):
                lead &= a >> (j * stride)
            whole = lead
            for j in range(1, tpc):
                whole |= lead << (j * stride)
            return whole
        whole = 0
        for core in self.cores:
            if core & a == core:
                whole |= core
        return whole

    def capacity(self, avail: CPUSet, full_cores: bool = False) -> int:
        """How many CPUs `take` could give from ``avail`` (whole cores only if asked)."""
        a = avail.bits & self.online_bits
        return popcount(self._whole_bits(a) if full_cores else a)

    def core_of(self, cpu: int) -> CPUSet:
        """The online threads of ``cpu``'s core."""
        return CPUSet.from_bits(self._core_of[cpu])

    def is_whole_cores(self, cpus: CPUSet) -> bool:
        """True if ``cpus`` consists of whole cores (all online threads of each)."""
        return self._whole_bits(cpus.bits) == cpus.bits

    def mems_of(self, cpus: CPUSet) -> CPUSet:
        """Memory nodes for ``cpus``: the NUMA nodes of the CPUs that have memory.

        A CPU node without memory is replaced by the nearest node(s) with memory.
        Empty ``cpus`` give an empty set.
        """
        bits = cpus.bits
        cached = self._mems_cache.get(bits)
        if cached is not None:
            return cached
        topology = self.topology
        mems: List[int] = []
        for node_id, nbits in self._node_bits.items():
            if not nbits & bits:
                continue
            node = topology.nodes[node_id]
            if node.has_memory:
                mems.append(node_id)
                continue
            for _dist, ids in topology.nodes_by_distance(node_id):
                near = [i for i in ids if topology.nodes[i].has_memory]
                if near:
                    mems.extend(near)
                    break
        result = CPUSet(mems)
        if len(self._mems_cache) > 4096:  # bounded: pools change shape over time
            self._mems_cache.clear()
        self._mems_cache[bits] = result
        return result

    # -- picking ---------------------------------------------------------------------

    def take(
        self,
        avail: CPUSet,
        count: int,
        *,
        near: CPUSet = _EMPTY,
        full_cores: bool = False,
    ) -> CPUSet:
        """Pick ``count`` CPUs of ``avail`` by topology (see the module docstring).

        ``near``: CPUs the result should be close to (a container's current CPUs
        when it grows); they are not taken. ``full_cores``: only whole cores.
        Raises `AllocationError` if ``avail`` cannot give ``count`` CPUs.
        """
        if count <= 0:
            return _EMPTY
        a = avail.bits & self.online_bits
        whole = self._whole_bits(a)
        if full_cores:
            a = whole
        have = popcount(a)
        if count > have:
            what = "CPUs in whole cores" if full_cores else "CPUs"
            raise AllocationError(
                f"cannot pick {count} CPUs: only {have} {what} available ({CPUSet.from_bits(a)})"
            )
        steps: Optional[List[str]] = [] if log.isEnabledFor(logging.DEBUG) else None
        result, a, whole, rest = self._take_whole_groups(a, whole, count, steps)
        if rest > 0:
            got = self._take_from(
                self.root, a, whole, rest, near=near.bits | result, full=full_cores, steps=steps
            )
            result |= got
        if popcount(result) != count:
            raise AllocationError(
                f"cannot pick {count} CPUs as whole cores from {CPUSet.from_bits(avail.bits)}"
            )
        picked = CPUSet.from_bits(result)
        if steps is not None:
            log.debug("picked %d CPUs %s: %s", count, picked, "; ".join(steps) or "-")
        return picked

    def keep(self, cpus: CPUSet, count: int, *, full_cores: bool = False) -> CPUSet:
        """Which ``count`` CPUs of ``cpus`` to keep when a set shrinks.

        The kept part is packed like a fresh pick from ``cpus`` alone: whole groups
        and whole cores stay, stray threads and the smaller NUMA node parts go.
        """
        if count >= len(cpus):
            return cpus
        return self.take(cpus, count, full_cores=full_cores)

    # -- the steps ------------------------------------------------------------------------

    def _take_whole_groups(
        self, a: int, whole: int, rest: int, steps: Optional[List[str]]
    ) -> Tuple[int, int, int, int]:
        result = 0
        groups = self._whole_groups
        i = 0
        while i < len(groups) and rest > 0:
            size = popcount(groups[i].bits)
            j = i
            while j < len(groups) and popcount(groups[j].bits) == size:
                j += 1
            while rest >= size:
                best: Optional[_Group] = None
                best_key: Tuple[int, int] = (0, 0)
                for g in groups[i:j]:
                    if g.bits & a != g.bits:
                        continue
                    key = (popcount(a & self._parent_bits(g)), g.index)
                    if best is None or key < best_key:
                        best, best_key = g, key
                if best is None:
                    break
                result |= best.bits
                a &= ~best.bits
                whole &= ~best.bits
                rest -= size
                if steps is not None:
                    steps.append(f"whole {best.kind} {best.ident}")
            i = j
        return result, a, whole, rest

    def _take_from(
        self,
        g: _Group,
        a: int,
        whole: int,
        rest: int,
        *,
        near: int,
        full: bool,
        steps: Optional[List[str]],
    ) -> int:
        """Take ``rest`` CPUs of ``a`` inside group ``g``; returns the bits taken."""
        if not g.children:
            return self._take_leaf(g, a, whole, rest, near=near, full=full, steps=steps)
        taken = 0
        tpc = self.threads_per_core
        while rest > 0:
            best: Optional[_Group] = None
            best_key: Tuple[int, ...] = ()
            largest: Optional[_Group] = None
            largest_key: Tuple[int, ...] = ()
            for child in g.children:
                ca = a & child.bits
                if not ca:
                    continue
                cap = popcount(ca)
                close = 0 if child.bits & near else 1
                if cap >= rest:
                    nodes = self._nodes_needed(child, a, rest)
                    if full:
                        bad = 0
                    else:
                        bad = 0 if popcount(whole & child.bits) >= rest - rest % tpc else 1
                    key: Tuple[int, ...] = (nodes, close, bad, cap, child.index)
                    if best is None or key < best_key:
                        best, best_key = child, key
                else:
                    lkey = (-cap, close, child.index)
                    if largest is None or lkey < largest_key:
                        largest, largest_key = child, lkey
            if best is not None:
                if steps is not None:
                    steps.append(f"{best.kind} {best.ident} ({rest} CPUs)")
                taken |= self._take_from(
                    best,
                    a & best.bits,
                    whole & best.bits,
                    rest,
                    near=near | taken,
                    full=full,
                    steps=steps,
                )
                return taken
            if largest is None:
                break
            got = a & largest.bits
            if steps is not None:
                steps.append(
                    f"all {popcount(got)} available CPUs of {largest.kind} {largest.ident}"
                )
            taken |= got
            a &= ~got
            whole &= ~largest.bits
            rest -= popcount(got)
        return taken

    @staticmethod
    def _nodes_needed(g: _Group, a: int, rest: int) -> int:
        """The fewest NUMA nodes (or L3 groups below a node) inside ``g`` that give ``rest``."""
        if len(g.node_bits) <= 1:
            return 1
        caps = sorted((popcount(a & b) for b in g.node_bits), reverse=True)
        total = 0
        for n, cap in enumerate(caps, 1):
            total += cap
            if total >= rest:
                return n
        return len(caps) + 1

    def _take_leaf(
        self,
        g: _Group,
        a: int,
        whole: int,
        rest: int,
        *,
        near: int,
        full: bool,
        steps: Optional[List[str]],
    ) -> int:
        taken = 0
        n_whole = 0
        for core in g.cores:
            if rest <= 0:
                break
            if core & whole == core and core & a == core:
                size = popcount(core)
                if size <= rest:
                    taken |= core
                    rest -= size
                    n_whole += 1
        if steps is not None and n_whole:
            steps.append(f"{n_whole} whole core(s) in {g.kind} {g.ident}")
        if rest <= 0 or full:
            return taken
        # single threads
        ours = near | taken
        ranked: List[Tuple[int, int, int, int]] = []
        for i, core in enumerate(g.cores):
            free = core & a & ~taken
            if not free:
                continue
            sibling = 0 if core & ours else 1
            ranked.append((sibling, popcount(free), i, free))
        ranked.sort()
        n_single = 0
        for _sib, _n, _i, free in ranked:
            left = free
            while left and rest > 0:
                low = left & -left
                taken |= low
                left &= ~low
                rest -= 1
                n_single += 1
            if rest <= 0:
                break
        if steps is not None and n_single:
            steps.append(f"{n_single} single thread(s) in {g.kind} {g.ident}")
        return taken
