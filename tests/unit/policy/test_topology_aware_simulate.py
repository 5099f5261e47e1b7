"""`cri-resmgr simulate` with the topology-aware policy: the scenarios in
tests/data/scenarios/topology-aware-*.yaml through the real hooks, on the real machines
and on generated ones (SNC with dies, 4 and 8 sockets, memory-only nodes, isolated and
offline CPUs). What is checked is what the in-memory runtime was told."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from cri_resmgr import podspec, simulate
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load

from .conftest import GENERATED, REAL
from .test_topology_aware import TA_MACHINES

SCENARIOS = Path(__file__).resolve().parents[2] / "data" / "scenarios"
MACHINES = REAL + ("2s-2d-snc", "8-socket-448", "nosmt-iso", "smt4") + tuple(TA_MACHINES)


@pytest.fixture(scope="module")
def sysfs_root(
    topology_root: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """Factory: a directory with the machine's sys/ tree."""
    made: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name in REAL:
            return topology_root(name)
        if name not in made:
            root = tmp_path_factory.mktemp(f"sim-{name}")
            args = dict(GENERATED.get(name) or TA_MACHINES[name])
            synthetic.write_sysfs(root, extras=False, **args)  # type: ignore[arg-type]
            made[name] = root
        return made[name]

    return get


def run(root: Path, scenario: str, *flags: str) -> Tuple[int, str]:
    out = io.StringIO()
    rc = simulate.main(
        [
            "--sysfs-root",
            str(root),
            "--policy",
            "topology-aware",
            "--reserved-cpus",
            "2",
            *flags,
            str(SCENARIOS / f"{scenario}.yaml"),
        ],
        stdout=out,
    )
    return rc, out.getvalue()


def placed(root: Path, scenario: str) -> Dict[str, Any]:
    rc, out = run(root, scenario)
    assert rc == 0, out
    doc: Dict[str, Any] = json.loads(out)
    assert doc["policy"] == "topology-aware"
    return doc


def by_name(doc: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {f"{c['pod']}:{c['container']}": c for c in doc["containers"]}


def check_doc(doc: Dict[str, Any], topo: Topology) -> None:
    """The placement invariants, on what the runtime was told."""
    reserved = CPUSet.parse(doc["reserved_cpus"])
    pools = {k: CPUSet.parse(v) for k, v in doc["pools"].items()}
    owned: List[int] = []
    for c in doc["containers"]:
        cpus = CPUSet.parse(c["cpuset_cpus"])
        mems = CPUSet.parse(c["cpuset_mems"])
        assert mems and mems <= CPUSet(topo.memory_nodes), c
        cls = c["class"]
        if cls == "preserved":
            assert not cpus, c  # as kubelet asked: nothing
            continue
        assert cpus and cpus <= topo.online, c
        if cls in ("exclusive", "isolated"):
            assert cpus == CPUSet.parse(c["exclusive"]), c
            assert not (cpus & reserved), c
            owned += list(cpus)
            if cls == "isolated":
                assert cpus <= topo.isolated, c
        elif cls == "shared":
            assert cpus == pools[c["pool"]], c
            assert not (cpus & (reserved | topo.isolated)), c
        else:
            assert cls == "reserved" and cpus == reserved, c
        if {topo.nodes[n].kind for n in mems} & {"dram"}:
            local = CPUSet(topo.node_of(x) for x in cpus if topo.nodes[topo.node_of(x)].has_memory)
            assert local <= mems, c
    assert len(owned) == len(set(owned)), "a CPU is exclusive twice"
    assert CPUSet(owned) == pools["exclusive"]
    for c in doc["containers"]:
        if c["class"] == "shared":
            assert not (CPUSet.parse(c["cpuset_cpus"]) & CPUSet(owned)), c


@pytest.mark.parametrize("name", MACHINES)
@pytest.mark.parametrize("scenario", ["topology-aware-mixed", "topology-aware-churn"])
def test_scenarios(sysfs_root: Callable[[str], Path], name: str, scenario: str) -> None:
    root = sysfs_root(name)
    doc = placed(root, scenario)
    check_doc(doc, load(root))


@pytest.mark.parametrize("name", MACHINES)
def test_mixed(sysfs_root: Callable[[str], Path], name: str, caplog: Any) -> None:
    root = sysfs_root(name)
    topo = load(root)
    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        doc = placed(root, "topology-aware-mixed")
    c = by_name(doc)
    assert c["kube-system/coredns:dns"]["class"] == "reserved"
    main, sidecar = c["default/db:main"], c["default/db:sidecar"]
    assert main["class"] == "exclusive" and len(CPUSet.parse(main["cpuset_cpus"])) == 4
    assert sidecar["class"] == "shared"
    if doc["pools"][main["pool"]]:  # one pod, one pool (unless main took all its CPUs)
        assert sidecar["pool"] == main["pool"]
    for key in ("default/web:app", "default/batch:job", "default/relaxed:worker"):
        assert c[key]["class"] == "shared", key
    rt = c["default/latency:rt"]
    assert rt["class"] == ("isolated" if topo.isolated else "exclusive")
    redis = c["default/cache:redis"]
    kinds = {topo.nodes[n].kind for n in CPUSet.parse(redis["cpuset_mems"])}
    assert kinds == ({"dram", "pmem"} if topo.nodes_of_kind("pmem") else {"dram"})
    assert c["default/legacy:old"]["class"] == "preserved"
    assert c["default/legacy:old"]["cpuset_cpus"] == ""
    assert c["default/legacy:new"]["class"] == "shared"
    # the malformed annotation: one line per container, naming pod, container, key, value
    lines = [r.getMessage() for r in caplog.records if "malformed annotation" in r.getMessage()]
    assert sorted(line.split(":")[0] for line in lines) == [
        "pod default/legacy container new",
        "pod default/legacy container old",
    ]
    for line in lines:
        assert "prefer-isolated-cpus.cri-resource-manager.intel.com/pod='sometimes'" in line


@pytest.mark.parametrize("name", MACHINES)
def test_churn(sysfs_root: Callable[[str], Path], name: str) -> None:
    doc = placed(sysfs_root(name), "topology-aware-churn")
    c = by_name(doc)
    assert len(CPUSet.parse(c["default/g1:c"]["exclusive"])) == 2  # grown to 3, shrunk to 2
    assert len(CPUSet.parse(c["default/g3:c"]["exclusive"])) == 1  # created again
    assert c["default/g4:c"]["class"] == "shared"  # 3 CPUs -> 1500m
    assert "default/g2:c" not in c
    assert c["default/shared:a"]["class"] == c["default/shared:b"]["class"] == "shared"


def test_table(topology_root: Callable[[str], Path]) -> None:
    rc, out = run(topology_root("server"), "topology-aware-mixed", "--table")
    assert rc == 0
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("node ")] == [
        f"node {n}" for n in range(6)
    ]
    rows = {line.split()[0] for line in lines if line.startswith("  ")}
    assert {"exclusive", "isolated", "reserved", "shared", "preserved"} <= rows
    assert any("default/latency:rt" in line and "isolated" in line for line in lines)


def test_impossible_request_fails_the_event(topology_root: Callable[[str], Path]) -> None:
    rc, out = run(topology_root("desktop"), "impossible")
    assert rc == 1
    doc = json.loads(out)
    assert "cannot give default/huge:c 1000 exclusive CPUs" in doc["error"]


@pytest.mark.parametrize("name", ["server", "tiers"])
def test_restart_keeps_placements(
    sysfs_root: Callable[[str], Path], name: str, tmp_path: Path
) -> None:
    """Through the real hooks: run a scenario, then start a new policy on the same state
    directory and runtime (a relay restart). Every placement is restored as it was,
    nothing is pushed, and the next decisions see the restored CPUs as taken."""
    from cri_resmgr.hooks import HookOptions, Hooks  # noqa: PLC0415
    from cri_resmgr.policy.topology_aware import TopologyAwarePolicy  # noqa: PLC0415
    from cri_resmgr.state import State  # noqa: PLC0415

    topo = load(sysfs_root(name))
    reserved = CPUSet(topo.cpus_sorted_by_topology()[:2])
    runtime = simulate.InMemoryRuntime()

    def start() -> Hooks:
        policy = TopologyAwarePolicy(topo, reserved, {})
        hooks = Hooks(policy, State.load(str(tmp_path), policy.NAME), runtime, HookOptions())
        hooks.resync()
        return hooks

    hooks = start()
    for scenario in ("topology-aware-mixed", "topology-aware-churn"):
        sim = simulate.Simulation(
            hooks, runtime, simulate.load_scenario(str(SCENARIOS / f"{scenario}.yaml"))
        )
        assert sim.run(), sim.error
    before = dict(hooks.policy.placements())
    told = {
        c.id: (c.resources.cpuset_cpus, c.resources.cpuset_mems) for c in runtime.live_containers()
    }
    hooks.close()
    hooks.state.close()

    pushes = len(runtime.pushes)
    again = start()
    report = again.resync()
    assert again.policy.placements() == before
    assert len(runtime.pushes) == pushes and not report.pushed
    assert {
        c.id: (c.resources.cpuset_cpus, c.resources.cpuset_mems) for c in runtime.live_containers()
    } == told
    p = again.policy
    assert isinstance(p, TopologyAwarePolicy)
    taken = CPUSet()
    for cpus in p.exclusive_cpus().values():
        taken = taken | cpus
    pod = podspec.make_pod("x", "uid-x", "x", "default", "/kubepods/poduid-x")
    spec = podspec.Requirements(cpu_limit=2000, memory_limit=1 << 30)
    res = podspec.container_resources(spec, "guaranteed", 1 << 34)
    d = p.allocate("new", pod, podspec.make_container("", "c", pod, res))
    assert d.placement is not None and len(d.placement.exclusive) == 2
    assert not (d.placement.exclusive & taken)
    again.close()
    again.state.close()
