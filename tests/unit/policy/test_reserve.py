"""resolve_reserved: CPU lists checked, amounts rounded up and taken from the lowest cores."""

from __future__ import annotations

from typing import Callable

import pytest

from cri_resmgr.config import CPUReservation, ReservedCPUs
from cri_resmgr.errors import ConfigError
from cri_resmgr.policy.reserve import resolve_reserved
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology


def res(text: str) -> CPUReservation:
    return ReservedCPUs().parse(text)


def test_amounts_take_whole_lowest_cores(desktop: Topology) -> None:
    # desktop cores are (i, i + 10)
    assert resolve_reserved(desktop, res("1")) == CPUSet.of(0)
    assert resolve_reserved(desktop, res("2")) == CPUSet.of(0, 10)
    assert resolve_reserved(desktop, res("1500m")) == CPUSet.of(0, 10)
    assert resolve_reserved(desktop, res("2.1")) == CPUSet.of(0, 10, 1)
    assert resolve_reserved(desktop, res("4")) == CPUSet.of(0, 10, 1, 11)


def test_amounts_skip_isolated_cpus(server: Topology) -> None:
    # node 0 of the server is every 4th CPU from 0; cores (i, i + 56); 4-7,60-63 isolated
    assert resolve_reserved(server, res("2")) == CPUSet.of(0, 56)
    assert resolve_reserved(server, res("4")) == CPUSet.of(0, 56, 8, 64)
    every = resolve_reserved(server, res("112"))
    assert every == server.online


def test_lists(snc80: Topology) -> None:
    assert resolve_reserved(snc80, res("0,40")) == CPUSet.of(0, 40)
    assert resolve_reserved(snc80, res("cpuset:5")) == CPUSet.of(5)


def test_too_many(desktop: Topology) -> None:
    with pytest.raises(ConfigError) as exc:
        resolve_reserved(desktop, res("21"), file="/etc/cri-resmgr/cri-resmgr.conf", line=7)
    text = str(exc.value)
    assert text.startswith('/etc/cri-resmgr/cri-resmgr.conf:7: [policy] reserved-cpus = "21"')
    assert "reserves 21 CPUs but the machine has only 20 online" in text


def test_offline_and_missing(machine: Callable[[str], Topology]) -> None:
    t = machine("nosmt-iso")  # CPU 5 offline, 0-11 present
    with pytest.raises(ConfigError) as exc:
        resolve_reserved(t, res("4-6,40"))
    text = str(exc.value)
    assert "CPUs 5 are offline" in text and "CPUs 40 do not exist" in text
    assert "allowed: online CPUs 0-4,6-11" in text
