"""The balloons policy: types, choosing a balloon, growth and shrink, idle CPUs, limits,
validation against the machine, on the real and generated topologies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import pytest

from cri_resmgr import config as cfg
from cri_resmgr import policy as policies
from cri_resmgr.errors import AllocationError, ConfigError, InvalidRequest, PolicyError
from cri_resmgr.policy.balloons import ANNOTATION, BalloonsPolicy
from cri_resmgr.policy.base import BURSTABLE, GUARANTEED, RESERVED, SHARED, Container, Pod
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

from .conftest import ALL

Types = Dict[str, Dict[str, Any]]


def make(
    t: Topology, reserved: str = "0", types: Optional[Types] = None, **options: Any
) -> BalloonsPolicy:
    """A balloons policy; ``types`` in matching order, keys as in the config file."""
    opts: Dict[str, Any] = {"on-error": "fail", **options}
    opts["types"] = tuple((name, values) for name, values in (types or {}).items())
    return BalloonsPolicy(t, CPUSet.parse(reserved), opts)


def pod(
    name: str = "pod", namespace: str = "default", annotations: Optional[Mapping[str, str]] = None
) -> Pod:
    return Pod(
        id=f"id-{namespace}-{name}",
        uid=f"uid-{name}",
        name=name,
        namespace=namespace,
        qos=BURSTABLE,
        annotations=dict(annotations or {}),
    )


def ctr(
    name: str,
    milli: int = 500,
    p: Optional[Pod] = None,
    annotations: Optional[Mapping[str, str]] = None,
    qos: str = BURSTABLE,
) -> Container:
    p = p or pod()
    return Container(
        id="",
        pod_id=p.id,
        name=name,
        pod_name=p.name,
        namespace=p.namespace,
        qos=qos,
        cpu_request=milli,
        cpu_limit=milli if qos == GUARANTEED else 0,
        annotations=dict(annotations or {}),
        pod_annotations=dict(p.annotations),
    )


def add(pol: BalloonsPolicy, key: str, milli: int = 500, p: Optional[Pod] = None, **kw: Any) -> str:
    """Allocate container ``key`` and return its balloon's name."""
    p = p or pod()
    pol.allocate(key, p, ctr(key, milli, p, **kw))
    check(pol)
    return pol.balloon_of(key)


def balloons(pol: BalloonsPolicy) -> Dict[str, Dict[str, Any]]:
    return {b["name"]: b for b in pol.describe()}


def idle_cpus(p: BalloonsPolicy, level: str, cpus: CPUSet) -> CPUSet:
    """The free CPUs a balloon with ``cpus`` shares at ``level``, from the topology."""
    t = p.topology
    if not level or not cpus:
        return CPUSet()
    if level == "system":
        return p.free_cpus
    groups = {
        "package": list(t.packages.values()),
        "die": list(t.dies.values()),
        "numa": [t.nodes[n].cpus for n in t.cpu_nodes],
        "core": list(t.cores.values()),
    }[level]
    reach = CPUSet()
    for group in groups:
        if group & cpus:
            reach |= group
    return reach & p.free_cpus


def check(p: BalloonsPolicy) -> None:
    """The invariants every state must satisfy."""
    t = p.topology
    usable = t.online - p.reserved - t.isolated
    owned = CPUSet()
    counts: Dict[str, int] = {}
    placements = p.placements()
    tpc = p.threads_per_core
    for b in p.describe():
        bt = p.types[b["type"]]
        counts[bt.name] = counts.get(bt.name, 0) + 1
        cpus: CPUSet = b["cpus"]
        if bt.on_reserved:
            assert cpus == p.reserved, b
        else:
            assert cpus <= usable, f"{b['name']} {cpus} outside {usable}"
            assert not cpus & owned, f"{b['name']} {cpus} overlaps {owned}"
            owned |= cpus
            need = max(-(-b["requested"] // 1000), 1 if b["containers"] else 0, bt.min_cpus)
            if bt.max_cpus:
                assert len(cpus) <= bt.max_cpus, b
                need = min(need, bt.max_cpus)
            assert len(cpus) >= need, b
            assert len(cpus) <= max(need, -(-need // tpc) * tpc), b
        assert b["idle"] == idle_cpus(p, bt.share_idle_cpus_in_same, cpus), b
        allowed = cpus | b["idle"]
        for key in b["containers"]:
            pl = placements[key]
            assert pl.cpus == allowed, (key, pl, b)
            assert pl.pool == b["name"]
            assert pl.mems == p.allocator.mems_of(allowed)
            assert pl.cpu_class == (RESERVED if bt.on_reserved else SHARED)
            assert not pl.exclusive
            assert pl.cpus, key
    assert p.free_cpus == usable - owned
    assert not p.free_cpus & p.reserved
    for name, bt in p.types.items():
        n = counts.get(name, 0)
        if bt.builtin:
            assert n == 1
        else:
            assert n >= bt.min_balloons
            assert not bt.max_balloons or n <= bt.max_balloons
    assert set(p.pools()) == set(balloons(p))


# --- built-ins and type choice -----------------------------------------------------------


def test_without_types_everything_runs_on_the_reserved_cpus(desktop: Topology) -> None:
    p = make(desktop, "0-1")
    assert [b["name"] for b in p.describe()] == ["reserved", "default"]
    d = p.allocate("a", pod(), ctr("a", 4000))
    assert d.placement is not None and d.placement.cpus == CPUSet.of(0, 1)
    assert d.placement.cpu_class == RESERVED and d.placement.pool == "default"
    assert d.placement.mems == CPUSet.of(0)
    ks = pod("dns", "kube-system")
    assert p.allocate("k", ks, ctr("k", 100, ks)).placement.pool == "reserved"  # type: ignore[union-attr]
    assert p.pools() == {"reserved": CPUSet.of(0, 1), "default": CPUSet.of(0, 1)}
    assert p.free_cpus == desktop.online - CPUSet.of(0, 1)
    check(p)


def test_type_by_namespace_glob_in_section_order(server: Topology) -> None:
    p = make(
        server,
        "0,56",
        {
            "web": {"namespaces": ("web-*", "frontend")},
            "webx": {"namespaces": ("web-x",)},  # shadowed by web
            "batch": {"namespaces": ("b?tch", "[jk]obs")},
        },
    )
    assert add(p, "a", p=pod("a", "web-x")) == "web[0]"
    assert add(p, "b", p=pod("b", "frontend")) == "web[0]"
    assert add(p, "c", p=pod("c", "batch")) == "batch[0]"
    assert add(p, "d", p=pod("d", "jobs")) == "batch[0]"
    assert add(p, "e", p=pod("e", "kube-system")) == "reserved"
    assert add(p, "f", p=pod("f", "webfront")) == "default"


def test_reserved_and_default_sections_take_part_in_matching(desktop: Topology) -> None:
    p = make(
        desktop,
        "0",
        {
            "default": {"namespaces": ("batch",), "min-cpus": 2},
            "reserved": {"namespaces": ("monitoring", "batch")},
            "web": {"namespaces": ("*",)},
        },
    )
    assert add(p, "m", p=pod("m", "monitoring")) == "reserved"
    assert add(p, "b", p=pod("b", "batch")) == "default"  # default's section comes first
    assert add(p, "w", p=pod("w", "anything")) == "web[0]"
    assert add(p, "k", p=pod("k", "kube-system")) == "reserved"  # before any type


def test_annotation_picks_the_type(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("web",)}, "db": {}})
    annotated = pod("x", "web", {f"{ANNOTATION}/pod": "db"})
    assert add(p, "a", p=annotated) == "db[0]"
    one = pod("y", "default", {f"{ANNOTATION}/container.b": "web", f"{ANNOTATION}/pod": "db"})
    assert add(p, "b", p=one) == "web[0]"  # the container-specific key wins
    assert add(p, "c", p=one) == "db[0]"
    bare = pod("z", "web", {ANNOTATION: "reserved"})
    assert add(p, "d", p=bare) == "reserved"
    assert add(p, "e", p=pod("e"), annotations={f"{ANNOTATION}/pod": " db "}) == "db[0]"


def test_bad_annotation_is_an_invalid_request(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {}})
    bad = pod("x", "default", {f"{ANNOTATION}/pod": "nope"})
    before = (p.placements(), p.free_cpus, p.pools())
    with pytest.raises(
        InvalidRequest,
        match=r"default/x:a: annotation .*/pod = 'nope' names no balloon type "
        r"\(known: reserved, default, web\)",
    ):
        p.allocate("a", bad, ctr("a", 500, bad))
    assert (p.placements(), p.free_cpus, p.pools()) == before
    empty = pod("y", "default", {f"{ANNOTATION}/pod": ""})
    with pytest.raises(InvalidRequest):
        p.allocate("b", empty, ctr("b", 500, empty))
    huge = pod("z", "default", {f"{ANNOTATION}/pod": "w" * 200_000})
    with pytest.raises(InvalidRequest) as err:  # the gRPC details kubelet logs: short
        p.allocate("c", huge, ctr("c", 500, huge))
    assert len(str(err.value)) < 1000 and "(200000 characters)" in str(err.value)


# --- growth and shrink ----------------------------------------------------------------------


def test_balloon_grows_by_whole_cores_and_shrinks(desktop: Topology) -> None:
    p = make(desktop, "0,10", {"web": {"namespaces": ("default",)}})
    web = pod("w")
    d = p.allocate("a", web, ctr("a", 300, web))
    assert d.placement is not None and len(d.placement.cpus) == 2  # 1 CPU -> one core
    assert desktop.threads_of(d.placement.cpus) == d.placement.cpus
    first = d.placement.cpus
    d = p.allocate("b", web, ctr("b", 1500, web))  # 1800m: still 2 CPUs
    assert d.placement is not None and d.placement.cpus == first and not d.updates
    d = p.allocate("c", web, ctr("c", 700, web))  # 2500m: 3 CPUs -> 2 cores
    assert d.placement is not None and len(d.placement.cpus) == 4 and first <= d.placement.cpus
    assert desktop.threads_of(d.placement.cpus) == d.placement.cpus
    assert set(d.updates) == {"a", "b"}
    assert all(u == d.placement for u in d.updates.values())
    check(p)
    d = p.release("c")  # 1800m: back to one core
    assert set(d.updates) == {"a", "b"} and d.updates["a"].cpus == first
    check(p)
    p.release("a")
    p.release("b")
    assert "web[0]" not in balloons(p)  # empty and above min-balloons: deleted
    assert p.free_cpus == desktop.online - CPUSet.of(0, 10)
    check(p)


def test_besteffort_containers_get_a_cpu(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",)}})
    d = p.allocate("a", pod(), ctr("a", 0, qos="besteffort"))
    assert d.placement is not None and len(d.placement.cpus) == 2
    check(p)


def test_growth_stays_topology_close(snc80: Topology) -> None:
    p = make(snc80, "0,40", {"web": {"namespaces": ("default",)}})
    web = pod("w")
    nodes = set()
    for i in range(8):
        d = p.allocate(f"c{i}", web, ctr(f"c{i}", 2000, web))
        assert d.placement is not None
        nodes = {snc80.node_of(c) for c in d.placement.cpus}
    # 16 CPUs fit in one 20-CPU node next to the reserved core
    assert len(nodes) == 1
    assert len(balloons(p)["web[0]"]["cpus"]) == 16
    check(p)


def test_new_balloon_is_one_node_when_it_fits(machine: Callable[[str], Topology]) -> None:
    t = machine("2s-2d-snc")
    p = make(t, "0", {"big": {"namespaces": ("default",), "min-cpus": 8, "min-balloons": 3}})
    for b in p.describe()[2:]:
        assert len({t.node_of(c) for c in b["cpus"]}) == 1, b
    check(p)


def test_all_containers_of_a_balloon_share_its_cpus(server: Topology) -> None:
    p = make(server, "0,56", {"web": {"namespaces": ("default",), "max-balloons": 1}})
    for i in range(5):
        q = pod(f"p{i}")
        p.allocate(f"c{i}", q, ctr(f"c{i}", 1000, q))
    check(p)
    assert len({pl.cpus for pl in p.placements().values()}) == 1
    assert len(balloons(p)["web[0]"]["cpus"]) == 6  # 5 CPUs -> 3 cores


def test_resize_grows_shrinks_and_returns_to_previous_cpus(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",), "max-cpus": 8}})
    q = pod("w")
    p.allocate("a", q, ctr("a", 1000, q))
    p.allocate("b", q, ctr("b", 1000, q))
    before = p.placements()["a"].cpus
    d = p.update("a", q, ctr("a", 4000, q))
    assert d.placement is not None and len(d.placement.cpus) == 6 and before <= d.placement.cpus
    assert set(d.updates) == {"b"}
    check(p)
    d = p.update("a", q, ctr("a", 1000, q))  # the hooks' undo: back to exactly the old CPUs
    assert d.placement is not None and d.placement.cpus == before
    check(p)
    with pytest.raises(
        AllocationError,
        match=r"cannot grow balloon web\[0\] for default/w:a to 10 CPUs "
        r".*max-cpus of type web is 8",
    ):
        p.update("a", q, ctr("a", 9000, q))
    assert p.placements()["a"].cpus == before
    assert p.update("a", q, ctr("a", 1000, q)).placement == p.placements()["a"]
    check(p)


def test_resize_failing_for_lack_of_free_cpus_changes_nothing(desktop: Topology) -> None:
    p = make(desktop, "0-1", {"web": {"namespaces": ("default",)}})
    q = pod("w")
    p.allocate("a", q, ctr("a", 1000, q))
    snapshot = (p.placements(), p.pools(), p.free_cpus)
    with pytest.raises(AllocationError, match=r"from 2 to 19 CPUs .*16 CPUs are free"):
        p.update("a", q, ctr("a", 19000, q))
    assert (p.placements(), p.pools(), p.free_cpus) == snapshot


# --- choosing a balloon -----------------------------------------------------------------------


def test_containers_of_a_pod_stay_together(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",), "prefer-new-balloons": True}})
    one, two = pod("one"), pod("two")
    assert add(p, "a", 500, one) == "web[0]"
    assert add(p, "b", 500, two) == "web[1]"  # a new pod: a new balloon
    assert add(p, "c", 500, one) == "web[0]"  # the same pod: its balloon
    assert add(p, "d", 500, two) == "web[1]"


def test_without_prefer_new_pods_share_the_roomiest_balloon(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",), "min-balloons": 2, "min-cpus": 2}})
    assert add(p, "a", 1500, pod("one")) == "web[0]"  # equal room: the first
    assert add(p, "b", 400, pod("two")) == "web[1]"  # the most room without growing
    assert add(p, "c", 400, pod("three")) == "web[1]"  # 1200m left there, 500m in web[0]
    assert add(p, "d", 1000, pod("four")) == "web[1]"  # still fits without growing
    assert [len(b["cpus"]) for b in p.describe()[2:]] == [2, 2]
    # nothing fits without growing: the most room after growing (free + unused CPUs)
    assert add(p, "e", 2000, pod("five")) == "web[0]"
    assert len(balloons(p)) == 4 and len(balloons(p)["web[0]"]["cpus"]) == 4


def test_empty_balloons_before_new_ones(desktop: Topology) -> None:
    p = make(
        desktop,
        "0",
        {"web": {"namespaces": ("default",), "min-balloons": 2, "prefer-new-balloons": True}},
    )
    assert add(p, "a", 500, pod("one")) == "web[0]"
    assert add(p, "b", 500, pod("two")) == "web[1]"
    assert add(p, "c", 500, pod("three")) == "web[2]"
    p.release("b")
    assert "web[1]" not in balloons(p)  # three were more than min-balloons
    assert add(p, "d", 500, pod("four")) == "web[1]"  # the lowest free instance number
    p.release("c")
    p.release("d")
    assert len(balloons(p)["web[1]"]["cpus"]) == 0  # kept (min-balloons), shrunk
    assert add(p, "e", 500, pod("five")) == "web[1]"  # an empty one before a new one
    assert len(balloons(p)) == 4


def test_prefer_spreading_pods(desktop: Topology) -> None:
    p = make(
        desktop,
        "0",
        {"web": {"namespaces": ("default",), "prefer-spreading-pods": True, "max-balloons": 3}},
    )
    q = pod("spread")
    names = [add(p, f"c{i}", 300, q) for i in range(3)]
    assert sorted(names) == ["web[0]", "web[1]", "web[2]"]
    # max-balloons reached: the fourth shares a balloon after all
    assert add(p, "c3", 300, q) in names
    other = pod("other")
    assert add(p, "x", 300, other) in names


def test_max_balloons_and_max_cpus_are_clear_errors(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",), "max-cpus": 2, "max-balloons": 2}})
    add(p, "a", 2000, pod("one"))
    add(p, "b", 1500, pod("two"))
    snapshot = (p.placements(), p.pools(), p.free_cpus)
    with pytest.raises(
        AllocationError,
        match=r"cannot place default/three:c \(1000m CPU\) in a balloon of type web: no balloon "
        r"can grow enough \(web\[0\]: 2/2 CPUs, 2000m requested; web\[1\]: 2/2 CPUs, 1500m "
        r"requested\), max-balloons 2 reached; 15 CPUs are free",
    ):
        p.allocate("c", pod("three"), ctr("c", 1000, pod("three")))
    with pytest.raises(AllocationError, match=r"it needs 3 CPUs, max-cpus of the type is 2"):
        p.allocate("d", pod("four"), ctr("d", 2500, pod("four")))
    assert (p.placements(), p.pools(), p.free_cpus) == snapshot
    p.release("b")
    assert add(p, "c", 1000, pod("three")) == "web[1]"


def test_no_free_cpus_is_a_clear_error(desktop: Topology) -> None:
    p = make(desktop, "0-15", {"web": {"namespaces": ("default",)}})
    add(p, "a", 4000, pod("one"))
    with pytest.raises(
        AllocationError,
        match=r"a new balloon needs 1 CPUs; 0 CPUs are free \(20 online, 16 reserved",
    ):
        p.allocate("b", pod("two"), ctr("b", 1000, pod("two")))


def test_default_with_cpus_of_its_own(desktop: Topology) -> None:
    p = make(desktop, "0", {"default": {"min-cpus": 3, "max-cpus": 6}})
    own = balloons(p)["default"]["cpus"]
    assert len(own) == 4 and not own & CPUSet.of(0)
    d = p.allocate("a", pod(), ctr("a", 100))
    assert d.placement is not None and d.placement.cpus == own and d.placement.cpu_class == SHARED
    p.allocate("b", pod(), ctr("b", 4500))
    assert len(balloons(p)["default"]["cpus"]) == 6
    with pytest.raises(AllocationError, match=r"balloon default .*max-cpus of type default is 6"):
        p.allocate("c", pod(), ctr("c", 2000))
    p.release("a")
    p.release("b")
    assert len(balloons(p)["default"]["cpus"]) == 4  # back to min-cpus in whole cores
    check(p)


def test_min_balloons_are_made_at_start_and_kept(server: Topology) -> None:
    p = make(
        server,
        "0,56",
        {"fast": {"min-cpus": 3, "min-balloons": 2, "max-cpus": 3}, "slow": {"min-balloons": 1}},
    )
    got = balloons(p)
    assert list(got) == ["reserved", "default", "fast[0]", "fast[1]", "slow[0]"]
    assert [len(got[n]["cpus"]) for n in ("fast[0]", "fast[1]", "slow[0]")] == [3, 3, 0]
    check(p)
    ann = {f"{ANNOTATION}/pod": "slow"}
    q = pod("s", annotations=ann)
    assert add(p, "s", 100, q) == "slow[0]"
    p.release("s")
    assert len(balloons(p)["slow[0]"]["cpus"]) == 0  # kept, empty
    check(p)


def test_reserved_cpus_are_never_given_to_balloons(machine: Callable[[str], Topology]) -> None:
    t = machine("nosmt-iso")  # CPUs 0-4,6-11 online, 10-11 isolated
    p = make(t, "0,6", {"all": {"namespaces": ("*",), "share-idle-cpus-in-same": "system"}})
    for i in range(7):
        add(p, f"c{i}", 1000, pod(f"p{i}"))
    own = balloons(p)["all[0]"]["cpus"]
    assert own == CPUSet.parse("1-4,7-9")
    assert p.free_cpus == CPUSet()
    with pytest.raises(AllocationError):
        p.allocate("x", pod("x"), ctr("x", 1000, pod("x")))
    p.release("c0")
    assert balloons(p)["all[0]"]["idle"] == p.free_cpus and len(p.free_cpus) == 1
    assert not p.free_cpus & (CPUSet.of(0, 6) | t.isolated)
    check(p)


# --- idle CPUs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "level, expect",
    [
        # 2 sockets x 2 dies x 2 nodes x 4 cores x 2 threads; the balloon is one core of node 0
        ("system", lambda t, own, free: free),
        ("package", lambda t, own, free: free & t.packages[0]),
        ("die", lambda t, own, free: free & t.dies[(0, 0)]),
        ("numa", lambda t, own, free: free & t.nodes[0].cpus),
        ("core", lambda t, own, free: free & t.threads_of(own)),
        ("", lambda t, own, free: CPUSet()),
    ],
)
def test_share_idle_cpus_in_same(
    machine: Callable[[str], Topology], level: str, expect: Any
) -> None:
    t = machine("2s-2d-snc")
    p = make(
        t,
        "0,32",
        {
            "s": {"namespaces": ("default",), "share-idle-cpus-in-same": level, "max-cpus": 1},
            "other": {"min-balloons": 1, "min-cpus": 4},
        },
    )
    d = p.allocate("a", pod(), ctr("a", 1000))
    assert d.placement is not None
    own = balloons(p)["s[0]"]["cpus"]
    assert len(own) == 1 and t.node_of(own.first()) == 0  # the fullest node that fits
    assert d.placement.cpus == own | expect(t, own, p.free_cpus)
    assert d.placement.mems == CPUSet({t.node_of(c) for c in d.placement.cpus})
    assert not d.placement.cpus & (p.reserved | balloons(p)["other[0]"]["cpus"])
    check(p)


def test_idle_cpus_taken_by_a_new_balloon_move_the_sharers(desktop: Topology) -> None:
    p = make(
        desktop,
        "0,10",
        {
            "s": {"namespaces": ("default",), "share-idle-cpus-in-same": "system"},
            "t": {"namespaces": ("other",)},
        },
    )
    d = p.allocate("a", pod(), ctr("a", 500))
    assert d.placement is not None and d.placement.cpus == desktop.online - CPUSet.of(0, 10)
    q = pod("b", "other")
    d = p.allocate("b", q, ctr("b", 500, q))
    assert d.placement is not None and set(d.updates) == {"a"}
    assert d.updates["a"].cpus == desktop.online - CPUSet.of(0, 10) - d.placement.cpus
    d = p.release("b")
    assert d.updates["a"].cpus == desktop.online - CPUSet.of(0, 10)
    check(p)


def test_mems_follow_cpus_and_skip_memory_only_nodes(machine: Callable[[str], Topology]) -> None:
    t = machine("smt4")  # 2 nodes of 12 CPUs (SMT-4) and a PMEM node 2
    p = make(t, "0", {"w": {"namespaces": ("default",)}})
    d = p.allocate("a", pod(), ctr("a", 14000))
    assert d.placement is not None and len(d.placement.cpus) == 16  # 4 whole SMT-4 cores
    assert d.placement.mems == CPUSet.of(0, 1)
    small = pod("small", "default")
    p2 = make(t, "0", {"w": {"namespaces": ("default",)}})
    d = p2.allocate("a", small, ctr("a", 1000, small))
    assert (
        d.placement is not None and d.placement.mems == CPUSet.of(0) and len(d.placement.cpus) == 4
    )
    check(p)
    check(p2)


# --- keys -----------------------------------------------------------------------------------


def test_rename_and_release(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",)}})
    add(p, "creating:1", 1000)
    p.rename("creating:1", "cid")
    assert set(p.placements()) == {"cid"} and p.balloon_of("cid") == "web[0]"
    check(p)
    add(p, "creating:2", 1000)
    with pytest.raises(PolicyError, match="already placed"):
        p.rename("creating:2", "cid")
    p.rename("nope", "x")  # unknown: ignored
    assert p.release("nope").updates == {}
    p.release("cid")
    p.release("creating:2")
    assert p.placements() == {} and "web[0]" not in balloons(p)


def test_allocate_of_a_placed_key_is_a_resize(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",)}})
    add(p, "a", 1000)
    d = p.allocate("a", pod(), ctr("a", 3000))
    assert d.placement is not None and len(d.placement.cpus) == 4
    check(p)


def test_reconfigure_keeps_the_running_types(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",)}})
    add(p, "a", 1000)
    d = p.reconfigure({"on-error": "pass", "types": (("other", {}),)})
    assert d.updates == {} and p.options["on-error"] == "pass"
    assert [n for n, _ in p.options["types"]] == ["web"]
    assert add(p, "b", 500) == "web[0]"
    assert BalloonsPolicy.LIVE_OPTIONS == frozenset()


# --- validation ---------------------------------------------------------------------------


def problems(t: Topology, reserved: str, types: Types, **options: Any) -> str:
    with pytest.raises(ConfigError) as info:
        make(t, reserved, types, **options)
    text = str(info.value)
    # the classmethod gives the same answer without building anything
    opts = {"types": tuple(types.items()), **options}
    with pytest.raises(ConfigError) as again:
        BalloonsPolicy.validate(t, CPUSet.parse(reserved), opts)
    assert str(again.value) == text
    return text


def test_min_cpus_over_what_exists(desktop: Topology) -> None:
    text = problems(desktop, "0-1", {"big": {"min-cpus": 19}})
    assert (
        '[policy.balloons.type.big] min-cpus = "19": a balloon of this type needs 19 CPUs '
        "but balloons can use only 18 (20 online, 2 reserved, 0 isolated)"
    ) in text
    text = problems(desktop, "0", {"default": {"min-cpus": 20}})
    assert "[policy.balloons.type.default] min-cpus" in text


def test_balloons_made_at_start_over_what_exists(machine: Callable[[str], Topology]) -> None:
    t = machine("nosmt-iso")  # 11 online, 2 isolated
    text = problems(
        t,
        "0",
        {
            "default": {"min-cpus": 2},
            "a": {"min-cpus": 2, "min-balloons": 2},
            "b": {"min-cpus": 1, "min-balloons": 3},
        },
    )
    assert (
        '[policy.balloons.type.b] min-balloons = "3": the balloons created at start need 9 '
        "CPUs (default 2, a 2 x 2, b 3 x 1) but balloons can use only 8 (11 online, 1 reserved, "
        "2 isolated)"
    ) in text
    # exactly enough is fine
    p = make(
        t,
        "0",
        {
            "default": {"min-cpus": 2},
            "a": {"min-cpus": 2, "min-balloons": 2},
            "b": {"min-cpus": 1, "min-balloons": 2},
        },
    )
    assert p.free_cpus == CPUSet()
    check(p)


def test_the_reserved_type_takes_no_size(desktop: Topology) -> None:
    text = problems(desktop, "0", {"reserved": {"min-cpus": 2}})
    assert (
        '[policy.balloons.type.reserved] min-cpus = "2": the reserved balloon is the reserved CPUs'
        in text
    )


def test_values_limits_and_names_are_the_configurations_to_check(tmp_path: Path) -> None:
    """The policy does not check again what `config` refuses before it gets there."""
    (tmp_path / "10.conf").write_text(
        "[policy]\nname = balloons\n[policy.balloons]\nsurprise = 1\n"
        "[policy.balloons.type.a]\nmin-cpus = 4\nmax-cpus = 2\nshare-idle-cpus-in-same = rack\n"
        "bogus = 1\n[policy.balloons.type.b]\nmin-balloons = 3\nmax-balloons = 1\n"
        "[policy.balloons.type.c]\nprefer-new-balloons = maybe\nmin-cpus = two\n"
        "[policy.balloons.type.default]\nmax-balloons = 2\n[policy.balloons.type.B!]\n"
    )
    with pytest.raises(ConfigError) as info:
        cfg.load(str(tmp_path))
    text = str(info.value)
    for part in (
        "[policy.balloons] surprise",
        '[policy.balloons.type.a] bogus = "1": unknown key',
        '[policy.balloons.type.a] share-idle-cpus-in-same = "rack": unknown value',
        '[policy.balloons.type.a] min-cpus = "4": min-cpus (4) is more than max-cpus (2)',
        '[policy.balloons.type.b] min-balloons = "3": min-balloons (3) is more than',
        '[policy.balloons.type.c] prefer-new-balloons = "maybe": not a boolean',
        '[policy.balloons.type.c] min-cpus = "two": not an integer',
        '[policy.balloons.type.default] max-balloons = "2": cannot be set for the built-in',
        "bad balloon type name 'B!'",
    ):
        assert part in text, (part, text)


def test_options_the_configuration_has_no_key_for(desktop: Topology) -> None:
    with pytest.raises(PolicyError, match=r"\[policy.balloons\] has no option surprise"):
        make(desktop, "0", {}, surprise=True)
    with pytest.raises(PolicyError, match=r"\[policy.balloons.type.a\] has no option bogus"):
        make(desktop, "0", {"a": {"bogus": 1}})
    # text is parsed as in a file
    p = make(desktop, "0", {"a": {"namespaces": "x, y", "max-cpus": "4"}})
    assert p.types["a"].namespaces == ("x", "y") and p.types["a"].max_cpus == 4


def test_no_cpu_left_for_balloons(desktop: Topology) -> None:
    text = problems(desktop, "0-19", {"web": {}})
    assert "[policy.balloons.type.web]: no CPU is left for balloons of this type" in text
    make(desktop, "0-19")  # without types everything runs on the reserved CPUs


def test_validate_locates_problems_with_the_config(desktop: Topology, tmp_path: Path) -> None:
    (tmp_path / "10.conf").write_text(
        "[policy]\nname = balloons\n\n[policy.balloons.type.big]\nmin-balloons = 3\nmin-cpus = 8\n"
    )
    config = cfg.load(str(tmp_path))
    options = config.policy_options("balloons")
    with pytest.raises(ConfigError) as info:
        BalloonsPolicy.validate(desktop, CPUSet.of(0, 10), options, config=config)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(tmp_path / "10.conf"), 5)
    assert problem.section == "policy.balloons.type.big" and problem.key == "min-balloons"
    assert str(problem).startswith(f"{tmp_path}/10.conf:5: [policy.balloons.type.big] min-balloons")
    BalloonsPolicy.validate(
        desktop, CPUSet.of(0, 10), {**options, "types": (("big", {"min-cpus": 8}),)}
    )


# --- the configuration as the service passes it -----------------------------------------------


def test_config_reaches_the_policy(desktop: Topology, tmp_path: Path) -> None:
    (tmp_path / "10.conf").write_text(
        "[policy]\nname = balloons\n"
        "[policy.balloons.type.web]\nnamespaces = web-*\nmax-cpus = 4\nmin-balloons = 1\n"
        "share-idle-cpus-in-same = core\n"
        "[policy.balloons.type.default]\nmin-cpus = 2\n"
    )
    config = cfg.load(str(tmp_path))
    p = policies.create("balloons", desktop, CPUSet.of(0), config.policy_options("balloons"))
    assert isinstance(p, BalloonsPolicy)
    assert list(balloons(p)) == ["reserved", "default", "web[0]"]
    assert p.types["web"].max_cpus == 4 and p.types["web"].share_idle_cpus_in_same == "core"
    assert add(p, "a", 500, pod("a", "web-1")) == "web[0]"
    default = cfg.default_config().policy_options("balloons")
    assert dict(default) == {"on-error": "fail", "types": ()}
    make(desktop).reconfigure(default)


@pytest.mark.parametrize("name", ALL)
def test_every_machine(machine: Callable[[str], Topology], name: str) -> None:
    t = machine(name)
    reserved = CPUSet(t.cpus_sorted_by_topology()[: t.threads_per_core])
    usable = t.online - reserved - t.isolated
    p = BalloonsPolicy(
        t,
        reserved,
        {
            "types": (
                ("a", {"namespaces": ("a",), "min-balloons": 2, "min-cpus": 1}),
                ("b", {"namespaces": ("b",), "share-idle-cpus-in-same": "numa", "max-cpus": 4}),
            )
        },
    )
    check(p)
    keys = []
    for i in range(len(usable)):
        ns = "ab"[i % 2]
        q = pod(f"p{i}", ns)
        try:
            p.allocate(f"c{i}", q, ctr(f"c{i}", 700, q))
        except AllocationError:
            break
        keys.append(f"c{i}")
        check(p)
    assert keys
    for key in keys[::2]:
        p.release(key)
        check(p)
