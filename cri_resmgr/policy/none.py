"""The ``none`` policy (alias ``null``): a pure relay that never changes a request.

This module owns `NonePolicy`. Every decision is "leave the request as it is"
(``Decision()`` with no placement and no updates), nothing is tracked, nothing is
persisted. It is the default policy and the safe choice while trying
cri-resource-manager out: the node behaves exactly as if kubelet talked to the
runtime directly.
"""

from __future__ import annotations

from typing import List, Mapping

from cri_resmgr.policy.base import Container, Decision, Entry, Placement, Pod, Policy

__all__ = ["NonePolicy"]


class NonePolicy(Policy):
    """Forward every request unmodified: cri-resource-manager as a pure CRI relay.

    The none policy (alias null) makes no placement decisions: CreateContainer and
    UpdateContainerResources reach the runtime exactly as kubelet sent them, so
    containers get whatever cpuset kubelet (or nothing) asked for. Use it to put
    cri-resource-manager in the path without changing behaviour, for example to
    record traffic with the dump, or to switch a node back from another policy.

    Options: none ([policy.none] has no keys). Switching to another policy later
    starts that policy from a clean slate; switching from another policy to none
    leaves running containers where they are until they are re-created.
    """

    NAME = "none"
    ALIASES = ("null",)

    def allocate(self, key: str, pod: Pod, container: Container) -> Decision:
        """Leave the request untouched."""
        return Decision()

    def release(self, key: str) -> Decision:
        """Nothing to free."""
        return Decision()

    def update(self, key: str, pod: Pod, container: Container) -> Decision:
        """Leave the request untouched."""
        return Decision()

    def _restore(self, entries: List[Entry], persisted: Mapping[str, Placement]) -> None:
        """Ignore persisted placements (of this or another policy): nothing moves."""

    def rename(self, old: str, new: str) -> None:
        """Nothing is tracked by key."""
