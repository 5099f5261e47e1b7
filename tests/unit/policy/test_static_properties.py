"""Property-style runs of the static policy: random allocate/release/resize/rename sequences.

After every step: no CPU is exclusive to two containers, no reserved CPU is exclusive,
the shared pool is the allowed CPUs minus the exclusive ones (minus reserved with
strict-reservation), a failed step changes nothing, and a decision's updates are
exactly the other containers whose placement changed (all of them shared).
"""

from __future__ import annotations

import random
from typing import Callable, Dict

import pytest

from cri_resmgr.errors import PolicyError
from cri_resmgr.policy.base import (
    BESTEFFORT,
    BURSTABLE,
    GUARANTEED,
    SHARED,
    Container,
    Decision,
    Placement,
)
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

from .conftest import ALL, ctr, pod
from .test_static import check

P = pod()


def random_container(rng: random.Random, name: str, ncpus: int) -> Container:
    kind = rng.random()
    if kind < 0.5:
        return ctr(name, 1000 * rng.randint(1, max(1, ncpus // 6)), GUARANTEED)
    if kind < 0.65:
        return ctr(name, rng.choice((100, 500, 1500, 2500)), GUARANTEED)
    if kind < 0.85:
        return ctr(name, rng.randint(0, 4000), BURSTABLE)
    return ctr(name, 0, BESTEFFORT)


def expect_updates(
    before: Dict[str, Placement], after: Dict[str, Placement], d: Decision, subject: str
) -> None:
    changed = {k for k in after if k in before and k != subject and after[k] != before[k]}
    assert set(d.updates) == changed
    for key, placement in d.updates.items():
        assert placement == after[key]
        assert placement.cpu_class == SHARED


class Run:
    """One random sequence against one policy, with the live containers it placed."""

    def __init__(self, p: StaticPolicy, rng: random.Random) -> None:
        self.p = p
        self.rng = rng
        self.live: Dict[str, Container] = {}
        self.n = 0
        self.ncpus = len(p.topology.online)

    def new_key(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def allocate(self, before: Dict[str, Placement]) -> None:
        key = self.new_key("k")
        c = random_container(self.rng, f"c{self.n}", self.ncpus)
        d = self.p.allocate(key, P, c)
        self.live[key] = c
        assert d.placement == self.p.placements()[key]
        expect_updates(before, dict(self.p.placements()), d, key)

    def release(self, before: Dict[str, Placement]) -> None:
        key = self.rng.choice(sorted(self.live))
        d = self.p.release(key)
        del self.live[key]
        assert key not in self.p.placements() and d.placement is None
        expect_updates(before, dict(self.p.placements()), d, key)

    def resize(self, before: Dict[str, Placement]) -> None:
        key = self.rng.choice(sorted(self.live))
        old = self.live[key]
        c = random_container(self.rng, old.name, self.ncpus)
        d = self.p.update(key, P, c)
        self.live[key] = c
        assert d.placement == self.p.placements()[key]
        expect_updates(before, dict(self.p.placements()), d, key)
        if self.rng.random() < 0.3:
            # the hooks undo a refused resize by resizing back: exactly as before
            after = dict(self.p.placements())
            back = self.p.update(key, P, old)
            self.live[key] = old
            assert dict(self.p.placements()) == before
            expect_updates(after, before, back, key)

    def rename(self, before: Dict[str, Placement]) -> None:
        key = self.rng.choice(sorted(self.live))
        new = self.new_key("id")
        self.p.rename(key, new)
        self.live[new] = self.live.pop(key)
        after = dict(self.p.placements())
        assert after.pop(new) == before.pop(key)
        assert after == before

    def step(self) -> None:
        p = self.p
        before = dict(p.placements())
        op = self.rng.random()
        try:
            if op < 0.5 or not self.live:
                self.allocate(before)
            elif op < 0.75:
                self.release(before)
            elif op < 0.95:
                self.resize(before)
            else:
                self.rename(dict(before))
        except PolicyError:
            assert dict(p.placements()) == before
        check(p)
        if p.full_pcpus_only:
            for cpus in p.exclusive_cpus().values():
                assert p.allocator.is_whole_cores(cpus)
        assert set(p.placements()) == set(self.live)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", ALL)
def test_random_sequences(name: str, seed: int, machine: Callable[[str], Topology]) -> None:
    t = machine(name)
    rng = random.Random(f"{name}-{seed}")
    order = t.cpus_sorted_by_topology()
    if seed % 2:
        reserved = CPUSet(rng.sample(order, rng.randint(1, 3)))
    else:
        reserved = CPUSet(order[: rng.randint(1, 4)])
    options = {"strict-reservation": seed == 1, "full-pcpus-only": seed == 2}
    run = Run(StaticPolicy(t, reserved, options), rng)
    for _step in range(250):
        run.step()
    for key in sorted(run.live):
        run.p.release(key)
    assert run.p.shared_pool == t.online - t.isolated - (reserved if seed == 1 else CPUSet())
