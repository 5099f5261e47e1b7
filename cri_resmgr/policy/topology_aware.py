"""The topology-aware policy (alias memtier): containers in a tree of pools.

This module owns `TopologyAwarePolicy`. The operator's manual is the class docstring
(``cri-resmgr -list-policies``, docs/policies.md); the pool tree is `pools.PoolTree`
(root -> sockets -> dies -> NUMA nodes, memory-only nodes attached to the nearest CPU
node); CPUs are picked by `allocator.CPUAllocator`; annotations are read with
`annotation_keys.Reader`. The design decisions worth knowing when changing the code:

* **Requests.** `_request` turns a container, its annotations and the options into a
  `Request`: a CPU class (reserved, exclusive, shared or preserved), the exclusive
  CPU count or the milli-CPUs on shared/reserved CPUs, whether isolated CPUs are
  preferred, the memory kinds and the memory limit (bytes) to hold.
* **Accounting** is kept per pool in plain lists indexed by `Pool.index`:
  ``_owned`` (bitmask of exclusive CPUs), ``_shared_milli``/``_shared_count`` (shared
  milli-CPUs and shared containers of each pool's subtree), ``_mem_load`` (bytes per
  memory kind charged to the pools related to a pool: its subtree and ancestors, the
  pools whose containers may use its memory), ``_members`` (shared containers by
  pool). `_commit` and `_uncommit` are exact inverses, so a failed resize or
  reconfiguration puts back exactly what was there.
* **Shared CPUs of a pool** = its online CPUs - isolated - reserved - exclusive. A pool
  that has shared containers in its subtree keeps at least ceil(their milli-CPUs /
  1000) CPUs and at least one; the root always keeps one. An exclusive allocation
  must leave that much in the pool, its ancestors and every descendant it takes
  CPUs from (`_Snapshot`: ``spare``, ``removable``, ``excl_cap``).
* **Pool choice** (`_choose`): candidates that can give the CPUs (a hard filter for
  exclusive CPUs; for shared ones, pools with room come first but a full machine
  still places the container), then pools whose memory of the asked kinds can hold
  the memory limit, then the deepest pool, then (exclusive with isolated preference)
  pools with enough free isolated CPUs, then pod colocation (the pod's other
  containers, weighted 0.75 per tree link away), then idleness (free shared
  capacity; for shared requests first the fewest shared containers), then topology
  order.
* **Memory** (`_memory`): the nodes of the asked kinds of the container's pool, or
  of the nearest ancestor that can hold the memory limit; without an explicit kind
  and when even the root's DRAM cannot hold it, every kind. Charged per kind (DRAM,
  then HBM, then PMEM: the kernel's fallback order by distance). Existing placements
  are not widened when later ones use up a pool's memory.
* **Knock-on updates** (`_refresh`): whenever a pool's shared CPUs change, every
  shared container of that pool gets its new placement, and the decision lists them.
  The pool's CPUs are computed once per pool and one `Placement` is shared by the
  containers with the same request and memory nodes (1000 shared containers make
  this the hot path of an exclusive allocation).
* **Errors** leave the state as it was: a request is planned on a `_Snapshot` and
  committed only when it fits.
* **Logging**: decisions at DEBUG with reasons; malformed annotations at WARNING,
  one line per container placement (`annotation_keys.Reader.report`); the hooks log the
  INFO line per placement; `restore`/`reconfigure` log one INFO line per container
  they move.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from cri_resmgr.errors import AllocationError, PolicyError
from cri_resmgr.podspec import milli_cpu_to_shares
from cri_resmgr.policy.allocator import CPUAllocator
from cri_resmgr.policy.annotation_keys import (
    CPU_PRESERVE,
    MEMORY_PRESERVE,
    PREFER_ISOLATED_CPUS,
    PREFER_RESERVED_CPUS,
    PREFER_SHARED_CPUS,
    Malformed,
    Reader,
)
from cri_resmgr.policy.base import (
    EXCLUSIVE,
    GUARANTEED,
    ISOLATED,
    PRESERVED,
    RESERVED,
    SHARED,
    Container,
    Decision,
    Entry,
    Placement,
    Pod,
    Policy,
    Problems,
    with_defaults,
)
from cri_resmgr.policy.pools import Pool, PoolTree
from cri_resmgr.resources.cpuset import CPUSet, popcount
from cri_resmgr.resources.topology import DRAM, HBM, MEMORY_KINDS, PMEM, Topology

__all__ = ["DEFAULT_MEMORY_KINDS", "SECTION", "Request", "TopologyAwarePolicy"]

log = logging.getLogger(__name__)

#: memory kinds a container gets without a memory-type annotation
DEFAULT_MEMORY_KINDS: Tuple[str, ...] = (DRAM,)
SECTION = "policy.topology-aware"
#: namespaces that always run on the reserved CPUs
_SYSTEM_NAMESPACES = ("kube-system",)
#: the weight of a pod's container one tree link away (Intel's affinity decay)
_COLOCATION_DECAY = 0.75
#: the order in which a container's memory limit is charged to the kinds it may use
_CHARGE_ORDER = (DRAM, HBM, PMEM)
_RESERVED_POOL = "reserved"


@dataclass(frozen=True)
class Request:
    """What a container asks for, after annotations and options.

    ``cls``: EXCLUSIVE, SHARED, RESERVED or PRESERVED (cpu.preserve). ``full``:
    exclusive CPUs. ``milli``: milli-CPUs on shared or reserved CPUs. ``memory``:
    bytes the memory nodes should hold (the memory limit, 0 = none). ``pin_mems``:
    False with memory.preserve. ``note``: something worth an INFO line.
    """

    cls: str
    full: int = 0
    milli: int = 0
    isolate: bool = False
    kinds: Tuple[str, ...] = DEFAULT_MEMORY_KINDS
    explicit_kinds: bool = False
    memory: int = 0
    pin_mems: bool = True
    why: str = ""
    note: str = ""

    @property
    def signature(self) -> Tuple[Any, ...]:
        """What a placement depends on (the isolated preference applies to new picks only)."""
        return (
            self.cls,
            self.full,
            self.milli,
            self.kinds,
            self.explicit_kinds,
            self.memory,
            self.pin_mems,
        )

    def describe(self) -> str:
        if self.cls == EXCLUSIVE:
            what = f"{self.full} exclusive CPU(s)" + (
                ", isolated preferred" if self.isolate else ""
            )
        elif self.cls == PRESERVED:
            what = "CPUs preserved"
        else:
            what = f"{self.milli}m {self.cls}"
        mem = "memory preserved" if not self.pin_mems else f"{'+'.join(self.kinds)} memory"
        if self.memory and self.pin_mems:
            mem += f" for {self.memory} bytes"
        return f"{what}, {mem}"


@dataclass
class _Grant:
    """A container's allocation. ``wanted`` is what it asks for; ``request`` what it
    got (they differ when a restore had to fall back to shared CPUs)."""

    container: Container
    wanted: Request
    request: Request
    pool: Optional[Pool]  # the CPU pool (None: reserved or preserved CPUs)
    exclusive: int = 0  # bitmask of its own CPUs
    isolated: bool = False  # the exclusive CPUs are kernel-isolated ones
    mem_pool: Optional[Pool] = None
    mems: Optional[CPUSet] = None  # memory nodes (None: left as the container asked)
    charge: Tuple[Tuple[str, int], ...] = ()  # bytes charged per kind at mem_pool


class _Snapshot:
    """Free CPU capacity of every pool, computed once per decision.

    ``avail``: bitmask of all shared CPUs; ``iso_free``: free isolated CPUs; per pool
    (by index): ``shared`` (count of its shared CPUs), ``spare`` (of those, how many an
    exclusive allocation may take without starving its shared containers; negative
    when already short), ``removable`` (spare, limited by what its children can
    spare), ``excl_cap`` (exclusive CPUs it can give: removable, limited by every
    ancestor's spare) and ``shared_cap`` (milli-CPUs of shared capacity left, the
    least over it and its ancestors).
    """

    __slots__ = ("avail", "excl_cap", "iso_free", "removable", "shared", "shared_cap", "spare")

    def __init__(self, policy: TopologyAwarePolicy, owned: int) -> None:
        pools = policy.tree.pools
        n = len(pools)
        self.avail = avail = policy._shareable_base & ~owned
        self.iso_free = policy._isolated_base & ~owned
        shared = [0] * n
        spare = [0] * n
        free = [0] * n
        for p in pools:
            i = p.index
            c = popcount(p.bits & avail)
            shared[i] = c
            milli = policy._shared_milli[i]
            need = 0 if policy._shared_count[i] == 0 else max(1, -(-milli // 1000))
            if p.parent is None:
                need = max(need, 1)
            spare[i] = c - need
            free[i] = 1000 * c - milli
        removable = [0] * n
        for p in reversed(pools):
            r = max(0, spare[p.index])
            if p.children:
                r = min(r, sum(removable[c.index] for c in p.children))
            removable[p.index] = r
        excl_cap = [0] * n
        shared_cap = [0] * n
        anc_spare = [0] * n
        anc_free = [0] * n
        for p in pools:  # parents first
            i = p.index
            if p.parent is None:
                anc_spare[i] = removable[i]
                anc_free[i] = free[i]
            else:
                j = p.parent.index
                anc_spare[i] = min(anc_spare[j], spare[j])
                anc_free[i] = min(anc_free[j], free[j])
            excl_cap[i] = max(0, min(removable[i], anc_spare[i]))
            shared_cap[i] = min(free[i], anc_free[i])
        self.shared = shared
        self.spare = spare
        self.removable = removable
        self.excl_cap = excl_cap
        self.shared_cap = shared_cap


class TopologyAwarePolicy(Policy):
    """Places containers in a tree of pools that follows the hardware: sockets, dies, nodes.

    The pools. The machine is a tree: the root, its sockets, the dies of a socket
    (when it has several) and the NUMA nodes of a die or socket (when it has several,
    e.g. sub-NUMA clustering). Memory-only NUMA nodes (PMEM, HBM, CXL memory) belong
    to the pool of the CPU node they are closest to. Each container goes to the pool
    that fits it with the least spread: the deepest pool with enough free CPU and
    memory. Ties go to the pool that holds the pod's other containers, then to the
    idlest pool.

    CPUs, with kubelet-compatible defaults:
      * kube-system and the namespaces of reserved-pool-namespaces run on the
        reserved CPUs ([policy] reserved-cpus);
      * BestEffort and Burstable containers, and Guaranteed ones with a fractional
        CPU request (1500m), run on the shared CPUs of their pool: its CPUs minus
        the reserved, isolated and exclusive ones;
      * Guaranteed containers with a whole number of CPUs get CPUs of their own,
        sliced off their pool's shared CPUs (whole cores first). The shared
        containers of the pool are moved off them at once;
      * a Guaranteed 1-CPU container gets a kernel-isolated CPU (isolcpus) when its
        pool has a free one (prefer-isolated-cpus).

    Memory. cpuset.mems is the pool's memory nodes of the asked kinds (DRAM unless
    the memory-type annotation asks for pmem, hbm or a combination), widened to a
    larger pool's nodes when the pool's memory cannot hold the container's memory
    limit. cpu.shares follows the request on shared and reserved CPUs.

    Annotations, on the pod (KEY.cri-resource-manager.intel.com/pod) or for one
    container (KEY.cri-resource-manager.intel.com/container.NAME):
      prefer-isolated-cpus, prefer-shared-cpus, prefer-reserved-cpus  "true"/"false"
      memory-type        dram, pmem, hbm, comma-combined (dram,pmem)
      cpu.preserve       "true": leave the container's own cpuset.cpus untouched
      memory.preserve    "true": leave its cpuset.mems untouched
    A malformed value is logged (one WARNING line naming pod, container, annotation
    and value) and the default applies.

    Options ([policy.topology-aware], all can change on a reload):
      pin-cpu = true                  set cpuset.cpus (and cpu.shares)
      pin-memory = true               set cpuset.mems
      prefer-isolated-cpus = true     isolated CPUs for Guaranteed 1-CPU containers
      prefer-shared-cpus = false      Guaranteed containers on shared CPUs
      reserved-pool-namespaces = kube-system   namespaces (globs) on reserved CPUs
      colocate-pods = true            a pod's containers prefer the same pool
      on-error = fail                 fail: the CRI call fails and kubelet retries;
                                      pass: log and run the container unpinned.
    """

    NAME = "topology-aware"
    ALIASES = ("memtier",)
    LIVE_OPTIONS = frozenset(
        (
            "pin-cpu",
            "pin-memory",
            "prefer-isolated-cpus",
            "prefer-shared-cpus",
            "reserved-pool-namespaces",
            "colocate-pods",
        )
    )

    def __init__(self, topology: Topology, reserved: CPUSet, options: Mapping[str, Any]) -> None:
        super().__init__(topology, reserved, options)
        self.validate(topology, reserved, self.options)
        self.options = self._set_options(self.options)
        self.tree = PoolTree.build(topology)
        self.allocator = CPUAllocator(topology)
        online = topology.online.bits
        self._shareable_base = online & ~topology.isolated.bits & ~reserved.bits
        self._isolated_base = online & topology.isolated.bits & ~reserved.bits
        n = len(self.tree.pools)
        self._owned = 0
        self._shared_milli = [0] * n
        self._shared_count = [0] * n
        self._mem_load: List[Dict[str, int]] = [{k: 0 for k in MEMORY_KINDS} for _ in range(n)]
        self._members: List[Dict[str, None]] = [{} for _ in range(n)]
        self._published = [p.bits & self._shareable_base for p in self.tree.pools]
        # per pool: the CPUs its shared containers' placements have (`_shared_cpus`)
        self._member_cpus = [self._shared_cpus(p) for p in self.tree.pools]
        self._grants: Dict[str, _Grant] = {}
        self._pod_pools: Dict[str, Dict[str, int]] = {}  # pod id -> key -> pool index
        self._reported: Dict[str, Tuple[Malformed, ...]] = {}
        self._previous: Dict[str, _Grant] = {}  # key -> its grant before the last resize
        self._reserved_pool = self.tree.smallest_containing(reserved) if reserved else None
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "topology-aware policy: reserved %s, isolated %s; pools:\n%s",
                reserved,
                topology.isolated,
                self.tree.describe(),
            )

    @classmethod
    def validate(
        cls, topology: Topology, reserved: CPUSet, options: Mapping[str, Any], config: Any = None
    ) -> None:
        """Refuse a machine where every online CPU is reserved or kernel-isolated: shared
        containers would have no CPU. Raises `errors.ConfigError` (located with
        ``config``, a `config.Config`)."""
        with_defaults(SECTION, options)
        problems = Problems(config)
        if not topology.online - topology.isolated - reserved:
            problems.add(
                "policy",
                "reserved-cpus",
                reserved,
                "no CPU is left for shared containers: every online CPU is reserved or "
                f"kernel-isolated (online {topology.online}, isolated "
                f"{topology.isolated or 'none'})",
                f"fewer than the {len(topology.online - topology.isolated)} online CPUs that "
                "are not isolated",
            )
        problems.check()

    # -- options -------------------------------------------------------------------------

    def _set_options(self, options: Mapping[str, Any]) -> Dict[str, Any]:
        """Take ``options`` (defaults filled in); the merged options."""
        values = with_defaults(SECTION, options)
        self.pin_cpu: bool = values["pin-cpu"]
        self.pin_memory: bool = values["pin-memory"]
        self.prefer_isolated: bool = values["prefer-isolated-cpus"]
        self.prefer_shared: bool = values["prefer-shared-cpus"]
        self.colocate_pods: bool = values["colocate-pods"]
        self.reserved_namespaces: Tuple[str, ...] = tuple(values["reserved-pool-namespaces"])
        return values

    def _is_reserved_namespace(self, namespace: str) -> bool:
        if namespace in _SYSTEM_NAMESPACES:
            return True
        return any(fnmatch.fnmatchcase(namespace, glob) for glob in self.reserved_namespaces)

    # -- requests --------------------------------------------------------------------------

    def _request(self, container: Container) -> Tuple[Request, Reader]:
        """The request of ``container`` under the current options, and the annotation
        reader (its ``malformed`` list is for the caller to report)."""
        r = Reader.for_container(container)
        preserve_cpu, _ = r.boolean(CPU_PRESERVE, False)
        preserve_mem, _ = r.boolean(MEMORY_PRESERVE, False)
        kinds, explicit_kinds = r.memory_types(DEFAULT_MEMORY_KINDS)
        prefer_reserved, explicit_reserved = r.boolean(PREFER_RESERVED_CPUS, False)
        prefer_shared, explicit_shared = r.boolean(PREFER_SHARED_CPUS, self.prefer_shared)
        prefer_isolated, explicit_isolated = r.boolean(PREFER_ISOLATED_CPUS, self.prefer_isolated)
        note = ""
        if explicit_kinds and not self.tree.root.nodes_of(kinds):
            note = (
                f"asks for {'+'.join(kinds)} memory, which this machine does not have; "
                f"using {'+'.join(DEFAULT_MEMORY_KINDS)}"
            )
            kinds, explicit_kinds = DEFAULT_MEMORY_KINDS, False
        base = Request(
            SHARED,
            kinds=kinds,
            explicit_kinds=explicit_kinds,
            memory=max(0, container.memory_limit),
            pin_mems=not preserve_mem,
            note=note,
        )
        milli = max(0, container.cpu_request)
        count = container.exclusive_cpus
        if preserve_cpu:
            return dataclasses.replace(base, cls=PRESERVED, why="cpu.preserve annotation"), r
        if self.reserved and (
            prefer_reserved
            or (not explicit_reserved and self._is_reserved_namespace(container.namespace))
        ):
            if prefer_reserved:
                why = "prefer-reserved-cpus annotation"
            else:
                why = f"namespace {container.namespace}"
            return dataclasses.replace(base, cls=RESERVED, milli=milli, why=why), r
        if count and not prefer_shared:
            isolate = prefer_isolated if count == 1 else (prefer_isolated and explicit_isolated)
            why = "Guaranteed, whole CPUs"
            return dataclasses.replace(base, cls=EXCLUSIVE, full=count, isolate=isolate, why=why), r
        if count:
            why = "prefer-shared-cpus " + ("annotation" if explicit_shared else "option")
        elif container.cpu_request % 1000 and container.qos == GUARANTEED:
            why = "Guaranteed, fractional CPUs"
        else:
            why = container.qos
        return dataclasses.replace(base, milli=milli, why=why), r

    def _report(self, key: str, container: Container, reader: Reader, always: bool) -> None:
        """Log malformed annotations once per placement (``always``) or when they
        changed since the last report for ``key``."""
        found = tuple(reader.malformed)
        if not found:
            self._reported.pop(key, None)
            return
        if always or self._reported.get(key) != found:
            reader.report(f"{container.namespace}/{container.pod_name}", container.name, log)
        self._reported[key] = found

    # -- accounting ------------------------------------------------------------------------

    def _commit(self, key: str, g: _Grant) -> None:
        self._grants[key] = g
        if g.exclusive:
            self._owned |= g.exclusive
        if g.request.cls == SHARED and g.pool is not None:
            milli = g.request.milli
            for p in (g.pool, *g.pool.ancestors):
                self._shared_milli[p.index] += milli
                self._shared_count[p.index] += 1
            self._members[g.pool.index][key] = None
        if g.charge and g.mem_pool is not None:
            for p in g.mem_pool.related:
                load = self._mem_load[p.index]
                for kind, amount in g.charge:
                    load[kind] += amount
        if g.pool is not None:
            self._pod_pools.setdefault(g.container.pod_id, {})[key] = g.pool.index

    def _uncommit(self, key: str) -> _Grant:
        g = self._grants.pop(key)
        if g.exclusive:
            self._owned &= ~g.exclusive
        if g.request.cls == SHARED and g.pool is not None:
            milli = g.request.milli
            for p in (g.pool, *g.pool.ancestors):
                self._shared_milli[p.index] -= milli
                self._shared_count[p.index] -= 1
            self._members[g.pool.index].pop(key, None)
        if g.charge and g.mem_pool is not None:
            for p in g.mem_pool.related:
                load = self._mem_load[p.index]
                for kind, amount in g.charge:
                    load[kind] -= amount
        pods = self._pod_pools.get(g.container.pod_id)
        if pods is not None:
            pods.pop(key, None)
            if not pods:
                del self._pod_pools[g.container.pod_id]
        return g

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self, self._owned)

    def _free_memory(self, pool: Pool, kinds: Iterable[str]) -> int:
        """Bytes of these kinds in ``pool`` not charged to it, its subtree or ancestors."""
        load = self._mem_load[pool.index]
        return sum(max(0, pool.memory[k] - load[k]) for k in kinds)

    # -- placements --------------------------------------------------------------------------

    def _shared_cpus(self, pool: Pool) -> CPUSet:
        """The shared CPUs of ``pool``; if it has none (only after a restore or a
        reconfiguration), those of the nearest ancestor that has, else the reserved CPUs."""
        avail = self._shareable_base & ~self._owned
        for p in (pool, *pool.ancestors):
            bits = p.bits & avail
            if bits:
                return CPUSet.from_bits(bits)
        return self.reserved or self.topology.online

    def _placement(self, g: _Grant, shared: Optional[CPUSet] = None) -> Placement:
        """The placement of a grant (``shared``: `_shared_cpus` of its pool, if known)."""
        req = g.request
        if req.cls == EXCLUSIVE:
            cpus = CPUSet.from_bits(g.exclusive)
            cls = ISOLATED if g.isolated else EXCLUSIVE
            pool = g.pool.name if g.pool is not None else ""
            shares = None
        elif req.cls == SHARED:
            assert g.pool is not None
            cpus = self._shared_cpus(g.pool) if shared is None else shared
            cls, pool, shares = SHARED, g.pool.name, milli_cpu_to_shares(req.milli)
        elif req.cls == RESERVED:
            cpus, cls, pool = self.reserved, RESERVED, _RESERVED_POOL
            shares = milli_cpu_to_shares(req.milli)
        else:
            cpus, cls, pool, shares = CPUSet(), PRESERVED, "", None
        if not self.pin_cpu:
            cpus, shares = CPUSet(), None
        mems = g.mems if self.pin_memory else None
        return Placement(
            cpus=cpus,
            mems=mems,
            cpu_class=cls,
            pool=pool,
            cpu_shares=shares,
            exclusive=CPUSet.from_bits(g.exclusive),
        )

    def _refresh(self, subject: str = "") -> Dict[str, Placement]:
        """Re-place the shared containers of pools whose shared CPUs changed; their new
        placements (without ``subject``, the container the decision is about).

        Per pool: its shared CPUs are computed once, and compared with those its
        containers have (``_member_cpus``); only when they differ are its containers
        re-placed, one `Placement` per distinct (milli-CPUs, memory nodes) shared by
        the containers that have them. Without pin-cpu the CPUs are not part of a
        placement, so nothing changes for the containers."""
        avail = self._shareable_base & ~self._owned
        changed = []
        for p in self.tree.pools:
            bits = p.bits & avail
            if bits != self._published[p.index]:
                self._published[p.index] = bits
                changed.append(p.index)
        if not changed:
            return {}
        empty = [p.index for p in self.tree.pools if not self._published[p.index]]
        updates: Dict[str, Placement] = {}
        pools = self.tree.pools
        for i in dict.fromkeys(changed + empty):
            cpus = self._shared_cpus(pools[i])
            if cpus == self._member_cpus[i]:
                continue
            self._member_cpus[i] = cpus
            if not self.pin_cpu:
                continue
            made: Dict[Tuple[int, Optional[CPUSet]], Placement] = {}
            for key in self._members[i]:
                g = self._grants[key]
                same = (g.request.milli, g.mems)
                placement = made.get(same)
                if placement is None:
                    placement = made[same] = self._placement(g, cpus)
                self._placements[key] = placement
                if key != subject:
                    updates[key] = placement
        return updates

    # -- choosing ----------------------------------------------------------------------------

    def _colocation(self, key: str, container: Container) -> Optional[List[float]]:
        """Per pool: how close the pod's other containers are (None: there are none)."""
        if not self.colocate_pods:
            return None
        others = [i for k, i in self._pod_pools.get(container.pod_id, {}).items() if k != key]
        if not others:
            return None
        dist = self.tree.distance
        return [sum(_COLOCATION_DECAY ** dist[p][o] for o in others) for p in range(len(dist))]

    def _memory_fits(self, pool: Pool, req: Request) -> bool:
        if not req.pin_mems:
            return True
        return bool(pool.nodes_of(req.kinds)) and self._free_memory(pool, req.kinds) >= req.memory

    def _choose(
        self, key: str, container: Container, req: Request, snap: _Snapshot, hint: Optional[Pool]
    ) -> Tuple[Pool, bool, str]:
        """The pool for an exclusive or shared request, whether to use isolated CPUs,
        and why (for the log). Raises AllocationError when no pool can give exclusive
        CPUs."""
        coloc = self._colocation(key, container)
        ranked: List[Tuple[Tuple[Any, ...], Tuple[Any, ...], Pool, bool]] = []
        for p in self.tree.pools:
            i = p.index
            together = -coloc[i] if coloc is not None else 0.0
            mem_ok = self._memory_fits(p, req)
            # a pool that has every asked kind of memory beats one that lacks some
            all_kinds = not req.pin_mems or all(p.mem_nodes[k] for k in req.kinds)
            if req.cls == EXCLUSIVE:
                n = req.full
                iso = popcount(p.bits & snap.iso_free) if req.isolate else 0
                iso_ok = iso >= n if req.isolate else False
                if not iso_ok and snap.excl_cap[i] < n:
                    continue
                hard: Tuple[Any, ...] = (not mem_ok, not all_kinds)
                idle = iso if iso_ok else snap.shared_cap[i]
                soft: Tuple[Any, ...] = (-p.depth, not iso_ok, together, -idle, i)
            else:
                if not snap.shared[i]:
                    continue
                cpu_ok = snap.shared_cap[i] >= max(req.milli, 1)
                hard = (not cpu_ok, not mem_ok, not all_kinds)
                soft = (-p.depth, together, len(self._members[i]), -snap.shared_cap[i], i)
                iso_ok = False
            ranked.append((hard, soft, p, iso_ok))
        if not ranked:
            if req.cls == SHARED:  # only after restore/reconfigure took every CPU
                return self.tree.root, False, "no pool has shared CPUs left"
            raise self._no_room(container, req, snap)
        best = min(ranked, key=lambda r: (r[0], r[1]))
        why = "best fit"
        if hint is not None:
            for hard, _soft, p, iso_ok in ranked:
                if p is hint and hard == best[0]:
                    if p is not best[2]:
                        why = "stays in its pool"
                    best = (hard, _soft, p, iso_ok)
                    break
        if log.isEnabledFor(logging.DEBUG):
            top = sorted(ranked, key=lambda r: (r[0], r[1]))[:4]
            log.debug(
                "%s: %s: candidates %s",
                container.key,
                req.describe(),
                ", ".join(f"{p.name} {hard}{soft}" for hard, soft, p, _ in top),
            )
        pool = best[2]
        reasons = [why]
        if best[0] and any(best[0]):
            reasons.append("no pool has room for all of it")
        return pool, best[3], ", ".join(reasons)

    def _no_room(self, container: Container, req: Request, snap: _Snapshot) -> AllocationError:
        best = max(self.tree.pools, key=lambda p: (snap.excl_cap[p.index], -p.index))
        free_iso = popcount(snap.iso_free)
        exclusive = sum(1 for g in self._grants.values() if g.exclusive)
        return AllocationError(
            f"cannot give {container.key} {req.full} exclusive CPUs: no pool can spare them "
            f"(the most is {snap.excl_cap[best.index]} in pool {best.name}"
            + (f"; {free_iso} free isolated" if req.isolate else "")
            + f"; {len(self.topology.online)} online, {len(self.reserved)} reserved, "
            f"{popcount(self._owned)} exclusive to {exclusive} container(s); a pool keeps "
            "the CPUs its shared containers request, and the machine one shared CPU at "
            "least besides the reserved ones)"
        )

    def _exclusive_avail(self, pool: Pool, snap: _Snapshot) -> int:
        """The shared CPUs of ``pool`` an exclusive allocation may take: of a child
        that can spare fewer than it has, only that many (picked by topology)."""
        if not pool.children:
            return pool.bits & snap.avail
        bits = 0
        for child in pool.children:
            cb = self._exclusive_avail(child, snap)
            limit = snap.removable[child.index]
            if popcount(cb) > limit:
                cb = self.allocator.take(CPUSet.from_bits(cb), limit).bits if limit > 0 else 0
            bits |= cb
        return bits

    def _memory(
        self, start: Pool, req: Request
    ) -> Tuple[Optional[Pool], Optional[CPUSet], Tuple[Tuple[str, int], ...]]:
        """Memory pool, nodes and charge for a container whose CPUs are in ``start``."""
        if not req.pin_mems:
            return None, None, ()
        kinds = req.kinds
        chosen: Optional[Pool] = None
        for p in (start, *start.ancestors):
            if p.nodes_of(kinds) and self._free_memory(p, kinds) >= req.memory:
                chosen = p
                break
        if chosen is None:  # not even the root holds it: every kind, unless asked
            chosen = self.tree.root
            if not req.explicit_kinds:
                kinds = MEMORY_KINDS
        nodes = chosen.nodes_of(kinds) or chosen.nodes_of(MEMORY_KINDS)
        return chosen, (nodes or None), self._charge(chosen, kinds, req.memory)

    def _charge(self, pool: Pool, kinds: Sequence[str], memory: int) -> Tuple[Tuple[str, int], ...]:
        if memory <= 0:
            return ()
        left = memory
        charge: Dict[str, int] = {}
        order = [k for k in _CHARGE_ORDER if k in kinds and pool.mem_nodes[k]]
        if not order:
            order = [k for k in _CHARGE_ORDER if pool.mem_nodes[k]] or [DRAM]
        load = self._mem_load[pool.index]
        for kind in order:
            take = min(left, max(0, pool.memory[kind] - load[kind]))
            if take:
                charge[kind] = take
                left -= take
        if left:
            charge[order[0]] = charge.get(order[0], 0) + left
        return tuple(charge.items())

    def _plan(
        self, key: str, container: Container, req: Request, hint: Optional[Pool] = None
    ) -> Tuple[_Grant, str]:
        """A grant for ``req`` (nothing committed) and why; AllocationError if none."""
        if req.cls == RESERVED:
            start = self._reserved_pool or self.tree.root
            mem_pool, mems, charge = self._memory(start, req)
            g = _Grant(container, req, req, None, mem_pool=mem_pool, mems=mems, charge=charge)
            return g, f"reserved CPUs ({req.why})"
        if req.cls == PRESERVED:
            start = self.tree.root
            try:
                asked = CPUSet.parse(container.cpuset_cpus) & self.topology.online
            except ValueError:
                asked = CPUSet()
            if asked:
                start = self.tree.smallest_containing(asked)
            mem_pool, mems, charge = self._memory(start, req)
            g = _Grant(container, req, req, None, mem_pool=mem_pool, mems=mems, charge=charge)
            return g, "cpu.preserve: CPUs as the container asked"
        snap = self._snapshot()
        pool, isolated, why = self._choose(key, container, req, snap, hint)
        exclusive = 0
        if req.cls == EXCLUSIVE:
            if isolated:
                avail = pool.bits & snap.iso_free
                why += ", isolated CPUs"
            else:
                avail = self._exclusive_avail(pool, snap)
            exclusive = self.allocator.take(CPUSet.from_bits(avail), req.full).bits
        mem_pool, mems, charge = self._memory(pool, req)
        g = _Grant(
            container,
            req,
            req,
            pool,
            exclusive,
            isolated,
            mem_pool=mem_pool,
            mems=mems,
            charge=charge,
        )
        return g, f"pool {pool.name} ({req.why}; {why})"

    # -- the Policy interface ---------------------------------------------------------------

    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        """Place a new container (a known key is a resize: `update`)."""
        if key in self._grants:
            return self.update(key, pod, container)
        req, reader = self._request(container)
        self._report(key, container, reader, always=True)
        if req.note:
            log.info("%s: %s", container.key, req.note)
        g, why = self._plan(key, container, req)
        self._commit(key, g)
        updates = self._refresh(subject=key)
        placement = self._placements[key] = self._placement(g)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: %s -> %s: cpus %s, mems %s; %d shared container(s) moved",
                container.key,
                req.describe(),
                why,
                placement.cpus or "(untouched)",
                placement.mems if placement.mems is not None else "(untouched)",
                len(updates),
            )
        return Decision(placement=placement, updates=updates)

    def release(self, key: str) -> Decision:
        """Forget a container; its exclusive CPUs go back to its pool's shared CPUs."""
        if key not in self._grants:
            return Decision()
        g = self._uncommit(key)
        self._placements.pop(key, None)
        self._previous.pop(key, None)
        self._reported.pop(key, None)
        updates = self._refresh()
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: released (%s); %d shared container(s) moved",
                g.container.key,
                g.request.describe(),
                len(updates),
            )
        return Decision(updates=updates)

    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        """Resize: re-place the container when what it asks for changed.

        An exclusive container keeps its pool and CPUs where it can (shrinking keeps
        the tightest part, growing adds CPUs next to its own); otherwise it is placed
        again, preferring its pool. Resizing back to the previous size returns to the
        previous CPUs when they are still free. Raises AllocationError when the new
        size cannot be satisfied; nothing changes then.
        """
        old = self._grants.get(key)
        if old is None:
            return self.allocate(key, pod, container)
        req, reader = self._request(container)
        self._report(key, container, reader, always=False)
        unchanged = req.signature == old.wanted.signature
        if unchanged and old.request is old.wanted:
            old.container = container
            return Decision(placement=self._placements[key])
        grow_snap = self._snapshot()  # with the old CPUs still owned
        self._uncommit(key)
        try:
            g, why = self._replan(key, container, req, old, grow_snap)
        except PolicyError as exc:
            self._commit(key, old)
            if unchanged:  # a fallback placement (restore) that still cannot be done right
                log.debug("%s: still on its fallback placement: %s", container.key, exc)
                old.container = container
                return Decision(placement=self._placements[key])
            raise
        except Exception:
            self._commit(key, old)
            raise
        self._commit(key, g)
        self._previous[key] = old
        updates = self._refresh(subject=key)
        placement = self._placements[key] = self._placement(g)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s: resized to %s -> %s: cpus %s",
                container.key,
                req.describe(),
                why,
                placement.cpus or "(untouched)",
            )
        return Decision(placement=placement, updates=updates)

    def _replan(
        self, key: str, container: Container, req: Request, old: _Grant, grow_snap: _Snapshot
    ) -> Tuple[_Grant, str]:
        """The new grant of a resized container (``old`` is uncommitted already)."""
        prev = self._previous.get(key)
        if prev is not None and prev.wanted.signature == req.signature and self._fits(prev):
            return dataclasses.replace(prev, container=container), "back to its previous placement"
        same = dataclasses.replace(old.wanted, full=req.full)
        if (
            req.cls == EXCLUSIVE
            and old.request.cls == EXCLUSIVE
            and old.pool is not None
            and same.signature == req.signature
        ):
            cpus = self._resize_in_place(old, req, grow_snap)
            if cpus is not None:
                mem_pool, mems, charge = self._memory(old.pool, req)
                g = _Grant(
                    container, req, req, old.pool, cpus, old.isolated, mem_pool, mems, charge
                )
                return g, f"pool {old.pool.name}, in place"
        return self._plan(key, container, req, hint=old.pool)

    def _resize_in_place(self, old: _Grant, req: Request, snap: _Snapshot) -> Optional[int]:
        """Exclusive CPUs for ``req`` in the old pool next to the old ones, or None."""
        assert old.pool is not None
        count = req.full
        current = CPUSet.from_bits(old.exclusive)
        have = len(current)
        if count <= have:
            return self.allocator.keep(current, count).bits
        need = count - have
        if old.isolated and not req.isolate:
            return None  # larger requests use isolated CPUs only when annotated so
        if old.isolated:
            avail = old.pool.bits & snap.iso_free
        else:
            if snap.excl_cap[old.pool.index] < need:
                return None
            avail = self._exclusive_avail(old.pool, snap)
        if popcount(avail) < need:
            return None
        return old.exclusive | self.allocator.take(CPUSet.from_bits(avail), need, near=current).bits

    def _fits(self, g: _Grant) -> bool:
        """Could this (uncommitted) grant be committed as it is now?"""
        bits = g.exclusive
        if not bits:
            return True
        if bits & self._owned or bits & self.reserved.bits or bits & ~self.topology.online.bits:
            return False
        if g.isolated:
            return bits & ~self._isolated_base == 0
        snap = self._snapshot()
        if bits & ~snap.avail:
            return False
        for p in self.tree.pools:
            taken = popcount(p.bits & bits)
            if taken and (snap.spare[p.index] < taken):
                return False
        return True

    def _restore(self, entries: List[Entry], persisted: Mapping[str, Placement]) -> None:
        """Adopt persisted placements; re-place those that no longer fit.

        Exclusive CPUs are kept when they are all online, none is reserved or taken by
        a container adopted before, the count still matches the request and the
        container still asks for exclusive CPUs. Shared containers keep their pool.
        Others are placed again (one INFO line each); an exclusive container that
        cannot be placed again runs on shared CPUs (a WARNING says so).
        """
        wanted: Dict[str, Tuple[Container, Request, Reader]] = {}
        for key, _pod, container, _placement in entries:
            req, reader = self._request(container)
            wanted[key] = (container, req, reader)

        redo = self._adopt_all(wanted, persisted)
        for key, problem in redo:
            self._replace_restored(key, problem, wanted[key], persisted[key])

        self._published = [-1] * len(self.tree.pools)
        self._refresh()
        for key, g in self._grants.items():
            self._placements[key] = self._placement(g)
        log.debug("restore: %d exclusive", sum(1 for g in self._grants.values() if g.exclusive))

    def _adopt_all(
        self,
        wanted: Mapping[str, Tuple[Container, Request, Reader]],
        persisted: Mapping[str, Placement],
    ) -> List[Tuple[str, str]]:
        """Commit the persisted placements that still fit; (key, why not) of the others."""
        redo: List[Tuple[str, str]] = []
        # exclusive first: their CPUs must not be handed to anyone else
        for key, (container, req, _r) in wanted.items():
            if req.cls != EXCLUSIVE:
                continue
            placement = persisted[key]
            problem = self._restore_problem(placement, req)
            if problem:
                redo.append((key, problem))
                continue
            bits = placement.exclusive.bits
            pool = self.tree.by_name.get(placement.pool)
            if pool is None or bits & ~pool.bits:
                pool = self.tree.smallest_containing(placement.exclusive)
            isolated = bits & ~self._isolated_base == 0
            mem_pool, mems, charge = self._adopt_memory(pool, req, placement.mems)
            self._commit(
                key, _Grant(container, req, req, pool, bits, isolated, mem_pool, mems, charge)
            )
        for key, (container, req, _r) in wanted.items():
            if req.cls == EXCLUSIVE:
                continue
            placement = persisted[key]
            pool = self.tree.by_name.get(placement.pool)
            if req.cls == SHARED and placement.cpu_class == SHARED and pool is not None:
                mem_pool, mems, charge = self._adopt_memory(pool, req, placement.mems)
                self._commit(
                    key,
                    _Grant(container, req, req, pool, mem_pool=mem_pool, mems=mems, charge=charge),
                )
                continue
            if req.cls in (RESERVED, PRESERVED) and placement.cpu_class == req.cls:
                g, _why = self._plan(key, container, req)
                start = g.mem_pool or self.tree.root
                g.mem_pool, g.mems, g.charge = self._adopt_memory(start, req, placement.mems)
                self._commit(key, g)
                continue
            redo.append((key, f"it was {placement.cpu_class}, now it is {req.cls} ({req.why})"))

        return redo

    def _replace_restored(
        self,
        key: str,
        problem: str,
        wanted: Tuple[Container, Request, Reader],
        old: Placement,
    ) -> None:
        """Place a restored container again; on shared CPUs if its request fails."""
        container, req, reader = wanted
        self._report(key, container, reader, always=True)
        hint = self.tree.by_name.get(old.pool)
        try:
            g, why = self._plan(key, container, req, hint=hint)
        except PolicyError as exc:
            fallback = dataclasses.replace(
                req, cls=SHARED, full=0, milli=max(0, container.cpu_request)
            )
            g, why = self._plan(key, container, fallback, hint=hint)
            g.wanted = req
            log.warning(
                "restore: %s: %s; cannot place it again (%s), it runs on shared CPUs of pool %s",
                container.key,
                problem,
                exc,
                g.pool.name if g.pool else "-",
            )
        self._commit(key, g)
        log.info(
            "restore: re-placed %s: %s; was %s CPUs %s, now %s",
            container.key,
            problem,
            old.cpu_class,
            old.cpus or "(untouched)",
            why,
        )

    def _restore_problem(self, placement: Placement, req: Request) -> str:
        """Why a persisted placement cannot be kept as exclusive ("" if it can)."""
        return self._exclusive_problem(
            placement,
            req.full,
            CPUSet.from_bits(self._owned),
            lambda double: (
                g.container.key for g in self._grants.values() if g.exclusive & double.bits
            ),
            classes=(EXCLUSIVE, ISOLATED),
        )

    def _adopt_memory(
        self, start: Pool, req: Request, mems: Optional[CPUSet]
    ) -> Tuple[Optional[Pool], Optional[CPUSet], Tuple[Tuple[str, int], ...]]:
        """The memory of a restored placement: its persisted nodes if they are those of
        ``start`` or an ancestor for the asked kinds (or all kinds), else as new."""
        if req.pin_mems and mems is not None:
            for p in (start, *start.ancestors):
                for kinds in (req.kinds, MEMORY_KINDS):
                    if p.nodes_of(kinds) == mems:
                        return p, mems, self._charge(p, kinds, req.memory)
        return self._memory(start, req)

    def _name_of(self, key: str) -> str:
        g = self._grants.get(key)
        return key if g is None else g.container.key

    def rename(self, old: str, new: str) -> None:
        """Move a container's records from a provisional key to its container id."""
        if not self._rename_records(old, new):
            return
        g = self._grants.pop(old)
        self._grants[new] = g
        if g.pool is not None:
            members = self._members[g.pool.index]
            if old in members:
                del members[old]
                members[new] = None
            pods = self._pod_pools.get(g.container.pod_id)
            if pods is not None and old in pods:
                pods[new] = pods.pop(old)
        for table in (self._reported, self._previous):
            if old in table:
                table[new] = table.pop(old)  # type: ignore[assignment]

    def reconfigure(self, options: Mapping[str, Any]) -> Decision:
        """Apply changed options to running containers.

        pin-cpu and pin-memory change what every placement sets. A container whose
        class changes (prefer-shared-cpus, reserved-pool-namespaces) is placed again;
        if that fails it keeps its placement (a WARNING says so). prefer-isolated-cpus
        and colocate-pods apply to later placements.
        """
        self.options = self._set_options({**self.options, **options})  # raises first
        before = dict(self._placements)
        moves = []
        for key, g in self._grants.items():
            req, _reader = self._request(g.container)
            if req.signature != g.wanted.signature:
                moves.append((req.cls == EXCLUSIVE, key, req))
        for _excl, key, req in sorted(moves, key=lambda m: m[0]):  # free CPUs first
            old = self._grants[key]
            self._uncommit(key)
            try:
                g, why = self._plan(key, old.container, req, hint=old.pool)
            except PolicyError as exc:
                self._commit(key, old)
                log.warning("reconfigure: %s stays where it is: %s", old.container.key, exc)
                continue
            self._commit(key, g)
            self._previous.pop(key, None)
            log.info(
                "reconfigure: %s moves from %s to %s: %s",
                old.container.key,
                old.request.describe(),
                req.describe(),
                why,
            )
        self._published = [-1] * len(self.tree.pools)
        self._refresh()
        for key, g in self._grants.items():
            self._placements[key] = self._placement(g)
        updates = {k: p for k, p in self._placements.items() if before.get(k) != p}
        return Decision(updates=updates)

    def pools(self) -> Mapping[str, CPUSet]:
        """Each pool's shared CPUs by pool name, plus ``reserved`` and ``exclusive``."""
        avail = self._shareable_base & ~self._owned
        out: Dict[str, CPUSet] = {p.name: CPUSet.from_bits(p.bits & avail) for p in self.tree.pools}
        out[_RESERVED_POOL] = self.reserved
        out["exclusive"] = CPUSet.from_bits(self._owned)
        return out

    # -- introspection for status and tests ----------------------------------------------------

    def pool_of(self, key: str) -> Optional[str]:
        """The name of the pool a container's CPUs come from (None: reserved/preserved)."""
        g = self._grants.get(key)
        return None if g is None or g.pool is None else g.pool.name

    def exclusive_cpus(self) -> Mapping[str, CPUSet]:
        """Key -> exclusively owned CPUs (a copy)."""
        return {k: CPUSet.from_bits(g.exclusive) for k, g in self._grants.items() if g.exclusive}

    def shared_cpus(self, pool: str) -> CPUSet:
        """The shared CPUs of a pool, by name."""
        return CPUSet.from_bits(self.tree.by_name[pool].bits & self._shareable_base & ~self._owned)
