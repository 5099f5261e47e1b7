"""The static policy: kubelet's static CPU manager, done in the CRI relay.

This module owns `StaticPolicy`: exclusive CPUs for Guaranteed containers with an
integer CPU request, one shared pool for everything else. The operator's manual is
the class docstring (``cri-resmgr -list-policies``, docs/policies.md); the design
decisions worth knowing when changing the code:

* **Accounting.** ``_exclusive`` maps key -> owned CPUs, ``_owned`` is their union;
  ``_shared`` holds the keys of shared containers (insertion order, for stable
  update lists); ``_preserved`` the placements adopted as they were (on-error=pass
  leftovers). ``_placements`` is the answer of `placements` and is kept in step.
  ``_previous`` remembers a container's exclusive CPUs before its last resize, so
  that resizing back (how the hooks undo a resize the runtime refused) returns to
  exactly those CPUs when they are still free.
* **Shared pool** = online CPUs - isolated CPUs - exclusive CPUs (- reserved CPUs
  with ``strict-reservation``). It is never empty: an exclusive allocation that
  would take its last CPU fails. Whenever it changes, every shared container's
  placement changes with it, and the decision lists all of them in ``updates``.
* **Isolated CPUs** (``isolcpus``) are never shared: the kernel does not balance
  tasks across them, so a shared container's threads could be stuck on one. They
  are handed out exclusively: a request for exactly one CPU prefers a free isolated
  CPU; larger requests use them only when the other CPUs are not enough (kubelet
  counts isolated CPUs as ordinary ones; Intel's static policy kept them apart, as
  we do).
* **Reserved CPUs** are never exclusive. Without ``strict-reservation`` they are part
  of the shared pool (kubelet's default), with it they are left to system tasks.
* **Picking** is `allocator.CPUAllocator.take` (whole packages/dies/nodes when the
  request covers them, whole cores in the fewest NUMA nodes with best fit, then
  single threads of partly used cores).
* **Memory**: ``cpuset.mems`` = the NUMA nodes of the container's CPUs (for shared
  containers: of the shared pool's CPUs). Memory-only nodes (PMEM, HBM, CXL) are
  not used by this policy.
* **Errors** leave the state exactly as it was (pick first, commit after).
* **Logging**: the policy logs decisions at DEBUG with reasons; the hooks log the one
  INFO line per placement. `restore` logs one INFO line per container it re-places.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

from cri_resmgr.errors import AllocationError, PolicyError
from cri_resmgr.policy.allocator import CPUAllocator
from cri_resmgr.policy.base import (
    EXCLUSIVE,
    PRESERVED,
    SHARED,
    Container,
    Decision,
    Entry,
    Placement,
    Pod,
    Policy,
    Problems,
    with_defaults,
)
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology

__all__ = ["EXCLUSIVE_POOL", "SHARED_POOL", "StaticPolicy"]

log = logging.getLogger(__name__)

SHARED_POOL = "shared"
_NO_CPUS = CPUSet()
EXCLUSIVE_POOL = "exclusive"

SECTION = "policy.static"


class StaticPolicy(Policy):
    """Exclusive CPUs for Guaranteed containers: kubelet's static CPU manager in the relay.

    What it does. A container of a Guaranteed pod whose CPU request is a whole
    number of CPUs (e.g. requests = limits = 4) gets that many CPUs of its own: no
    other container runs on them. Every other container (Burstable, BestEffort,
    Guaranteed with a fractional request such as 1500m) runs in the shared pool:
    all online CPUs minus the exclusive ones and minus kernel-isolated CPUs. When an
    exclusive allocation takes CPUs from the shared pool, or gives them back, every
    shared container is moved at once (UpdateContainerResources), so no shared
    container keeps running on freshly exclusive CPUs. cpuset.mems follows the CPUs:
    the NUMA nodes of the container's CPUs.

    Kubelet must run with cpuManagerPolicy: none (its default). With kubelet's own
    static CPU manager both would pin containers and fight over the CPUs.

    Picking CPUs. Whole sockets (packages), dies or NUMA nodes when the request
    covers them; otherwise whole cores inside the fewest NUMA nodes, preferring the
    node with the fewest free CPUs that still fits (so big holes stay for big
    requests); then single hyperthreads, from cores already partly used first.
    A single-CPU request prefers a kernel-isolated CPU (isolcpus) when one is free;
    isolated CPUs are never part of the shared pool.

    Reserved CPUs ([policy] reserved-cpus: a list, or an amount rounded up to whole
    CPUs and taken from the lowest cores) are never handed out exclusively. They stay
    in the shared pool unless strict-reservation is set.

    In-place resize (UpdateContainerResources from kubelet): an exclusive container
    grows by CPUs next to the ones it has, or shrinks by giving back its loosest
    CPUs; a container whose request becomes fractional moves to the shared pool and
    one whose request becomes a whole number moves to exclusive CPUs. Resizing back
    returns to the CPUs it had, when they are still free. When there are not enough
    free CPUs the resize fails with an error and nothing changes.

    Options ([policy.static]):
      strict-reservation = false  keep the reserved CPUs out of the shared pool too:
                                  only system and kube daemons run there (kubelet's
                                  strict-cpu-reservation).
      full-pcpus-only = false     hand out whole physical cores only; a request that
                                  is not a multiple of the threads per core fails
                                  (kubelet's full-pcpus-only).
      on-error = fail             fail: the CRI call fails and kubelet retries;
                                  pass: log and run the container unpinned.
    """

    NAME = "static"
    ALIASES = ()
    LIVE_OPTIONS = frozenset(("strict-reservation", "full-pcpus-only"))  # on-error: the hooks'

    def __init__(self, topology: Topology, reserved: CPUSet, options: Mapping[str, Any]) -> None:
        super().__init__(topology, reserved, options)
        self.validate(topology, reserved, self.options)
        self.options = with_defaults(SECTION, self.options)
        self.strict_reservation: bool = self.options["strict-reservation"]
        self.full_pcpus_only: bool = self.options["full-pcpus-only"]
        self.allocator = CPUAllocator(topology)
        self.threads_per_core = self.allocator.threads_per_core
        self._exclusive: Dict[str, CPUSet] = {}
        self._owned = CPUSet()
        self._shared: Dict[str, None] = {}
        # key -> its exclusive CPUs before its last resize: resizing back returns to them
        self._previous: Dict[str, CPUSet] = {}
        pool = self._pool_for(self._owned)
        assert pool, "validate() refuses a machine without CPUs for the shared pool"
        self._pool = pool
        self._shared_placement = self._make_shared(pool)
        log.debug(
            "static policy: reserved %s, isolated %s, shared pool %s%s%s",
            reserved,
            topology.isolated,
            pool,
            ", strict reservation" if self.strict_reservation else "",
            ", full cores only" if self.full_pcpus_only else "",
        )

    @classmethod
    def validate(
        cls, topology: Topology, reserved: CPUSet, options: Mapping[str, Any], config: Any = None
    ) -> None:
        """Refuse a machine and options that leave no CPU for the shared pool: every
        online CPU kernel-isolated, or (with strict-reservation) reserved or isolated.
        Raises `errors.ConfigError` (located with ``config``, a `config.Config`)."""
        values = with_defaults(SECTION, options)
        problems = Problems(config)
        usable = topology.online - topology.isolated
        machine = f"online {topology.online}, isolated {topology.isolated or 'none'}"
        if not usable:
            problems.add(
                "policy",
                "name",
                cls.NAME,
                f"every online CPU is kernel-isolated (isolcpus; {machine}): the static "
                "policy has no CPU for its shared pool",
            )
        elif values["strict-reservation"] and not usable - reserved:
            problems.add(
                SECTION,
                "strict-reservation",
                True,
                f"no CPU is left for the shared pool: [policy] reserved-cpus reserves "
                f"{reserved}, which is every online CPU that is not isolated ({machine}), "
                "and strict-reservation keeps them out of the pool",
                "false, or fewer [policy] reserved-cpus",
            )
        problems.check()

    # -- pools -----------------------------------------------------------------------

    def _pool_for(self, owned: CPUSet, strict: Optional[bool] = None) -> CPUSet:
        """The shared pool when ``owned`` CPUs are exclusive (``strict``:
        strict-reservation, the current one by default)."""
        pool = self.topology.online - self.topology.isolated - owned
        if self.strict_reservation if strict is None else strict:
            pool = pool - self.reserved
        return pool

    def _make_shared(self, pool: CPUSet) -> Placement:
        return Placement(
            cpus=pool,
            mems=self.allocator.mems_of(pool),
            cpu_class=SHARED,
            pool=SHARED_POOL,
        )

    def _make_exclusive(self, cpus: CPUSet) -> Placement:
        return Placement(
            cpus=cpus,
            mems=self.allocator.mems_of(cpus),
            cpu_class=EXCLUSIVE,
            pool=EXCLUSIVE_POOL,
            exclusive=cpus,
        )

    def _set_pool(self, exclude: Optional[str] = None) -> Dict[str, Placement]:
        """Recompute the shared pool from ``_owned``; the shared containers it moved.

        ``exclude``: a key not to list (the container the decision is about).
        """
        pool = self._pool_for(self._owned)
        if not pool:
            # only restore/reconfigure can get here (allocations refuse to empty it)
            fallback = self.reserved if self.reserved else self.topology.online
            fallback = fallback - self.topology.isolated or fallback
            log.warning(
                "no CPU left for the shared pool (exclusive %s, reserved %s); shared "
                "containers run on %s",
                self._owned,
                self.reserved,
                fallback,
            )
            pool = fallback
        if pool == self._pool:
            return {}
        log.debug("shared pool %s -> %s", self._pool, pool)
        self._pool = pool
        placement = self._shared_placement = self._make_shared(pool)
        updates: Dict[str, Placement] = {}
        for key in self._shared:
            self._placements[key] = placement
            if key != exclude:
                updates[key] = placement
        return updates

    # -- picking ----------------------------------------------------------------------

    def _check_full_cores(self, name: str, count: int) -> None:
        tpc = self.threads_per_core
        if self.full_pcpus_only and count % tpc:
            raise PolicyError(
                f"{name}: asks for {count} exclusive CPUs, which is not a multiple of the "
                f"{tpc} threads per core; full-pcpus-only hands out whole cores only"
            )

    def _pick(self, name: str, count: int, current: CPUSet = _NO_CPUS) -> CPUSet:
        """Pick ``count - len(current)`` more exclusive CPUs (``current``: already owned).

        Raises `AllocationError` naming ``name`` when there are not enough free CPUs
        or the pick would leave the shared pool empty; changes nothing.
        """
        self._check_full_cores(name, count)
        need = count - len(current)
        full = self.full_pcpus_only
        alloc = self.allocator
        isolated = self.topology.isolated
        taken = self._owned | self.reserved
        general = self.topology.online - isolated - taken
        spare_isolated = isolated - taken
        if current:
            prefer_isolated = current <= isolated
        else:
            prefer_isolated = count == 1
        tiers: List[Tuple[str, CPUSet]] = []
        if prefer_isolated and spare_isolated:
            tiers.append(("isolated", spare_isolated))
        tiers.append(("non-isolated", general))
        if spare_isolated:
            tiers.append(("any", general | spare_isolated))
            if not prefer_isolated:
                tiers.append(("isolated", spare_isolated))
        picked: Optional[CPUSet] = None
        what = ""
        empties_pool = False
        # the pool as `_owned` makes it: empty (the fallback of `_set_pool`, which
        # `self._pool` is then) only after a restore; a pick cannot shrink it further
        pool = self._pool_for(self._owned)
        for what, cands in tiers:  # noqa: B007 - `what` is logged below
            if alloc.capacity(cands, full) < need:
                continue
            picked = alloc.take(cands, need, near=current, full_cores=full)
            if not pool or self._pool_for(self._owned | picked):
                break
            # it would take the last shared CPUs (so `pool` <= `picked` <= `cands`):
            # try again leaving one (or a core) out
            picked = None
            empties_pool = True
            last = (pool & cands).last()
            spare = alloc.core_of(last) if full else CPUSet.of(last)
            if alloc.capacity(cands - spare, full) >= need:
                picked = alloc.take(cands - spare, need, near=current, full_cores=full)
                if self._pool_for(self._owned | picked):
                    break
                picked = None
        if picked is None:
            if empties_pool:
                raise AllocationError(
                    f"cannot give {name} {count} exclusive CPUs: that would leave no CPU "
                    f"for the shared pool ({self._pool} now)"
                )
            free = alloc.capacity(general | spare_isolated, full)
            unit = " in whole cores" if full else ""
            if current:
                head = (
                    f"cannot grow {name} from {len(current)} to {count} exclusive CPUs: "
                    f"it needs {need} more, {free} are free{unit}"
                )
            else:
                head = f"cannot give {name} {count} exclusive CPUs: {free} are free{unit}"
            raise AllocationError(
                f"{head} ({len(self.topology.online)} online, {len(self.reserved)} reserved, "
                f"{len(self._owned)} exclusive to {len(self._exclusive)} container(s))"
            )
        log.debug("%s: %d exclusive CPU(s) %s from %s CPUs", name, need, picked, what)
        return picked

    # -- records ------------------------------------------------------------------------

    def _forget(self, key: str) -> Optional[CPUSet]:
        """Drop every record of ``key``; its exclusive CPUs (owned stays to be fixed)."""
        self._placements.pop(key, None)
        self._names.pop(key, None)
        self._shared.pop(key, None)
        self._preserved.pop(key, None)
        self._previous.pop(key, None)
        return self._exclusive.pop(key, None)

    def _add_exclusive(self, key: str, name: str, cpus: CPUSet) -> Placement:
        placement = self._make_exclusive(cpus)
        self._exclusive[key] = cpus
        self._owned = self._owned | cpus
        self._placements[key] = placement
        self._names[key] = name
        return placement

    def _add_shared(self, key: str, name: str) -> None:
        self._shared[key] = None
        self._placements[key] = self._shared_placement
        self._names[key] = name

    # -- the Policy interface ---------------------------------------------------------------

    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        """Place a new container: exclusive CPUs or the shared pool.

        A key that is already placed is treated as a resize (`update`).
        """
        if key in self._placements:
            return self.update(key, pod, container)
        name = container.key
        count = container.exclusive_cpus
        if count == 0:
            self._add_shared(key, name)
            log.debug(
                "%s: shared pool %s (%s, %dm CPU requested)",
                name,
                self._pool,
                container.qos,
                container.cpu_request,
            )
            return Decision(placement=self._shared_placement)
        cpus = self._pick(name, count)
        placement = self._add_exclusive(key, name, cpus)
        updates = self._set_pool(exclude=key)
        log.debug(
            "%s: exclusive CPUs %s, mems %s; %d shared container(s) move to %s",
            name,
            cpus,
            placement.mems,
            len(updates),
            self._pool,
        )
        return Decision(placement=placement, updates=updates)

    def release(self, key: str) -> Decision:
        """Forget a container; its exclusive CPUs go back to the shared pool."""
        if key not in self._placements:
            return Decision()
        name = self._name_of(key)
        cpus = self._forget(key)
        if cpus is None:
            log.debug("%s: released", name)
            return Decision()
        self._owned = self._owned - cpus
        updates = self._set_pool()
        log.debug("%s: released exclusive CPUs %s; shared pool %s", name, cpus, self._pool)
        return Decision(updates=updates)

    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        """Resize: grow or shrink exclusive CPUs, or move between exclusive and shared.

        Raises `AllocationError`/`PolicyError` when the new size cannot be satisfied;
        the old placement stays then.
        """
        name = container.key
        if key not in self._placements:
            return self.allocate(key, pod, container)
        if key in self._preserved:
            return self._place_preserved(key, pod, container)
        count = container.exclusive_cpus
        current = self._exclusive.get(key)
        if current is None:
            if count == 0:
                return Decision(placement=self._shared_placement)
            cpus = self._previous_cpus(key, name, count, _NO_CPUS) or self._pick(name, count)
            del self._shared[key]
            self._previous.pop(key, None)
            placement = self._add_exclusive(key, name, cpus)
            updates = self._set_pool(exclude=key)
            log.debug("%s: resized from shared to exclusive CPUs %s", name, cpus)
            return Decision(placement=placement, updates=updates)
        have = len(current)
        if count == have:
            return Decision(placement=self._placements[key])
        if count == 0:
            del self._exclusive[key]
            self._owned = self._owned - current
            updates = self._set_pool(exclude=key)
            self._add_shared(key, name)
            self._previous[key] = current
            log.debug("%s: resized from exclusive CPUs %s to the shared pool", name, current)
            return Decision(placement=self._shared_placement, updates=updates)
        previous = self._previous_cpus(key, name, count, current)
        if previous is not None:
            cpus = previous
        elif count > have:
            cpus = current | self._pick(name, count, current)
        else:
            self._check_full_cores(name, count)
            cpus = self.allocator.keep(current, count, full_cores=self.full_pcpus_only)
        self._owned = (self._owned - current) | cpus
        self._exclusive[key] = cpus
        self._previous[key] = current
        placement = self._placements[key] = self._make_exclusive(cpus)
        updates = self._set_pool(exclude=key)
        log.debug("%s: resized exclusive CPUs %s -> %s", name, current, cpus)
        return Decision(placement=placement, updates=updates)

    def _previous_cpus(self, key: str, name: str, count: int, current: CPUSet) -> Optional[CPUSet]:
        """The CPUs ``key`` had before its last resize, if a resize to ``count`` can
        return to exactly them (so that resizing back, e.g. the hooks undoing a resize
        the runtime refused, restores the old placement); None otherwise."""
        previous = self._previous.get(key)
        if previous is None or len(previous) != count:
            return None
        self._check_full_cores(name, count)
        others = self._owned - current
        extra = previous - current
        if (
            extra & (others | self.reserved)
            or not extra <= self.topology.online
            or not self._pool_for(others | previous)
            or (self.full_pcpus_only and not self.allocator.is_whole_cores(previous))
        ):
            return None
        return previous

    def _restore(self, entries: List[Entry], persisted: Mapping[str, Placement]) -> None:
        """Adopt persisted placements; re-place the exclusive ones that no longer fit.

        An exclusive placement is kept when its CPUs are all online, none is reserved
        or owned by a container adopted before it, it has as many CPUs as the
        container asks, and (with full-pcpus-only) they are whole cores. Others are
        re-placed (one INFO line each); one that cannot be re-placed runs in the
        shared pool (a WARNING says so). Shared containers get the current shared
        pool. PRESERVED placements are adopted untouched.
        """
        redo: List[Tuple[str, Container, str]] = []
        for key, _pod, container, placement in entries:
            name = container.key
            if placement.cpu_class == PRESERVED:
                self._adopt_preserved(key, name, placement)
                continue
            count = container.exclusive_cpus
            if count == 0:
                self._add_shared(key, name)
                continue
            problem = self._restore_problem(placement, count)
            if problem:
                redo.append((key, container, problem))
                continue
            self._add_exclusive(key, name, placement.exclusive)

        self._set_pool()

        for key, container, problem in redo:
            name = container.key
            old = persisted[key]
            try:
                cpus = self._pick(name, container.exclusive_cpus)
            except PolicyError as exc:
                log.warning(
                    "restore: %s: %s; cannot re-place it (%s), it runs in the shared pool",
                    name,
                    problem,
                    exc,
                )
                self._add_shared(key, name)
                continue
            self._add_exclusive(key, name, cpus)
            self._set_pool()
            log.info(
                "restore: re-placed %s: %s; was %s CPUs %s, now exclusive CPUs %s",
                name,
                problem,
                old.cpu_class,
                old.cpus,
                cpus,
            )
        log.debug(
            "restore: %d exclusive, %d shared; shared pool %s",
            len(self._exclusive),
            len(self._shared),
            self._pool,
        )

    def _restore_problem(self, placement: Placement, count: int) -> str:
        """Why a persisted placement cannot be kept as exclusive ("" if it can)."""
        problem = self._exclusive_problem(
            placement,
            count,
            self._owned,
            lambda double: (self._name_of(k) for k, c in self._exclusive.items() if c & double),
        )
        if problem or not self.full_pcpus_only:
            return problem
        if not self.allocator.is_whole_cores(placement.exclusive):
            return f"CPUs {placement.exclusive} are not whole cores (full-pcpus-only)"
        if count % self.threads_per_core:
            return "its request is not a multiple of the threads per core (full-pcpus-only)"
        return ""

    def rename(self, old: str, new: str) -> None:
        """Move a container's records from a provisional key to its container id."""
        if not self._rename_records(old, new):
            return
        if old in self._exclusive:
            self._exclusive[new] = self._exclusive.pop(old)
        if old in self._shared:
            # keep the order of the others; the renamed one goes last
            del self._shared[old]
            self._shared[new] = None
        if old in self._previous:
            self._previous[new] = self._previous.pop(old)

    def reconfigure(self, options: Mapping[str, Any]) -> Decision:
        """Apply changed strict-reservation / full-pcpus-only.

        strict-reservation moves every shared container (the pool changes);
        full-pcpus-only applies to later allocations and resizes. Turning on
        strict-reservation while exclusive containers own every CPU that is neither
        reserved nor isolated would leave the shared pool without a CPU: that raises
        `PolicyError` and changes nothing (the reload keeps the running options).
        """
        merged = with_defaults(SECTION, {**self.options, **options})
        strict: bool = merged["strict-reservation"]
        owned = self._owned
        if (
            strict != self.strict_reservation
            and self._pool_for(owned)
            and not self._pool_for(owned, strict)
        ):
            raise PolicyError(
                "cannot turn on strict-reservation: the shared pool would have no CPU left "
                f"(exclusive {owned} to {len(self._exclusive)} container(s), reserved "
                f"{self.reserved}, isolated {self.topology.isolated or 'none'}); nothing changed"
            )
        self.options = merged
        self.full_pcpus_only = merged["full-pcpus-only"]
        if strict == self.strict_reservation:
            return Decision()
        self.strict_reservation = strict
        return Decision(updates=self._set_pool())

    def pools(self) -> Mapping[str, CPUSet]:
        """``shared``, ``reserved`` and ``exclusive`` (all exclusively owned CPUs)."""
        return {
            SHARED_POOL: self._pool,
            "reserved": self.reserved,
            EXCLUSIVE_POOL: self._owned,
        }

    # -- introspection for status and tests --------------------------------------------------

    @property
    def shared_pool(self) -> CPUSet:
        """The CPUs shared containers run on now."""
        return self._pool

    def exclusive_cpus(self) -> Mapping[str, CPUSet]:
        """Key -> exclusively owned CPUs (a copy)."""
        return dict(self._exclusive)
