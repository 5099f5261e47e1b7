"""Fake but realistic sysfs trees for generated machines (tests and benchmarks).

This module owns `write_sysfs`: it writes ``ROOT/sys/devices/system/{cpu,node}`` (and,
on request, the HMAT, NVDIMM and memory-tier files) for a machine described by a few
counts, in the same formats a Linux kernel uses, so that `topology.load(ROOT)` reads
it exactly like a real machine. Layout, as Linux enumerates Intel servers:

* CPU nodes are numbered socket by socket, die by die: node = (socket * dies + die)
  * nodes_per_die + n. Memory-only nodes follow, in the order given.
* Cores are ordered socket, die, node, core; CPU ids number the first thread of every
  core, then the second thread of every core, ... (``smt_adjacent=True`` instead
  numbers a core's threads consecutively, as AMD and ARM machines often do).
  `cpu_id` computes an id from coordinates.
* ``core_id`` counts cores within their package; one L3 per die (SNC nodes share it),
  cache id = global die index; L1d/L1i/L2 per core.
* Distances: 10 local, 11 between nodes of one die (SNC), 12 between dies of a
  package, 21 between packages (31 between packages in different groups of four
  sockets); a memory-only node is 17 (pmem), 13 (hbm) or 14 (dram, e.g. CXL) from the
  CPU node it is attached to and 28/23/24 from every other node.
* Memory: ``node_memory`` bytes per CPU node (meminfo in kB); memory-only nodes get
  ``size`` or 4x (pmem), 1/4 (hbm) or 1x (dram) of that.
* Offline CPUs keep their ``cpuN`` directory (``online`` = 0, node link) but lose
  ``topology/`` and ``cache/`` and drop out of every list, as on a real kernel.

Units: bytes for memory, kHz for frequencies; CPU lists in the kernel's list syntax.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

from cri_resmgr.resources.cpuset import CPUSet

__all__ = ["GIB", "MemoryOnlyNode", "Synthetic", "cpu_id", "write_sysfs"]

GIB = 1 << 30

_KINDS = ("pmem", "hbm", "dram")
_EVIDENCE = ("capacity", "hmat", "nvdimm", "tier")
# distance from a memory-only node to the CPU node it is attached to / to any other node
_ATTACHED_DISTANCE = {"pmem": 17, "hbm": 13, "dram": 14}
_FAR_DISTANCE = {"pmem": 28, "hbm": 23, "dram": 24}
_SIZE_FACTOR = {"pmem": 4.0, "hbm": 0.25, "dram": 1.0}
# HMAT (access0 initiators): read bandwidth MB/s, read latency ns
_HMAT = {"cpu": (100_000, 90), "pmem": (20_000, 300), "hbm": (400_000, 110), "dram": (90_000, 100)}
# memory tier ids as Linux assigns them: DRAM adistance 576 -> tier 4, dax/kmem -> 22
_TIER = {"cpu": 4, "pmem": 22, "hbm": 3, "dram": 4}


@dataclass(frozen=True)
class MemoryOnlyNode:
    """A NUMA node with memory and no CPUs.

    ``kind``: what it really is (``pmem``, ``hbm`` or ``dram`` e.g. CXL memory).
    ``socket``: the package it hangs off; ``node``: the CPU node it is closest to
    (default: the first node of ``socket``). ``size``: bytes (default: see module).
    ``evidence``: which kernel files tell its kind apart: ``capacity`` (only
    MemTotal, like most real machines), ``hmat`` (access0 performance attributes),
    ``nvdimm`` (an NVDIMM region targets it) or ``tier`` (memory tiers).
    """

    kind: str = "pmem"
    socket: int = 0
    node: Optional[int] = None
    size: Optional[int] = None
    evidence: str = "capacity"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"memory-only node kind {self.kind!r}: expected one of {_KINDS}")
        if self.evidence not in _EVIDENCE:
            raise ValueError(
                f"memory-only node evidence {self.evidence!r}: expected one of {_EVIDENCE}"
            )


MemoryOnlySpec = Union[MemoryOnlyNode, Tuple[str, int], Dict[str, object]]


@dataclass(frozen=True)
class Synthetic:
    """What `write_sysfs` wrote: the root to `load` and the facts to check against."""

    root: Path
    online: CPUSet
    offline: CPUSet
    isolated: CPUSet
    node_cpus: Dict[int, CPUSet]  # every node (memory-only ones: empty)
    node_memory: Dict[int, int]  # bytes
    node_kind: Dict[int, str]  # the true kind of every node
    attached: Dict[int, int]  # memory-only node -> CPU node it is closest to
    distances: Dict[Tuple[int, int], int]


def cpu_id(
    socket: int,
    die: int,
    node: int,
    core: int,
    thread: int,
    *,
    dies_per_socket: int,
    nodes_per_die: int,
    cores_per_node: int,
    threads_per_core: int,
    sockets: int,
    smt_adjacent: bool = False,
) -> int:
    """The CPU id `write_sysfs` gives a hardware thread (``node`` is within the die)."""
    core_index = ((socket * dies_per_socket + die) * nodes_per_die + node) * cores_per_node + core
    if smt_adjacent:
        return core_index * threads_per_core + thread
    total_cores = sockets * dies_per_socket * nodes_per_die * cores_per_node
    return thread * total_cores + core_index


class _Writer:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.dirs: set = set()

    def write(self, rel: str, content: object) -> None:
        path = os.path.join(self.base, rel)
        parent = os.path.dirname(path)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)
        with open(path, "w", encoding="ascii") as f:
            f.write(f"{content}\n")

    def link(self, rel: str, target: str) -> None:
        path = os.path.join(self.base, rel)
        parent = os.path.dirname(path)
        if parent not in self.dirs:
            os.makedirs(parent, exist_ok=True)
            self.dirs.add(parent)
        os.symlink(target, path)


def _mask(cpus: CPUSet, nbits: int) -> str:
    """The kernel's mask form padded to nr_cpu_ids bits: "0000,00000000,0000000f"."""
    digits = max(1, (nbits + 3) // 4)
    text = f"{cpus.bits:0{digits}x}"
    words = []
    while text:
        words.append(text[-8:])
        text = text[:-8]
    return ",".join(reversed(words))


def _memory_spec(spec: MemoryOnlySpec) -> MemoryOnlyNode:
    if isinstance(spec, MemoryOnlyNode):
        return spec
    if isinstance(spec, dict):
        return MemoryOnlyNode(**spec)  # type: ignore[arg-type]
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return MemoryOnlyNode(kind=str(spec[0]), socket=int(spec[1]))
    raise TypeError(f"memory-only node {spec!r}: expected MemoryOnlyNode, (kind, socket) or a dict")


def write_sysfs(
    root: Union[str, os.PathLike],
    *,
    sockets: int = 1,
    dies_per_socket: int = 1,
    nodes_per_die: int = 1,
    cores_per_node: int = 4,
    threads_per_core: int = 2,
    memory_only_nodes: Sequence[MemoryOnlySpec] = (),
    isolated: str = "",
    offline: str = "",
    node_memory: int = 16 * GIB,
    smt_adjacent: bool = False,
    base_freq_khz: Optional[int] = 2_000_000,
    numa: bool = True,
    extras: bool = True,
) -> Synthetic:
    """Write a sysfs tree for a generated machine under ``root`` (``root/sys/...``).

    ``memory_only_nodes``: `MemoryOnlyNode`, ``(kind, socket)`` or a dict of its
    fields each. ``isolated``/``offline``: CPU lists (``"2-3"``). ``node_memory``:
    bytes per CPU node. ``numa=False`` leaves out ``devices/system/node`` (a kernel
    without CONFIG_NUMA). ``extras=False`` writes only what `topology.load` reads
    (no L1/L2 caches, hex masks besides the L3's, package/die lists, node->cpu
    links): a third of the files, for tests and benchmarks on slow disks. Returns
    what it wrote.
    """
    for name, value in (
        ("sockets", sockets),
        ("dies_per_socket", dies_per_socket),
        ("nodes_per_die", nodes_per_die),
        ("cores_per_node", cores_per_node),
        ("threads_per_core", threads_per_core),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    machine = _Machine(
        sockets=sockets,
        dies=dies_per_socket,
        nodes_per_die=nodes_per_die,
        cores_per_node=cores_per_node,
        threads=threads_per_core,
        smt_adjacent=smt_adjacent,
        offline=CPUSet.parse(offline),
        isolated=CPUSet.parse(isolated),
        node_memory=node_memory,
        specs=[_memory_spec(spec) for spec in memory_only_nodes],
        extras=extras,
    )
    base = Path(root)
    w = _Writer(base / "sys")
    machine.write_cpus(w, base_freq_khz, numa)
    if numa:
        machine.write_nodes(w)
        machine.write_evidence(w)
    return machine.result(base, numa)


class _Machine:
    """The layout of a generated machine and the writers of its sysfs files."""

    def __init__(
        self,
        *,
        sockets: int,
        dies: int,
        nodes_per_die: int,
        cores_per_node: int,
        threads: int,
        smt_adjacent: bool,
        offline: CPUSet,
        isolated: CPUSet,
        node_memory: int,
        specs: List[MemoryOnlyNode],
        extras: bool = True,
    ) -> None:
        self.extras = extras
        self.sockets = sockets
        self.dies = dies
        self.nodes_per_die = nodes_per_die
        self.cores_per_node = cores_per_node
        self.threads = threads
        self.smt_adjacent = smt_adjacent
        self.cores_per_die = nodes_per_die * cores_per_node
        self.cores_per_socket = dies * self.cores_per_die
        self.ncpus = sockets * self.cores_per_socket * threads
        self.cpu_nodes = sockets * dies * nodes_per_die
        self.possible = CPUSet.range(0, self.ncpus - 1)
        self.offline = offline & self.possible
        self.isolated = isolated
        self.online = self.possible - self.offline
        if not self.online:
            raise ValueError("every CPU would be offline")
        self._masks: Dict[CPUSet, str] = {}
        self._layout_cpus()
        self._layout_memory(node_memory, specs)
        self.distances = {(a, b): self._distance(a, b) for a in self.nodes for b in self.nodes}

    # -- layout ---------------------------------------------------------------------

    def _layout_cpus(self) -> None:
        # cpu -> (socket, die, node, core_id); sets of online CPUs per core/node/die/package
        self.info: Dict[int, Tuple[int, int, int, int]] = {}
        self.core_threads: Dict[int, CPUSet] = {}
        self.node_cpus: Dict[int, CPUSet] = {}
        self.die_cpus: Dict[Tuple[int, int], CPUSet] = {}
        self.pkg_cpus: Dict[int, CPUSet] = {}
        online = self.online
        for s in range(self.sockets):
            for d in range(self.dies):
                for n in range(self.nodes_per_die):
                    node = (s * self.dies + d) * self.nodes_per_die + n
                    cpus = CPUSet()
                    for c in range(self.cores_per_node):
                        core_id = (d * self.nodes_per_die + n) * self.cores_per_node + c
                        threads = CPUSet(
                            cpu_id(
                                s,
                                d,
                                n,
                                c,
                                t,
                                dies_per_socket=self.dies,
                                nodes_per_die=self.nodes_per_die,
                                cores_per_node=self.cores_per_node,
                                threads_per_core=self.threads,
                                sockets=self.sockets,
                                smt_adjacent=self.smt_adjacent,
                            )
                            for t in range(self.threads)
                        )
                        for cpu in threads:
                            self.info[cpu] = (s, d, node, core_id)
                            self.core_threads[cpu] = threads & online
                        cpus = cpus | (threads & online)
                    self.node_cpus[node] = cpus
                    self.die_cpus[(s, d)] = self.die_cpus.get((s, d), CPUSet()) | cpus
                    self.pkg_cpus[s] = self.pkg_cpus.get(s, CPUSet()) | cpus

    def _layout_memory(self, node_memory: int, specs: List[MemoryOnlyNode]) -> None:
        self.node_memory = {n: node_memory for n in range(self.cpu_nodes)}
        self.node_kind = {n: "dram" for n in range(self.cpu_nodes)}
        self.attached: Dict[int, int] = {}
        self.mem_specs: Dict[int, MemoryOnlyNode] = {}
        nodes_per_socket = self.dies * self.nodes_per_die
        for i, spec in enumerate(specs):
            node = self.cpu_nodes + i
            if not 0 <= spec.socket < self.sockets:
                raise ValueError(f"memory-only node {spec}: no socket {spec.socket}")
            near = spec.socket * nodes_per_socket if spec.node is None else spec.node
            if not 0 <= near < self.cpu_nodes or near // nodes_per_socket != spec.socket:
                raise ValueError(
                    f"memory-only node {spec}: CPU node {near} is not in socket {spec.socket}"
                )
            self.attached[node] = near
            self.mem_specs[node] = spec
            size = (
                spec.size if spec.size is not None else int(node_memory * _SIZE_FACTOR[spec.kind])
            )
            self.node_memory[node] = size
            self.node_kind[node] = spec.kind
            self.node_cpus[node] = CPUSet()
        self.nodes = list(range(self.cpu_nodes + len(specs)))

    def _distance(self, a: int, b: int) -> int:
        if a == b:
            return 10
        mem = self.mem_specs
        if a in mem and b in mem:
            return max(_FAR_DISTANCE[mem[a].kind], _FAR_DISTANCE[mem[b].kind])
        if a in mem or b in mem:
            m, other = (a, b) if a in mem else (b, a)
            if self.attached[m] == other:
                return _ATTACHED_DISTANCE[mem[m].kind]
            return _FAR_DISTANCE[mem[m].kind]
        die_a, die_b = a // self.nodes_per_die, b // self.nodes_per_die
        if die_a == die_b:
            return 11
        socket_a, socket_b = die_a // self.dies, die_b // self.dies
        if socket_a == socket_b:
            return 12
        if socket_a // 4 == socket_b // 4:
            return 21
        return 31

    def mask(self, cpus: CPUSet) -> str:
        text = self._masks.get(cpus)
        if text is None:
            text = self._masks[cpus] = _mask(cpus, self.ncpus)
        return text

    # -- writers ------------------------------------------------------------------------

    def write_cpus(self, w: _Writer, base_freq_khz: Optional[int], numa: bool) -> None:
        cpu = "devices/system/cpu"
        w.write(f"{cpu}/online", self.online)
        w.write(f"{cpu}/offline", self.offline)
        w.write(f"{cpu}/possible", self.possible)
        w.write(f"{cpu}/present", self.possible)
        w.write(f"{cpu}/isolated", self.isolated)
        if self.extras:
            w.write(f"{cpu}/kernel_max", 8191)
            w.write(f"{cpu}/smt/active", int(self.threads > 1))
        for c in self.possible:
            rel = f"{cpu}/cpu{c}"
            if numa:
                w.link(f"{rel}/node{self.info[c][2]}", f"../../node/node{self.info[c][2]}")
            if c != 0:  # cpu0 cannot be taken offline: no 'online' file
                w.write(f"{rel}/online", int(c in self.online))
            if c in self.online:
                self._write_cpu(w, c, rel)
                if base_freq_khz is not None:
                    policy = f"{cpu}/cpufreq/policy{c}"
                    w.write(f"{policy}/base_frequency", base_freq_khz)
                    w.write(f"{policy}/cpuinfo_min_freq", 800_000)
                    w.write(f"{policy}/cpuinfo_max_freq", base_freq_khz + 1_500_000)
                    if self.extras:
                        w.write(f"{policy}/affected_cpus", c)
                    w.link(f"{rel}/cpufreq", f"../cpufreq/policy{c}")

    def _write_cpu(self, w: _Writer, c: int, rel: str) -> None:
        s, d, _, core_id = self.info[c]
        topo = f"{rel}/topology"
        w.write(f"{topo}/physical_package_id", s)
        w.write(f"{topo}/die_id", d)
        w.write(f"{topo}/core_id", core_id)
        w.write(f"{topo}/core_cpus_list", self.core_threads[c])
        w.write(f"{topo}/thread_siblings_list", self.core_threads[c])
        if self.extras:
            for name, cpus in (
                ("core_cpus", self.core_threads[c]),
                ("thread_siblings", self.core_threads[c]),
                ("die_cpus", self.die_cpus[(s, d)]),
                ("core_siblings", self.pkg_cpus[s]),
                ("package_cpus", self.pkg_cpus[s]),
            ):
                if name not in ("core_cpus", "thread_siblings"):
                    w.write(f"{topo}/{name}_list", cpus)
                w.write(f"{topo}/{name}", self.mask(cpus))
        core_index = s * self.cores_per_socket + core_id
        caches = (
            (1, "Data", core_index, "48K", self.core_threads[c]),
            (1, "Instruction", core_index, "32K", self.core_threads[c]),
            (2, "Unified", core_index, "2048K", self.core_threads[c]),
            (
                3,
                "Unified",
                s * self.dies + d,
                f"{1920 * self.cores_per_die}K",
                self.die_cpus[(s, d)],
            ),
        )
        for index, (level, kind, cache_id, size, shared) in enumerate(caches):
            if level < 3 and not self.extras:
                continue
            cache = f"{rel}/cache/index{index}"
            w.write(f"{cache}/level", level)
            w.write(f"{cache}/type", kind)
            w.write(f"{cache}/id", cache_id)
            w.write(f"{cache}/size", size)
            w.write(f"{cache}/shared_cpu_list", shared)
            w.write(f"{cache}/shared_cpu_map", self.mask(shared))

    def write_nodes(self, w: _Writer) -> None:
        node_dir = "devices/system/node"
        nodes = CPUSet(self.nodes)
        w.write(f"{node_dir}/online", nodes)
        w.write(f"{node_dir}/possible", nodes)
        w.write(f"{node_dir}/has_cpu", CPUSet(n for n in self.nodes if self.node_cpus[n]))
        w.write(f"{node_dir}/has_memory", nodes)
        w.write(f"{node_dir}/has_normal_memory", nodes)
        for n in self.nodes:
            rel = f"{node_dir}/node{n}"
            w.write(f"{rel}/cpulist", self.node_cpus[n])
            w.write(f"{rel}/distance", " ".join(str(self.distances[(n, m)]) for m in self.nodes))
            w.write(f"{rel}/meminfo", _meminfo(n, self.node_memory[n]))
            if self.extras:
                w.write(f"{rel}/cpumap", self.mask(self.node_cpus[n]))
                for c in self.node_cpus[n]:
                    w.link(f"{rel}/cpu{c}", f"../../cpu/cpu{c}")

    def write_evidence(self, w: _Writer) -> None:
        evidence = {spec.evidence for spec in self.mem_specs.values()}
        if "hmat" in evidence:
            for n in self.nodes:
                spec = self.mem_specs.get(n)
                if spec is not None and spec.evidence != "hmat":
                    continue
                bandwidth, latency = _HMAT["cpu" if spec is None else spec.kind]
                rel = f"devices/system/node/node{n}/access0/initiators"
                w.write(f"{rel}/read_bandwidth", bandwidth)
                w.write(f"{rel}/write_bandwidth", bandwidth)
                w.write(f"{rel}/read_latency", latency)
                w.write(f"{rel}/write_latency", latency)
        region = 0
        for n, spec in self.mem_specs.items():
            if spec.evidence == "nvdimm":
                rel = f"bus/nd/devices/region{region}"
                w.write(f"{rel}/target_node", n)
                w.write(f"{rel}/numa_node", self.attached[n])
                region += 1
        if "tier" in evidence:
            tiers: Dict[int, List[int]] = {}
            for n in self.nodes:
                spec = self.mem_specs.get(n)
                # without other information the kernel puts memory in the DRAM tier
                known = spec is not None and spec.evidence == "tier"
                tier = _TIER[spec.kind] if known and spec is not None else _TIER["cpu"]
                tiers.setdefault(tier, []).append(n)
            for tier, members in tiers.items():
                rel = f"devices/virtual/memory_tiering/memory_tier{tier}"
                w.write(f"{rel}/nodelist", CPUSet(members))

    def result(self, root: Path, numa: bool) -> Synthetic:
        if not numa:
            return Synthetic(
                root=root,
                online=self.online,
                offline=self.offline,
                isolated=self.isolated,
                node_cpus={0: self.online},
                node_memory={},
                node_kind={0: "dram"},
                attached={},
                distances={(0, 0): 10},
            )
        return Synthetic(
            root=root,
            online=self.online,
            offline=self.offline,
            isolated=self.isolated,
            node_cpus=dict(self.node_cpus),
            node_memory=dict(self.node_memory),
            node_kind=dict(self.node_kind),
            attached=dict(self.attached),
            distances=dict(self.distances),
        )


def _meminfo(node: int, size: int) -> str:
    total_kb = size // 1024
    free_kb = total_kb * 9 // 10
    lines: Iterable[Tuple[str, int]] = (
        ("MemTotal", total_kb),
        ("MemFree", free_kb),
        ("MemUsed", total_kb - free_kb),
        ("Active", 0),
        ("Inactive", 0),
        ("HugePages_Total", 0),
    )
    out = []
    for key, value in lines:
        if key.startswith("HugePages"):
            out.append(f"Node {node} {key + ':':<16}{value:>6}")
        else:
            out.append(f"Node {node} {key + ':':<16}{value:>10} kB")
    return "\n".join(out)
