"""Static policy restore (restart, changed machine or config) and policy switches."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from cri_resmgr import policy as registry
from cri_resmgr.errors import AllocationError, PolicyError
from cri_resmgr.policy.base import EXCLUSIVE, PRESERVED, RESERVED, SHARED, Container, Placement, Pod
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load

from .conftest import besteffort, burstable, exclusive, pod
from .test_static import check

P = pod()
Entry = Tuple[str, Pod, Container, Placement]


def run(p: StaticPolicy, containers: Dict[str, Container]) -> None:
    for key, c in containers.items():
        p.allocate(key, P, c)


def entries_of(p: StaticPolicy, containers: Dict[str, Container]) -> List[Entry]:
    placements = p.placements()
    return [(key, P, containers[key], placements[key]) for key in placements]


def workload() -> Dict[str, Container]:
    return {
        "s1": burstable("s1"),
        "x1": exclusive("x1", 4),
        "s2": besteffort("s2"),
        "x2": exclusive("x2", 2),
        "x3": exclusive("x3", 1),
        "s3": burstable("s3", 1500),
    }


def test_restart_adopts_everything(server: Topology) -> None:
    work = workload()
    p1 = StaticPolicy(server, CPUSet.of(0, 56), {})
    run(p1, work)
    p2 = StaticPolicy(server, CPUSet.of(0, 56), {})
    d = p2.restore(entries_of(p1, work))
    assert d.placement is None and dict(d.updates) == {}
    assert p2.placements() == p1.placements()
    assert p2.shared_pool == p1.shared_pool
    check(p2)
    # and it goes on from there like the original
    assert p2.allocate("x4", P, exclusive("x4", 3)) == p1.allocate("x4", P, exclusive("x4", 3))


def test_restore_comes_first(desktop: Topology) -> None:
    p = StaticPolicy(desktop, CPUSet.of(0), {})
    p.allocate("a", P, burstable("a"))
    with pytest.raises(PolicyError, match="before any other call"):
        p.restore([])


def test_reserved_now_is_re_placed(desktop: Topology, caplog: pytest.LogCaptureFixture) -> None:
    work = workload()
    p1 = StaticPolicy(desktop, CPUSet.of(0), {})
    run(p1, work)
    x1 = p1.exclusive_cpus()["x1"]
    # the new configuration reserves one of x1's CPUs
    p2 = StaticPolicy(desktop, CPUSet.of(0, x1.first()), {})
    with caplog.at_level(logging.INFO, logger="cri_resmgr.policy.static"):
        d = p2.restore(entries_of(p1, work))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1
    assert "re-placed default/pod:x1" in lines[0] and "reserved now" in lines[0]
    new = p2.exclusive_cpus()["x1"]
    assert len(new) == 4 and not new & p2.reserved
    # x1 and every shared container changed (the pool changed); x2, x3 did not
    assert set(d.updates) == {"x1", "s1", "s2", "s3"}
    assert d.updates["x1"].cpus == new
    check(p2)


def test_doubly_owned_second_is_re_placed(desktop: Topology) -> None:
    c1, c2 = exclusive("a", 2), exclusive("b", 2)
    shared = Placement(cpus=CPUSet.parse("0-19"), mems=CPUSet.of(0))
    same = Placement(
        cpus=CPUSet.of(1, 11),
        mems=CPUSet.of(0),
        cpu_class=EXCLUSIVE,
        pool="exclusive",
        exclusive=CPUSet.of(1, 11),
    )
    entries: List[Entry] = [
        ("a", P, c1, same),
        ("b", P, c2, same),
        ("s", P, burstable("s"), shared),
    ]
    p = StaticPolicy(desktop, CPUSet.of(0), {})
    d = p.restore(entries)
    assert p.exclusive_cpus()["a"] == CPUSet.of(1, 11)
    assert len(p.exclusive_cpus()["b"]) == 2 and not p.exclusive_cpus()["b"] & CPUSet.of(1, 11)
    assert set(d.updates) == {"b", "s"}
    check(p)


def test_offline_cpu_is_re_placed(tmp_path: Path) -> None:
    before = load(synthetic.write_sysfs(tmp_path / "a", sockets=1, cores_per_node=4).root)
    work = {"x": exclusive("x", 2), "s": burstable("s")}
    p1 = StaticPolicy(before, CPUSet.of(0), {})
    run(p1, work)
    gone = p1.exclusive_cpus()["x"].last()
    after = load(
        synthetic.write_sysfs(tmp_path / "b", sockets=1, cores_per_node=4, offline=str(gone)).root
    )
    p2 = StaticPolicy(after, CPUSet.of(0), {})
    d = p2.restore(entries_of(p1, work))
    assert set(d.updates) == {"x", "s"}
    assert gone not in p2.exclusive_cpus()["x"]
    check(p2)


def test_cannot_re_place_runs_shared(desktop: Topology, caplog: pytest.LogCaptureFixture) -> None:
    big = exclusive("big", 20)
    placement = Placement(
        cpus=CPUSet.parse("0-19"), cpu_class=EXCLUSIVE, exclusive=CPUSet.parse("0-19")
    )
    p = StaticPolicy(desktop, CPUSet.of(0), {})
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.policy.static"):
        d = p.restore([("big", P, big, placement)])
    assert "cannot re-place" in caplog.text and "shared pool" in caplog.text
    assert d.updates["big"].cpu_class == SHARED
    assert p.exclusive_cpus() == {}
    check(p)


def test_strict_reservation_switched_on_moves_shared(desktop: Topology) -> None:
    work = workload()
    p1 = StaticPolicy(desktop, CPUSet.of(0, 10), {})
    run(p1, work)
    p2 = StaticPolicy(desktop, CPUSet.of(0, 10), {"strict-reservation": True})
    d = p2.restore(entries_of(p1, work))
    assert set(d.updates) == {"s1", "s2", "s3"}
    assert all(not u.cpus & CPUSet.of(0, 10) for u in d.updates.values())
    check(p2)


def test_full_pcpus_only_switched_on_re_places_split_cores(desktop: Topology) -> None:
    work = {"x": exclusive("x", 1), "y": exclusive("y", 2)}
    p1 = StaticPolicy(desktop, CPUSet.of(0), {})
    run(p1, work)
    p2 = StaticPolicy(desktop, CPUSet.of(0), {"full-pcpus-only": True})
    d = p2.restore(entries_of(p1, work))
    # x asks for 1 CPU: cannot be whole cores any more, stays shared; y is whole
    assert d.updates["x"].cpu_class == SHARED
    assert "y" not in d.updates
    check(p2)


def test_preserved_is_adopted_untouched(desktop: Topology) -> None:
    kept = Placement(cpus=CPUSet(), cpu_class=PRESERVED)
    p = StaticPolicy(desktop, CPUSet.of(0), {})
    d = p.restore([("kept", P, exclusive("kept", 2), kept)])
    assert not d.updates
    assert p.placements()["kept"] == kept
    assert p.exclusive_cpus() == {}
    # a later resize places it properly
    d2 = p.update("kept", P, exclusive("kept", 2))
    assert d2.placement is not None and d2.placement.cpu_class == EXCLUSIVE
    check(p)
    assert p.release("kept").placement is None
    assert "kept" not in p.placements()


def test_switch_from_another_policy(server: Topology) -> None:
    """Placements of another policy (pools, reserved class, exclusive + shared CPUs)."""
    socket0 = server.packages[0]
    entries: List[Entry] = [
        ("r", P, burstable("r"), Placement(cpus=CPUSet.of(0, 56), cpu_class=RESERVED)),
        ("s", P, besteffort("s"), Placement(cpus=socket0, cpu_class=SHARED, pool="socket0")),
        (
            "x",
            P,
            exclusive("x", 2),
            Placement(
                cpus=CPUSet.of(8, 64) | socket0,
                cpu_class=EXCLUSIVE,
                pool="socket0",
                exclusive=CPUSet.of(8, 64),
            ),
        ),
        (
            "y",
            P,
            exclusive("y", 2),
            Placement(cpus=socket0, cpu_class=SHARED, pool="socket0"),
        ),
    ]
    p = registry.create("static", server, CPUSet.of(0, 56), {})
    d = p.restore(entries)
    assert set(d.updates) == {"r", "s", "x", "y"}
    assert d.updates["x"].cpus == CPUSet.of(8, 64)
    assert d.updates["y"].cpu_class == EXCLUSIVE
    assert d.updates["r"].cpu_class == SHARED
    assert isinstance(p, StaticPolicy)
    check(p)


def test_switch_to_and_from_none(desktop: Topology) -> None:
    work = workload()
    static = registry.create("static", desktop, CPUSet.of(0), {})
    assert isinstance(static, StaticPolicy)
    run(static, work)
    none = registry.create("null", desktop, CPUSet.of(0), {})
    d = none.restore(entries_of(static, work))
    assert d.placement is None and not d.updates
    assert none.placements() == {}
    # none -> static: none persisted nothing, static starts clean
    fresh = registry.create("static", desktop, CPUSet.of(0), {})
    assert not fresh.restore([]).updates
    assert fresh.placements() == {}


def test_isolated_cpus_are_handed_out_while_the_pool_is_in_its_fallback(tmp_path: Path) -> None:
    """Exclusive containers adopted on every shared CPU leave the pool empty (it falls
    back to the reserved CPUs); a request that isolated CPUs can serve must still get
    them, in the restore and afterwards, and not crash on the empty pool."""
    t = load(
        synthetic.write_sysfs(tmp_path, cores_per_node=4, threads_per_core=1, isolated="3").root
    )
    owned = CPUSet.of(1, 2)
    entries: List[Entry] = [
        ("a", P, exclusive("a", 2), Placement(owned, cpu_class=EXCLUSIVE, exclusive=owned)),
        ("s", P, burstable("s"), Placement(CPUSet.of(0), cpu_class=SHARED, pool="shared")),
        # asks for a CPU of its own now: re-placed, on the isolated CPU
        ("b", P, exclusive("b", 1), Placement(CPUSet.of(0), cpu_class=SHARED, pool="shared")),
    ]
    p = StaticPolicy(t, CPUSet.of(0), {"strict-reservation": True})
    d = p.restore(entries)
    assert p.exclusive_cpus() == {"a": owned, "b": CPUSet.of(3)}
    assert d.updates["b"].cpus == CPUSet.of(3)
    assert p.shared_pool == CPUSet.of(0)  # the fallback: the reserved CPUs
    p.release("b")
    placement = p.allocate("c", P, exclusive("c", 1)).placement
    assert placement is not None and placement.exclusive == CPUSet.of(3)
    with pytest.raises(AllocationError):  # no CPU left at all: an error, not a crash
        p.allocate("d", P, exclusive("d", 1))
