"""The none policy changes nothing and tracks nothing."""

from __future__ import annotations

from cri_resmgr.policy.base import Decision, Placement
from cri_resmgr.policy.none import NonePolicy
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

from .conftest import burstable, exclusive, pod


def test_none_is_a_pure_relay(desktop: Topology) -> None:
    p = NonePolicy(desktop, CPUSet(), {})
    P = pod()
    assert p.allocate("a", P, exclusive("a", 4)) == Decision()
    assert p.update("a", P, exclusive("a", 8)) == Decision()
    p.rename("a", "b")
    assert p.release("b") == Decision()
    assert p.release("unknown") == Decision()
    placement = Placement(cpus=CPUSet.of(1))
    assert p.restore([("x", P, burstable("x"), placement)]) == Decision()
    assert p.placements() == {}
    assert p.pools() == {}
    assert p.reconfigure({}) == Decision()
