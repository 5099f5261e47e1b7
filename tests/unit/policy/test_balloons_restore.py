"""The balloons policy after a restart: persisted placements rebuild the balloons."""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Tuple

import pytest

from cri_resmgr.errors import AllocationError, PolicyError
from cri_resmgr.policy.balloons import ANNOTATION, BalloonsPolicy
from cri_resmgr.policy.base import PRESERVED, Container, Placement, Pod
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

from .test_balloons import Types, balloons, check, ctr, make, pod

Entry = Tuple[str, Pod, Container, Placement]


class Run:
    """A policy plus what the hooks would persist: pods, containers, placements."""

    def __init__(self, policy: BalloonsPolicy) -> None:
        self.policy = policy
        self.records: Dict[str, Tuple[Pod, Container]] = {}

    def add(self, key: str, milli: int, p: Pod, **kw: Any) -> bool:
        c = ctr(key, milli, p, **kw)
        try:
            self.policy.allocate(key, p, c)
        except AllocationError:
            return False
        self.records[key] = (p, c)
        return True

    def remove(self, key: str) -> None:
        self.policy.release(key)
        del self.records[key]

    def entries(self) -> List[Entry]:
        placed = self.policy.placements()
        return [(k, p, c, placed[k]) for k, (p, c) in self.records.items()]


def restart(run: Run, t: Topology, reserved: str, types: Types) -> Tuple[BalloonsPolicy, Any]:
    fresh = make(t, reserved, types)
    decision = fresh.restore(run.entries())
    check(fresh)
    return fresh, decision


TYPES: Types = {
    "web": {"namespaces": ("web",), "max-cpus": 6},
    "db": {"namespaces": ("db",), "min-balloons": 2, "min-cpus": 2, "prefer-new-balloons": True},
    "share": {"namespaces": ("share",), "share-idle-cpus-in-same": "numa"},
    "pkg": {"namespaces": ("pkg",), "share-idle-cpus-in-same": "package"},
    "default": {"min-cpus": 1},
}


def busy(t: Topology, reserved: str = "0,40") -> Run:
    run = Run(make(t, reserved, TYPES))
    for i in range(6):
        for ns in ("web", "db", "share", "pkg", "default", "kube-system"):
            q = pod(f"{ns}{i % 3}", ns)
            run.add(f"{ns}-{i}", 300 + 400 * i, q)
    for key in ("db-1", "web-5"):
        if key in run.records:
            run.remove(key)
    check(run.policy)
    return run


def test_round_trip_changes_nothing(snc80: Topology) -> None:
    run = busy(snc80)
    fresh, decision = restart(run, snc80, "0,40", TYPES)
    assert decision.updates == {}
    assert fresh.placements() == run.policy.placements()
    assert balloons(fresh).keys() == balloons(run.policy).keys()
    for name, b in balloons(run.policy).items():
        assert balloons(fresh)[name]["cpus"] == b["cpus"], name
        assert sorted(balloons(fresh)[name]["containers"]) == sorted(b["containers"])
    # and it goes on like the old one
    q = pod("web9", "web")
    c = ctr("later", 1000, q)
    assert fresh.allocate("later", q, c) == run.policy.allocate("later", q, c)


def test_round_trip_on_every_machine(machine: Callable[[str], Topology]) -> None:
    for name in ("server", "2s-2d-snc", "smt4", "8-socket-448"):
        t = machine(name)
        reserved = ",".join(map(str, t.cpus_sorted_by_topology()[: t.threads_per_core]))
        run = busy(t, reserved)
        fresh, decision = restart(run, t, reserved, TYPES)
        assert decision.updates == {}, name
        assert fresh.pools() == run.policy.pools(), name


def test_empty_state(desktop: Topology) -> None:
    p = make(desktop, "0", TYPES)
    before = p.pools()
    assert p.restore([]).updates == {}
    assert p.pools() == before
    check(p)


def test_restore_comes_first(desktop: Topology) -> None:
    p = make(desktop, "0", TYPES)
    p.allocate("a", pod(), ctr("a"))
    with pytest.raises(PolicyError, match="restore must come before"):
        p.restore([])


def test_new_reserved_cpus_move_the_balloons(snc80: Topology, caplog: Any) -> None:
    run = busy(snc80)
    web0 = balloons(run.policy)["web[0]"]["cpus"]
    taken = CPUSet.of(web0.first())
    reserved = CPUSet.of(0, 40) | taken
    with caplog.at_level(logging.INFO, logger="cri_resmgr.policy.balloons"):
        fresh, decision = restart(run, snc80, str(reserved), TYPES)
    web = balloons(fresh)["web[0]"]
    assert not web["cpus"] & taken and len(web["cpus"]) == len(web0)
    assert len(web["cpus"] & web0) == len(web0) - 1  # the rest stays
    moved = {k for k, pl in decision.updates.items() if pl.pool == "web[0]"}
    assert moved == set(web["containers"])
    assert "reserved" not in {pl.pool for pl in decision.updates.values()} or True


def test_changed_type_is_placed_again(desktop: Topology, caplog: Any) -> None:
    run = Run(make(desktop, "0", {"web": {"namespaces": ("web",)}}))
    q = pod("w", "web")
    run.add("a", 1000, q)
    run.add("b", 1000, q)
    types: Types = {"web": {"namespaces": ("nope",)}, "new": {"namespaces": ("web",)}}
    with caplog.at_level(logging.INFO, logger="cri_resmgr.policy.balloons"):
        fresh, decision = restart(run, desktop, "0", types)
    assert set(decision.updates) == {"a", "b"}
    assert {pl.pool for pl in decision.updates.values()} == {"new[0]"}
    assert "restore: re-placed default/w:a" not in caplog.text
    assert (
        "restore: re-placed web/w:a: it was in balloon web[0], its type is new now" in caplog.text
    )


def test_removed_type_named_by_an_annotation_falls_back_to_default(
    desktop: Topology, caplog: Any
) -> None:
    run = Run(make(desktop, "0", {"gone": {"namespaces": ()}}))
    q = pod("x", annotations={f"{ANNOTATION}/pod": "gone"})
    run.add("a", 1000, q)
    with caplog.at_level(logging.WARNING, logger="cri_resmgr.policy.balloons"):
        fresh, decision = restart(run, desktop, "0", {})
    assert decision.updates["a"].pool == "default"
    assert "names no balloon type" in caplog.text and "it runs in balloon default" in caplog.text


def test_lower_max_balloons_places_the_extra_ones_again(desktop: Topology) -> None:
    run = Run(make(desktop, "0", {"web": {"namespaces": ("web",), "prefer-new-balloons": True}}))
    for i in range(3):
        run.add(f"c{i}", 500, pod(f"p{i}", "web"))
    assert len(balloons(run.policy)) == 5
    fresh, decision = restart(
        run, desktop, "0", {"web": {"namespaces": ("web",), "max-balloons": 2}}
    )
    assert len(balloons(fresh)) == 4
    assert set(decision.updates) == {"c2"}  # web[2] is gone, c2 shares one of the others


def test_unknown_pool_and_preserved(desktop: Topology) -> None:
    p = make(desktop, "0", {"web": {"namespaces": ("default",)}})
    a, b = ctr("a", 1000), ctr("b", 1000)
    kept = Placement(cpus=CPUSet.parse("0-19"), cpu_class=PRESERVED)
    stray = Placement(cpus=CPUSet.parse("5"), pool="shared")
    decision = p.restore([("a", pod(), a, kept), ("b", pod(), b, stray), ("a", pod(), a, stray)])
    assert set(decision.updates) == {"b"} and decision.updates["b"].pool == "web[0]"
    assert p.placements()["a"] == kept
    check(p)
    # a preserved container is placed properly at its next resize, and can be released
    d = p.update("a", pod(), ctr("a", 2000))
    assert d.placement is not None and d.placement.pool == "web[0]"
    p.release("a")
    p.release("b")
    check(p)


def test_shared_idle_cpus_are_not_taken_for_own(machine: Callable[[str], Topology]) -> None:
    """Two sharing balloons in one node: each one's persisted CPUs include the node's
    idle CPUs; subtracting the other balloon's placement leaves the own CPUs."""
    t = machine("2s-2d-snc")
    types: Types = {
        "s": {"namespaces": ("s",), "share-idle-cpus-in-same": "numa", "max-balloons": 4}
    }
    run = Run(make(t, "0,32", types))
    run.add("a", 1000, pod("a", "s"), annotations={})
    run.add("b", 3000, pod("b", "s"))  # the same balloon, grown
    check(run.policy)
    fresh, decision = restart(run, t, "0,32", types)
    assert decision.updates == {}
    assert fresh.pools() == run.policy.pools()
