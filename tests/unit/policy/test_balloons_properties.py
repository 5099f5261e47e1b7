"""The balloons policy under random churn on every machine: the invariants hold after
every call, failures change nothing, and the decisions tell the hooks everything."""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List

import pytest

from cri_resmgr.errors import AllocationError
from cri_resmgr.policy.balloons import ANNOTATION
from cri_resmgr.policy.base import Decision, Placement
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

from .conftest import ALL
from .test_balloons import Types, check, ctr, make, pod

TYPES: Types = {
    "web": {"namespaces": ("web-*",), "max-cpus": 6, "share-idle-cpus-in-same": "core"},
    "db": {
        "namespaces": ("db",),
        "min-balloons": 1,
        "min-cpus": 2,
        "max-balloons": 3,
        "prefer-new-balloons": True,
    },
    "spread": {"namespaces": ("spread",), "prefer-spreading-pods": True, "max-balloons": 4},
    "numa": {"namespaces": ("numa",), "share-idle-cpus-in-same": "numa"},
    "default": {"min-cpus": 1, "share-idle-cpus-in-same": "package"},
}
NAMESPACES = ("web-a", "web-b", "db", "spread", "numa", "default", "kube-system", "other")


class Shadow:
    """What the hooks know: the placements the decisions told them."""

    def __init__(self) -> None:
        self.placements: Dict[str, Placement] = {}

    def apply(self, key: str, decision: Decision, gone: bool = False) -> None:
        for other, placement in decision.updates.items():
            assert other != key, "a decision lists its own container in updates"
            assert other in self.placements, f"update for unknown {other}"
            self.placements[other] = placement
        if gone:
            self.placements.pop(key, None)
        elif decision.placement is not None:
            self.placements[key] = decision.placement


@pytest.mark.parametrize("name", ALL)
def test_random_churn(machine: Callable[[str], Topology], name: str) -> None:
    t = machine(name)
    rng = random.Random(name)
    reserved = CPUSet(t.cpus_sorted_by_topology()[: t.threads_per_core])
    p = make(t, str(reserved), TYPES)
    shadow = Shadow()
    live: Dict[str, Any] = {}
    steps = 300
    for step in range(steps):
        roll = rng.random()
        if not live or roll < 0.5:
            key = f"c{step}"
            ns = rng.choice(NAMESPACES)
            annotations = {}
            if rng.random() < 0.1:
                annotations = {f"{ANNOTATION}/pod": rng.choice(("web", "db", "reserved"))}
            q = pod(f"p{rng.randrange(12)}", ns, annotations)
            c = ctr(key, rng.choice((0, 100, 500, 1000, 1500, 2500, 4000)), q)
            before = (p.placements(), p.pools(), p.free_cpus)
            try:
                d = p.allocate(key, q, c)
            except AllocationError:
                assert (p.placements(), p.pools(), p.free_cpus) == before
                continue
            live[key] = (q, c)
            shadow.apply(key, d)
        elif roll < 0.8:
            key = rng.choice(sorted(live))
            shadow.apply(key, p.release(key), gone=True)
            del live[key]
        else:
            key = rng.choice(sorted(live))
            q, old = live[key]
            c = ctr(key, rng.choice((100, 700, 2000, 3000, 7000)), q)
            before = (p.placements(), p.pools(), p.free_cpus)
            try:
                d = p.update(key, q, c)
            except AllocationError:
                assert (p.placements(), p.pools(), p.free_cpus) == before
                continue
            live[key] = (q, c)
            shadow.apply(key, d)
        check(p)
        assert shadow.placements == p.placements(), step
    assert len(live) > 3
    drain(p, shadow, sorted(live))


def drain(p: Any, shadow: Shadow, keys: List[str]) -> None:
    """Release everything: back to the balloons of the start (min-balloons kept)."""
    for key in keys:
        shadow.apply(key, p.release(key), gone=True)
        check(p)
    assert p.placements() == {} == shadow.placements
    types = sorted(b["type"] for b in p.describe())
    assert types == ["db", "default", "reserved"]
