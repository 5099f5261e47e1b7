"""Property-style runs of the topology-aware policy: random allocate/release/resize/rename
sequences on every machine (real ones, SNC, dies, 4 and 8 sockets, memory-only nodes,
isolated and offline CPUs).

After every step (`test_topology_aware.check`): no CPU is exclusive to two containers,
no reserved CPU is handed out, shared containers run on their pool's shared CPUs and
never on isolated or exclusive ones, memory follows the CPUs; a decision's updates are
exactly the other containers whose placement changed; a failed step changes nothing;
restoring the placements into a fresh policy gives the same placements.
"""

from __future__ import annotations

import random
from typing import Callable, Dict

import pytest

from cri_resmgr.errors import PolicyError
from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED, Container, Placement
from cri_resmgr.policy.topology_aware import TopologyAwarePolicy
from cri_resmgr.resources.topology import Topology

from .conftest import ALL
from .test_topology_aware import (  # noqa: F401 - ta_machine is a fixture
    GIB,
    POD,
    TA_MACHINES,
    ann,
    check,
    ctr,
    expect_updates,
    make,
    ta_machine,
)

MACHINES = ALL + tuple(TA_MACHINES)
KINDS = ("dram", "pmem", "hbm", "dram,pmem", "dram,hbm", "mixed", "bogus")


def random_container(rng: random.Random, name: str, ncpus: int, pods: int) -> Container:
    pod = f"p{rng.randrange(pods)}"
    annotations: Dict[str, str] = {}
    roll = rng.random()
    if roll < 0.1:
        annotations.update(ann("memory-type", rng.choice(KINDS)))
    elif roll < 0.15:
        annotations.update(ann("prefer-isolated-cpus", rng.choice(("true", "false", "?"))))
    elif roll < 0.18:
        annotations.update(ann("cpu.preserve", "true", name))
    elif roll < 0.2:
        annotations.update(ann("prefer-shared-cpus", "true"))
    memory = rng.choice((0, 0, 256 << 20, 4 * GIB, 40 * GIB))
    ns = "kube-system" if rng.random() < 0.05 else "default"
    kind = rng.random()
    if kind < 0.45:
        milli = 1000 * rng.randint(1, max(1, ncpus // 6))
        return ctr(name, milli, GUARANTEED, pod=pod, ns=ns, memory=memory, annotations=annotations)
    if kind < 0.6:
        milli = rng.choice((100, 500, 1500, 2500))
        return ctr(name, milli, GUARANTEED, pod=pod, ns=ns, memory=memory, annotations=annotations)
    if kind < 0.85:
        milli = rng.randint(0, 4000)
        return ctr(name, milli, BURSTABLE, pod=pod, ns=ns, memory=memory, annotations=annotations)
    return ctr(name, 0, BESTEFFORT, pod=pod, ns=ns, annotations=annotations)


class Run:
    def __init__(self, p: TopologyAwarePolicy, rng: random.Random) -> None:
        self.p = p
        self.rng = rng
        self.live: Dict[str, Container] = {}
        self.n = 0
        self.ncpus = len(p.topology.online)

    def step(self) -> None:
        p, rng = self.p, self.rng
        before: Dict[str, Placement] = dict(p.placements())
        roll = rng.random()
        try:
            if not self.live or roll < 0.45:
                self.n += 1
                key = f"k{self.n}"
                c = random_container(rng, f"c{self.n}", self.ncpus, 6)
                d = p.allocate(key, POD, c)
                self.live[key] = c
                assert d.placement == p.placements()[key]
                expect_updates(before, p, d, key)
            elif roll < 0.7:
                key = rng.choice(sorted(self.live))
                d = p.release(key)
                del self.live[key]
                assert key not in p.placements()
                expect_updates(before, p, d)
            elif roll < 0.9:
                key = rng.choice(sorted(self.live))
                old = self.live[key]
                c = random_container(rng, old.name, self.ncpus, 6)
                c = ctr(
                    old.name,
                    c.cpu_request,
                    old.qos,
                    pod=old.pod_name,
                    ns=old.namespace,
                    memory=c.memory_limit,
                    annotations=old.pod_annotations,
                )
                d = p.update(key, POD, c)
                self.live[key] = c
                assert d.placement == p.placements()[key]
                expect_updates(before, p, d, key)
            else:
                key = rng.choice(sorted(self.live))
                self.n += 1
                new = f"id{self.n}"
                p.rename(key, new)
                self.live[new] = self.live.pop(key)
                assert p.placements()[new] == before[key]
                assert set(p.placements()) == set(before) - {key} | {new}
        except PolicyError:
            assert dict(p.placements()) == before, "a failed step changed placements"
        check(p)


@pytest.mark.parametrize("name", MACHINES)
def test_random_sequences(ta_machine: Callable[[str], Topology], name: str) -> None:  # noqa: F811
    topo = ta_machine(name)
    steps = 80 if len(topo.online) > 200 else 150
    for seed in range(2):
        rng = random.Random(f"{name}-{seed}")
        p = make(topo, reserved=rng.choice((1, 2, 3)))
        run = Run(p, rng)
        for _ in range(steps):
            run.step()
        # a restart: the placements restore as they were
        q = make(topo, reserved=str(p.reserved))
        saved = [(k, POD, run.live[k], pl) for k, pl in p.placements().items()]
        d = q.restore(saved)
        assert d.updates == {}, sorted(d.updates)
        assert q.placements() == p.placements()
        check(q)
        # and everything released leaves the machine as it was
        for key in list(run.live):
            p.release(key)
        assert not p.placements() and not p.exclusive_cpus()
        fresh = make(topo, reserved=str(p.reserved))
        assert p.pools() == fresh.pools()
