"""The topology-aware policy: classes, pool choice, memory, annotations, resize, restore,
reconfiguration, on the real machines and generated ones (SNC, dies, 4+ sockets,
memory-only nodes, isolated CPUs).

Helpers here (`ctr`, `make`, `check`) are shared with the other test_topology_aware_*
modules.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import pytest

from cri_resmgr import config as cfg
from cri_resmgr import policy as registry
from cri_resmgr.errors import AllocationError, ConfigError, PolicyError
from cri_resmgr.policy.base import (
    BESTEFFORT,
    BURSTABLE,
    EXCLUSIVE,
    GUARANTEED,
    ISOLATED,
    PRESERVED,
    RESERVED,
    SHARED,
    Container,
    Decision,
    Placement,
    Pod,
)
from cri_resmgr.policy.reserve import resolve_reserved
from cri_resmgr.policy.topology_aware import Request, TopologyAwarePolicy
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.synthetic import MemoryOnlyNode
from cri_resmgr.resources.topology import Topology, load

D = "cri-resource-manager.intel.com"
GIB = 1 << 30
POD = Pod(id="pod-id", uid="uid", name="pod", namespace="default", qos=GUARANTEED)


def ann(key: str, value: str, container: Optional[str] = None) -> Dict[str, str]:
    """A pod annotation: pod-wide, or for one container."""
    suffix = f"container.{container}" if container else "pod"
    return {f"{key}.{D}/{suffix}": value}


def ctr(
    name: str,
    milli: int = 0,
    qos: str = GUARANTEED,
    *,
    pod: str = "pod",
    ns: str = "default",
    memory: int = 0,
    annotations: Optional[Mapping[str, str]] = None,
    own: Optional[Mapping[str, str]] = None,
    cpuset: str = "",
) -> Container:
    """A container requesting ``milli`` milli-CPUs (limit = request for Guaranteed)."""
    return Container(
        id="",
        pod_id=f"id-{ns}-{pod}",
        name=name,
        pod_name=pod,
        namespace=ns,
        qos=qos,
        cpu_request=milli,
        cpu_limit=milli if qos == GUARANTEED else 0,
        memory_limit=memory,
        annotations=dict(own or {}),
        pod_annotations=dict(annotations or {}),
        cpuset_cpus=cpuset,
    )


def reserved_of(topology: Topology, amount: int = 2) -> CPUSet:
    return resolve_reserved(topology, cfg.CPUReservation(milli_cpus=1000 * amount))


def make(topology: Topology, reserved: Any = 2, **options: Any) -> TopologyAwarePolicy:
    """A policy; ``reserved``: an amount of CPUs or a CPU list string."""
    cpus = reserved_of(topology, reserved) if isinstance(reserved, int) else CPUSet.parse(reserved)
    opts = {k.replace("_", "-"): v for k, v in options.items()}
    return TopologyAwarePolicy(topology, cpus, opts)


def check(p: TopologyAwarePolicy) -> None:
    """Invariants after every step: exclusive CPUs disjoint, never reserved, never in a
    shared container's CPUs; shared CPUs are their pool's shared CPUs; memory follows
    the CPUs."""
    topo = p.topology
    owned = CPUSet()
    exclusive = p.exclusive_cpus()
    for key, cpus in exclusive.items():
        assert not (cpus & owned), f"{key}: {cpus} given twice"
        assert not (cpus & p.reserved), f"{key}: reserved CPUs {cpus & p.reserved}"
        assert cpus <= topo.online
        owned = owned | cpus
    placements = p.placements()
    for key, pl in placements.items():
        if pl.cpu_class in (EXCLUSIVE, ISOLATED):
            assert pl.exclusive == exclusive[key]
            if p.pin_cpu:
                assert pl.cpus == pl.exclusive
            if pl.cpu_class == ISOLATED:
                assert pl.exclusive <= topo.isolated
        elif pl.cpu_class == SHARED:
            pool = p.pool_of(key)
            assert pool is not None
            if p.pin_cpu:
                assert pl.cpus, key
                assert not (pl.cpus & owned), key
                assert not (pl.cpus & p.reserved) or pl.cpus == p.reserved, key
                assert not (pl.cpus & topo.isolated), key
                if p.shared_cpus(pool):
                    assert pl.cpus == p.shared_cpus(pool), key
        elif pl.cpu_class == RESERVED and p.pin_cpu:
            assert pl.cpus == p.reserved
        if pl.mems is not None:
            assert pl.mems, key
            assert pl.mems <= CPUSet(topo.memory_nodes), key
            if pl.cpus and pl.cpu_class != PRESERVED:
                local = CPUSet(
                    topo.node_of(c) for c in pl.cpus if topo.nodes[topo.node_of(c)].has_memory
                )
                kinds = {topo.nodes[n].kind for n in pl.mems}
                if "dram" in kinds:
                    assert local <= pl.mems, f"{key}: mems {pl.mems} miss the CPUs' {local}"
    pools = p.pools()
    assert pools["exclusive"] == owned
    assert pools[p.tree.root.name], "the root always keeps a shared CPU"


def expect_updates(
    before: Mapping[str, Placement], p: TopologyAwarePolicy, d: Decision, subject: str = ""
) -> None:
    after = p.placements()
    changed = {k for k in after if k in before and k != subject and after[k] != before[k]}
    assert set(d.updates) == changed
    for key, placement in d.updates.items():
        assert placement == after[key]


# --- machines -------------------------------------------------------------------------

#: generated machines of these tests: name -> write_sysfs arguments
TA_MACHINES: Dict[str, Dict[str, Any]] = {
    # 2 sockets x 2 SNC nodes x 4 cores x 2 threads; PMEM and HBM on socket 0, CXL on 1;
    # core 3 of node 0 isolated (CPUs 3 and 19)
    "tiers": dict(
        sockets=2,
        nodes_per_die=2,
        cores_per_node=4,
        memory_only_nodes=[
            MemoryOnlyNode("pmem", 0, node=0),
            MemoryOnlyNode("hbm", 0, node=1, evidence="hmat"),
            MemoryOnlyNode("dram", 1, node=3, evidence="hmat"),
        ],
        isolated="3,19",
    ),
    # 4 sockets x 6 cores x 2 threads, one node each
    "4-socket": dict(sockets=4, cores_per_node=6),
}


@pytest.fixture(scope="session")
def ta_machine(
    machine: Callable[[str], Topology], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Topology]:
    """Factory: a machine of conftest's (real or GENERATED) or of `TA_MACHINES`."""
    cache: Dict[str, Topology] = {}

    def get(name: str) -> Topology:
        if name not in TA_MACHINES:
            return machine(name)
        if name not in cache:
            root = tmp_path_factory.mktemp(f"ta-{name}")
            synthetic.write_sysfs(root, extras=False, **TA_MACHINES[name])
            cache[name] = load(root)
        return cache[name]

    return get


@pytest.fixture
def tiers(ta_machine: Callable[[str], Topology]) -> Topology:
    return ta_machine("tiers")


# --- registry and options ------------------------------------------------------------


def test_registry_and_alias() -> None:
    assert registry.get("topology-aware") is TopologyAwarePolicy
    assert registry.get("memtier") is TopologyAwarePolicy
    assert "topology-aware (alias memtier): Places containers" in registry.describe_all()


def test_option_defaults_are_the_configuration_defaults(desktop: Topology) -> None:
    keys = {k.name: k for k in cfg.KEYS if k.section == "policy.topology-aware"}
    p = TopologyAwarePolicy(desktop, CPUSet.parse("0"), {})
    assert p.options == dict(cfg.default_config().policy_options("topology-aware"))
    assert p.options == {name: key.type.parse(key.default) for name, key in keys.items()}
    live = {name for name, key in keys.items() if key.live} - {"on-error"}
    assert live == set(TopologyAwarePolicy.LIVE_OPTIONS)


def test_options_from_the_configuration(tmp_path: Path, server: Topology) -> None:
    (tmp_path / "a.conf").write_text(
        "[policy]\nname = memtier\n[policy.memtier]\npin-memory = false\n"
        "reserved-pool-namespaces = monitoring, team-*\n"
    )
    config = cfg.load(str(tmp_path))
    p = registry.create(
        config.policy_name, server, CPUSet.parse("0"), config.policy_options("memtier")
    )
    assert isinstance(p, TopologyAwarePolicy)
    assert not p.pin_memory and p.pin_cpu
    assert p.reserved_namespaces == ("monitoring", "team-*")


@pytest.mark.parametrize(
    "options,message",
    [
        ({"pin-cpus": True}, "has no option pin-cpus"),
        ({"pin-cpu": "maybe"}, "pin-cpu = 'maybe': not a boolean"),
    ],
)
def test_bad_options(desktop: Topology, options: Dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        TopologyAwarePolicy(desktop, CPUSet.parse("0"), options)


def test_validate_refuses_reserving_every_shared_cpu(desktop: Topology, tmp_path: Path) -> None:
    """What the service asks before it starts or accepts a reload; the constructor
    refuses the same."""
    (tmp_path / "10.conf").write_text("[policy]\nname = memtier\nreserved-cpus = 20\n")
    config = cfg.load(str(tmp_path))
    reserved = resolve_reserved(desktop, config.get("policy", "reserved-cpus"))
    assert reserved == desktop.online
    options = config.policy_options("memtier")
    with pytest.raises(ConfigError) as info:
        TopologyAwarePolicy.validate(desktop, reserved, options, config=config)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(tmp_path / "10.conf"), 3)
    assert (problem.section, problem.key) == ("policy", "reserved-cpus")
    assert problem.message.startswith("no CPU is left for shared containers")
    assert problem.allowed == "fewer than the 20 online CPUs that are not isolated"
    with pytest.raises(ConfigError, match="no CPU is left for shared containers"):
        TopologyAwarePolicy(desktop, reserved, options)
    TopologyAwarePolicy.validate(desktop, CPUSet.of(0, 10), options, config=config)


def test_options_as_text_are_parsed_as_in_a_file(desktop: Topology) -> None:
    options = {"reserved-pool-namespaces": "a, b c", "pin-memory": "no"}
    p = TopologyAwarePolicy(desktop, CPUSet.parse("0"), options)
    assert p.reserved_namespaces == ("a", "b", "c") and not p.pin_memory


# --- CPU classes ----------------------------------------------------------------------


def test_classes(server: Topology) -> None:
    p = make(server)
    res = p.reserved
    assert res == CPUSet.parse("0,56")
    d = p.allocate("sys", POD, ctr("sys", 100, BURSTABLE, ns="kube-system"))
    assert d.placement is not None
    assert (d.placement.cpu_class, d.placement.cpus, d.placement.pool) == (
        RESERVED,
        res,
        "reserved",
    )
    assert d.placement.mems == CPUSet.parse("0")  # the reserved CPUs' node
    assert d.placement.cpu_shares == 102
    for key, c in {
        "be": ctr("be", 0, BESTEFFORT, pod="a"),
        "bu": ctr("bu", 1500, BURSTABLE, pod="b"),
        "frac": ctr("frac", 1500, GUARANTEED, pod="c"),
    }.items():
        pl = p.allocate(key, POD, c).placement
        assert pl is not None and pl.cpu_class == SHARED, key
        assert pl.cpu_shares == (2 if key == "be" else 1536)
    pl = p.allocate("g4", POD, ctr("g4", 4000, pod="d")).placement
    assert pl is not None and pl.cpu_class == EXCLUSIVE and len(pl.cpus) == 4
    assert pl.cpu_shares is None  # kubelet's value stays
    assert p.allocator.is_whole_cores(pl.cpus)
    pl = p.allocate("g1", POD, ctr("g1", 1000, pod="e")).placement
    assert pl is not None and pl.cpu_class == ISOLATED and pl.cpus <= server.isolated
    check(p)


def test_reserved_namespaces_and_annotation(desktop: Topology) -> None:
    p = make(desktop, reserved=1, reserved_pool_namespaces=("monitoring", "team-*"))
    placed = {}
    cases = {
        "kube": ctr("c", 0, BESTEFFORT, ns="kube-system"),  # always, even if not listed
        "mon": ctr("c", 2000, GUARANTEED, ns="monitoring"),  # whole CPUs too
        "glob": ctr("c", 0, BESTEFFORT, ns="team-blue"),
        "other": ctr("c", 0, BESTEFFORT, ns="teams"),
        "optin": ctr("c", 0, BESTEFFORT, annotations=ann("prefer-reserved-cpus", "true")),
        "optout": ctr(
            "c", 0, BESTEFFORT, ns="kube-system", annotations=ann("prefer-reserved-cpus", "false")
        ),
    }
    for key, c in cases.items():
        pl = p.allocate(key, POD, c).placement
        assert pl is not None
        placed[key] = pl.cpu_class
    assert placed == {
        "kube": RESERVED,
        "mon": RESERVED,
        "glob": RESERVED,
        "other": SHARED,
        "optin": RESERVED,
        "optout": SHARED,
    }
    check(p)


def test_prefer_shared(desktop: Topology) -> None:
    p = make(desktop, reserved=1)
    pl = p.allocate(
        "a", POD, ctr("a", 2000, annotations=ann("prefer-shared-cpus", "true"))
    ).placement
    assert pl is not None and pl.cpu_class == SHARED and pl.cpu_shares == 2048
    p = make(desktop, reserved=1, prefer_shared_cpus=True)
    pl = p.allocate("a", POD, ctr("a", 2000)).placement
    assert pl is not None and pl.cpu_class == SHARED
    # the annotation beats the option
    c = ctr("b", 2000, annotations=ann("prefer-shared-cpus", "false", "b"))
    pl = p.allocate("b", POD, c).placement
    assert pl is not None and pl.cpu_class == EXCLUSIVE


def test_isolated_cpus(server: Topology) -> None:
    p = make(server)
    iso = server.isolated
    one = p.allocate("one", POD, ctr("one", 1000, pod="a")).placement
    assert one is not None and one.cpu_class == ISOLATED and one.cpus <= iso
    # two CPUs: isolated only when the annotation asks
    two = p.allocate("two", POD, ctr("two", 2000, pod="b")).placement
    assert two is not None and two.cpu_class == EXCLUSIVE and not (two.cpus & iso)
    c = ctr("iso2", 2000, pod="c", annotations=ann("prefer-isolated-cpus", "true"))
    pl = p.allocate("iso2", POD, c).placement
    assert pl is not None and pl.cpu_class == ISOLATED and len(pl.cpus) == 2
    assert pl.mems is not None and len(pl.mems) == 1  # both in one node
    c = ctr("no", 1000, pod="d", annotations=ann("prefer-isolated-cpus", "false"))
    pl = p.allocate("no", POD, c).placement
    assert pl is not None and pl.cpu_class == EXCLUSIVE and not (pl.cpus & iso)
    # option off: only the annotation gives isolated CPUs
    q = make(server, prefer_isolated_cpus=False)
    pl = q.allocate("x", POD, ctr("x", 1000)).placement
    assert pl is not None and pl.cpu_class == EXCLUSIVE
    # isolated CPUs are never shared
    for key in ("s1", "s2"):
        pl = p.allocate(key, POD, ctr(key, 500, BURSTABLE, pod=key)).placement
        assert pl is not None and not (pl.cpus & iso)
    check(p)


def test_isolated_run_out(server: Topology) -> None:
    p = make(server)
    for i in range(len(server.isolated)):
        pl = p.allocate(f"i{i}", POD, ctr(f"i{i}", 1000, pod=f"p{i}")).placement
        assert pl is not None and pl.cpu_class == ISOLATED
    pl = p.allocate("more", POD, ctr("more", 1000, pod="more")).placement
    assert pl is not None and pl.cpu_class == EXCLUSIVE
    assert sorted(c for pl in p.exclusive_cpus().values() for c in pl) == sorted(
        list(server.isolated) + list(pl.cpus)
    )
    check(p)


# --- pool choice ----------------------------------------------------------------------


def test_deepest_pool_that_fits(server: Topology) -> None:
    """A request goes to a NUMA node while one can take it, then a socket, then the root."""
    p = make(server)
    node = len(server.nodes[1].cpus)  # 28 CPUs, 4 of them isolated
    a = p.allocate("a", POD, ctr("a", 8000, pod="a"))
    assert (p.pool_of("a") or "").startswith("node")
    assert a.placement is not None and len(a.placement.mems or ()) == 1
    big = p.allocate("big", POD, ctr("big", (node + 4) * 1000, pod="big"))
    assert p.pool_of("big") in ("socket0", "socket1")
    assert big.placement is not None and big.placement.mems is not None
    assert len(big.placement.mems) == 2
    huge = p.allocate("huge", POD, ctr("huge", 60000, pod="huge"))
    assert p.pool_of("huge") == "root"
    assert huge.placement is not None and huge.placement.mems == CPUSet.parse("0-3")
    check(p)


def test_exclusive_from_a_full_node_is_refused(desktop: Topology) -> None:
    p = make(desktop, reserved=1)
    free = len(desktop.online) - 1  # the root keeps one shared CPU
    p.allocate("a", POD, ctr("a", (free - 1) * 1000))
    before = p.placements()
    with pytest.raises(AllocationError, match=r"cannot give default/pod:b 2 exclusive CPUs"):
        p.allocate("b", POD, ctr("b", 2000))
    assert p.placements() == before
    p.allocate("c", POD, ctr("c", 0, BESTEFFORT))
    with pytest.raises(AllocationError):
        p.allocate("d", POD, ctr("d", 1000))
    check(p)


def test_shared_containers_keep_their_cpus(server: Topology) -> None:
    """Shared containers in a node keep ceil(their requests) CPUs there: an exclusive
    request that would take them goes elsewhere."""
    p = make(server)
    p.allocate("s", POD, ctr("s", 10500, BURSTABLE, pod="s"))
    pool = p.pool_of("s")
    assert pool is not None and pool.startswith("node")
    cap = len(p.shared_cpus(pool))
    no_iso = ann("prefer-isolated-cpus", "false")
    # colocated with "s" (same pod); the node can spare cap - 11 CPUs
    p.allocate("x", POD, ctr("x", (cap - 11) * 1000, pod="s", annotations=no_iso))
    assert p.pool_of("x") == pool
    assert len(p.shared_cpus(pool)) == 11
    p.allocate("y", POD, ctr("y", 1000, pod="s", annotations=no_iso))
    assert p.pool_of("y") != pool
    assert len(p.shared_cpus(pool)) == 11
    check(p)


def test_shared_spread_over_nodes(server: Topology) -> None:
    """Shared containers of different pods spread over the NUMA nodes (idleness)."""
    p = make(server)
    for i in range(8):
        p.allocate(f"c{i}", POD, ctr(f"c{i}", 500, BURSTABLE, pod=f"p{i}"))
    pools = [p.pool_of(f"c{i}") for i in range(8)]
    assert sorted(str(x) for x in pools) == sorted(["node0", "node1", "node2", "node3"] * 2)
    check(p)


def test_pod_colocation(server: Topology) -> None:
    p = make(server)
    for i in range(3):  # make nodes unequal so that idleness alone would spread
        p.allocate(f"o{i}", POD, ctr(f"o{i}", 500, BURSTABLE, pod=f"o{i}"))
    p.allocate("a", POD, ctr("a", 4000, pod="web"))
    home = p.pool_of("a")
    assert p.allocate("b", POD, ctr("b", 0, BESTEFFORT, pod="web")).placement is not None
    assert p.pool_of("b") == home
    p.allocate(
        "c", POD, ctr("c", 2000, pod="web", annotations=ann("prefer-isolated-cpus", "false"))
    )
    assert p.pool_of("c") == home
    # without colocation the BestEffort container goes to the idlest node
    q = make(server, colocate_pods=False)
    for i in range(3):
        q.allocate(f"o{i}", POD, ctr(f"o{i}", 500, BURSTABLE, pod=f"o{i}"))
    q.allocate("a", POD, ctr("a", 4000, pod="web"))
    q.allocate("b", POD, ctr("b", 0, BESTEFFORT, pod="web"))
    assert q.pool_of("b") != q.pool_of("a")
    check(p)
    check(q)


def test_whole_cores_and_disjoint(snc80: Topology) -> None:
    p = make(snc80)
    seen = CPUSet()
    for i, n in enumerate((2, 4, 6, 2, 8)):
        pl = p.allocate(f"x{i}", POD, ctr(f"x{i}", n * 1000, pod=f"x{i}")).placement
        assert pl is not None and len(pl.cpus) == n
        assert p.allocator.is_whole_cores(pl.cpus), pl.cpus
        assert not (pl.cpus & seen)
        assert len({snc80.node_of(c) for c in pl.cpus}) == 1  # one NUMA node
        seen = seen | pl.cpus
    check(p)


def test_four_sockets(ta_machine: Callable[[str], Topology]) -> None:
    topo = ta_machine("4-socket")
    p = make(topo)
    assert [x.name for x in p.tree.pools] == ["root", "socket0", "socket1", "socket2", "socket3"]
    pools = set()
    for i in range(4):
        p.allocate(f"e{i}", POD, ctr(f"e{i}", 4000, pod=f"e{i}"))
        pools.add(p.pool_of(f"e{i}"))
    assert len(pools) == 4  # spread over the idlest sockets
    p.allocate("wide", POD, ctr("wide", 16000, pod="wide"))
    assert p.pool_of("wide") == "root"
    check(p)


def test_exclusive_cpus_of_a_big_pool_respect_its_children(snc80: Topology) -> None:
    """A socket-level request takes from each node only what the node's shared
    containers can spare (the allocator alone would take 12 CPUs of one node)."""
    p = make(snc80, reserved="0", colocate_pods=False)
    loads = {"a": 18000, "b": 18000, "c": 10000, "d": 18000}
    for key, milli in loads.items():
        p.allocate(key, POD, ctr(key, milli, BURSTABLE, pod=key))
    pools = {key: p.pool_of(key) for key in loads}
    assert pools == {"a": "node1", "b": "node2", "c": "node3", "d": "node0"}
    d = p.allocate("x", POD, ctr("x", 12000, pod="x"))
    assert p.pool_of("x") == "socket1"
    assert d.placement is not None
    per_node = {n: len([c for c in d.placement.cpus if snc80.node_of(c) == n]) for n in (2, 3)}
    assert per_node == {2: 2, 3: 10}
    for key, milli in loads.items():
        assert len(p.shared_cpus(pools[key] or "")) * 1000 >= milli
    with pytest.raises(AllocationError):
        p.allocate("y", POD, ctr("y", 4000, pod="y"))
    check(p)


# --- memory ------------------------------------------------------------------------------


def test_memory_types(tiers: Topology) -> None:
    p = make(tiers, reserved="0")
    by = {"pmem": "4", "hbm": "5"}
    placed = {}
    for kinds in ("pmem", "hbm", "dram,pmem", "dram,hbm", "mixed"):
        c = ctr(f"c-{kinds}", 1000, pod=f"p-{kinds}", annotations=ann("memory-type", kinds))
        pl = p.allocate(f"k-{kinds}", POD, c).placement
        assert pl is not None and pl.mems is not None
        placed[kinds] = (p.pool_of(f"k-{kinds}"), str(pl.mems))
    assert placed["pmem"] == ("node0", by["pmem"])
    assert placed["hbm"] == ("node1", by["hbm"])
    assert placed["dram,pmem"] == ("node0", "0,4")
    assert placed["dram,hbm"] == ("node1", "1,5")
    # mixed: a pool with all three is socket0 (DRAM 0-1, PMEM 4, HBM 5)
    assert placed["mixed"] == ("socket0", "0-1,4-5")
    # without the annotation: DRAM only, CXL DRAM included where it hangs
    pl = p.allocate("d3", POD, ctr("d3", 1000, pod="d3", annotations={})).placement
    assert pl is not None and pl.mems is not None and not (pl.mems & CPUSet.parse("4-5"))
    check(p)


def test_memory_type_the_machine_lacks(server: Topology, caplog: pytest.LogCaptureFixture) -> None:
    p = make(server)
    with caplog.at_level(logging.INFO, logger="cri_resmgr"):
        pl = p.allocate("a", POD, ctr("a", 1000, annotations=ann("memory-type", "hbm"))).placement
    assert pl is not None and pl.mems is not None
    assert {server.nodes[n].kind for n in pl.mems} == {"dram"}
    assert any("does not have" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_memory_widening(server: Topology) -> None:
    node_dram = server.nodes[1].memory
    p = make(server)
    # more than a node's DRAM: the container goes to a socket, mems = its DRAM nodes
    pl = p.allocate("a", POD, ctr("a", 1000, memory=node_dram + GIB, pod="a")).placement
    assert pl is not None and p.pool_of("a") in ("socket0", "socket1")
    assert pl.mems in (CPUSet.parse("0,2"), CPUSet.parse("1,3"))
    # with PMEM allowed, node0 (DRAM 0 + PMEM 4) can hold it
    c = ctr("b", 1000, memory=node_dram + GIB, pod="b", annotations=ann("memory-type", "dram,pmem"))
    pl = p.allocate("b", POD, c).placement
    assert pl is not None and p.pool_of("b") in ("node0", "node2") and len(pl.mems or ()) == 2
    # more DRAM than the machine has: the CPUs stay in a node, memory widens to all kinds
    total_dram = (
        server.memory_of_kind("dram")
        if hasattr(server, "memory_of_kind")
        else sum(server.nodes[n].memory for n in range(4))
    )
    pl = p.allocate("c", POD, ctr("c", 1000, memory=total_dram + GIB, pod="c")).placement
    assert pl is not None and (p.pool_of("c") or "").startswith("node")
    assert pl.mems == CPUSet.parse("0-5")
    # ... unless DRAM was asked for explicitly: then all DRAM
    c = ctr("d", 1000, memory=total_dram + GIB, pod="d", annotations=ann("memory-type", "dram"))
    pl = p.allocate("d", POD, c).placement
    assert pl is not None and pl.mems == CPUSet.parse("0-3")
    check(p)


def test_memory_is_accounted(server: Topology) -> None:
    """Memory limits are charged: once a node's DRAM is promised, the next container
    that needs it goes to a pool that still has room."""
    p = make(server)
    node_dram = server.nodes[0].memory
    pods = {}
    for i in range(4):
        p.allocate(f"m{i}", POD, ctr(f"m{i}", 500, BURSTABLE, memory=node_dram - GIB, pod=f"m{i}"))
        pods[i] = p.pool_of(f"m{i}")
    assert sorted(str(x) for x in pods.values()) == ["node0", "node1", "node2", "node3"]
    p.allocate("n", POD, ctr("n", 500, BURSTABLE, memory=2 * GIB, pod="n"))
    assert p.pool_of("n") in ("socket0", "socket1", "root")
    p.release("m1")
    p.allocate("o", POD, ctr("o", 500, BURSTABLE, memory=2 * GIB, pod="o"))
    assert p.pool_of("o") == pods[1]
    check(p)


def test_pin_options(server: Topology) -> None:
    p = make(server, pin_cpu=False)
    pl = p.allocate("a", POD, ctr("a", 2000)).placement
    assert pl is not None and pl.cpus == CPUSet() and pl.cpu_shares is None
    assert len(pl.exclusive) == 2 and pl.mems is not None
    p = make(server, pin_memory=False)
    pl = p.allocate("a", POD, ctr("a", 500, BURSTABLE)).placement
    assert pl is not None and pl.cpus and pl.mems is None


# --- annotations ---------------------------------------------------------------------------


def test_preserve(server: Topology) -> None:
    p = make(server)
    c = ctr("a", 2000, annotations=ann("cpu.preserve", "true"), cpuset="1,3")
    pl = p.allocate("a", POD, c).placement
    assert pl is not None and pl.cpu_class == PRESERVED and pl.cpus == CPUSet()
    assert pl.mems == CPUSet.parse("1,3")  # memory follows the CPUs it asked for
    assert not p.exclusive_cpus()
    c = ctr("b", 2000, annotations=ann("memory.preserve", "true"))
    pl = p.allocate("b", POD, c).placement
    assert pl is not None and pl.cpu_class == EXCLUSIVE and pl.mems is None
    both = {**ann("cpu.preserve", "true", "c"), **ann("memory.preserve", "true", "c")}
    pl = p.allocate("c", POD, ctr("c", 0, BESTEFFORT, annotations=both)).placement
    assert pl is not None and (pl.cpus, pl.mems, pl.cpu_class) == (CPUSet(), None, PRESERVED)
    # the container's own CRI annotations count too
    own = {f"cpu.preserve.{D}/container.d": "true"}
    pl = p.allocate("d", POD, ctr("d", 1000, own=own)).placement
    assert pl is not None and pl.cpu_class == PRESERVED
    check(p)


def warnings(caplog: pytest.LogCaptureFixture) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_bad_annotations(server: Topology, caplog: pytest.LogCaptureFixture) -> None:
    p = make(server)
    bad = {
        **ann("prefer-isolated-cpus", "maybe"),
        **ann("memory-type", "dram,nvme", "app"),
        **ann("cpu.preserve", "yes please", "app"),
    }
    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        d = p.allocate("k", POD, ctr("app", 1000, pod="web", annotations=bad))
    pl = d.placement
    # defaults: isolated preferred for one CPU, DRAM, CPUs not preserved
    assert pl is not None and pl.cpu_class == ISOLATED
    assert pl.mems is not None and {server.nodes[n].kind for n in pl.mems} == {"dram"}
    lines = warnings(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("pod default/web container app: malformed annotations ")
    for text in (
        f"prefer-isolated-cpus.{D}/pod='maybe'",
        f"memory-type.{D}/container.app='dram,nvme'",
        f"cpu.preserve.{D}/container.app='yes please'",
    ):
        assert text in line
    # a resize with the same annotations is not reported again; another container is
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        p.update("k", POD, ctr("app", 2000, pod="web", annotations=bad))
        p.allocate("k2", POD, ctr("other", 0, BESTEFFORT, pod="web", annotations=bad))
        p.allocate("k3", POD, ctr("fine", 0, BESTEFFORT, pod="ok"))
    lines = warnings(caplog)
    assert len(lines) == 1 and "container other:" in lines[0]
    assert f"prefer-isolated-cpus.{D}/pod='maybe'" in lines[0]
    check(p)


def test_bad_annotation_never_fails_the_node(desktop: Topology) -> None:
    p = make(desktop, reserved=1)
    garbage = ["", " ", "\x00", "true,false", "{}", "x" * 1000, "dram,,", "-1"]
    for i, value in enumerate(garbage):
        a = {**ann("prefer-shared-cpus", value), **ann("memory-type", value)}
        a.update(ann("prefer-reserved-cpus", value, f"c{i}"))
        p.allocate(f"k{i}", POD, ctr(f"c{i}", 1000, pod=f"p{i}", annotations=a))
    check(p)


# --- updates to other containers ---------------------------------------------------------------


def test_shared_containers_follow(server: Topology) -> None:
    p = make(server)
    p.allocate("s", POD, ctr("s", 500, BURSTABLE, pod="web"))
    pool = p.pool_of("s")
    before = p.placements()
    d = p.allocate(
        "x", POD, ctr("x", 4000, pod="web", annotations=ann("prefer-isolated-cpus", "false"))
    )
    assert p.pool_of("x") == pool
    assert d.placement is not None
    assert set(d.updates) == {"s"}
    assert not (d.updates["s"].cpus & d.placement.cpus)
    expect_updates(before, p, d, "x")
    before = p.placements()
    d = p.release("x")
    assert set(d.updates) == {"s"} and d.updates["s"].cpus == before["s"].cpus | before["x"].cpus
    expect_updates(before, p, d)
    assert p.release("x") == Decision()
    check(p)


# --- resize -------------------------------------------------------------------------------------


def test_resize_exclusive(server: Topology) -> None:
    p = make(server)
    c2 = ctr("a", 2000, annotations=ann("prefer-isolated-cpus", "false"))
    first = p.allocate("a", POD, c2).placement
    assert first is not None
    grown = p.update("a", POD, ctr("a", 6000)).placement
    assert grown is not None and first.cpus <= grown.cpus and len(grown.cpus) == 6
    assert len({server.node_of(c) for c in grown.cpus}) == 1
    shrunk = p.update("a", POD, ctr("a", 4000)).placement
    assert shrunk is not None and shrunk.cpus <= grown.cpus and len(shrunk.cpus) == 4
    back = p.update("a", POD, ctr("a", 6000)).placement
    assert back == grown  # exactly the previous CPUs
    same = p.update("a", POD, ctr("a", 6000))
    assert same.placement == grown and not same.updates
    check(p)


def test_resize_between_classes(server: Topology) -> None:
    p = make(server)
    p.allocate("s", POD, ctr("s", 500, BURSTABLE))
    p.allocate("a", POD, ctr("a", 1500))
    assert p.placements()["a"].cpu_class == SHARED
    before = p.placements()
    d = p.update("a", POD, ctr("a", 2000))
    assert d.placement is not None and d.placement.cpu_class == EXCLUSIVE
    expect_updates(before, p, d, "a")
    before = p.placements()
    d = p.update("a", POD, ctr("a", 500))
    assert d.placement is not None and d.placement.cpu_class == SHARED
    expect_updates(before, p, d, "a")
    check(p)


def test_failed_resize_changes_nothing(desktop: Topology) -> None:
    p = make(desktop, reserved=1)
    p.allocate("a", POD, ctr("a", 2000))
    p.allocate("s", POD, ctr("s", 500, BURSTABLE))
    before = p.placements()
    with pytest.raises(AllocationError):
        p.update("a", POD, ctr("a", 40000))
    assert p.placements() == before
    check(p)
    d = p.update("a", POD, ctr("a", 4000))  # still works afterwards
    assert d.placement is not None and len(d.placement.cpus) == 4


def test_update_of_unknown_key_allocates(desktop: Topology) -> None:
    p = make(desktop, reserved=1)
    d = p.update("new", POD, ctr("new", 1000))
    assert d.placement is not None and "new" in p.placements()
    # allocate of a known key is a resize
    d = p.allocate("new", POD, ctr("new", 2000))
    assert d.placement is not None and len(d.placement.cpus) == 2


# --- rename, restore, reconfigure ----------------------------------------------------------------


def test_rename(server: Topology) -> None:
    p = make(server)
    p.allocate("creating:1", POD, ctr("a", 500, BURSTABLE, pod="web"))
    p.rename("creating:1", "ctr-a")
    assert set(p.placements()) == {"ctr-a"}
    p.allocate("b", POD, ctr("b", 4000, pod="web"))
    d = p.release("ctr-a")
    assert not d.updates
    with pytest.raises(PolicyError, match="already placed"):
        p.allocate("c", POD, ctr("c", 0, BESTEFFORT))
        p.rename("c", "b")
    p.rename("nope", "x")  # unknown: nothing
    check(p)


def entries(p: TopologyAwarePolicy, containers: Mapping[str, Container]) -> list:
    return [(k, POD, containers[k], pl) for k, pl in p.placements().items()]


def populate(p: TopologyAwarePolicy) -> Dict[str, Container]:
    cs = {
        "sys": ctr("sys", 100, BURSTABLE, ns="kube-system", pod="sys"),
        "s1": ctr("s1", 500, BURSTABLE, pod="a"),
        "s2": ctr("s2", 0, BESTEFFORT, pod="b"),
        "e1": ctr("e1", 4000, pod="c"),
        "e2": ctr("e2", 1000, pod="d"),
        "pm": ctr("pm", 2000, pod="e", memory=GIB, annotations=ann("memory-type", "pmem")),
        "keep": ctr("keep", 0, BESTEFFORT, pod="f", annotations=ann("cpu.preserve", "true")),
    }
    for key, c in cs.items():
        p.allocate(key, POD, c)
    return cs


def test_restore_round_trip(server: Topology) -> None:
    p = make(server)
    cs = populate(p)
    q = make(server)
    d = q.restore(entries(p, cs))
    assert d.updates == {}
    assert q.placements() == p.placements()
    assert q.exclusive_cpus() == p.exclusive_cpus()
    # the restored policy goes on as the old one would
    assert q.allocate("n", POD, ctr("n", 2000, pod="n")) == p.allocate(
        "n", POD, ctr("n", 2000, pod="n")
    )
    with pytest.raises(PolicyError, match="restore must come before"):
        q.restore([])
    check(q)


def test_restore_replaces_what_no_longer_fits(
    server: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    p = make(server)
    cs = populate(p)
    old = p.placements()
    e1 = old["e1"].exclusive
    # now e1's first CPU is reserved, and e2 asks for 2 CPUs instead of 1
    q = make(server, reserved=str(p.reserved | CPUSet.of(e1.first())))
    cs["e2"] = ctr("e2", 2000, pod="d")
    with caplog.at_level(logging.INFO, logger="cri_resmgr"):
        d = q.restore(entries(p, cs))
    assert {"e1", "e2"} <= set(d.updates)
    assert len(q.placements()["e1"].exclusive) == 4 and not (
        q.placements()["e1"].exclusive & q.reserved
    )
    assert len(q.placements()["e2"].exclusive) == 2
    re_placed = [r.getMessage() for r in caplog.records if "restore: re-placed" in r.getMessage()]
    assert len(re_placed) == 2
    for key, placement in d.updates.items():
        assert placement == q.placements()[key] != old[key]
    check(q)


def test_restore_falls_back_to_shared(desktop: Topology, caplog: pytest.LogCaptureFixture) -> None:
    p = make(desktop, reserved=1)
    cs = {"a": ctr("a", 8000, pod="a"), "b": ctr("b", 8000, pod="b")}
    for k, c in cs.items():
        p.allocate(k, POD, c)
    saved = entries(p, cs)
    # both claim the same CPUs now (e.g. a hand-edited state): the second cannot stay
    saved[1] = (saved[1][0], POD, cs["b"], saved[0][3])
    q = make(desktop, reserved=1)
    cs2 = dict(cs)
    cs2["c"] = ctr("c", 10000, pod="c")
    saved.append(("c", POD, cs2["c"], saved[0][3]))
    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        q.restore(saved)
    pl = q.placements()
    assert pl["a"] == p.placements()["a"]
    assert pl["b"].cpu_class == EXCLUSIVE and not (pl["b"].cpus & pl["a"].cpus)
    assert pl["c"].cpu_class == SHARED  # 10 more exclusive CPUs do not exist
    assert any("runs on shared CPUs" in m for m in warnings(caplog))
    check(q)
    # a later resize to the same size tries the exclusive placement again
    q.release("b")
    d = q.update("c", POD, ctr("c", 10000, pod="c"))
    assert d.placement is not None and d.placement.cpu_class == EXCLUSIVE
    check(q)


def test_reconfigure(server: Topology) -> None:
    p = make(server)
    cs = populate(p)
    mon = ctr("m", 2000, ns="monitoring", pod="m")
    p.allocate("mon", POD, mon)
    assert p.placements()["mon"].cpu_class == EXCLUSIVE
    before = p.placements()
    d = p.reconfigure({"reserved-pool-namespaces": ("kube-system", "monitoring")})
    assert p.placements()["mon"].cpu_class == RESERVED
    assert "mon" in d.updates
    expect_updates(before, p, d)
    before = p.placements()
    d = p.reconfigure({"pin-cpu": False})
    assert set(d.updates) == {k for k, pl in before.items() if pl.cpus}
    assert all(not pl.cpus for pl in p.placements().values())
    d = p.reconfigure({"pin-cpu": True, "prefer-shared-cpus": True})
    assert p.placements()["e1"].cpu_class == SHARED
    assert p.placements()["e2"].cpu_class == SHARED
    assert not p.exclusive_cpus()
    check(p)
    before = p.placements()
    with pytest.raises(PolicyError, match="no option"):
        p.reconfigure({"bogus": 1})
    assert p.placements() == before and p.prefer_shared
    assert cs


def test_reconfigure_keeps_what_cannot_move(
    desktop: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    p = make(desktop, reserved=1, prefer_shared_cpus=True)
    p.allocate("a", POD, ctr("a", 11000, pod="a"))
    p.allocate("b", POD, ctr("b", 8000, pod="b"))
    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        p.reconfigure({"prefer-shared-cpus": False})
    classes = sorted(pl.cpu_class for pl in p.placements().values())
    assert classes == [EXCLUSIVE, SHARED]
    assert any("stays where it is" in m for m in warnings(caplog))
    check(p)


def test_fallback_placement_survives_a_same_size_resize(desktop: Topology) -> None:
    """A container restored onto shared CPUs (its exclusive CPUs were gone) is not
    failed by a resize to the same size while there is still no room."""
    p = make(desktop, reserved=1)
    big = ctr("a", 16000, pod="a")
    p.allocate("a", POD, big)
    saved = [
        ("a", POD, big, p.placements()["a"]),
        ("b", POD, ctr("b", 16000, pod="b"), p.placements()["a"]),
    ]
    q = make(desktop, reserved=1)
    q.restore(saved)
    assert q.placements()["b"].cpu_class == SHARED
    before = q.placements()
    d = q.update("b", POD, ctr("b", 16000, pod="b"))
    assert d.placement == before["b"] and q.placements() == before
    with pytest.raises(AllocationError):
        q.update("b", POD, ctr("b", 17000, pod="b"))
    assert q.placements() == before
    check(q)


# --- the hot path: knock-on updates, debug strings -----------------------------------------


def test_a_pool_change_builds_one_placement_per_kind_of_shared_container(server: Topology) -> None:
    """An exclusive allocation shrinks a pool: its shared containers get new placements,
    built once per pool and per (request, memory nodes), not once per container."""
    p = make(server)
    for i in range(200):
        c = ctr(f"s{i}", 0, BESTEFFORT, pod=f"p{i}")
        p.allocate(f"s{i}", Pod(id=c.pod_id, uid=c.pod_id, name=c.pod_name, namespace="default"), c)
    built = []
    placement_of = p._placement  # noqa: SLF001

    def counting(g: Any, *rest: Any) -> Placement:
        built.append(g.container.key)
        return placement_of(g, *rest)

    p._placement = counting  # type: ignore[method-assign]  # noqa: SLF001
    d = p.allocate("x", POD, ctr("x", 2000))
    assert d.placement is not None and d.placement.cpu_class == EXCLUSIVE
    pool = p.pool_of("x")
    members = [k for k in p.placements() if k.startswith("s") and p.pool_of(k) == pool]
    assert len(members) >= 20 and set(d.updates) == set(members)
    assert len({id(u) for u in d.updates.values()}) == 1  # one shared Placement object
    assert len(built) <= 2  # that one, and the exclusive container's own
    for key, upd in d.updates.items():
        assert upd == placement_of(p._grants[key])  # noqa: SLF001
        assert not upd.cpus & d.placement.cpus
    built.clear()
    d = p.release("x")
    assert set(d.updates) == set(members) and len(built) <= 1
    check(p)


def test_no_debug_strings_without_debug(
    server: Topology, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Request.describe` is for DEBUG lines: not built when DEBUG is off."""
    described = []
    describe = Request.describe
    monkeypatch.setattr(Request, "describe", lambda r: described.append(r) or describe(r))
    caplog.set_level(logging.INFO, logger="cri_resmgr.policy.topology_aware")
    p = make(server)
    p.allocate("s", POD, ctr("s", 500, BURSTABLE))
    p.allocate("x", POD, ctr("x", 2000))
    p.update("x", POD, ctr("x", 4000))
    p.release("x")
    assert described == []
    caplog.set_level(logging.DEBUG, logger="cri_resmgr.policy.topology_aware")
    p.allocate("y", POD, ctr("y", 2000))
    assert described


def test_refusing_an_exclusive_request_says_what_the_pools_keep(tmp_path: Path) -> None:
    """On two CPUs with one reserved, the other is the machine's last shared CPU: the
    error says so (static would hand it out; topology-aware keeps it)."""
    synthetic.write_sysfs(tmp_path, cores_per_node=2, threads_per_core=1, extras=False)
    p = make(load(tmp_path), "0")
    with pytest.raises(AllocationError) as err:
        p.allocate("x", POD, ctr("x", 1000))
    text = str(err.value)
    assert "no pool can spare them (the most is 0 in pool" in text
    assert "the machine one shared CPU at least besides the reserved ones" in text
