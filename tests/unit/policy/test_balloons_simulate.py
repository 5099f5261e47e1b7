"""The balloons policy through `cri-resmgr simulate`: the scenarios of
tests/data/scenarios/balloons-*.yaml with their configuration directories, through the
real hooks and CRI messages, on the real machines and on generated ones (SNC, 4
sockets with memory-only nodes and isolated CPUs, SMT-4, no SMT)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest

from cri_resmgr import simulate
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load

SCENARIOS = Path(__file__).resolve().parents[2] / "data" / "scenarios"
REAL = ("desktop", "server", "2-socket-4-node-40-core")
GENERATED: Dict[str, Dict[str, Any]] = {
    "2s-2d-snc": dict(sockets=2, dies_per_socket=2, nodes_per_die=2, cores_per_node=4),
    "4s-memory-isolated": dict(
        sockets=4,
        nodes_per_die=2,
        cores_per_node=3,
        memory_only_nodes=[("pmem", 0), ("hbm", 1), {"kind": "dram", "socket": 3}],
        isolated="3,27",
    ),
    "smt4": dict(sockets=2, cores_per_node=3, threads_per_core=4, smt_adjacent=True),
    "nosmt": dict(sockets=1, nodes_per_die=2, cores_per_node=8, threads_per_core=1, offline="5"),
}


@pytest.fixture(scope="module")
def root_of(
    topology_root: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    cache: Dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            if name in GENERATED:
                root = tmp_path_factory.mktemp(f"balloons-{name}")
                synthetic.write_sysfs(root, extras=False, **GENERATED[name])
                cache[name] = root
            else:
                cache[name] = topology_root(name)
        return cache[name]

    return get


def run(root: Path, scenario: str, *flags: str) -> Tuple[int, str]:
    out = io.StringIO()
    argv = [
        "--sysfs-root",
        str(root),
        "--reserved-cpus",
        "2",
        "--config-dir",
        str(SCENARIOS / f"{scenario}.d"),
        *flags,
        str(SCENARIOS / f"{scenario}.yaml"),
    ]
    return simulate.main(argv, stdout=out), out.getvalue()


def check_document(doc: Dict[str, Any], t: Topology) -> None:
    """What the runtime was told agrees with the balloons: disjoint pools, every
    container on its balloon's CPUs (plus idle ones), mems of those CPUs, nothing
    reserved outside reserved/default, nothing isolated, nothing offline."""
    reserved = CPUSet.parse(doc["reserved_cpus"])
    pools = {name: CPUSet.parse(cpus) for name, cpus in doc["pools"].items()}
    owned = CPUSet()
    for name, cpus in pools.items():
        if cpus == reserved and name in ("reserved", "default"):
            continue
        assert not cpus & owned, (name, cpus)
        assert not cpus & (reserved | t.isolated), (name, cpus)
        owned |= cpus
    by_pool: Dict[str, List[CPUSet]] = {}
    for c in doc["containers"]:
        cpus = CPUSet.parse(c["cpuset_cpus"])
        pool = c["pool"]
        assert pool in pools, c
        assert pools[pool] <= cpus <= t.online, c
        assert not (cpus - pools[pool]) & owned, f"{c}: CPUs of another balloon"
        assert not cpus & t.isolated, c
        if cpus & reserved:
            assert c["class"] == "reserved" and pool in ("reserved", "default"), c
        mems = CPUSet.parse(c["cpuset_mems"])
        want = {t.node_of(cpu) for cpu in cpus if t.nodes[t.node_of(cpu)].has_memory}
        assert mems == CPUSet(want), c
        assert not mems & CPUSet(t.memory_only_nodes), c
        by_pool.setdefault(pool, []).append(cpus)
    for pool, sets in by_pool.items():
        assert len(set(sets)) == 1, f"{pool}: its containers disagree: {sets}"


@pytest.mark.parametrize("machine", REAL + tuple(GENERATED))
def test_types_scenario(root_of: Callable[[str], Path], machine: str) -> None:
    root = root_of(machine)
    rc, out = run(root, "balloons-types")
    assert rc == 0, out
    doc = json.loads(out)
    assert doc["policy"] == "balloons"
    t = load(root)
    check_document(doc, t)
    pool = {f"{c['pod']}:{c['container']}": c["pool"] for c in doc["containers"]}
    assert pool == {
        "web-blog/blog:app": "web[0]",
        "db/pg:main": "db[0]",
        "db/redis:main": "db[1]",
        "jobs/nightly:run": "batch[0]",
        "kube-system/coredns:dns": "reserved",
        "default/special:c": "web[0]",
        "default/misc:c": "default",
    }
    pools = {name: CPUSet.parse(cpus) for name, cpus in doc["pools"].items()}
    tpc = t.threads_per_core
    # web[0] holds 3000m + 200m after the resize and the shop pod's removal: 4 CPUs,
    # rounded up to whole cores (at most max-cpus = 6)
    assert len(pools["web[0]"]) == min(6, -(-4 // tpc) * tpc)
    assert len(pools["default"]) == -(-2 // tpc) * tpc  # min-cpus = 2
    batch = next(c for c in doc["containers"] if c["pool"] == "batch[0]")
    nodes = {t.node_of(c) for c in pools["batch[0]"]}
    idle = CPUSet.parse(batch["cpuset_cpus"]) - pools["batch[0]"]
    assert idle == (t.cpus_of_nodes(nodes) - t.isolated - CPUSet.parse(doc["reserved_cpus"])) - (
        CPUSet().union(*pools.values())
    )


@pytest.mark.parametrize("machine", REAL + ("4s-memory-isolated",))
def test_limits_scenario_stops_with_a_clear_error(
    root_of: Callable[[str], Path], machine: str, capsys: Any
) -> None:
    rc, out = run(root_of(machine), "balloons-limits")
    assert rc == 1
    doc = json.loads(out)
    assert "events[5]" in doc["error"]
    assert (
        "cannot place web/c:c (500m CPU) in a balloon of type web: no balloon can grow "
        "enough (web[0]: 2/2 CPUs, 1800m requested), max-balloons 1 reached"
    ) in doc["error"]
    assert [c["pool"] for c in doc["containers"]] == ["web[0]", "web[0]"]
    assert "cri-resmgr simulate: events[5]" in capsys.readouterr().err


def test_table_shows_the_balloons_per_node(root_of: Callable[[str], Path]) -> None:
    rc, out = run(root_of("2s-2d-snc"), "balloons-types", "--table")
    assert rc == 0, out
    assert out.startswith("node 0: CPUs ")
    for name in ("kube-system/coredns:dns", "web-blog/blog:app, default/special:c", "db/pg:main"):
        assert name in out, out
    assert "reserved " in out and "(system and kube tasks)" in out


def test_unsatisfiable_configuration_exits_2(
    root_of: Callable[[str], Path], tmp_path: Path, capsys: Any
) -> None:
    (tmp_path / "10.conf").write_text(
        "[policy]\nname = balloons\n[policy.balloons.type.big]\nmin-balloons = 4\nmin-cpus = 6\n"
    )
    scenario = tmp_path / "s.yaml"
    scenario.write_text("events: []\n")
    out = io.StringIO()
    argv = ["--sysfs-root", str(root_of("desktop")), "--config-dir", str(tmp_path), str(scenario)]
    assert simulate.main(argv, stdout=out) == 2
    err = capsys.readouterr().err
    assert "[policy.balloons.type.big] min-balloons" in err
    assert "the balloons created at start need 24 CPUs (big 4 x 6)" in err
    assert "Traceback" not in err
