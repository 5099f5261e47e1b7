"""Turning the ``[policy] reserved-cpus`` setting into the CPUs it reserves.

This module owns `resolve_reserved(topology, reservation) -> CPUSet`. A reservation
(`config.CPUReservation`) is either exact CPUs or an amount in milli-CPUs:

* exact CPUs must all exist and be online; otherwise a `ConfigError` names the
  offline or nonexistent ones and the online CPUs;
* an amount is rounded up to whole CPUs (``1500m`` -> 2 CPUs) and taken from the
  lowest cores in topology order (package 0, die 0, node 0, core 0, ...), all threads
  of a core together, as kubelet does for ``--kube-reserved``/``--system-reserved``:
  2 CPUs on a machine with 2 threads per core are both threads of the first core.
  Kernel-isolated CPUs (``isolcpus``) come last: system tasks need load balancing.
  An amount larger than the online CPUs is a `ConfigError`.

The result is what `Policy.__init__` gets as ``reserved``.
"""

from __future__ import annotations

import logging
from typing import Optional

from cri_resmgr.config import CPUReservation
from cri_resmgr.errors import ConfigError, Problem
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

__all__ = ["resolve_reserved"]

log = logging.getLogger(__name__)


def resolve_reserved(
    topology: Topology,
    reservation: CPUReservation,
    *,
    file: str = "",
    line: Optional[int] = None,
) -> CPUSet:
    """The reserved CPUs of ``reservation`` on this machine.

    ``file``/``line`` say where the setting came from (``Setting.file``/``.line``) for
    the error message. Raises `ConfigError` (one `Problem` for ``[policy]
    reserved-cpus``) when listed CPUs are offline or do not exist, or when the amount
    is more than the online CPUs.
    """

    def problem(message: str, allowed: str) -> ConfigError:
        return ConfigError(
            [
                Problem(
                    file=file,
                    line=line,
                    section="policy",
                    key="reserved-cpus",
                    value=str(reservation),
                    message=message,
                    allowed=allowed,
                )
            ]
        )

    online = topology.online
    if reservation.cpus is not None:
        cpus = reservation.cpus
        offline = cpus & topology.offline
        missing = cpus - online - topology.offline
        if offline or missing:
            parts = []
            if offline:
                parts.append(f"CPUs {offline} are offline")
            if missing:
                parts.append(f"CPUs {missing} do not exist on this machine")
            raise problem("; ".join(parts), f"online CPUs {online}")
        return cpus

    count = -(-reservation.milli_cpus // 1000)  # round up to whole CPUs
    if count > len(online):
        raise problem(
            f"reserves {count} CPUs but the machine has only {len(online)} online",
            f"an amount up to {len(online)} CPUs, or a list of online CPUs ({online})",
        )
    order = topology.cpus_sorted_by_topology()
    isolated = topology.isolated
    ordered = [c for c in order if c not in isolated] + [c for c in order if c in isolated]
    reserved = CPUSet(ordered[:count])
    if count == len(online):
        log.warning("reserved-cpus %s reserves every online CPU (%s)", reservation, online)
    log.debug("reserved-cpus %s -> CPUs %s", reservation, reserved)
    return reserved
