"""What `policy.base.Policy` does for every policy: restore's template, rename's records,
the preserved placements, placements()."""

from __future__ import annotations

import logging
from typing import Callable, Type

import pytest

from cri_resmgr import config as cfg
from cri_resmgr.errors import PolicyError
from cri_resmgr.policy.balloons import BalloonsPolicy
from cri_resmgr.policy.base import EXCLUSIVE, PRESERVED, SHARED, Placement, Policy, with_defaults
from cri_resmgr.policy.none import NonePolicy
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.policy.topology_aware import TopologyAwarePolicy
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

from .conftest import burstable, exclusive, pod

P = pod()
PLACING = (StaticPolicy, TopologyAwarePolicy, BalloonsPolicy)
NONE = CPUSet()


def make(cls: Type[Policy], t: Topology) -> Policy:
    return cls(t, CPUSet.of(0), {})


@pytest.mark.parametrize("cls", (*PLACING, NonePolicy))
def test_the_shared_parts_live_in_the_base(cls: Type[Policy]) -> None:
    for name in ("placements", "restore", "_rename_records", "_place_preserved"):
        assert name not in vars(cls), f"{cls.__name__} has its own {name}"


@pytest.mark.parametrize("cls", PLACING)
def test_restore_comes_first(cls: Type[Policy], desktop: Topology) -> None:
    p = make(cls, desktop)
    p.allocate("a", P, burstable("a"))
    with pytest.raises(PolicyError, match=f"before any other call of the {cls.NAME} policy"):
        p.restore([])


@pytest.mark.parametrize("cls", PLACING)
def test_restore_takes_the_first_of_a_key_listed_twice(
    cls: Type[Policy], desktop: Topology, caplog: pytest.LogCaptureFixture
) -> None:
    p1 = make(cls, desktop)
    p1.allocate("a", P, burstable("a"))
    first = p1.placements()["a"]
    second = Placement(cpus=CPUSet.of(5), cpu_class=EXCLUSIVE, exclusive=CPUSet.of(5))
    p2 = make(cls, desktop)
    with caplog.at_level(logging.WARNING, logger=cls.__module__):
        d = p2.restore([("a", P, burstable("a"), first), ("a", P, burstable("a"), second)])
    assert "restore: a listed twice; using the first entry" in caplog.text
    assert {r.name for r in caplog.records} == {cls.__module__}
    assert p2.placements() == {"a": first} and not d.updates


@pytest.mark.parametrize("cls", PLACING)
def test_restore_answers_what_changed(cls: Type[Policy], desktop: Topology) -> None:
    p1 = make(cls, desktop)
    p1.allocate("a", P, burstable("a"))
    kept = p1.placements()["a"]
    stale = Placement(cpus=CPUSet.of(1), cpu_class=SHARED, pool=kept.pool)
    p2 = make(cls, desktop)
    d = p2.restore([("a", P, burstable("a"), kept), ("b", P, burstable("b"), stale)])
    assert set(d.updates) == {"b"} and d.updates["b"] == p2.placements()["b"]


@pytest.mark.parametrize("cls", PLACING)
def test_rename(cls: Type[Policy], desktop: Topology) -> None:
    p = make(cls, desktop)
    p.allocate("tmp", P, exclusive("x", 2))
    p.allocate("other", P, burstable("o"))
    placement = p.placements()["tmp"]
    with pytest.raises(PolicyError, match=r"'other' is already placed \(default/pod:o\)"):
        p.rename("tmp", "other")
    p.rename("tmp", "tmp")
    p.rename("unknown", "new")
    assert set(p.placements()) == {"tmp", "other"}
    p.rename("tmp", "cid")
    assert p.placements() == {"cid": placement, "other": p.placements()["other"]}
    p.release("cid")
    assert set(p.placements()) == {"other"}


@pytest.mark.parametrize("cls", (StaticPolicy, BalloonsPolicy))
def test_preserved_placements(cls: Type[Policy], desktop: Topology) -> None:
    """Adopted untouched at restore, renamed, placed properly at a resize; a resize
    that cannot be done leaves them preserved."""
    kept = Placement(cpus=CPUSet.of(3), cpu_class=PRESERVED)
    p = make(cls, desktop)
    if cls is BalloonsPolicy:  # a balloon type that cannot hold 64 CPUs
        web = {"namespaces": ("default",), "max-cpus": 2}
        p = BalloonsPolicy(desktop, CPUSet.of(0), {"types": (("web", web),)})
    assert not p.restore([("tmp", P, burstable("k"), kept)]).updates
    p.rename("tmp", "k")
    assert p.placements() == {"k": kept}
    with pytest.raises(PolicyError):
        p.update("k", P, exclusive("k", 64))
    assert p.placements() == {"k": kept}
    d = p.update("k", P, burstable("k"))
    assert d.placement is not None and d.placement.cpu_class != PRESERVED
    assert p.placements() == {"k": d.placement}


def test_exclusive_problem(desktop: Topology) -> None:
    p: Policy = make(StaticPolicy, desktop)
    owners: Callable[[CPUSet], list] = lambda cpus: ["ns/p:c"]  # noqa: E731

    def problem(placement: Placement, count: int = 2, owned: CPUSet = NONE) -> str:
        return p._exclusive_problem(placement, count, owned, owners)  # noqa: SLF001

    two = CPUSet.of(4, 5)
    ok = Placement(cpus=two, cpu_class=EXCLUSIVE, exclusive=two)
    assert problem(ok) == ""
    assert problem(Placement(cpus=two)) == "it was shared, not exclusive"
    assert problem(ok, 3) == "it held 2 exclusive CPUs but asks for 3"
    off = CPUSet.of(4, 99)
    assert problem(Placement(off, cpu_class=EXCLUSIVE, exclusive=off)) == "CPUs 99 are not online"
    res = CPUSet.of(0, 4)
    assert problem(Placement(res, cpu_class=EXCLUSIVE, exclusive=res)) == "CPUs 0 are reserved now"
    assert problem(ok, owned=CPUSet.of(5)) == "CPUs 5 are already exclusive to ns/p:c"


@pytest.mark.parametrize("cls", (*PLACING, NonePolicy))
def test_reserved_cpus_are_online(cls: Type[Policy], desktop: Topology) -> None:
    """`reserve.resolve_reserved` refuses offline CPUs before a policy sees them."""
    with pytest.raises(AssertionError, match="reserved CPUs 64 offline"):
        cls(desktop, CPUSet.of(0, 64), {})


@pytest.mark.parametrize("cls", (StaticPolicy, TopologyAwarePolicy))
def test_options_default_to_the_configuration(cls: Type[Policy], desktop: Topology) -> None:
    p = make(cls, desktop)
    assert p.options == dict(cfg.default_config().policy_options(cls.NAME))


def test_with_defaults() -> None:
    assert with_defaults("policy.memtier", {"pin-cpu": False}) == {
        **cfg.default_config().policy_options("topology-aware"),
        "pin-cpu": False,
    }
    assert with_defaults("policy.balloons", {"types": ()}, extra=("types",)) == {
        "on-error": "fail",
        "types": (),
    }
    with pytest.raises(PolicyError, match=r"\[policy.static\] has no option types"):
        with_defaults("policy.static", {"types": ()})
    with pytest.raises(PolicyError, match="on-error = 'later': unknown value"):
        with_defaults("policy.static", {"on-error": "later"})
