"""Tests of cri_resmgr.errors: the exception tree, Problem text and grpc_status."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cri_resmgr import errors
from cri_resmgr.errors import (
    AllocationError,
    ConfigError,
    Error,
    InvalidRequest,
    NotFound,
    PolicyError,
    Problem,
    RuntimeUnavailable,
    StateError,
    TopologyError,
    grpc_status,
)


def test_tree() -> None:
    for cls in (
        ConfigError,
        TopologyError,
        PolicyError,
        AllocationError,
        InvalidRequest,
        NotFound,
        StateError,
        RuntimeUnavailable,
    ):
        assert issubclass(cls, Error)
    assert issubclass(AllocationError, PolicyError)
    assert issubclass(Error, Exception)


def test_problem_str_full() -> None:
    p = Problem(
        "/etc/cri-resmgr/10-a.conf",
        12,
        "relay",
        "socket",
        "rel/path",
        "not an absolute path",
        "an absolute path",
    )
    assert str(p) == (
        '/etc/cri-resmgr/10-a.conf:12: [relay] socket = "rel/path": not an absolute path'
        " (allowed: an absolute path)"
    )


def test_problem_str_partial() -> None:
    assert str(Problem("f.conf", 3, None, None, None, "syntax error")) == "f.conf:3: syntax error"
    assert str(Problem("f.conf", None, "foo", None, None, "unknown section")) == (
        "f.conf: [foo]: unknown section"
    )
    assert str(Problem("flag -policy", None, "policy", "name", "x", "bad")) == (
        'flag -policy: [policy] name = "x": bad'
    )


def test_problem_cuts_a_huge_value() -> None:
    text = str(Problem("f.conf", 2, "dump", "rules", "(" * 4000, "bad regular expression"))
    assert len(text) < 400 and '... (4000 characters)": bad regular expression' in text


def test_config_error_lists_all() -> None:
    problems = [
        Problem("a.conf", 1, "x", None, None, "one"),
        Problem("b.conf", 2, "y", "k", "v", "two", "z"),
    ]
    exc = ConfigError(problems)
    assert exc.problems == tuple(problems)
    assert str(exc).splitlines() == [str(problems[0]), str(problems[1])]


@pytest.mark.parametrize(
    "exc, code",
    [
        (Error("x"), "INTERNAL"),
        (ConfigError([]), "FAILED_PRECONDITION"),
        (TopologyError("x"), "INTERNAL"),
        (PolicyError("x"), "FAILED_PRECONDITION"),
        (AllocationError("x"), "RESOURCE_EXHAUSTED"),
        (InvalidRequest("x"), "INVALID_ARGUMENT"),
        (NotFound("x"), "NOT_FOUND"),
        (StateError("x"), "INTERNAL"),
        (RuntimeUnavailable("x"), "UNAVAILABLE"),
        (TimeoutError("slow"), "DEADLINE_EXCEEDED"),
        (KeyError("boom"), "INTERNAL"),
        (ValueError(), "INTERNAL"),
    ],
)
def test_grpc_status_codes(exc: BaseException, code: str) -> None:
    grpc = pytest.importorskip("grpc")
    name, details = grpc_status(exc)
    assert name == code
    assert grpc.StatusCode[name].name == code
    assert details.startswith("cri-resmgr: ")


def test_grpc_status_details() -> None:
    assert grpc_status(AllocationError("need 4 CPUs, 2 free")) == (
        "RESOURCE_EXHAUSTED",
        "cri-resmgr: need 4 CPUs, 2 free",
    )
    assert grpc_status(ValueError("bad")) == (
        "INTERNAL",
        "cri-resmgr: internal error: ValueError: bad",
    )
    assert grpc_status(ValueError()) == ("INTERNAL", "cri-resmgr: internal error: ValueError")
    _, details = grpc_status(PolicyError("x" * 10000))
    assert len(details) == errors.GRPC_DETAILS_MAX
    assert details.endswith("...")


def test_subclass_inherits_code() -> None:
    class Mine(AllocationError):
        pass

    assert grpc_status(Mine("m"))[0] == "RESOURCE_EXHAUSTED"


def test_no_grpc_import() -> None:
    code = "import sys, cri_resmgr.errors; print('grpc' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "False"


def test_clip_and_shorten() -> None:
    assert errors.clip("abc", 3) == "abc" and errors.shorten("abc", 3) == "abc"
    assert errors.clip("abcdef", 2) == "ab... (6 characters)"
    assert errors.shorten("abcdefgh", 4) == "ab...gh"
