"""Annotation keys, the lookup order and the typed parsers (cri_resmgr.policy.annotation_keys)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from cri_resmgr.policy import annotation_keys as ann
from cri_resmgr.policy.base import Container

D = "cri-resource-manager.intel.com"


def test_keys() -> None:
    assert ann.full_key("prefer-shared-cpus") == f"prefer-shared-cpus.{D}"
    assert ann.full_key(f"memory-type.{D}") == f"memory-type.{D}"
    assert ann.pod_key("cpu.preserve") == f"cpu.preserve.{D}/pod"
    assert ann.container_key("memory-type", "db") == f"memory-type.{D}/container.db"


def test_lookup_order() -> None:
    pod = {
        f"memory-type.{D}/pod": "pmem",
        f"memory-type.{D}/container.a": "hbm",
        f"prefer-shared-cpus.{D}/pod": " true ",
    }
    ctr = {f"memory-type.{D}/container.b": "dram", f"memory-type.{D}/pod": "hbm"}
    # the container's own key beats the pod-wide one; the pod's map beats the container's
    assert ann.lookup(pod, {}, "a", "memory-type") == "hbm"
    assert ann.lookup(pod, ctr, "b", "memory-type") == "dram"
    assert ann.lookup(pod, ctr, "c", "memory-type") == "pmem"
    assert ann.lookup({}, ctr, "c", "memory-type") == "hbm"
    assert ann.lookup_item(pod, {}, "a", "memory-type") == (f"memory-type.{D}/container.a", "hbm")
    assert ann.lookup(pod, {}, "x", "prefer-shared-cpus") == "true"  # stripped
    assert ann.lookup(pod, {}, "x", f"prefer-shared-cpus.{D}") == "true"  # full key
    assert ann.lookup(pod, {}, "x", "prefer-isolated-cpus") is None
    # another container's key, a bare key or another domain do not count
    other = {
        f"memory-type.{D}/container.other": "pmem",
        f"memory-type.{D}": "pmem",
        "memory-type.resource-policy.nri.io/pod": "pmem",
    }
    assert ann.lookup(other, other, "a", "memory-type") is None


@pytest.mark.parametrize(
    "text,value",
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("t", True),
        ("false", False),
        ("False", False),
        ("0", False),
        (" f ", False),
    ],
)
def test_parse_bool(text: str, value: bool) -> None:
    assert ann.parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "yes", "no", "2", "truee", "on"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ann.AnnotationError, match="expected true or false"):
        ann.parse_bool(text)


@pytest.mark.parametrize(
    "text,kinds",
    [
        ("dram", ("dram",)),
        ("PMEM", ("pmem",)),
        ("hbm,dram", ("dram", "hbm")),
        (" pmem , dram ", ("dram", "pmem")),
        ("mixed", ("dram", "pmem", "hbm")),
        ("dram,dram", ("dram",)),
        ("", ()),
    ],
)
def test_parse_memory_types(text: str, kinds: tuple) -> None:
    assert ann.parse_memory_types(text) == kinds


@pytest.mark.parametrize("text", ["ddr", "dram,", "dram;pmem", "dram,,pmem", "fast"])
def test_parse_memory_types_rejects(text: str) -> None:
    with pytest.raises(ann.AnnotationError):
        ann.parse_memory_types(text)


def test_reader_defaults_and_malformed(caplog: pytest.LogCaptureFixture) -> None:
    pod = {
        f"prefer-isolated-cpus.{D}/pod": "maybe",
        f"prefer-isolated-cpus.{D}/container.ok": "false",
        f"memory-type.{D}/container.app": "dram,nvme",
        f"prefer-shared-cpus.{D}/pod": "true",
    }
    r = ann.Reader(pod, {}, "app")
    assert r.boolean("prefer-isolated-cpus", True) == (True, False)  # malformed: default
    assert r.boolean("prefer-shared-cpus", False) == (True, True)
    assert r.boolean("prefer-reserved-cpus", False) == (False, False)  # absent
    assert r.memory_types(("dram",)) == (("dram",), False)
    assert [m.key for m in r.malformed] == [
        f"prefer-isolated-cpus.{D}/pod",
        f"memory-type.{D}/container.app",
    ]
    # a malformed specific key is not replaced by the valid pod-wide one... and a valid
    # specific key wins over a malformed pod-wide one
    assert ann.Reader(pod, {}, "ok").boolean("prefer-isolated-cpus", True) == (False, True)

    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        assert r.report("default/web", "app")
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("pod default/web container app: malformed annotations ")
    assert f"prefer-isolated-cpus.{D}/pod='maybe'" in line
    assert f"memory-type.{D}/container.app='dram,nvme'" in line
    assert caplog.records[0].levelno == logging.WARNING
    assert not ann.Reader({}, {}, "x").report("default/web", "x")


def test_reader_empty_memory_type_is_no_preference() -> None:
    r = ann.Reader({f"memory-type.{D}/pod": " "}, {}, "a")
    assert r.memory_types(("dram",)) == (("dram",), False)
    assert not r.malformed


def test_reader_for_container() -> None:
    c = Container(
        id="",
        pod_id="p",
        name="app",
        pod_name="web",
        namespace="default",
        annotations={f"cpu.preserve.{D}/container.app": "true"},
        pod_annotations={f"memory.preserve.{D}/pod": "true"},
    )
    r = ann.Reader.for_container(c)
    assert r.boolean(ann.CPU_PRESERVE, False) == (True, True)
    assert r.boolean(ann.MEMORY_PRESERVE, False) == (True, True)


def test_the_package_import_gives_the_module() -> None:
    """``from cri_resmgr.policy import annotation_keys`` in a fresh interpreter (where
    nothing imported the module yet) is the module, not the ``__future__`` feature
    that every module of the package binds as ``annotations``."""
    code = (
        "import types\n"
        "from cri_resmgr.policy import annotation_keys\n"
        "assert isinstance(annotation_keys, types.ModuleType), annotation_keys\n"
        "assert annotation_keys.Reader\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_huge_values_are_cut_in_reports(caplog: pytest.LogCaptureFixture) -> None:
    """A 200 KB annotation value: one WARNING of reasonable length, saying how long."""
    huge = "x" * 200_000
    r = ann.Reader({f"memory-type.{D}/pod": huge}, {}, "app")
    assert r.memory_types(("dram",)) == (("dram",), False)
    with caplog.at_level(logging.WARNING, logger="cri_resmgr"):
        assert r.report("default/web", "app")
    line = caplog.records[0].getMessage()
    assert len(line) < 1000 and "... (200000 characters)" in line
    assert ann.shown("short") == "'short'"
