"""The exception tree of cri-resource-manager and its one mapping to gRPC status codes.

Every error a person can act on is a subclass of `Error` and its message names the
file, line, key or value at fault and what is allowed instead.

Tree::

    Error                       base of everything raised on purpose
    +-- ConfigError             bad configuration; carries every `Problem` found
    +-- TopologyError           hardware topology under the sysfs root unreadable
    +-- PolicyError             a policy cannot do what a request asks
    |   +-- AllocationError     not enough free CPUs/memory for a container
    +-- InvalidRequest          a CRI request we cannot accept (bad annotation, ...)
    +-- NotFound                a pod or container the request names is unknown
    +-- StateError              persisted state unreadable or cannot be written
    +-- RuntimeUnavailable      the container runtime does not answer

gRPC: `grpc_status(exc)` returns ``(code_name, details)`` where ``code_name`` is the
*name* of a ``grpc.StatusCode`` member as a string (``"INVALID_ARGUMENT"``). This
module deliberately does not import grpc (policy code imports it and must not pull
in grpc); the relay/hooks turn the name into a code with ``grpc.StatusCode[name]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = [
    "AllocationError",
    "ConfigError",
    "Error",
    "InvalidRequest",
    "NotFound",
    "PolicyError",
    "Problem",
    "RuntimeUnavailable",
    "StateError",
    "TopologyError",
    "clip",
    "grpc_status",
    "shorten",
    "GRPC_DETAILS_MAX",
]

# Longest details string grpc_status() returns (characters); details travel in a
# trailer and kubelet logs them, so a runaway message is cut here.
GRPC_DETAILS_MAX = 4096


def clip(text: str, limit: int) -> str:
    """`text` cut after `limit` characters, its full length said: for values that can be
    huge (an annotation, a config value) in logs, errors and gRPC details."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shorten(text: str, limit: int) -> str:
    """`text` cut in the middle (``head...tail``) when longer than `limit` characters:
    for names and numbers whose two ends tell them apart."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-(limit // 2) :]}"


class Error(Exception):
    """Base class of all errors cri-resource-manager raises on purpose."""

    #: name of the grpc.StatusCode member a CRI call failing with this error returns
    grpc_code = "INTERNAL"


#: Characters of a value a `Problem` shows (the file has the rest).
_SHOWN_VALUE = 200


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, located as precisely as known.

    ``file`` is a path, or a label such as ``"flag -relay-socket"`` for values that
    did not come from a file; ``line`` is 1-based or None; ``section``/``key`` are as
    written (None when the problem is not about one); ``value`` is the raw text;
    ``allowed`` describes what would have been accepted ("" when not applicable).
    """

    file: str
    line: Optional[int]
    section: Optional[str]
    key: Optional[str]
    value: Optional[str]
    message: str
    allowed: str = ""

    def __str__(self) -> str:
        where = self.file or "<configuration>"
        if self.line is not None:
            where += f":{self.line}"
        text = where + ": "
        if self.section is not None:
            text += f"[{self.section}]"
            if self.key is not None:
                text += f" {self.key}"
            if self.value is not None:
                value = clip(self.value, _SHOWN_VALUE)  # a 4000-character rule, printed once
                text += " = " + json.dumps(value, ensure_ascii=False)
            text += ": "
        text += self.message
        if self.allowed:
            text += f" (allowed: {self.allowed})"
        return text


class ConfigError(Error):
    """The configuration is invalid; ``problems`` lists everything found, in order.

    ``str()`` is one problem per line, ``FILE:LINE: [section] key = "value": message
    (allowed: ...)``.
    """

    grpc_code = "FAILED_PRECONDITION"

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: Tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration")


class TopologyError(Error):
    """The hardware topology under the sysfs root is missing or unreadable."""


class PolicyError(Error):
    """A resource policy cannot do what a request asks (generic policy failure)."""

    grpc_code = "FAILED_PRECONDITION"


class AllocationError(PolicyError):
    """Not enough free CPUs (or memory) to place a container; kubelet retries later."""

    grpc_code = "RESOURCE_EXHAUSTED"


class InvalidRequest(Error):
    """A CRI request cannot be accepted as it is (e.g. a malformed annotation)."""

    grpc_code = "INVALID_ARGUMENT"


class NotFound(Error):
    """A pod or container named by a request is not known."""

    grpc_code = "NOT_FOUND"


class StateError(Error):
    """Persisted state is unreadable, of an unknown version, or cannot be written."""

    grpc_code = "INTERNAL"


class RuntimeUnavailable(Error):
    """The container runtime does not answer (socket missing, refused, timed out)."""

    grpc_code = "UNAVAILABLE"


def grpc_status(exc: BaseException) -> Tuple[str, str]:
    """Map an exception to ``(grpc.StatusCode member name, details)`` for a CRI reply.

    Our errors use their class's ``grpc_code`` and the details are
    ``"cri-resmgr: <message>"`` so that kubelet's logs show who failed the call.
    ``TimeoutError`` maps to DEADLINE_EXCEEDED; anything else is an internal error
    (INTERNAL, details name the exception type). Details are cut at
    `GRPC_DETAILS_MAX` characters. The caller converts the name with
    ``grpc.StatusCode[name]``; no grpc import happens here.
    """
    if isinstance(exc, Error):
        code = exc.grpc_code
        details = f"cri-resmgr: {exc}"
    elif isinstance(exc, TimeoutError):
        code = "DEADLINE_EXCEEDED"
        details = f"cri-resmgr: timed out: {exc}" if str(exc) else "cri-resmgr: timed out"
    else:
        code = "INTERNAL"
        message = str(exc)
        details = f"cri-resmgr: internal error: {type(exc).__name__}"
        if message:
            details += f": {message}"
    if len(details) > GRPC_DETAILS_MAX:
        details = details[: GRPC_DETAILS_MAX - 3] + "..."
    return code, details
