"""The exception tree of cri-resource-manager.

Every error a person can act on is a subclass of `Error` and its message names the
file, line, key or value at fault and what is allowed instead.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of all errors cri-resource-manager raises on purpose."""


class TopologyError(Error):
    """The hardware topology under the sysfs root is missing or unreadable."""
