"""The static policy: exclusive CPUs, the shared pool and its updates, resize, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import pytest

from cri_resmgr import config as cfg
from cri_resmgr.errors import AllocationError, ConfigError, PolicyError
from cri_resmgr.policy.base import EXCLUSIVE, SHARED, Placement
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology, load

from .conftest import ALL, besteffort, burstable, ctr, exclusive, pod

P = pod()


def static(t: Topology, reserved: str = "0", **options: object) -> StaticPolicy:
    opts = {k.replace("_", "-"): v for k, v in options.items()}
    return StaticPolicy(t, CPUSet.parse(reserved), opts)


def check(p: StaticPolicy) -> None:
    """The invariants every state must satisfy."""
    t = p.topology
    owned = CPUSet()
    for key, cpus in p.exclusive_cpus().items():
        assert not cpus & owned, f"{key}: {cpus} doubly owned"
        assert not cpus & p.reserved, f"{key}: {cpus} reserved"
        owned |= cpus
        pl = p.placements()[key]
        assert pl.cpu_class == EXCLUSIVE and pl.cpus == cpus == pl.exclusive
    expect = t.online - t.isolated - owned
    if p.strict_reservation:
        expect = expect - p.reserved
    assert p.shared_pool == expect
    assert p.pools()["shared"] == expect
    for pl in p.placements().values():
        if pl.cpu_class == SHARED:
            assert pl.cpus == p.shared_pool


def test_shared_containers_get_the_pool(server: Topology) -> None:
    p = static(server, "0,56")
    d = p.allocate("a", P, burstable("a"))
    assert d.placement is not None and not d.updates
    assert d.placement.cpu_class == SHARED
    assert d.placement.cpus == server.online - server.isolated
    assert d.placement.mems == CPUSet.of(0, 1, 2, 3)
    assert d.placement.exclusive == CPUSet()
    for c in (besteffort("b"), ctr("c", 1500), ctr("d", 0)):
        assert p.allocate(c.name, P, c).placement == d.placement
    check(p)


def test_exclusive_placement_and_shared_updates(server: Topology) -> None:
    p = static(server, "0,56")
    p.allocate("s1", P, burstable("s1"))
    p.allocate("s2", P, besteffort("s2"))
    d = p.allocate("x", P, exclusive("x", 4))
    pl = d.placement
    assert pl is not None
    assert pl.cpu_class == EXCLUSIVE and pl.exclusive == pl.cpus and len(pl.cpus) == 4
    assert pl.mems == CPUSet({server.node_of(c) for c in pl.cpus})
    assert len(pl.mems) == 1
    assert not pl.cpus & server.isolated
    assert set(d.updates) == {"s1", "s2"}
    for upd in d.updates.values():
        assert upd.cpus == server.online - server.isolated - pl.cpus
    check(p)
    # a second shared container arrives: no updates
    d2 = p.allocate("s3", P, burstable("s3"))
    assert not d2.updates and d2.placement == d.updates["s1"]


def test_single_cpu_prefers_isolated(server: Topology) -> None:
    p = static(server, "0,56")
    p.allocate("s", P, burstable("s"))
    d = p.allocate("one", P, exclusive("one", 1))
    assert d.placement is not None and d.placement.cpus <= server.isolated
    assert not d.updates  # the shared pool never had isolated CPUs
    d2 = p.allocate("two", P, exclusive("two", 2))
    assert d2.placement is not None and not d2.placement.cpus & server.isolated
    assert set(d2.updates) == {"s"}
    check(p)


def test_reserved_never_exclusive_and_clear_error(desktop: Topology) -> None:
    p = static(desktop, "0,10")
    got = CPUSet()
    for i in range(17):
        d = p.allocate(f"x{i}", P, exclusive(f"x{i}", 1))
        assert d.placement is not None
        got |= d.placement.cpus
    assert not got & CPUSet.of(0, 10)
    assert p.shared_pool == CPUSet.of(0, 10) | (desktop.online - got - CPUSet.of(0, 10))
    with pytest.raises(AllocationError) as exc:
        p.allocate("big", P, exclusive("big", 2, pod_name="web"))
    text = str(exc.value)
    assert "default/web:big" in text and " 2 exclusive CPUs" in text and "1 are free" in text
    check(p)


def test_allocation_error_changes_nothing(snc80: Topology) -> None:
    p = static(snc80, "0")
    p.allocate("s", P, burstable("s"))
    p.allocate("x", P, exclusive("x", 60))
    before = p.placements()
    with pytest.raises(AllocationError, match="asks|free"):
        p.allocate("y", P, exclusive("y", 20))
    assert p.placements() == before
    check(p)


def test_strict_reservation(desktop: Topology) -> None:
    p = static(desktop, "0,10", strict_reservation=True)
    d = p.allocate("s", P, burstable("s"))
    assert d.placement is not None and d.placement.cpus == desktop.online - CPUSet.of(0, 10)
    # the shared pool is never emptied: 17 of 18 non-reserved CPUs can be exclusive
    p.allocate("x", P, exclusive("x", 17))
    assert len(p.shared_pool) == 1
    with pytest.raises(AllocationError, match="no CPU for the shared pool"):
        p.allocate("y", P, exclusive("y", 1))
    check(p)


def test_without_strict_reserved_cpus_are_shared(desktop: Topology) -> None:
    p = static(desktop, "0,10")
    p.allocate("x", P, exclusive("x", 18))
    assert p.shared_pool == CPUSet.of(0, 10)
    check(p)


def test_full_pcpus_only(desktop: Topology) -> None:
    p = static(desktop, "0", full_pcpus_only=True)
    with pytest.raises(PolicyError, match="multiple of the 2 threads per core"):
        p.allocate("odd", P, exclusive("odd", 3))
    d = p.allocate("even", P, exclusive("even", 4))
    assert d.placement is not None and p.allocator.is_whole_cores(d.placement.cpus)
    # CPU 0 is reserved: its sibling 10 is no whole core; 9 whole cores remain - 2 used
    with pytest.raises(AllocationError, match="whole cores"):
        p.allocate("big", P, exclusive("big", 16))
    assert p.allocate("fits", P, exclusive("fits", 14)).placement is not None
    check(p)


def test_release_is_an_exact_undo(server: Topology) -> None:
    p = static(server, "0,56")
    for i in range(3):
        p.allocate(f"s{i}", P, burstable(f"s{i}"))
    p.allocate("x", P, exclusive("x", 8))
    before = p.placements()
    pool = p.shared_pool
    d = p.allocate("y", P, exclusive("y", 6))
    assert set(d.updates) == {"s0", "s1", "s2"}
    r = p.release("y")
    assert r.placement is None
    assert set(r.updates) == {"s0", "s1", "s2"}
    assert all(u.cpus == pool for u in r.updates.values())
    assert p.placements() == before
    # shared container release: no updates; unknown key ignored
    assert p.release("s0") == p.release("nope")
    check(p)


def test_resize_grow_shrink_and_class_moves(snc80: Topology) -> None:
    t = snc80
    p = static(t, "0")
    p.allocate("s", P, burstable("s"))
    d = p.allocate("x", P, exclusive("x", 4))
    assert d.placement is not None
    first = d.placement.cpus
    grown = p.update("x", P, exclusive("x", 8))
    assert grown.placement is not None
    assert first < grown.placement.cpus and len(grown.placement.cpus) == 8
    assert {t.node_of(c) for c in grown.placement.cpus} == {t.node_of(first.first())}
    assert set(grown.updates) == {"s"}
    shrunk = p.update("x", P, exclusive("x", 3))
    assert shrunk.placement is not None
    assert shrunk.placement.cpus < grown.placement.cpus and len(shrunk.placement.cpus) == 3
    same = p.update("x", P, exclusive("x", 3))
    assert same.placement == shrunk.placement and not same.updates
    check(p)
    # exclusive -> shared and back
    to_shared = p.update("x", P, ctr("x", 2500))
    assert to_shared.placement is not None and to_shared.placement.cpu_class == SHARED
    assert "x" not in to_shared.updates and set(to_shared.updates) == {"s"}
    check(p)
    back = p.update("x", P, exclusive("x", 2))
    assert back.placement is not None and back.placement.cpu_class == EXCLUSIVE
    assert set(back.updates) == {"s"}
    check(p)


def test_resize_failure_keeps_the_old_placement(desktop: Topology) -> None:
    p = static(desktop, "0")
    p.allocate("x", P, exclusive("x", 4))
    p.allocate("y", P, exclusive("y", 12))
    before = p.placements()
    with pytest.raises(AllocationError) as exc:
        p.update("x", P, exclusive("x", 8))
    assert "cannot grow default/pod:x from 4 to 8" in str(exc.value)
    assert "4 more, 3 are free" in str(exc.value)
    assert p.placements() == before
    check(p)


def test_update_of_unknown_key_allocates(desktop: Topology) -> None:
    p = static(desktop)
    d = p.update("new", P, exclusive("new", 2))
    assert d.placement is not None and d.placement.cpu_class == EXCLUSIVE
    # allocate of a known key is a resize
    d2 = p.allocate("new", P, exclusive("new", 2))
    assert d2.placement == d.placement


def test_rename(desktop: Topology) -> None:
    p = static(desktop)
    p.allocate("tmp-1", P, exclusive("a", 2))
    p.allocate("tmp-2", P, burstable("b"))
    p.rename("tmp-1", "cid-1")
    p.rename("tmp-2", "cid-2")
    p.rename("unknown", "x")  # ignored
    assert set(p.placements()) == {"cid-1", "cid-2"}
    assert set(p.exclusive_cpus()) == {"cid-1"}
    d = p.allocate("tmp-3", P, exclusive("c", 2))
    assert set(d.updates) == {"cid-2"}
    with pytest.raises(PolicyError, match="already placed"):
        p.rename("tmp-3", "cid-1")
    assert set(p.release("cid-1").updates) == {"cid-2"}
    check(p)


def test_reconfigure_strict_reservation_moves_shared(desktop: Topology) -> None:
    p = static(desktop, "0,10")
    p.allocate("s", P, burstable("s"))
    d = p.reconfigure({"strict-reservation": True})
    assert set(d.updates) == {"s"}
    assert d.updates["s"].cpus == desktop.online - CPUSet.of(0, 10)
    assert not p.reconfigure({"full-pcpus-only": True}).updates
    assert p.full_pcpus_only
    check(p)
    with pytest.raises(PolicyError, match="no option"):
        p.reconfigure({"bogus": 1})


def test_bad_options_and_reserved(desktop: Topology) -> None:
    with pytest.raises(PolicyError, match="no option frobnicate"):
        StaticPolicy(desktop, CPUSet.of(0), {"frobnicate": True})
    with pytest.raises(PolicyError, match="strict-reservation = 'maybe': not a boolean"):
        StaticPolicy(desktop, CPUSet.of(0), {"strict-reservation": "maybe"})
    assert StaticPolicy(desktop, CPUSet.of(0), {"strict-reservation": "yes"}).strict_reservation
    with pytest.raises(ConfigError, match="no CPU is left for the shared pool"):
        StaticPolicy(desktop, desktop.online, {"strict-reservation": True})
    # the config's defaults are accepted
    StaticPolicy(
        desktop,
        CPUSet.of(0),
        {"on-error": "fail", "strict-reservation": False, "full-pcpus-only": False},
    )


def test_pools(desktop: Topology) -> None:
    p = static(desktop, "0")
    d = p.allocate("x", P, exclusive("x", 2))
    assert d.placement is not None
    pools = p.pools()
    assert pools["reserved"] == CPUSet.of(0)
    assert pools["exclusive"] == d.placement.cpus
    assert pools["shared"] == desktop.online - d.placement.cpus


@pytest.mark.parametrize("name", ALL)
def test_fill_and_drain_every_machine(name: str, machine: Callable[[str], Topology]) -> None:
    t = machine(name)
    reserved = t.cpus_sorted_by_topology()[: t.threads_per_core]
    p = StaticPolicy(t, CPUSet(reserved), {})
    for i in range(3):
        p.allocate(f"s{i}", P, burstable(f"s{i}"))
    placed: Dict[str, Placement] = {}
    i = 0
    while True:
        size = 1 + i % 5
        try:
            d = p.allocate(f"x{i}", P, exclusive(f"x{i}", size))
        except AllocationError:
            break
        assert d.placement is not None
        placed[f"x{i}"] = d.placement
        check(p)
        i += 1
    assert i > 0
    owned = CPUSet().union(*(pl.cpus for pl in placed.values()))
    assert len(owned) > len(t.online) // 2
    for key in list(placed)[::-1]:
        p.release(key)
        check(p)
    assert p.shared_pool == t.online - t.isolated


@pytest.mark.parametrize(
    ("old", "new"),
    [(4, 8), (8, 3), (3, 0), (0, 2), (6, 5), (5, 6)],
)
def test_resizing_back_is_an_exact_undo(snc80: Topology, old: int, new: int) -> None:
    """The hooks undo a resize the runtime refused by resizing back: same placements."""
    p = static(snc80, "0")
    p.allocate("s", P, burstable("s"))
    p.allocate("a", P, exclusive("a", 3))
    p.allocate("x", P, exclusive("x", old) if old else burstable("x"))
    p.allocate("b", P, exclusive("b", 5))
    before = p.placements()
    d = p.update("x", P, exclusive("x", new) if new else burstable("x"))
    assert d.placement is not None
    back = p.update("x", P, exclusive("x", old) if old else burstable("x"))
    assert back.placement == before["x"]
    assert p.placements() == before
    check(p)


def test_resizing_back_picks_anew_when_the_old_cpus_are_taken(desktop: Topology) -> None:
    p = static(desktop, "0")
    d = p.allocate("x", P, exclusive("x", 4))
    assert d.placement is not None
    old = d.placement.cpus
    p.update("x", P, exclusive("x", 2))
    # another container takes what x gave back
    p.allocate("y", P, exclusive("y", 17))
    with pytest.raises(AllocationError):
        p.update("x", P, exclusive("x", 4))
    p.release("y")
    p.allocate("z", P, exclusive("z", 1))
    grown = p.update("x", P, exclusive("x", 4))
    assert grown.placement is not None and len(grown.placement.cpus) == 4
    assert grown.placement.cpus != old or not p.exclusive_cpus()["z"] & old
    check(p)


def test_isolated_cpus_keep_the_shared_pool_alive(machine: Callable[[str], Topology]) -> None:
    t = machine("nosmt-iso")  # CPUs 0-4,6-11 online, 10-11 isolated, no SMT
    p = StaticPolicy(t, CPUSet.of(0), {"strict-reservation": True})
    p.allocate("s", P, burstable("s"))
    p.allocate("x", P, exclusive("x", 5))  # 8 non-isolated CPUs: 3 stay shared
    assert len(p.shared_pool) == 3 and p.exclusive_cpus()["x"].isdisjoint(t.isolated)
    # 3 more would empty the pool if taken from the non-isolated CPUs: the isolated
    # ones fill in and the pool keeps its CPUs
    d = p.allocate("y", P, exclusive("y", 3))
    assert d.placement is not None and d.placement.cpus & t.isolated
    assert p.shared_pool
    check(p)
    with pytest.raises(AllocationError, match="no CPU for the shared pool"):
        spare = t.isolated - p.pools()["exclusive"]
        p.allocate("z", P, exclusive("z", len(p.shared_pool) + len(spare)))
    check(p)


# --- checks against the machine (start and reload) -------------------------------------------


def test_validate_refuses_a_strict_reservation_that_empties_the_pool(
    desktop: Topology, tmp_path: Path
) -> None:
    """What the service asks before it starts or accepts a reload: the problem names the
    setting and where it came from; nothing is built."""
    (tmp_path / "10.conf").write_text(
        "[policy]\nname = static\nreserved-cpus = 0-19\n\n"
        "[policy.static]\nstrict-reservation = true\n"
    )
    config = cfg.load(str(tmp_path))
    options = config.policy_options("static")
    with pytest.raises(ConfigError) as info:
        StaticPolicy.validate(desktop, desktop.online, options, config=config)
    (problem,) = info.value.problems
    assert (problem.file, problem.line) == (str(tmp_path / "10.conf"), 6)
    assert (problem.section, problem.key, problem.value) == (
        "policy.static",
        "strict-reservation",
        "true",
    )
    assert "no CPU is left for the shared pool" in problem.message
    assert "[policy] reserved-cpus reserves 0-19" in problem.message
    assert problem.allowed == "false, or fewer [policy] reserved-cpus"
    # without strict-reservation the reserved CPUs are shared: fine
    StaticPolicy.validate(desktop, desktop.online, {**options, "strict-reservation": False})
    StaticPolicy.validate(desktop, CPUSet.of(0, 10), options, config=config)


def test_validate_refuses_a_machine_of_isolated_cpus(tmp_path: Path) -> None:
    t = load(
        synthetic.write_sysfs(tmp_path, cores_per_node=2, threads_per_core=1, isolated="0-1").root
    )
    with pytest.raises(ConfigError, match=r"\[policy\] name = \"static\": every online CPU is"):
        StaticPolicy.validate(t, CPUSet.of(0), {})


def test_reconfigure_refuses_to_empty_the_pool(tmp_path: Path) -> None:
    """strict-reservation turned on while exclusive containers own every other CPU: the
    reload is refused and nothing changes (no shared container moves to the reserved
    CPUs, full-pcpus-only stays as it was)."""
    t = load(
        synthetic.write_sysfs(tmp_path, cores_per_node=4, threads_per_core=1, isolated="3").root
    )
    p = static(t, "0")
    p.allocate("s", P, burstable("s"))
    p.allocate("x", P, exclusive("x", 2))
    before = p.placements()
    assert p.shared_pool == CPUSet.of(0)
    with pytest.raises(PolicyError, match="cannot turn on strict-reservation"):
        p.reconfigure({"strict-reservation": True, "full-pcpus-only": True})
    assert not p.strict_reservation and not p.full_pcpus_only
    assert p.options["strict-reservation"] is False
    assert p.placements() == before
    check(p)
    # the next exclusive request gets the isolated CPU, as before
    placement = p.allocate("y", P, exclusive("y", 1)).placement
    assert placement is not None and placement.exclusive == CPUSet.of(3)
    # once the exclusive CPUs are back, the same change is accepted
    p.release("x")
    d = p.reconfigure({"strict-reservation": True})
    assert p.strict_reservation and d.updates["s"].cpus == CPUSet.of(1, 2)
    check(p)
