"""cpumap: layouts from topologies, owners of every CPU, the terminal map and the SVG.

The SVG of each machine in tests/data/topologies/ must be valid XML with one
``<g class="cpu">`` per online CPU whose ``<title>`` names the CPU's owner in a placement
the static policy made; the terminal map must have one cell per CPU.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from cri_resmgr import cpumap
from cri_resmgr.cpumap import Layout, Workload, assign
from cri_resmgr.policy import base, static
from cri_resmgr.resources import synthetic, topology
from cri_resmgr.resources.cpuset import CPUSet
from tests.conftest import topology_names

SVG = "{http://www.w3.org/2000/svg}"
TOPOLOGIES = topology_names()


@pytest.fixture(scope="module")
def machines(topology_root: Callable[[str], Path]) -> Dict[str, topology.Topology]:
    return {name: topology.load(topology_root(name)) for name in TOPOLOGIES}


def _static_placement(topo: topology.Topology) -> Tuple[List[Workload], Dict[str, CPUSet], CPUSet]:
    """A placement made by the real static policy: two exclusive, two shared containers."""
    reserved = CPUSet.of(topo.cpus_sorted_by_topology()[0])
    policy = static.StaticPolicy(topo, reserved, {})
    pod = base.Pod("p1", "uid", "web", "default", qos=base.GUARANTEED)
    specs = [("app", base.GUARANTEED, 2000), ("db", base.GUARANTEED, 1000)]
    specs += [("side", base.BURSTABLE, 500), ("log", base.BESTEFFORT, 0)]
    for name, qos, cpu in specs:
        container = base.Container("", "p1", name, "web", "default", qos=qos, cpu_request=cpu)
        policy.allocate(f"default/web:{name}", pod, container)
    workloads = [
        Workload(key, p.cpu_class, p.cpus, p.exclusive, p.pool)
        for key, p in policy.placements().items()
    ]
    return workloads, dict(policy.pools()), reserved


def _text_cells(text: str) -> Dict[int, str]:
    """CPU id -> tag from the terminal map (a "CPU ..." row, then its tag row)."""
    cells: Dict[int, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("CPU "):
            ids_line, tags_line = line, lines[i + 1]
            # cells are right-aligned in columns of equal width after the "CPU" label
            start = ids_line.index("CPU") + 3
            ids = ids_line[start:]
            tags = tags_line[start:]
            width = len(ids) // max(1, len(ids.split()))
            for k in range(0, len(ids), width):
                cid = ids[k : k + width].strip()
                if cid:
                    assert cid.isdigit(), ids_line
                    assert int(cid) not in cells, f"CPU {cid} twice"
                    cells[int(cid)] = tags[k : k + width].strip()
    return cells


# --- layout -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_layout_covers_every_cpu_once_and_round_trips(
    machines: Dict[str, topology.Topology], name: str
) -> None:
    topo = machines[name]
    layout = Layout.from_topology(topo)
    cpus = [c for p in layout.packages for d in p.dies for n in d.nodes for c in n.cpus]
    assert sorted(cpus) == list(topo.online)
    for pkg in layout.packages:
        for die in pkg.dies:
            for node in die.nodes:
                for core in node.cores:
                    assert CPUSet(core) == topo.core_siblings(core[0])
                    assert all(topo.cpu(c).node == node.id for c in core)
                    assert all(topo.cpu(c).package == pkg.id for c in core)
    assert Layout.from_json(json.loads(json.dumps(layout.to_json()))) == layout


def test_layout_memory_only_nodes_and_offline(tmp_path: Path) -> None:
    synth = synthetic.write_sysfs(
        tmp_path,
        sockets=2,
        dies_per_socket=2,
        cores_per_node=2,
        memory_only_nodes=[("pmem", 0)],
        offline="3",
        isolated="5",
        extras=False,
    )
    layout = Layout.from_topology(topology.load(synth.root))
    assert [len(p.dies) for p in layout.packages] == [2, 2]
    assert [m.kind for m in layout.memory_nodes] == ["pmem"]
    assert layout.offline == CPUSet.of(3)
    assert layout.isolated == CPUSet.of(5)
    text = cpumap.render_text(layout, assign(layout, []))
    assert "die 1" in text
    assert "memory node" in text and "pmem" in text
    assert "offline CPUs: 3" in text
    assert _text_cells(text)[5] == cpumap.TAG_ISOLATED


# --- owners -----------------------------------------------------------------------------


def _flat_layout(cpus: int = 8, threads: int = 2) -> Layout:
    cores = tuple(tuple(range(c, c + threads)) for c in range(0, cpus, threads))
    node = cpumap.NodeBox(0, 1 << 30, "dram", cores)
    return Layout((cpumap.PackageBox(0, (cpumap.DieBox(0, (node,)),)),), isolated=CPUSet.of(7))


def test_assign_priorities_and_tags() -> None:
    layout = _flat_layout()
    loads = [
        Workload("ns/a:x", "exclusive", CPUSet.parse("2-3"), CPUSet.parse("2-3"), "exclusive"),
        Workload("ns/b:y", "isolated", CPUSet.of(6), pool="exclusive"),
        Workload("ns/c:z", "shared", CPUSet.parse("0-1,4-5"), pool="shared"),
        Workload("kube-system/d:w", "reserved", CPUSet.of(0), pool="reserved"),
        Workload("ns/e:free", "", CPUSet()),
    ]
    own = assign(
        layout,
        loads,
        {"shared": CPUSet.parse("1,4"), "exclusive": CPUSet.parse("2-3,6")},
        CPUSet.of(0),
    )
    tags = {cpu: o.tag for cpu, o in own.owner_of.items()}
    assert tags == {0: "#", 1: "s", 2: "A", 3: "A", 4: "s", 5: "s", 6: "B", 7: "-"}
    by_tag = {o.tag: o for o in own.owners}
    assert by_tag["A"].label == "ns/a:x" and by_tag["A"].cpu_class == "exclusive"
    assert by_tag["B"].label == "ns/b:y" and by_tag["B"].cpu_class == "isolated"
    assert by_tag["s"].cpus == CPUSet.parse("1,4-5")  # pool + what its members run on
    assert by_tag["s"].members == ["ns/c:z"]
    assert "kube-system/d:w" in by_tag["#"].members
    assert [o.tag for o in own.owners] == ["A", "B", "#", "s", "-"]  # legend order
    assert set(own.owner_of) == set(range(8))


def test_assign_idle_and_conflict() -> None:
    layout = _flat_layout()
    loads = [
        Workload("ns/a:x", "exclusive", CPUSet.parse("2-3"), CPUSet.parse("2-3")),
        Workload("ns/b:y", "exclusive", CPUSet.parse("3-4"), CPUSet.parse("3-4")),
    ]
    own = assign(layout, loads)
    tags = {cpu: o.tag for cpu, o in own.owner_of.items()}
    assert tags[2] == "A" and tags[4] == "B"
    assert tags[3] == cpumap.TAG_CONFLICT
    conflict = own.owners[-1]
    assert conflict.kind == cpumap.CONFLICT and conflict.members == ["ns/a:x", "ns/b:y"]
    assert tags[0] == cpumap.TAG_IDLE and tags[7] == cpumap.TAG_ISOLATED


def test_many_containers_get_distinct_tags() -> None:
    layout = _flat_layout(cpus=128, threads=1)
    one = CPUSet.of
    loads = [Workload(f"ns/p:c{i:03d}", "exclusive", one(i), one(i)) for i in range(100)]
    own = assign(layout, loads)
    tags = [o.tag for o in own.owners if o.kind == cpumap.CONTAINER]
    assert len(set(tags)) == 100
    assert tags[:3] == ["A", "B", "C"] and tags[26] == "0" and tags[36] == "AA"
    cells = _text_cells(cpumap.render_text(layout, own, width=80))
    assert len(cells) == 128
    assert all(cells[i] == tags[i] for i in range(100))


def test_nested_pools_leave_cpus_to_the_most_specific(
    machines: Dict[str, topology.Topology],
) -> None:
    policies = pytest.importorskip("cri_resmgr.policy")
    topo = machines["2-socket-4-node-40-core"]
    reserved = CPUSet.of(0)
    try:
        policy = policies.create("topology-aware", topo, reserved, {})
    except KeyError:
        pytest.skip("no topology-aware policy")
    pod = base.Pod("p1", "uid", "web", "default", qos=base.GUARANTEED)
    for name, qos, cpu in (("app", base.GUARANTEED, 2000), ("side", base.BURSTABLE, 500)):
        container = base.Container("", "p1", name, "web", "default", qos=qos, cpu_request=cpu)
        policy.allocate(f"default/web:{name}", pod, container)
    loads = [
        Workload(key, p.cpu_class, p.cpus, p.exclusive, p.pool)
        for key, p in policy.placements().items()
    ]
    layout = Layout.from_topology(topo)
    own = assign(layout, loads, policy.pools(), reserved)
    pools = {o.label: o for o in own.owners if o.kind == cpumap.POOL}
    assert set(pools) == {f"pool node{n}" for n in topo.cpu_nodes}  # not root, not sockets
    for node in topo.cpu_nodes:
        assert pools[f"pool node{node}"].cpus <= topo.node_cpus(node)
    side = next(w for w in loads if w.name == "default/web:side")
    assert pools[f"pool {side.pool}"].members == ["default/web:side"]
    assert set(own.owner_of) == set(topo.online)


def test_pool_tags_prefer_the_name() -> None:
    layout = _flat_layout()
    pools = {"shared": CPUSet.of(0), "small": CPUSet.of(1), "batch": CPUSet.of(4)}
    own = assign(layout, [], pools)
    assert {o.label: o.tag for o in own.owners if o.kind == cpumap.POOL} == {
        "pool shared": "s",
        "pool small": "m",
        "pool batch": "b",
    }
    big = assign(layout, [], {"all": CPUSet.range(0, 6), "part": CPUSet.of(5, 6)})
    assert {cpu: o.label for cpu, o in big.owner_of.items() if cpu in (4, 5, 6)} == {
        4: "pool all",
        5: "pool part",
        6: "pool part",
    }


# --- renderings of real machines and a real placement -------------------------------------


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_text_map_has_one_cell_per_cpu(machines: Dict[str, topology.Topology], name: str) -> None:
    topo = machines[name]
    loads, pools, reserved = _static_placement(topo)
    layout = Layout.from_topology(topo)
    own = assign(layout, loads, pools, reserved)
    text = cpumap.render_text(layout, own)
    cells = _text_cells(text)
    assert sorted(cells) == list(topo.online)
    assert all(cells[cpu] == own.owner_of[cpu].tag for cpu in topo.online)
    for pkg in topo.packages:
        assert f"socket {pkg}" in text
    for node in topo.cpu_nodes:
        assert re.search(rf"^  node {node}: ", text, re.M)
    legend = text.split("\n\n")[-1]
    for owner in own.owners:
        assert owner.describe() in legend
    assert max(len(line) for line in text.splitlines()) <= 100


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_svg_is_valid_with_one_element_per_cpu(
    machines: Dict[str, topology.Topology], name: str
) -> None:
    topo = machines[name]
    loads, pools, reserved = _static_placement(topo)
    layout = Layout.from_topology(topo)
    own = assign(layout, loads, pools, reserved)
    svg = cpumap.render_svg(layout, own, title=f"{name} <static> & co")
    root = ET.fromstring(svg)  # valid XML
    assert root.tag == SVG + "svg"
    cpus = [g for g in root.iter(SVG + "g") if "cpu" in (g.get("class") or "").split()]
    assert sorted(int(g.get("data-cpu")) for g in cpus) == list(topo.online)
    assert len({g.get("id") for g in cpus}) == len(topo.online)
    for g in cpus:
        cpu = int(g.get("data-cpu"))
        owner = own.owner_of[cpu]
        title = g.find(SVG + "title")
        assert title is not None and owner.label in title.text
        assert g.get("data-owner") == owner.label
    titles = " ".join(g.find(SVG + "title").text for g in cpus)
    for load in loads:
        if load.cpu_class == "exclusive":
            assert load.name in titles  # the owners of the placement are in the picture
    classes = [g.get("class") for g in root.iter(SVG + "g")]
    assert classes.count("package") == len(topo.packages)
    assert classes.count("die") == len(topo.dies)
    assert classes.count("core") == len(topo.cores)
    assert sum(c.split()[0] == "legend-entry" for c in classes) == len(own.owners)
    assert "&lt;static&gt; &amp; co" in svg


def test_svg_for_simulation(topology_root: Callable[[str], Path], tmp_path: Path) -> None:
    simulate = pytest.importorskip("cri_resmgr.simulate")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "events:\n"
        "  - run-pod: {name: web}\n"
        "  - create-container: {pod: web, name: app, requests: {cpu: '2', memory: 1Gi},\n"
        "                       limits: {cpu: '2', memory: 1Gi}}\n"
        "  - run-pod: {name: batch}\n"
        "  - create-container: {pod: batch, name: job, requests: {cpu: 500m}}\n"
    )
    out = io.StringIO()
    root = topology_root("desktop")
    picture = tmp_path / "placement.svg"
    argv = [
        str(scenario),
        "--sysfs-root",
        str(root),
        "--policy",
        "static",
        "--reserved-cpus",
        "1",
        "--svg",
        str(picture),
    ]
    assert simulate.main(argv, stdout=out) == 0
    doc = json.loads(out.getvalue())
    topo = topology.load(root)
    svg = picture.read_text()
    assert svg == cpumap.svg_for_simulation(topo, doc)
    tree = ET.fromstring(svg)
    cpus = [g for g in tree.iter(SVG + "g") if "cpu" in (g.get("class") or "").split()]
    assert len(cpus) == len(topo.online)
    owners = {g.get("data-owner") for g in cpus}
    assert "default/web:app" in owners
    assert "reserved" in owners
    assert any(o.startswith("pool ") for o in owners)
    assert "cri-resmgr simulate: policy static" in svg
