"""Who owns which CPU, drawn for people: a terminal map and an SVG picture.

Ownership: the `Layout` of a machine as the pictures need it (socket > die > NUMA node >
core > thread, from a `Topology` or from its JSON form in the status document), the
assignment of every online CPU to exactly one `Owner` (`assign`), and the two renderings:
`render_text` (one cell per CPU, per socket and NUMA node, legend underneath) and
`render_svg` (nested boxes, one ``<g class="cpu">`` element per CPU with a ``<title>``
naming its owner, a colour per owner, legend). ``cri-resmgr status`` and
``cri-resmgr simulate --svg`` draw with these; nothing here talks to the service.

Owners, in the order a CPU is claimed (the first claim wins):

1. a container's exclusive CPUs (`Placement.exclusive`, or all its CPUs when its class is
   exclusive or isolated): one tag per container, ``A``-``Z``, ``0``-``9``, then two
   letters; two containers claiming one CPU make it a ``!`` conflict;
2. the reserved CPUs: ``#``;
3. the policy's pools (``shared``, balloons, topology-aware pools, ...), smallest
   first so that nested pools leave a CPU to the most specific one: lower-case tags,
   the pool name's first free letter;
4. CPUs shared containers run on that no pool covers (policy none, preserved
   placements): a pool per pool name (or class);
5. isolated CPUs nobody uses: ``-``; every other CPU is idle: ``.``.

Containers that run on CPUs they do not own are *members* of the owner of those
CPUs (the legend counts them). CPU sets are `CPUSet`s; memory is bytes.
"""

from __future__ import annotations

import colorsys
import itertools
import string
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple
from xml.sax.saxutils import escape, quoteattr

from cri_resmgr.resources.cpuset import CPUSet

__all__ = [
    "Layout",
    "MemoryNode",
    "NodeBox",
    "Owner",
    "Ownership",
    "Workload",
    "assign",
    "render_svg",
    "render_text",
    "svg_for_simulation",
    "workloads_from_simulation",
    "workloads_from_status",
]

# CPU classes (as policy.base names them; repeated to keep this module a leaf)
EXCLUSIVE = "exclusive"
ISOLATED = "isolated"
RESERVED = "reserved"

# owner kinds
CONTAINER = "container"
POOL = "pool"
RESERVED_KIND = "reserved"
ISOLATED_IDLE = "isolated"
IDLE = "idle"
CONFLICT = "conflict"

TAG_RESERVED = "#"
TAG_ISOLATED = "-"
TAG_IDLE = "."
TAG_CONFLICT = "!"

_GIB = 1 << 30


# --- layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeBox:
    """The part of a NUMA node inside one die: its cores, each a tuple of thread CPU ids."""

    id: int
    memory: int  # bytes of the whole node
    kind: str  # dram, pmem, hbm
    cores: Tuple[Tuple[int, ...], ...]

    @property
    def cpus(self) -> Tuple[int, ...]:
        return tuple(c for core in self.cores for c in core)


@dataclass(frozen=True)
class DieBox:
    id: int
    nodes: Tuple[NodeBox, ...]


@dataclass(frozen=True)
class PackageBox:
    id: int
    dies: Tuple[DieBox, ...]


@dataclass(frozen=True)
class MemoryNode:
    """A NUMA node without CPUs (PMEM, HBM, CXL memory)."""

    id: int
    memory: int  # bytes
    kind: str
    closest: Tuple[int, ...]  # the CPU nodes it is attached to


@dataclass(frozen=True)
class Layout:
    """A machine for drawing: online CPUs by socket > die > node > core > thread."""

    packages: Tuple[PackageBox, ...]
    memory_nodes: Tuple[MemoryNode, ...] = ()
    isolated: CPUSet = field(default_factory=CPUSet)
    offline: CPUSet = field(default_factory=CPUSet)

    @property
    def cpus(self) -> CPUSet:
        """Every online CPU in the layout."""
        return CPUSet(c for p in self.packages for d in p.dies for n in d.nodes for c in n.cpus)

    def core_of(self) -> Dict[int, int]:
        """CPU -> its core's first thread (the core key)."""
        return {
            c: core[0]
            for p in self.packages
            for d in p.dies
            for n in d.nodes
            for core in n.cores
            for c in core
        }

    @classmethod
    def from_topology(cls, topology: Any) -> Layout:
        """From a `resources.topology.Topology`."""
        packages = []
        for pkg in sorted(topology.packages):
            dies = []
            for p, die in sorted(topology.dies):
                if p != pkg:
                    continue
                die_cpus = topology.dies[(p, die)]
                by_node: Dict[int, Dict[int, List[int]]] = {}
                for cpu in die_cpus:
                    rec = topology.cpus[cpu]
                    by_node.setdefault(rec.node, {}).setdefault(rec.core, []).append(cpu)
                nodes = []
                for node_id in sorted(by_node):
                    node = topology.nodes[node_id]
                    cores = tuple(
                        tuple(sorted(threads)) for _, threads in sorted(by_node[node_id].items())
                    )
                    nodes.append(NodeBox(node_id, node.memory, node.kind, cores))
                dies.append(DieBox(die, tuple(nodes)))
            packages.append(PackageBox(pkg, tuple(dies)))
        memory_nodes = tuple(
            MemoryNode(n.id, n.memory, n.kind, tuple(topology.closest_cpu_nodes(n.id)))
            for n in topology.nodes.values()
            if not n.cpus and n.has_memory
        )
        return cls(tuple(packages), memory_nodes, topology.isolated, topology.offline)

    def to_json(self) -> Dict[str, Any]:
        """The status document's ``topology``: plain JSON, CPU sets as list strings."""
        return {
            "packages": [
                {
                    "id": p.id,
                    "dies": [
                        {
                            "id": d.id,
                            "nodes": [
                                {
                                    "id": n.id,
                                    "memory": n.memory,
                                    "kind": n.kind,
                                    "cores": [list(core) for core in n.cores],
                                }
                                for n in d.nodes
                            ],
                        }
                        for d in p.dies
                    ],
                }
                for p in self.packages
            ],
            "memory_nodes": [
                {"id": m.id, "memory": m.memory, "kind": m.kind, "closest": list(m.closest)}
                for m in self.memory_nodes
            ],
            "isolated": str(self.isolated),
            "offline": str(self.offline),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Layout:
        packages = tuple(
            PackageBox(
                int(p["id"]),
                tuple(
                    DieBox(
                        int(d["id"]),
                        tuple(
                            NodeBox(
                                int(n["id"]),
                                int(n.get("memory", 0)),
                                str(n.get("kind", "dram")),
                                tuple(tuple(int(c) for c in core) for core in n["cores"]),
                            )
                            for n in d["nodes"]
                        ),
                    )
                    for d in p["dies"]
                ),
            )
            for p in data.get("packages", [])
        )
        memory_nodes = tuple(
            MemoryNode(
                int(m["id"]),
                int(m.get("memory", 0)),
                str(m.get("kind", "")),
                tuple(int(c) for c in m.get("closest", [])),
            )
            for m in data.get("memory_nodes", [])
        )
        return cls(
            packages,
            memory_nodes,
            CPUSet.parse(data.get("isolated", "")),
            CPUSet.parse(data.get("offline", "")),
        )


# --- owners ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A container as the pictures see it."""

    name: str  # namespace/pod:container
    cpu_class: str  # exclusive, shared, reserved, isolated, preserved; "" unplaced
    cpus: CPUSet  # the CPUs it may run on (empty: not restricted)
    exclusive: CPUSet = field(default_factory=CPUSet)  # CPUs it owns alone
    pool: str = ""

    @property
    def owned(self) -> CPUSet:
        if self.exclusive:
            return self.exclusive
        if self.cpu_class in (EXCLUSIVE, ISOLATED):
            return self.cpus
        return CPUSet()


@dataclass
class Owner:
    """One entry of the legend: a tag drawn in the cells of `cpus`."""

    tag: str
    label: str  # namespace/pod:container, "pool shared", "reserved", "idle", ...
    kind: str  # container, pool, reserved, isolated, idle, conflict
    cpus: CPUSet = field(default_factory=CPUSet)
    cpu_class: str = ""  # a container's class
    members: List[str] = field(default_factory=list)  # containers running here, not owning

    def describe(self) -> str:
        """The legend text after the tag."""
        count = len(self.cpus)
        cpus = f"CPUs {self.cpus} ({count})" if count else "no CPUs"
        if self.kind == CONTAINER:
            return f"{self.label}  {self.cpu_class or 'exclusive'}  {cpus}"
        extra = ""
        if self.members:
            n = len(self.members)
            extra = f"  {n} container{'s' if n != 1 else ''}"
        return f"{self.label}  {cpus}{extra}"


@dataclass
class Ownership:
    """Every online CPU of a layout with its one owner; `owners` in legend order."""

    owners: List[Owner]
    owner_of: Dict[int, Owner]


def _container_tags() -> Iterator[str]:
    singles = string.ascii_uppercase + string.digits
    yield from singles
    for a, b in itertools.product(string.ascii_uppercase, string.ascii_uppercase + string.digits):
        yield a + b


def _pool_tag(name: str, used: set) -> str:
    for ch in name.lower() + string.ascii_lowercase:
        if ch in string.ascii_lowercase and ch not in used:
            return ch
    for a, b in itertools.product(string.ascii_lowercase, repeat=2):
        if a + b not in used:
            return a + b
    raise ValueError("too many pools")  # pragma: no cover - 702 pools


_NO_CPUS = CPUSet()


class _Assigner:
    """The steps of `assign`, sharing what is painted so far."""

    def __init__(self, layout: Layout, workloads: Iterable[Workload]) -> None:
        self.layout = layout
        self.online = layout.cpus
        self.loads = sorted(workloads, key=lambda w: w.name)
        self.owner_of: Dict[int, Owner] = {}
        self.owners: List[Owner] = []
        self.used_tags: set = set()
        self.sharing = [w for w in self.loads if not (w.owned & self.online)]

    def painted(self) -> CPUSet:
        return CPUSet(self.owner_of)

    def paint(self, owner: Owner, cpus: CPUSet) -> None:
        owner.cpus = owner.cpus | cpus
        for cpu in cpus:
            self.owner_of[cpu] = owner

    def add(self, owner: Owner, cpus: CPUSet) -> Owner:
        self.owners.append(owner)
        self.used_tags.add(owner.tag)
        self.paint(owner, cpus)
        return owner

    def containers(self) -> Optional[Owner]:
        """Exclusive CPUs; returns the conflict owner (CPUs claimed twice), if any."""
        claims: Dict[int, int] = {}
        for w in self.loads:
            for cpu in w.owned & self.online:
                claims[cpu] = claims.get(cpu, 0) + 1
        tags = _container_tags()
        conflict: Optional[Owner] = None
        for w in self.loads:
            owned = w.owned & self.online
            if not owned:
                continue
            mine = CPUSet(c for c in owned if claims[c] == 1)
            owner = Owner(next(tags), w.name, CONTAINER, cpu_class=w.cpu_class or EXCLUSIVE)
            self.add(owner, mine)
            clashing = owned - mine
            if clashing:
                if conflict is None:
                    conflict = Owner(
                        TAG_CONFLICT, "conflict: claimed by several containers", CONFLICT
                    )
                self.paint(conflict, clashing)
                conflict.members.append(w.name)
        return conflict

    def reserved(self, reserved: CPUSet) -> None:
        free = (reserved & self.online) - self.painted()
        if free:
            owner = self.add(Owner(TAG_RESERVED, "reserved", RESERVED_KIND), free)
            owner.members = [
                w.name for w in self.sharing if w.cpu_class == RESERVED or (w.cpus & free)
            ]

    def pools(self, pools: Mapping[str, CPUSet]) -> None:
        """The policy's pools, smallest first (nested pools, as the topology-aware
        policy's node < socket < root, leave each CPU to the most specific one), then
        what shared containers run on besides (by pool name)."""
        extra: Dict[str, CPUSet] = {}
        for w in self.sharing:
            if w.cpus:
                key = w.pool or w.cpu_class or "shared"
                extra[key] = extra.get(key, _NO_CPUS) | w.cpus
        ordered = sorted(pools.items(), key=lambda kv: len(kv[1] & self.online))
        by_pool: Dict[str, Owner] = {}
        for name, cpus in ordered + sorted(extra.items()):
            free = (cpus & self.online) - self.painted()
            if not free:
                continue
            owner = by_pool.get(name)
            if owner is None:
                tag = _pool_tag(name, self.used_tags)
                owner = by_pool[name] = self.add(Owner(tag, f"pool {name}", POOL), free)
            else:
                self.paint(owner, free)
        for w in self.sharing:
            if w.pool in by_pool:
                by_pool[w.pool].members.append(w.name)
            elif w.cpus:  # its pool owns no CPU of its own: count it where it runs
                for owner in by_pool.values():
                    if w.cpus & owner.cpus:
                        owner.members.append(w.name)

    def rest(self) -> None:
        left = self.online - self.painted()
        isolated_idle = left & self.layout.isolated
        if isolated_idle:
            self.add(Owner(TAG_ISOLATED, "isolated, unused", ISOLATED_IDLE), isolated_idle)
        idle = left - isolated_idle
        if idle:
            owner = self.add(Owner(TAG_IDLE, "idle", IDLE), idle)
            owner.members = [w.name for w in self.sharing if not w.cpus]


def assign(
    layout: Layout,
    workloads: Iterable[Workload],
    pools: Optional[Mapping[str, CPUSet]] = None,
    reserved: Optional[CPUSet] = None,
) -> Ownership:
    """Give every online CPU of `layout` one owner (see the module docstring).

    `pools` maps pool names to CPUs (a ``reserved`` pool joins `reserved`).
    """
    steps = _Assigner(layout, workloads)
    pools = dict(pools or {})
    conflict = steps.containers()
    steps.reserved((reserved or _NO_CPUS) | pools.pop(RESERVED, _NO_CPUS))
    steps.pools(pools)
    steps.rest()
    if conflict is not None:
        steps.owners.append(conflict)
    return Ownership(steps.owners, steps.owner_of)


# --- inputs ----------------------------------------------------------------------------


def _cpuset(text: Optional[str]) -> CPUSet:
    return CPUSet.parse(text) if text else CPUSet()


def workloads_from_status(containers: Iterable[Mapping[str, Any]]) -> List[Workload]:
    """From the status document's ``containers`` (stopped containers are left out)."""
    out = []
    for c in containers:
        if c.get("stopped"):
            continue
        out.append(
            Workload(
                name=c.get("name") or c.get("key", ""),
                cpu_class=c.get("class") or "",
                cpus=_cpuset(c.get("cpus")),
                exclusive=_cpuset(c.get("exclusive")),
                pool=c.get("pool") or "",
            )
        )
    return out


def workloads_from_simulation(doc: Mapping[str, Any]) -> List[Workload]:
    """From the output document of ``cri-resmgr simulate`` (its ``containers``)."""
    return [
        Workload(
            name=f"{c['pod']}:{c['container']}",
            cpu_class=c.get("class") or "",
            cpus=_cpuset(c.get("cpuset_cpus")),
            exclusive=_cpuset(c.get("exclusive")),
            pool=c.get("pool") or "",
        )
        for c in doc.get("containers", [])
    ]


def _pools(raw: Mapping[str, Any]) -> Dict[str, CPUSet]:
    out = {}
    for name, value in raw.items():
        text = value.get("cpus", "") if isinstance(value, Mapping) else value
        out[name] = _cpuset(text)
    return out


def svg_for_simulation(topology: Any, doc: Mapping[str, Any], title: str = "") -> str:
    """The SVG picture of a ``simulate`` result on `topology` (a `Topology`).

    ``cri-resmgr simulate ... --svg FILE`` writes ``svg_for_simulation(topology,
    sim.result())`` to FILE.
    """
    layout = Layout.from_topology(topology)
    ownership = assign(
        layout,
        workloads_from_simulation(doc),
        _pools(doc.get("pools", {})),
        _cpuset(doc.get("reserved_cpus")),
    )
    if not title:
        title = f"cri-resmgr simulate: policy {doc.get('policy', '?')}"
        if doc.get("error"):
            title += f" (stopped: {doc['error']})"
    return render_svg(layout, ownership, title)


def ownership_from_status(doc: Mapping[str, Any]) -> Tuple[Layout, Ownership]:
    """The layout and owners of a status document (its ``topology``, ``containers``,
    ``pools`` and ``policy.reserved``)."""
    layout = Layout.from_json(doc.get("topology") or {})
    policy = doc.get("policy") or {}
    ownership = assign(
        layout,
        workloads_from_status(doc.get("containers", [])),
        _pools(doc.get("pools", {})),
        _cpuset(policy.get("reserved")),
    )
    return layout, ownership


# --- text --------------------------------------------------------------------------------


def _memory(node_memory: int, kind: str) -> str:
    if node_memory:
        return f"{node_memory / _GIB:.1f} GiB {kind}"
    return kind


def _cpus(node: NodeBox) -> str:
    text = str(CPUSet(node.cpus))
    count = len(node.cpus)
    return f"CPUs {text}" if len(text) <= 40 else f"{count} CPUs"


def render_text(layout: Layout, ownership: Ownership, width: int = 100) -> str:
    """The CPU map for a terminal: per socket (die) and NUMA node, one cell per CPU.

    Cores are columns; the row under ``CPU`` ids shows their owners' tags, one row pair
    per thread of the core. `width` is characters per line. The legend follows.
    """
    lines: List[str] = []
    cpus = layout.cpus
    widest = max([len(str(c)) for c in cpus] + [len(o.tag) for o in ownership.owners] + [2])
    cell = widest + 1
    indent = "    "
    per_line = max(1, (width - len(indent) - 4) // cell)
    for pkg in layout.packages:
        lines.append(f"socket {pkg.id}")
        many_dies = len(pkg.dies) > 1
        for die in pkg.dies:
            if many_dies:
                lines.append(f"  die {die.id}")
            for node in die.nodes:
                lines.append(f"  node {node.id}: {_memory(node.memory, node.kind)}, {_cpus(node)}")
                threads = max((len(core) for core in node.cores), default=0)
                for start in range(0, len(node.cores), per_line):
                    chunk = node.cores[start : start + per_line]
                    for t in range(threads):
                        ids = "".join(
                            f"{core[t]:>{cell}}" if t < len(core) else " " * cell for core in chunk
                        )
                        tags = "".join(
                            f"{ownership.owner_of[core[t]].tag:>{cell}}"
                            if t < len(core)
                            else " " * cell
                            for core in chunk
                        )
                        lines.append(f"{indent}CPU{ids}")
                        lines.append(f"{indent}   {tags}")
    for m in layout.memory_nodes:
        closest = ",".join(map(str, m.closest)) or "-"
        lines.append(
            f"memory node {m.id}: {_memory(m.memory, m.kind)}, no CPUs (near node {closest})"
        )
    if layout.offline:
        lines.append(f"offline CPUs: {layout.offline}")
    lines.append("")
    for owner in ownership.owners:
        lines.append(f"  {owner.tag:>{widest}}  {owner.describe()}")
    return "\n".join(lines) + "\n"


# --- SVG -----------------------------------------------------------------------------------

_CELL_W = 34
_CELL_H = 26
_GAP = 3
_CORE_PAD = 3
_BOX_PAD = 8
_HEADER = 18
_CORES_PER_ROW = 16
_MARGIN = 10
_FONT = "DejaVu Sans, Verdana, sans-serif"

_FIXED_COLOURS = {
    IDLE: "#eeeeee",
    RESERVED_KIND: "#9e9e9e",
    ISOLATED_IDLE: "#ffffff",
    CONFLICT: "#ff1744",
}
_POOL_COLOURS = ("#bbdefb", "#c8e6c9", "#fff9c4", "#e1bee7", "#ffe0b2", "#b2ebf2", "#f8bbd0")


def _hsl(hue: float, saturation: float, lightness: float) -> str:
    r, g, b = colorsys.hls_to_rgb(hue % 1.0, lightness, saturation)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def _colours(ownership: Ownership) -> List[str]:
    """Fill colour of each owner, by index."""
    out: List[str] = []
    containers = pools = 0
    for owner in ownership.owners:
        if owner.kind in _FIXED_COLOURS:
            out.append(_FIXED_COLOURS[owner.kind])
        elif owner.kind == POOL:
            out.append(_POOL_COLOURS[pools % len(_POOL_COLOURS)])
            pools += 1
        else:
            out.append(_hsl(0.05 + containers * 0.618034, 0.65, 0.5))  # golden-angle hues
            containers += 1
    return out


def _ink(fill: str) -> str:
    """Black or white text on `fill` (#rrggbb), whichever reads better."""
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


Size = Tuple[float, float]


def _core_size(threads: int) -> Size:
    return (_CELL_W + 2 * _CORE_PAD, threads * _CELL_H + (threads - 1) * _GAP + 2 * _CORE_PAD)


def _threads(node: NodeBox) -> int:
    return max((len(c) for c in node.cores), default=1)


def _node_size(node: NodeBox) -> Size:
    cw, ch = _core_size(_threads(node))
    cols = min(len(node.cores), _CORES_PER_ROW) or 1
    rows = -(-len(node.cores) // _CORES_PER_ROW) or 1
    w = 2 * _BOX_PAD + cols * cw + (cols - 1) * _GAP
    h = _HEADER + _BOX_PAD + rows * ch + (rows - 1) * _GAP
    return max(w, 170.0), h


def _stack(sizes: Sequence[Size]) -> Size:
    """A box holding `sizes` one under the other, with a header."""
    w = 2 * _BOX_PAD + max((s[0] for s in sizes), default=0)
    h = _HEADER + _BOX_PAD + sum(s[1] for s in sizes) + 2 * _GAP * max(0, len(sizes) - 1)
    return w, h


def _die_size(die: DieBox) -> Size:
    return _stack([_node_size(n) for n in die.nodes])


class _SvgMap:
    """Builds the SVG text of `render_svg`; `y` is the next free row (pixels)."""

    def __init__(self, layout: Layout, ownership: Ownership) -> None:
        self.layout = layout
        self.ownership = ownership
        self.colours = _colours(ownership)
        self.index = {id(o): i for i, o in enumerate(ownership.owners)}
        self.core_key = layout.core_of()
        self.parts: List[str] = []
        self.y = float(_MARGIN)
        self.width = 0.0

    def box(self, at: Size, size: Size, label: str, cls: str, fill: str) -> None:
        (x, y), (w, h) = at, size
        self.parts.append(
            f'<g class="{cls}"><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="4" '
            f'fill="{fill}" stroke="#607d8b"/>'
            f'<text x="{x + 6}" y="{y + 13}" font-size="11" fill="#263238">{escape(label)}</text>'
            "</g>"
        )

    def text(self, label: str, size: int = 11, bold: bool = False) -> None:
        weight = ' font-weight="bold"' if bold else ""
        self.parts.append(
            f'<text x="{_MARGIN}" y="{self.y + size + 1}" font-size="{size}"{weight}>'
            f"{escape(label)}</text>"
        )
        self.y += size + 9

    def cpu(self, cpu: int, node: int, x: float, y: float) -> None:
        owner = self.ownership.owner_of[cpu]
        i = self.index[id(owner)]
        fill = self.colours[i]
        ink = _ink(fill)
        if owner.kind == ISOLATED_IDLE:
            stroke = ' stroke="#9e9e9e" stroke-dasharray="3,2"'
        else:
            stroke = ' stroke="#455a64"'
        what = f"{owner.label} ({owner.cpu_class})" if owner.kind == CONTAINER else owner.label
        tip = f"CPU {cpu} (core {self.core_key.get(cpu, cpu)}, node {node}): {what}"
        self.parts.append(
            f'<g class="cpu owner-{i}" id="cpu-{cpu}" data-cpu="{cpu}" '
            f"data-owner={quoteattr(owner.label)}><title>{escape(tip)}</title>"
            f'<rect x="{x}" y="{y}" width="{_CELL_W}" height="{_CELL_H}" rx="2" '
            f'fill="{fill}"{stroke}/>'
            f'<text x="{x + 2}" y="{y + 8}" font-size="7" fill="{ink}">{cpu}</text>'
            f'<text x="{x + _CELL_W / 2}" y="{y + 20}" font-size="12" text-anchor="middle" '
            f'font-weight="bold" fill="{ink}">{escape(owner.tag)}</text></g>'
        )

    def node(self, node: NodeBox, x: float, y: float) -> float:
        """Draw a node box at (x, y); its height."""
        size = _node_size(node)
        label = f"NUMA node {node.id} · {_memory(node.memory, node.kind)}"
        self.box((x, y), size, label, "node", "#fafafa")
        cw, ch = _core_size(_threads(node))
        for k, core in enumerate(node.cores):
            cx = x + _BOX_PAD + (k % _CORES_PER_ROW) * (cw + _GAP)
            cy = y + _HEADER + (k // _CORES_PER_ROW) * (ch + _GAP)
            self.parts.append(
                f'<g class="core" id="core-{core[0]}"><rect x="{cx}" y="{cy}" width="{cw}" '
                f'height="{ch}" rx="3" fill="#cfd8dc" stroke="#90a4ae"/></g>'
            )
            for t, cpu in enumerate(core):
                self.cpu(cpu, node.id, cx + _CORE_PAD, cy + _CORE_PAD + t * (_CELL_H + _GAP))
        return size[1]

    def package(self, pkg: PackageBox) -> None:
        sizes = [_die_size(d) for d in pkg.dies]
        size = _stack(sizes)
        x = float(_MARGIN)
        self.box((x, self.y), size, f"socket {pkg.id}", "package", "#eceff1")
        dy = self.y + _HEADER
        for die, dsize in zip(pkg.dies, sizes):
            self.box((x + _BOX_PAD, dy), dsize, f"die {die.id}", "die", "#f5f5f5")
            ny = dy + _HEADER
            for node in die.nodes:
                ny += self.node(node, x + 2 * _BOX_PAD, ny) + 2 * _GAP
            dy += dsize[1] + 2 * _GAP
        self.y += size[1] + 10
        self.width = max(self.width, size[0])

    def memory_nodes(self) -> None:
        for m in self.layout.memory_nodes:
            closest = ",".join(map(str, m.closest)) or "-"
            label = (
                f"memory node {m.id} · {_memory(m.memory, m.kind)} · no CPUs, near node {closest}"
            )
            self.box((_MARGIN, self.y), (330, 24), label, "memory-node", "#f3e5f5")
            self.y += 30
            self.width = max(self.width, 330)

    def legend(self) -> None:
        self.parts.append('<g class="legend">')
        self.text("owners", 12, bold=True)
        for i, owner in enumerate(self.ownership.owners):
            fill, x, y = self.colours[i], _MARGIN, self.y
            self.parts.append(
                f'<g class="legend-entry owner-{i}"><rect x="{x}" y="{y}" width="26" '
                f'height="18" rx="2" fill="{fill}" stroke="#455a64"/>'
                f'<text x="{x + 13}" y="{y + 13}" font-size="11" text-anchor="middle" '
                f'font-weight="bold" fill="{_ink(fill)}">{escape(owner.tag)}</text>'
                f'<text x="{x + 34}" y="{y + 13}" font-size="11">'
                f"{escape(owner.describe())}</text></g>"
            )
            self.width = max(self.width, 34 + 7 * len(owner.describe()))
            self.y += 22
        self.parts.append("</g>")

    def document(self, title: str) -> str:
        if title:
            self.text(title, 15, bold=True)
        for pkg in self.layout.packages:
            self.package(pkg)
        self.memory_nodes()
        if self.layout.offline:
            self.text(f"offline CPUs: {self.layout.offline}")
        self.y += 6
        self.legend()
        w, h = int(self.width + 2 * _MARGIN), int(self.y + _MARGIN)
        head = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
            f'viewBox="0 0 {w} {h}" font-family="{_FONT}">'
            f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>'
        )
        return head + "".join(self.parts) + "</svg>\n"


def render_svg(layout: Layout, ownership: Ownership, title: str = "") -> str:
    """The CPU map as an SVG document (a str): nested boxes socket > die > NUMA node >
    core > thread; each CPU is ``<g class="cpu owner-N" id="cpu-ID">`` with a ``<title>``
    naming its owner; a legend below. Valid XML, no scripts, no external references."""
    return _SvgMap(layout, ownership).document(title)
