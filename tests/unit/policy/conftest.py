"""Fixtures for the policy tests: real and generated machines, pod/container builders."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import pytest

from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED, Container, Pod
from cri_resmgr.resources import synthetic
from cri_resmgr.resources.topology import Topology, load

REAL = ("desktop", "server", "2-socket-4-node-40-core")

#: generated machines: name -> write_sysfs keyword arguments
GENERATED: Dict[str, Dict[str, object]] = {
    # 8 sockets x 28 cores x 2 threads = 448 CPUs, one node per socket
    "8-socket-448": dict(sockets=8, cores_per_node=28, threads_per_core=2),
    # 2 sockets x 2 dies x 2 SNC nodes x 4 cores x 2 threads = 64 CPUs
    "2s-2d-snc": dict(sockets=2, dies_per_socket=2, nodes_per_die=2, cores_per_node=4),
    # no SMT, 2 nodes, an isolated and an offline CPU, adjacent numbering
    "nosmt-iso": dict(
        sockets=1,
        nodes_per_die=2,
        cores_per_node=6,
        threads_per_core=1,
        isolated="10-11",
        offline="5",
    ),
    # SMT-4 (POWER-like), thread ids adjacent, one PMEM node
    "smt4": dict(
        sockets=2,
        cores_per_node=3,
        threads_per_core=4,
        smt_adjacent=True,
        memory_only_nodes=[("pmem", 0)],
    ),
}

ALL = REAL + tuple(GENERATED)


@pytest.fixture(scope="session")
def machine(
    topology_root: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Topology]:
    """Factory: ``machine("server")`` or ``machine("8-socket-448")`` -> `Topology` (cached)."""
    cache: Dict[str, Topology] = {}

    def get(name: str) -> Topology:
        if name not in cache:
            if name in GENERATED:
                root = tmp_path_factory.mktemp(f"machine-{name}")
                synthetic.write_sysfs(root, **GENERATED[name])  # type: ignore[arg-type]
                cache[name] = load(root)
            else:
                cache[name] = load(topology_root(name))
        return cache[name]

    return get


@pytest.fixture
def server(machine: Callable[[str], Topology]) -> Topology:
    return machine("server")


@pytest.fixture
def desktop(machine: Callable[[str], Topology]) -> Topology:
    return machine("desktop")


@pytest.fixture
def snc80(machine: Callable[[str], Topology]) -> Topology:
    return machine("2-socket-4-node-40-core")


def pod(name: str = "pod", namespace: str = "default", qos: str = GUARANTEED) -> Pod:
    return Pod(
        id=f"id-{namespace}-{name}", uid=f"uid-{name}", name=name, namespace=namespace, qos=qos
    )


def ctr(
    name: str,
    milli: int = 0,
    qos: str = GUARANTEED,
    pod_name: str = "pod",
    namespace: str = "default",
) -> Container:
    """A container requesting ``milli`` milli-CPUs (limit = request for Guaranteed)."""
    return Container(
        id="",
        pod_id=f"id-{namespace}-{pod_name}",
        name=name,
        pod_name=pod_name,
        namespace=namespace,
        qos=qos,
        cpu_request=milli,
        cpu_limit=milli if qos == GUARANTEED else 0,
    )


def exclusive(name: str, cpus: int, pod_name: str = "pod") -> Container:
    return ctr(name, cpus * 1000, GUARANTEED, pod_name)


def burstable(name: str, milli: int = 500) -> Container:
    return ctr(name, milli, BURSTABLE)


def besteffort(name: str) -> Container:
    return ctr(name, 0, BESTEFFORT)
