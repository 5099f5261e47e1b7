"""The machine's CPU and memory topology, read once from sysfs into frozen records.

This module owns `load(root) -> Topology` and the records it returns:

* `Topology`: online/offline/isolated CPUs, `packages` (id -> CPUSet), `dies`
  ((package, die) -> CPUSet), `nodes` (id -> `Node`), `cores` (core key -> CPUSet of
  its threads), `l3` (L3 group id -> CPUSet), per-CPU `CPU` records and helpers
  policies need (CPUs of a node/die/package, node of a CPU, core siblings, nearest
  CPU nodes of a memory-only node, CPUs sorted so that neighbours are close).
* `CPU`: one online CPU: package, die, node, core, thread siblings, L3 group,
  isolation, frequencies (kHz) when cpufreq exports them.
* `Node`: one NUMA node: its online CPUs, memory (bytes, ``MemTotal``), kind
  (``"dram"``, ``"pmem"`` or ``"hbm"``) and why, distances to the other nodes.

Offline CPUs are left out everywhere except `Topology.offline`. A *core key* is the
lowest online CPU id among the core's threads (unique machine-wide, unlike the
kernel's ``core_id`` which repeats per package).

Essential files (a real kernel always has them; missing -> `TopologyError` naming the
path): ``devices/system/cpu/`` with the online CPUs' ``cpuN/topology/
{physical_package_id,core_id}`` and ``core_cpus_list`` or ``thread_siblings_list``.
Everything else degrades: no ``node/`` (a kernel without NUMA) -> one node 0 with all
CPUs; no ``distance`` -> the kernel's defaults 10 (local) / 20 (remote); no
``die_id`` (before Linux 5.2) -> die 0; no cache or cpufreq -> ``None``; no
``isolated`` -> nothing isolated; no ``online`` -> each ``cpuN/online``.

Memory kinds. The kernel does not say what memory a node holds. Intel's
cri-resource-manager (pkg/sysfs) calls every node with CPUs DRAM, and a node with
memory but no CPUs HBM if its MemTotal is below the average of the DRAM nodes, PMEM
otherwise. We do the same as the last resort, but first look for evidence, strongest
first:

1. an NVDIMM region whose ``target_node`` is the node (``bus/nd/devices/regionN``):
   persistent memory onlined with dax/kmem -> ``pmem``;
2. ACPI HMAT performance (``nodeN/access0/initiators/read_bandwidth`` MB/s and
   ``read_latency`` ns, Linux >= 5.2) compared with the nearest CPU node's: markedly
   more bandwidth -> ``hbm``; markedly less bandwidth or more latency -> ``pmem``;
   about the same -> ``dram`` (a CPU-less node of ordinary memory);
3. the kernel's memory tiers (``devices/virtual/memory_tiering/memory_tierN/nodelist``,
   Linux >= 6.1): a tier below (numerically above) the CPU nodes' tier -> ``pmem``,
   above -> ``hbm``; the same tier says nothing;
4. capacity, as above. With no CPU node memory to compare with -> ``dram``.

A node whose CPUs are all offline (their ``cpuN/nodeM`` links remain) is DRAM, not a
memory-only node. `Node.kind_reason` records which rule decided. ``pmem`` therefore means "slower,
larger memory tier" (also CXL-attached expanders) and ``hbm`` "faster, smaller".
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import cached_property
from typing import (
    Dict,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from cri_resmgr.errors import TopologyError
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.sysfs import Sysfs

__all__ = [
    "CPU",
    "DRAM",
    "HBM",
    "LOCAL_DISTANCE",
    "MEMORY_KINDS",
    "PMEM",
    "REMOTE_DISTANCE",
    "FrozenMap",
    "Node",
    "Topology",
    "TopologyError",
    "load",
]

log = logging.getLogger(__name__)

DRAM = "dram"
PMEM = "pmem"
HBM = "hbm"
MEMORY_KINDS = (DRAM, PMEM, HBM)

# The kernel's node distances when firmware gives no SLIT (include/linux/topology.h).
LOCAL_DISTANCE = 10
REMOTE_DISTANCE = 20

# HMAT: how much faster/slower than the nearest CPU node's memory counts as another kind
_HMAT_FASTER = 1.5
_HMAT_SLOWER = 1.5

CPU_DIR = "devices/system/cpu"
NODE_DIR = "devices/system/node"
ND_DIR = "bus/nd/devices"
TIER_DIR = "devices/virtual/memory_tiering"

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V]):
    """A read-only, hashable, picklable dict (keys in insertion = sorted order)."""

    __slots__ = ("_data",)
    _data: Dict[K, V]

    def __init__(self, data: Union[Mapping[K, V], Iterable[Tuple[K, V]]] = ()) -> None:
        object.__setattr__(self, "_data", dict(data))

    def __getitem__(self, key: K) -> V:
        return self._data[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("FrozenMap is read-only")

    def __reduce__(self) -> tuple:
        return (FrozenMap, (self._data,))


@dataclass(frozen=True)
class CPU:
    """One online CPU (a hardware thread)."""

    id: int
    package: int  # physical_package_id (-1 from the kernel is read as 0)
    die: int  # die_id within the package (0 without die_id)
    node: int  # NUMA node
    core: int  # core key: lowest online CPU id of the core's threads
    core_id: int  # topology/core_id as the kernel reports it (repeats per package)
    threads: CPUSet  # online threads of the same core, this CPU included
    l3: Optional[int]  # key in Topology.l3, None if no L3 is reported
    isolated: bool  # in devices/system/cpu/isolated (isolcpus=)
    base_freq_khz: Optional[int] = None  # cpufreq/base_frequency (intel_pstate)
    min_freq_khz: Optional[int] = None  # cpufreq/cpuinfo_min_freq
    max_freq_khz: Optional[int] = None  # cpufreq/cpuinfo_max_freq


@dataclass(frozen=True)
class Node:
    """One NUMA node; memory-only nodes (PMEM, HBM) have no CPUs at all."""

    id: int
    cpus: CPUSet  # online CPUs of the node
    memory: int  # bytes: MemTotal of nodeN/meminfo (0: none or not reported)
    kind: str  # "dram", "pmem" or "hbm"
    kind_reason: str  # which rule decided `kind`, for logs and status
    distances: FrozenMap[int, int]  # node id -> distance (10 = local)
    has_memory: bool  # in node/has_memory (or MemTotal > 0)
    normal_memory: bool  # in node/has_normal_memory (kernel may allocate from it)
    package: Optional[int]  # package of its online CPUs; None if it has none
    die: Optional[int]  # die of its online CPUs; None if it has none
    offline_cpus: CPUSet = CPUSet()  # its CPUs that are offline (not in `cpus`)

    @property
    def has_cpus(self) -> bool:
        return bool(self.cpus)

    @property
    def memory_only(self) -> bool:
        """No CPUs of its own, online or offline (PMEM, HBM, CXL memory).

        A node whose CPUs are all offline is not memory-only: its memory is DRAM.
        """
        return not self.cpus and not self.offline_cpus

    def distance(self, other: int) -> int:
        """Distance to node ``other`` (10 = local); KeyError for an unknown node."""
        return self.distances[other]


@dataclass(frozen=True)
class Topology:
    """The machine as read from sysfs once; see the module docstring."""

    sysfs: str  # the sysfs directory read, for messages
    online: CPUSet  # online CPUs: every CPU below is one of these
    offline: CPUSet  # present but offline CPUs (excluded from everything else)
    isolated: CPUSet  # online CPUs isolated by the kernel (isolcpus=)
    cpus: FrozenMap[int, CPU]
    packages: FrozenMap[int, CPUSet]  # package id -> CPUs
    dies: FrozenMap[Tuple[int, int], CPUSet]  # (package, die) -> CPUs
    nodes: FrozenMap[int, Node]  # every node, memory-only ones included
    cores: FrozenMap[int, CPUSet]  # core key -> threads
    l3: FrozenMap[int, CPUSet]  # L3 group id (the cache id when unique) -> CPUs
    threads_per_core: int  # the most threads any core has online (1 without SMT)
    cpu_order: Tuple[int, ...]  # online CPUs, neighbours adjacent: see cpus_sorted_by_topology

    # -- CPUs ----------------------------------------------------------------------

    def cpu(self, cpu: int) -> CPU:
        """The record of an online CPU; TopologyError for any other id."""
        try:
            return self.cpus[cpu]
        except KeyError:
            raise TopologyError(
                f"CPU {cpu} is not an online CPU of this machine (online: {self.online})"
            ) from None

    def node_of(self, cpu: int) -> int:
        return self.cpu(cpu).node

    def package_of(self, cpu: int) -> int:
        return self.cpu(cpu).package

    def core_siblings(self, cpu: int) -> CPUSet:
        """The online threads of ``cpu``'s core, ``cpu`` included."""
        return self.cpu(cpu).threads

    def threads_of(self, cpus: CPUSet) -> CPUSet:
        """``cpus`` widened to whole cores (every online sibling of each)."""
        bits = 0
        for cpu in cpus:
            bits |= self.cpu(cpu).threads.bits
        return CPUSet.from_bits(bits)

    def node_cpus(self, node: int) -> CPUSet:
        return self._node(node).cpus

    def package_cpus(self, package: int) -> CPUSet:
        try:
            return self.packages[package]
        except KeyError:
            raise TopologyError(
                f"no package {package} (packages: {', '.join(map(str, self.packages))})"
            ) from None

    def die_cpus(self, package: int, die: int) -> CPUSet:
        try:
            return self.dies[(package, die)]
        except KeyError:
            raise TopologyError(
                f"no die {die} in package {package} (dies: "
                + ", ".join(f"{p}/{d}" for p, d in self.dies)
                + ")"
            ) from None

    def cpus_of_nodes(self, nodes: Iterable[int]) -> CPUSet:
        bits = 0
        for node in nodes:
            bits |= self._node(node).cpus.bits
        return CPUSet.from_bits(bits)

    def cpus_sorted_by_topology(self, cpus: Optional[Iterable[int]] = None) -> Tuple[int, ...]:
        """CPUs ordered package, die, node, L3, core, thread: neighbours are adjacent.

        Taking a prefix of the result gives a compact set: whole cores first, then the
        same L3, node, die, package. Without ``cpus``: all online CPUs. Offline or
        unknown CPUs are dropped.
        """
        if cpus is None:
            return self.cpu_order
        rank = self._rank
        return tuple(sorted((c for c in cpus if c in rank), key=rank.__getitem__))

    @cached_property
    def _rank(self) -> Dict[int, int]:
        return {cpu: i for i, cpu in enumerate(self.cpu_order)}

    # -- nodes -----------------------------------------------------------------------

    def _node(self, node: int) -> Node:
        try:
            return self.nodes[node]
        except KeyError:
            raise TopologyError(
                f"no NUMA node {node} (nodes: {', '.join(map(str, self.nodes))})"
            ) from None

    # derived views are computed on first use and cached on the (immutable) instance

    @cached_property
    def cpu_nodes(self) -> Tuple[int, ...]:
        """Nodes with online CPUs."""
        return tuple(n.id for n in self.nodes.values() if n.cpus)

    @cached_property
    def memory_only_nodes(self) -> Tuple[int, ...]:
        """Nodes with memory and no CPUs (PMEM, HBM, CXL); see `Node.memory_only`."""
        return tuple(n.id for n in self.nodes.values() if n.memory_only and n.has_memory)

    @cached_property
    def memory_nodes(self) -> Tuple[int, ...]:
        """Nodes that have memory (what ``cpuset.mems`` may name)."""
        return tuple(n.id for n in self.nodes.values() if n.has_memory)

    def nodes_of_kind(self, kind: str) -> Tuple[int, ...]:
        if kind not in MEMORY_KINDS:
            raise ValueError(f"unknown memory kind {kind!r}; expected one of {MEMORY_KINDS}")
        return tuple(n.id for n in self.nodes.values() if n.kind == kind and n.has_memory)

    def distance(self, a: int, b: int) -> int:
        """Distance between nodes ``a`` and ``b`` (10 = local)."""
        return self._node(a).distances[self._node(b).id]

    def nodes_by_distance(self, node: int) -> Tuple[Tuple[int, Tuple[int, ...]], ...]:
        """``((distance, (node, ...)), ...)`` from ``node``, nearest first, itself first."""
        groups: Dict[int, List[int]] = {}
        for other, dist in self._node(node).distances.items():
            groups.setdefault(dist, []).append(other)
        return tuple((d, tuple(sorted(ids))) for d, ids in sorted(groups.items()))

    def closest_cpu_nodes(self, node: int) -> Tuple[int, ...]:
        """The CPU nodes nearest to ``node`` by distance (ties: all of them).

        A node with CPUs is its own closest CPU node. For a memory-only node this is
        the node(s) whose CPUs it is attached to; empty if the machine has no CPU node.
        """
        this = self._node(node)
        if this.cpus:
            return (this.id,)
        best: Optional[int] = None
        closest: List[int] = []
        for other in self.cpu_nodes:
            dist = this.distances.get(other, REMOTE_DISTANCE)
            if best is None or dist < best:
                best, closest = dist, [other]
            elif dist == best:
                closest.append(other)
        return tuple(closest)

    def attached_memory_nodes(self, cpu_node: int) -> Tuple[int, ...]:
        """Memory-only nodes whose closest CPU nodes include ``cpu_node``."""
        self._node(cpu_node)
        return tuple(n for n in self.memory_only_nodes if cpu_node in self.closest_cpu_nodes(n))

    def package_nodes(self, package: int) -> Tuple[int, ...]:
        """CPU nodes in ``package`` (several with sub-NUMA clustering)."""
        self.package_cpus(package)
        return tuple(n.id for n in self.nodes.values() if n.cpus and n.package == package)

    def die_nodes(self, package: int, die: int) -> Tuple[int, ...]:
        """CPU nodes in a die (several with sub-NUMA clustering)."""
        self.die_cpus(package, die)
        return tuple(
            n.id for n in self.nodes.values() if n.cpus and n.package == package and n.die == die
        )

    @cached_property
    def sub_numa_clustering(self) -> bool:
        """True if some die is split into several CPU nodes (Intel SNC, AMD NPS)."""
        seen: Set[Tuple[Optional[int], Optional[int]]] = set()
        for node in self.nodes.values():
            if node.cpus:
                key = (node.package, node.die)
                if key in seen:
                    return True
                seen.add(key)
        return False

    @property
    def memory(self) -> int:
        """Total memory of all nodes, bytes."""
        return sum(n.memory for n in self.nodes.values())

    # -- text ------------------------------------------------------------------------

    def summary(self) -> str:
        """A few human-readable lines describing the machine (for logs and the CLI)."""
        lines = [
            f"{len(self.online)} online CPUs ({self.online}), "
            f"{len(self.packages)} package(s), {len(self.dies)} die(s), "
            f"{len(self.cores)} cores x up to {self.threads_per_core} thread(s), "
            f"{len(self.l3)} L3 group(s)"
            + (", sub-NUMA clustering" if self.sub_numa_clustering else "")
        ]
        if self.offline:
            lines.append(f"offline CPUs: {self.offline}")
        if self.isolated:
            lines.append(f"isolated CPUs: {self.isolated}")
        for node in self.nodes.values():
            if node.cpus:
                where = f"package {node.package} die {node.die}, CPUs {node.cpus}"
            else:
                closest = ",".join(map(str, self.closest_cpu_nodes(node.id))) or "-"
                where = f"no online CPUs, closest to node(s) {closest}"
            if node.offline_cpus:
                where += f", offline CPUs {node.offline_cpus}"
            lines.append(
                f"node {node.id}: {node.kind} {node.memory / (1 << 30):.1f} GiB, {where} "
                f"({node.kind_reason})"
            )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------
# loading


def load(root: Union[str, os.PathLike] = "/") -> Topology:
    """Read the topology of the machine whose sysfs is under ``root``.

    ``root`` is the directory containing ``sys/`` (the ``sysfs-root`` setting,
    default ``/``); a sysfs mount point itself (``/sys``) is accepted as well.
    Raises TopologyError naming the file when an essential file is missing or any
    file read holds something unexpected.
    """
    return _Loader(Sysfs(root)).load()


@dataclass
class _RawCPU:
    id: int
    package: int
    die: int
    core_id: int
    threads: CPUSet
    l3_id: Optional[int]
    l3_cpus: Optional[CPUSet]
    link_node: Optional[int]
    base: Optional[int]
    fmin: Optional[int]
    fmax: Optional[int]


@dataclass
class _RawNode:
    id: int
    cpus: CPUSet
    memory: int
    has_memory: bool
    normal_memory: bool
    distances: Dict[int, int]
    package: Optional[int] = None
    die: Optional[int] = None
    offline_cpus: CPUSet = CPUSet()


class _Loader:
    def __init__(self, fs: Sysfs) -> None:
        self.fs = fs

    def load(self) -> Topology:
        fs = self.fs
        cpu_dirs = fs.indexed(CPU_DIR, "cpu")
        online = self._online(cpu_dirs)
        present = fs.read_cpuset(
            f"{CPU_DIR}/present", "the present CPUs in list syntax", default=None
        )
        if present is None:
            present = CPUSet(cpu_dirs)
        isolated = fs.read_cpuset(
            f"{CPU_DIR}/isolated", "the isolated CPUs in list syntax", default=CPUSet()
        )

        raw = {cpu: self._cpu(cpu, cpu_dirs[cpu], online) for cpu in online}
        nodes = self._nodes(raw, online)
        node_of = self._node_of_cpu(raw, nodes)
        # offline CPUs keep their cpuN/nodeM link: a node whose CPUs are all offline
        # must not pass for a memory-only (PMEM/HBM) node
        for cpu in CPUSet(cpu_dirs) - online:
            links = list(fs.indexed(cpu_dirs[cpu], "node"))
            if len(links) == 1 and links[0] in nodes:
                node = nodes[links[0]]
                node.offline_cpus = node.offline_cpus | CPUSet.of(cpu)
        for node in nodes.values():
            pkgs = sorted({raw[c].package for c in node.cpus})
            if pkgs:
                if len(pkgs) > 1:
                    log.warning("node %d has CPUs in packages %s", node.id, pkgs)
                node.package = pkgs[0]
                node_dies = sorted({raw[c].die for c in node.cpus if raw[c].package == pkgs[0]})
                node.die = node_dies[0]
        l3_key, l3_groups = self._l3_groups(raw)

        cores: Dict[int, CPUSet] = {}
        core_of: Dict[int, int] = {}
        for cpu in online:
            threads = raw[cpu].threads
            key = threads.first()
            core_of[cpu] = key
            cores[key] = cores.get(key, CPUSet()) | threads
        packages: Dict[int, int] = {}
        dies: Dict[Tuple[int, int], int] = {}
        for cpu, r in raw.items():
            packages[r.package] = packages.get(r.package, 0) | (1 << cpu)
            dies[(r.package, r.die)] = dies.get((r.package, r.die), 0) | (1 << cpu)

        cpus = {
            cpu: CPU(
                id=cpu,
                package=r.package,
                die=r.die,
                node=node_of[cpu],
                core=core_of[cpu],
                core_id=r.core_id,
                threads=cores[core_of[cpu]],
                l3=l3_key.get(cpu),
                isolated=cpu in isolated,
                base_freq_khz=r.base,
                min_freq_khz=r.fmin,
                max_freq_khz=r.fmax,
            )
            for cpu, r in raw.items()
        }
        final_nodes = self._classify(nodes)
        order = sorted(
            online,
            key=lambda c: (
                cpus[c].package,
                cpus[c].die,
                cpus[c].node,
                -1 if cpus[c].l3 is None else cpus[c].l3,
                cpus[c].core,
                c,
            ),
        )
        topology = Topology(
            sysfs=str(fs.path),
            online=online,
            offline=present - online,
            isolated=isolated & online,
            cpus=FrozenMap(cpus),
            packages=FrozenMap((p, CPUSet.from_bits(b)) for p, b in sorted(packages.items())),
            dies=FrozenMap((k, CPUSet.from_bits(b)) for k, b in sorted(dies.items())),
            nodes=FrozenMap(sorted(final_nodes.items())),
            cores=FrozenMap(sorted(cores.items())),
            l3=FrozenMap(sorted(l3_groups.items())),
            threads_per_core=max((len(t) for t in cores.values()), default=1),
            cpu_order=tuple(order),
        )
        log.debug("topology from %s:\n%s", fs.path, topology.summary())
        return topology

    # -- CPUs --------------------------------------------------------------------------

    def _online(self, cpu_dirs: Dict[int, str]) -> CPUSet:
        fs = self.fs
        online_rel = f"{CPU_DIR}/online"
        online = fs.read_cpuset(online_rel, "the online CPUs in list syntax", default=None)
        if online is None:
            if not cpu_dirs:
                raise TopologyError(
                    f"{fs.join(online_rel)} is missing and {fs.join(CPU_DIR)} has no cpuN "
                    "directories; expected at least one CPU"
                )
            ids = []
            for cpu, rel in cpu_dirs.items():
                # cpu0 often has no 'online' file: it cannot be taken offline
                flag = fs.read_int(f"{rel}/online", "1 (online) or 0 (offline)", default=1)
                if flag not in (0, 1):
                    raise TopologyError(
                        f"{fs.join(rel + '/online')} holds {flag}; expected 1 (online) "
                        "or 0 (offline)"
                    )
                if flag:
                    ids.append(cpu)
            online = CPUSet(ids)
        if not online:
            raise TopologyError(f"{fs.join(online_rel)} lists no CPUs; expected some")
        missing = online - CPUSet(cpu_dirs)
        if missing:
            raise TopologyError(
                f"{fs.join(CPU_DIR)}/cpu{missing.first()} is missing, but CPUs {missing} "
                f"are online; expected a cpuN directory for every online CPU"
            )
        return online

    def _cpu(self, cpu: int, rel: str, online: CPUSet) -> _RawCPU:
        fs = self.fs
        topo = f"{rel}/topology"
        package = fs.read_int(f"{topo}/physical_package_id", f"CPU {cpu}'s package id")
        die = fs.read_int(f"{topo}/die_id", f"CPU {cpu}'s die id", default=0)
        core_id = fs.read_int(f"{topo}/core_id", f"CPU {cpu}'s core id")
        threads = fs.read_cpuset(
            f"{topo}/core_cpus_list", f"CPU {cpu}'s core siblings in list syntax", default=None
        )
        if threads is None:  # before Linux 5.3
            threads = fs.read_cpuset(
                f"{topo}/thread_siblings_list", f"CPU {cpu}'s thread siblings in list syntax"
            )
        threads = (threads & online) | CPUSet.of(cpu)
        # some architectures report -1 for "not known"
        package = max(package, 0)
        die = max(die, 0)

        l3_id: Optional[int] = None
        l3_cpus: Optional[CPUSet] = None
        # the L3 is normally the last index: look from the end
        for crel in reversed(list(fs.indexed(f"{rel}/cache", "index").values())):
            level = fs.read_int(f"{crel}/level", "the cache level", default=None)
            if level != 3:
                continue
            kind = fs.text(f"{crel}/type", "the cache type", default="Unified")
            if kind == "Instruction":
                continue
            shared = fs.read_cpuset(
                f"{crel}/shared_cpu_list", "CPUs sharing the cache in list syntax", default=None
            )
            if shared is None:
                shared = fs.read_mask(
                    f"{crel}/shared_cpu_map", "CPUs sharing the cache as a hex mask", default=None
                )
            if shared is None:
                continue
            l3_cpus = (shared & online) | CPUSet.of(cpu)
            l3_id = fs.read_int(f"{crel}/id", "the cache id", default=None)
            break

        link_nodes = list(fs.indexed(rel, "node"))
        freq = f"{rel}/cpufreq"
        return _RawCPU(
            id=cpu,
            package=package,
            die=die,
            core_id=core_id,
            threads=threads,
            l3_id=l3_id,
            l3_cpus=l3_cpus,
            link_node=link_nodes[0] if len(link_nodes) == 1 else None,
            base=fs.read_int(f"{freq}/base_frequency", "kHz", default=None),
            fmin=fs.read_int(f"{freq}/cpuinfo_min_freq", "kHz", default=None),
            fmax=fs.read_int(f"{freq}/cpuinfo_max_freq", "kHz", default=None),
        )

    def _l3_groups(self, raw: Dict[int, _RawCPU]) -> Tuple[Dict[int, int], Dict[int, CPUSet]]:
        by_set: Dict[CPUSet, Set[Optional[int]]] = {}
        for r in raw.values():
            if r.l3_cpus is not None:
                by_set.setdefault(r.l3_cpus, set()).add(r.l3_id)
        ids = [next(iter(s)) for s in by_set.values() if len(s) == 1]
        use_ids = len(ids) == len(by_set) and None not in ids and len(set(ids)) == len(ids)
        if not use_ids and by_set:
            log.debug("L3 cache ids missing or not unique; naming L3 groups by lowest CPU")
        groups: Dict[int, CPUSet] = {}
        key_of_set: Dict[CPUSet, int] = {}
        for shared, id_set in by_set.items():
            key = next(iter(id_set)) if use_ids else shared.first()
            key_of_set[shared] = key  # type: ignore[assignment]
            groups[key] = shared  # type: ignore[index]
        l3_key = {cpu: key_of_set[r.l3_cpus] for cpu, r in raw.items() if r.l3_cpus is not None}
        return l3_key, groups

    # -- nodes -------------------------------------------------------------------------

    def _nodes(self, raw: Dict[int, _RawCPU], online: CPUSet) -> Dict[int, _RawNode]:
        fs = self.fs
        node_dirs = fs.indexed(NODE_DIR, "node")
        if not node_dirs:
            # a kernel without CONFIG_NUMA: one node with everything
            log.info("%s has no NUMA nodes; assuming one node 0", fs.join(NODE_DIR))
            meminfo = fs.read_proc_meminfo(default={})
            memory = meminfo.get("MemTotal", 0)
            return {
                0: _RawNode(
                    id=0,
                    cpus=online,
                    memory=memory,
                    has_memory=True,
                    normal_memory=True,
                    distances={0: LOCAL_DISTANCE},
                )
            }

        has_memory = fs.read_cpuset(
            f"{NODE_DIR}/has_memory", "nodes with memory in list syntax", default=None
        )
        has_normal = fs.read_cpuset(
            f"{NODE_DIR}/has_normal_memory", "nodes with normal memory in list syntax", default=None
        )
        online_nodes = fs.read_cpuset(
            f"{NODE_DIR}/online", "the online nodes in list syntax", default=None
        )
        order = list(online_nodes) if online_nodes else list(node_dirs)
        if not set(node_dirs) <= set(order):
            log.warning(
                "%s lists nodes %s but directories exist for %s; using the directories",
                fs.join(f"{NODE_DIR}/online"),
                online_nodes,
                CPUSet(node_dirs),
            )
            order = list(node_dirs)

        nodes: Dict[int, _RawNode] = {}
        for node, rel in node_dirs.items():
            cpus = fs.read_cpuset(
                f"{rel}/cpulist", f"node {node}'s CPUs in list syntax", default=None
            )
            if cpus is None:
                cpus = CPUSet(c for c, r in raw.items() if r.link_node == node)
            cpus = cpus & online
            meminfo = fs.read_meminfo(f"{rel}/meminfo", f"node {node}'s meminfo", default=None)
            memory = meminfo.get("MemTotal", 0) if meminfo is not None else 0
            if has_memory is not None:
                node_has_memory = node in has_memory
            else:
                node_has_memory = memory > 0 or meminfo is None
            normal = node in has_normal if has_normal is not None else node_has_memory
            nodes[node] = _RawNode(
                id=node,
                cpus=cpus,
                memory=memory,
                has_memory=node_has_memory,
                normal_memory=normal,
                distances=self._distances(node, rel, order, node_dirs),
            )
        return nodes

    def _distances(
        self, node: int, rel: str, order: List[int], node_dirs: Dict[int, str]
    ) -> Dict[int, int]:
        fs = self.fs
        values = fs.read_ints(
            f"{rel}/distance", f"node {node}'s distances to the online nodes", default=None
        )
        if values is None:
            return {
                other: LOCAL_DISTANCE if other == node else REMOTE_DISTANCE for other in node_dirs
            }
        # the kernel prints one distance per *online* node, in node id order
        if len(values) != len(order):
            raise TopologyError(
                f"{fs.join(rel + '/distance')} has {len(values)} distances; expected one per "
                f"online node ({len(order)}: {CPUSet(order)})"
            )
        distances = dict(zip(order, values))
        if distances.get(node) not in (None, LOCAL_DISTANCE):
            log.debug("node %d: distance to itself is %s", node, distances.get(node))
        return {other: distances[other] for other in node_dirs if other in distances}

    def _node_of_cpu(self, raw: Dict[int, _RawCPU], nodes: Dict[int, _RawNode]) -> Dict[int, int]:
        node_of: Dict[int, int] = {}
        for node in nodes.values():
            for cpu in node.cpus:
                if cpu in node_of:
                    first = self.fs.join(f"{NODE_DIR}/node{node_of[cpu]}/cpulist")
                    second = self.fs.join(f"{NODE_DIR}/node{node.id}/cpulist")
                    raise TopologyError(
                        f"CPU {cpu} is listed in both {first} and {second}; expected each "
                        "CPU in exactly one node"
                    )
                node_of[cpu] = node.id
        for cpu, r in raw.items():
            if cpu in node_of:
                continue
            if r.link_node is not None and r.link_node in nodes:
                nodes[r.link_node].cpus = nodes[r.link_node].cpus | CPUSet.of(cpu)
                node_of[cpu] = r.link_node
                continue
            raise TopologyError(
                f"online CPU {cpu} is in no node: not in any "
                f"{self.fs.join(NODE_DIR)}/nodeN/cpulist and "
                f"{self.fs.join(f'{CPU_DIR}/cpu{cpu}')} has no nodeN link"
            )
        return node_of

    # -- memory kinds -----------------------------------------------------------------

    def _classify(self, nodes: Dict[int, _RawNode]) -> Dict[int, Node]:
        cpu_nodes = [n for n in nodes.values() if n.cpus]
        special = [n for n in nodes.values() if not n.cpus and not n.offline_cpus]
        decided: Dict[int, Tuple[str, str]] = {}
        for n in nodes.values():
            if n.cpus:
                decided[n.id] = (DRAM, "has CPUs")
            elif n.offline_cpus:
                decided[n.id] = (DRAM, f"has CPUs, all offline ({n.offline_cpus})")

        if special:
            nvdimm_nodes = self._nvdimm_nodes()
            tiers = self._memory_tiers()
            with_memory = [
                n.memory for n in nodes.values() if (n.cpus or n.offline_cpus) and n.memory > 0
            ]
            average = sum(with_memory) // len(with_memory) if with_memory else 0
            for n in special:
                if not n.has_memory:
                    decided[n.id] = (DRAM, "neither CPUs nor memory")
                    continue
                closest = _closest(n, cpu_nodes)
                decided[n.id] = (
                    self._by_nvdimm(n, nvdimm_nodes)
                    or self._by_hmat(n, closest, nodes)
                    or self._by_tier(n, cpu_nodes, tiers)
                    or _by_capacity(n, average)
                )
                log.info("node %d: %s (%s)", n.id, *decided[n.id])

        return {
            n.id: Node(
                id=n.id,
                cpus=n.cpus,
                memory=n.memory,
                kind=decided[n.id][0],
                kind_reason=decided[n.id][1],
                distances=FrozenMap(sorted(n.distances.items())),
                has_memory=n.has_memory,
                normal_memory=n.normal_memory,
                package=n.package,
                die=n.die,
                offline_cpus=n.offline_cpus,
            )
            for n in nodes.values()
        }

    def _nvdimm_nodes(self) -> Set[int]:
        found: Set[int] = set()
        for rel in self.fs.indexed(ND_DIR, "region").values():
            target = self.fs.read_int(f"{rel}/target_node", "a NUMA node id", default=None)
            if target is not None and target >= 0:
                found.add(target)
        return found

    def _memory_tiers(self) -> Dict[int, int]:
        """node -> memory tier id (higher id = slower memory)."""
        tier_of: Dict[int, int] = {}
        for tier, rel in self.fs.indexed(TIER_DIR, "memory_tier").items():
            nodes = self.fs.read_cpuset(
                f"{rel}/nodelist", "nodes of the memory tier in list syntax", default=CPUSet()
            )
            for node in nodes:
                tier_of[node] = tier
        return tier_of

    @staticmethod
    def _by_nvdimm(node: _RawNode, nvdimm_nodes: Set[int]) -> Optional[Tuple[str, str]]:
        if node.id in nvdimm_nodes:
            return PMEM, "an NVDIMM region targets it"
        return None

    def _hmat(self, node: int) -> Tuple[Optional[int], Optional[int]]:
        rel = f"{NODE_DIR}/node{node}/access0/initiators"
        bandwidth = self.fs.read_int(f"{rel}/read_bandwidth", "MB/s", default=None)
        latency = self.fs.read_int(f"{rel}/read_latency", "ns", default=None)
        return (bandwidth or None), (latency or None)

    def _by_hmat(
        self, node: _RawNode, closest: List[int], nodes: Dict[int, _RawNode]
    ) -> Optional[Tuple[str, str]]:
        bandwidth, latency = self._hmat(node.id)
        if bandwidth is None and latency is None:
            return None
        for ref in closest:
            ref_bw, ref_lat = self._hmat(ref)
            if bandwidth and ref_bw:
                if bandwidth >= ref_bw * _HMAT_FASTER:
                    return HBM, f"HMAT read bandwidth {bandwidth} MB/s vs {ref_bw} of node {ref}"
                if bandwidth * _HMAT_SLOWER <= ref_bw:
                    return PMEM, f"HMAT read bandwidth {bandwidth} MB/s vs {ref_bw} of node {ref}"
            if latency and ref_lat and latency >= ref_lat * _HMAT_SLOWER:
                return PMEM, f"HMAT read latency {latency} ns vs {ref_lat} of node {ref}"
            if (bandwidth and ref_bw) or (latency and ref_lat):
                return DRAM, f"HMAT performance like node {ref}'s"
        return None

    @staticmethod
    def _by_tier(
        node: _RawNode, cpu_nodes: List[_RawNode], tiers: Dict[int, int]
    ) -> Optional[Tuple[str, str]]:
        tier = tiers.get(node.id)
        dram_tiers = [tiers[n.id] for n in cpu_nodes if n.id in tiers and n.memory > 0]
        if tier is None or not dram_tiers:
            return None
        dram_tier = min(dram_tiers)
        if tier > dram_tier:
            return PMEM, f"memory tier {tier} is slower than the CPU nodes' tier {dram_tier}"
        if tier < dram_tier:
            return HBM, f"memory tier {tier} is faster than the CPU nodes' tier {dram_tier}"
        return None


def _closest(node: _RawNode, cpu_nodes: List[_RawNode]) -> List[int]:
    best: Optional[int] = None
    closest: List[int] = []
    for other in cpu_nodes:
        dist = node.distances.get(other.id, REMOTE_DISTANCE)
        if best is None or dist < best:
            best, closest = dist, [other.id]
        elif dist == best:
            closest.append(other.id)
    return closest


def _by_capacity(node: _RawNode, average: int) -> Tuple[str, str]:
    gib = 1 << 30
    if node.memory <= 0:
        return DRAM, "no MemTotal to compare with the CPU nodes"
    if average <= 0:
        return DRAM, "no CPU node memory to compare its capacity with"
    if node.memory < average:
        return HBM, (
            f"capacity {node.memory / gib:.1f} GiB < {average / gib:.1f} GiB "
            "average of the CPU nodes"
        )
    return PMEM, (
        f"capacity {node.memory / gib:.1f} GiB >= {average / gib:.1f} GiB average of the CPU nodes"
    )
