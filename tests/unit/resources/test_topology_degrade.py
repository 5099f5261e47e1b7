"""Missing optional files degrade gracefully; missing essential files and malformed
content raise TopologyError naming the path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

from cri_resmgr.errors import Error, TopologyError
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import DRAM, PMEM, load

CPU = "sys/devices/system/cpu"
NODE = "sys/devices/system/node"


def remove(root: Path, pattern: str) -> int:
    """Remove every path matching a glob under root; returns how many."""
    count = 0
    for path in root.glob(pattern):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        count += 1
    assert count, f"nothing matched {pattern}"
    return count


def put(root: Path, rel: str, content: str) -> Path:
    path = root / rel
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(content)
    return path


# -- optional files ---------------------------------------------------------------------


def test_reference_small(small: Path) -> None:
    t = load(small)
    assert t.online == CPUSet.range(0, 15)
    assert t.nodes[4].kind == PMEM


def test_no_cpu_online_file(small: Path) -> None:
    remove(small, f"{CPU}/online")
    put(small, f"{CPU}/cpu5/online", "0\n")
    t = load(small)
    assert t.online == CPUSet.parse("0-4,6-15")  # from cpuN/online; cpu0 has none


def test_no_online_files_at_all(small: Path) -> None:
    remove(small, f"{CPU}/online")
    remove(small, f"{CPU}/cpu*/online")
    assert load(small).online == CPUSet.range(0, 15)


def test_bad_cpu_online_flag(small: Path) -> None:
    remove(small, f"{CPU}/online")
    path = put(small, f"{CPU}/cpu5/online", "2\n")
    with pytest.raises(TopologyError, match=str(path)):
        load(small)


def test_no_present_no_isolated(small: Path) -> None:
    remove(small, f"{CPU}/present")
    remove(small, f"{CPU}/isolated")
    t = load(small)
    assert not t.isolated
    assert not t.offline


def test_no_die_id(small: Path) -> None:
    remove(small, f"{CPU}/cpu*/topology/die_id")
    t = load(small)
    assert list(t.dies) == [(0, 0), (1, 0)]


def test_negative_ids_read_as_zero(small: Path) -> None:
    for cpu in range(16):
        put(small, f"{CPU}/cpu{cpu}/topology/physical_package_id", "-1\n")
        put(small, f"{CPU}/cpu{cpu}/topology/die_id", "-1\n")
    t = load(small)
    assert list(t.packages) == [0]
    assert list(t.dies) == [(0, 0)]


def test_old_kernel_thread_siblings(small: Path) -> None:
    remove(small, f"{CPU}/cpu*/topology/core_cpus*")
    t = load(small)
    assert t.core_siblings(0) == CPUSet.of(0, 8)


def test_no_caches(small: Path) -> None:
    remove(small, f"{CPU}/cpu*/cache")
    t = load(small)
    assert dict(t.l3) == {}
    assert all(c.l3 is None for c in t.cpus.values())
    assert len(t.cpus_sorted_by_topology()) == 16


def test_l3_without_ids_or_lists(small: Path) -> None:
    remove(small, f"{CPU}/cpu*/cache/index3/id")
    remove(small, f"{CPU}/cpu*/cache/index3/shared_cpu_list")
    t = load(small)
    # keyed by lowest CPU, read from the hex mask
    assert dict(t.l3) == {0: CPUSet.parse("0-3,8-11"), 4: CPUSet.parse("4-7,12-15")}
    assert t.cpus[12].l3 == 4


def test_l3_ids_not_unique(small: Path) -> None:
    for cpu in range(16):
        put(small, f"{CPU}/cpu{cpu}/cache/index3/id", "0\n")
    t = load(small)
    assert sorted(t.l3) == [0, 4]


def test_no_cpufreq(small: Path) -> None:
    remove(small, f"{CPU}/cpu*/cpufreq")
    t = load(small)
    assert all(c.base_freq_khz is None and c.max_freq_khz is None for c in t.cpus.values())


def test_no_distances(small: Path) -> None:
    remove(small, f"{NODE}/node*/distance")
    t = load(small)
    assert t.distance(0, 0) == 10
    assert t.distance(0, 3) == 20
    # without distances every CPU node is equally close to the PMEM node
    assert t.closest_cpu_nodes(4) == (0, 1, 2, 3)
    assert t.nodes[4].kind == PMEM


def test_no_meminfo(small: Path) -> None:
    remove(small, f"{NODE}/node*/meminfo")
    t = load(small)
    assert all(n.memory == 0 for n in t.nodes.values())
    assert all(n.has_memory for n in t.nodes.values())  # from node/has_memory
    assert t.nodes[4].kind == DRAM  # nothing to compare: not guessed
    remove(small, f"{NODE}/has_memory")
    remove(small, f"{NODE}/has_normal_memory")
    t = load(small)
    assert all(n.has_memory and n.normal_memory for n in t.nodes.values())


def test_no_node_cpulist(small: Path) -> None:
    remove(small, f"{NODE}/node*/cpulist")
    t = load(small)
    assert t.node_cpus(1) == CPUSet.parse("2-3,10-11")  # from the cpuN/nodeM links


def test_no_node_online(small: Path) -> None:
    remove(small, f"{NODE}/online")
    assert load(small).distance(0, 4) == 17


def test_no_node_directory(small: Path) -> None:
    remove(small, NODE)
    for link in small.glob(f"{CPU}/cpu*/node*"):
        link.unlink()
    t = load(small)
    assert list(t.nodes) == [0]
    assert t.nodes[0].cpus == t.online
    assert t.memory_only_nodes == ()


def test_memory_only_node_without_memory(small: Path) -> None:
    put(small, f"{NODE}/has_memory", "0-3\n")
    put(small, f"{NODE}/node4/meminfo", "Node 4 MemTotal: 0 kB\n")
    t = load(small)
    assert t.memory_only_nodes == ()
    assert t.nodes[4].kind == DRAM
    assert not t.nodes[4].has_memory
    assert t.memory_nodes == (0, 1, 2, 3)


def test_cpu_in_no_node_list_uses_link(small: Path) -> None:
    put(small, f"{NODE}/node0/cpulist", "0-1,8\n")  # 9 missing from the list
    t = load(small)
    assert t.node_of(9) == 0


def test_real_machine_without_optional_files(real_copy: Callable[..., Path]) -> None:
    root = real_copy("server", skip=("cache", "cpufreq", "die_id", "core_cpus_list"))
    for pattern in (
        f"{CPU}/isolated",
        f"{CPU}/online",
        f"{NODE}/node*/distance",
        f"{NODE}/has_*",
    ):
        remove(root, pattern)
    t = load(root)
    assert len(t.online) == 112
    assert not t.isolated
    assert t.nodes_of_kind(PMEM) == (4, 5)
    assert t.closest_cpu_nodes(4) == (0, 1, 2, 3)  # no distances: all equally far
    assert t.threads_per_core == 2


# -- essential files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    [
        "topology/physical_package_id",
        "topology/core_id",
        "topology/core_cpus_list topology/thread_siblings_list",
        "topology",
    ],
)
def test_missing_essential_cpu_file(small: Path, pattern: str) -> None:
    for item in pattern.split():
        remove(small, f"{CPU}/cpu5/{item}")
    with pytest.raises(TopologyError) as info:
        load(small)
    message = str(info.value)
    assert f"{small / CPU}/cpu5/topology/" in message
    assert "missing" in message and "expected" in message
    assert "sysfs-root" in message


def test_no_sysfs(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="no sysfs under") as info:
        load(tmp_path)
    assert isinstance(info.value, Error)
    assert "sysfs-root" in str(info.value)


def test_online_cpu_without_directory(small: Path) -> None:
    remove(small, f"{CPU}/cpu7")
    with pytest.raises(TopologyError, match="cpu7 is missing"):
        load(small)


def test_no_cpus_at_all(small: Path) -> None:
    remove(small, f"{CPU}/cpu[0-9]*")
    remove(small, f"{CPU}/online")
    with pytest.raises(TopologyError, match="no cpuN"):
        load(small)
    put(small, f"{CPU}/online", "\n")
    with pytest.raises(TopologyError, match="lists no CPUs"):
        load(small)


@pytest.mark.parametrize(
    "rel, content, fragment",
    [
        (f"{CPU}/online", "0-", "invalid CPU list '0-'"),
        (f"{CPU}/isolated", "x", "invalid CPU list 'x'"),
        (f"{CPU}/cpu3/topology/core_id", "abc", "holds 'abc'"),
        (f"{CPU}/cpu3/topology/physical_package_id", "", "holds ''"),
        (f"{CPU}/cpu3/topology/core_cpus_list", "3-1", "runs backwards"),
        (f"{CPU}/cpu3/cache/index3/level", "three", "holds 'three'"),
        (f"{NODE}/node1/cpulist", "2-3,,", "empty item"),
        (f"{NODE}/node1/distance", "10 11 x", "holds '10 11 x'"),
        (f"{NODE}/node1/distance", "11 10 21", "has 3 distances; expected one per online node"),
        (f"{NODE}/node1/meminfo", "Node 1 MemTotal: lots kB", "MemTotal is 'lots'"),
        (f"{NODE}/node1/meminfo", "Node 1 MemTotal: 5 parsecs", "unknown unit 'parsecs'"),
        (f"{NODE}/node1/meminfo", "garbage", "cannot parse 'garbage'"),
        (f"{NODE}/has_memory", "0-", "invalid CPU list"),
    ],
)
def test_malformed_content(small: Path, rel: str, content: str, fragment: str) -> None:
    path = put(small, rel, content)
    with pytest.raises(TopologyError) as info:
        load(small)
    message = str(info.value)
    assert str(path) in message
    assert fragment in message


def test_non_ascii_content(small: Path) -> None:
    path = small / f"{CPU}/cpu3/topology/core_id"
    path.unlink()
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(TopologyError, match="not ASCII"):
        load(small)


def test_cpu_in_two_nodes(small: Path) -> None:
    put(small, f"{NODE}/node1/cpulist", "0,2-3,10-11\n")
    with pytest.raises(TopologyError, match="CPU 0 is listed in both"):
        load(small)


def test_cpu_in_no_node(small: Path) -> None:
    put(small, f"{NODE}/node0/cpulist", "0-1,8\n")
    (small / f"{CPU}/cpu9/node0").unlink()
    with pytest.raises(TopologyError, match="online CPU 9 is in no node"):
        load(small)


def test_unreadable_essential_file(small: Path) -> None:
    path = small / f"{CPU}/cpu3/topology/core_id"
    path.unlink()
    path.mkdir()  # reading a directory fails with EISDIR
    with pytest.raises(TopologyError, match=f"cannot read {path}"):
        load(small)


def test_unreadable_optional_file_is_ignored(small: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = small / f"{CPU}/isolated"
    path.unlink()
    path.mkdir()
    t = load(small)
    assert not t.isolated
    assert any(str(path) in r.getMessage() for r in caplog.records)


def test_helpers_reject_unknown_ids(small: Path) -> None:
    t = load(small)
    with pytest.raises(TopologyError, match="CPU 99 is not an online CPU"):
        t.cpu(99)
    with pytest.raises(TopologyError, match="no NUMA node 9"):
        t.node_cpus(9)
    with pytest.raises(TopologyError, match="no package 5"):
        t.package_cpus(5)
    with pytest.raises(TopologyError, match="no die 3 in package 0"):
        t.die_cpus(0, 3)
    with pytest.raises(TopologyError):
        t.closest_cpu_nodes(9)


def test_load_does_not_write(small: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in small.rglob("*") if not p.is_symlink()}
    load(small)
    after = {p: p.stat().st_mtime_ns for p in small.rglob("*") if not p.is_symlink()}
    assert before == after
    assert os.access(small, os.R_OK)
