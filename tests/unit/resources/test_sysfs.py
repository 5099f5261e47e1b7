"""Tests of cri_resmgr.resources.sysfs: locating the tree, typed reads, errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cri_resmgr.errors import TopologyError
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.sysfs import REQUIRED, Sysfs, parse_meminfo


@pytest.fixture
def fs(tmp_path: Path) -> Sysfs:
    cpu = tmp_path / "sys" / "devices" / "system" / "cpu"
    cpu.mkdir(parents=True)
    for n in (0, 1, 2, 10, 9):
        (cpu / f"cpu{n}").mkdir()
    (cpu / "cpufreq").mkdir()
    (cpu / "cpuidle").mkdir()
    files = {
        "online": "0-2,9-10\n",
        "isolated": "\n",
        "nohz_full": "  (null)\n",
        "kernel_max": "8191\n",
        "neg": "-1\n",
        "ints": "10 21 11\n",
        "mask": "00000000,00000603\n",
        "bad": "1 2\n",
    }
    for name, content in files.items():
        (cpu / name).write_text(content)
    os.symlink("../../node/node0", cpu / "cpu0" / "node0")
    return Sysfs(tmp_path)


def test_locate(tmp_path: Path, fs: Sysfs) -> None:
    assert fs.path == tmp_path / "sys"
    assert fs.root == tmp_path
    assert Sysfs(tmp_path / "sys").path == tmp_path / "sys"
    assert Sysfs(str(tmp_path)).path == tmp_path / "sys"
    assert "Sysfs(" in repr(fs)
    with pytest.raises(TopologyError, match="no sysfs under"):
        Sysfs(tmp_path / "nowhere")


def test_indexed_sorted_numerically(fs: Sysfs) -> None:
    cpus = fs.indexed("devices/system/cpu", "cpu")
    assert list(cpus) == [0, 1, 2, 9, 10]
    assert cpus[10] == "devices/system/cpu/cpu10"
    assert fs.indexed("devices/system/nothing", "cpu") == {}
    assert list(fs.indexed("devices/system/cpu/cpu0", "node")) == [0]


def test_typed_reads(fs: Sysfs) -> None:
    cpu = "devices/system/cpu"
    assert fs.read_cpuset(f"{cpu}/online", "x") == CPUSet.parse("0-2,9-10")
    assert fs.read_cpuset(f"{cpu}/isolated", "x") == CPUSet()
    assert fs.read_cpuset(f"{cpu}/nohz_full", "x") == CPUSet()
    assert fs.read_int(f"{cpu}/kernel_max", "x") == 8191
    assert fs.read_int(f"{cpu}/neg", "x") == -1
    assert fs.read_ints(f"{cpu}/ints", "x") == (10, 21, 11)
    assert fs.read_mask(f"{cpu}/mask", "x") == CPUSet.parse("0-1,9-10")
    assert fs.text(f"{cpu}/kernel_max", "x") == "8191"
    assert fs.link_target(f"{cpu}/cpu0/node0") == "../../node/node0"
    assert fs.exists(f"{cpu}/online")
    assert fs.is_dir(f"{cpu}/cpu0")
    assert fs.join(f"{cpu}/online") == fs.path / cpu / "online"


def test_defaults_for_missing_files(fs: Sysfs) -> None:
    cpu = "devices/system/cpu"
    assert fs.read_int(f"{cpu}/nope", "x", default=None) is None
    assert fs.read_int(f"{cpu}/nope", "x", default=7) == 7
    assert fs.read_cpuset(f"{cpu}/nope", "x", default=CPUSet()) == CPUSet()
    assert fs.read_ints(f"{cpu}/nope", "x", default=()) == ()
    assert fs.read_mask(f"{cpu}/nope", "x", default=None) is None
    assert fs.read_meminfo(f"{cpu}/nope", default={}) == {}
    assert fs.text(f"{cpu}/nope/deeper", "x", default="") == ""  # ENOTDIR-like paths too
    assert fs.link_target(f"{cpu}/online", default=None) is None  # not a link
    assert repr(REQUIRED) == "REQUIRED"


def test_errors_name_path_and_expectation(fs: Sysfs) -> None:
    cpu = "devices/system/cpu"
    with pytest.raises(TopologyError) as info:
        fs.read_int(f"{cpu}/nope", "the answer")
    assert str(fs.path / cpu / "nope") in str(info.value)
    assert "missing; expected the answer" in str(info.value)
    with pytest.raises(TopologyError, match="holds '1 2'; expected a number"):
        fs.read_int(f"{cpu}/bad", "a number")
    with pytest.raises(TopologyError, match="bad item '1 2'"):
        fs.read_cpuset(f"{cpu}/bad", "a list")
    with pytest.raises(TopologyError, match="invalid CPU mask"):
        fs.read_mask(f"{cpu}/bad", "a mask")
    (fs.path / cpu / "ints").write_text("1 x\n")
    with pytest.raises(TopologyError, match="holds '1 x'"):
        fs.read_ints(f"{cpu}/ints", "ints")
    with pytest.raises(TopologyError, match="cannot read link"):
        fs.link_target(f"{cpu}/online")
    with pytest.raises(TopologyError, match="cannot read"):
        fs.text(f"{cpu}/cpu0", "a file, not a directory")


def test_huge_file_rejected(fs: Sysfs) -> None:
    (fs.path / "big").write_bytes(b"1" * (2 << 20))
    with pytest.raises(TopologyError, match="larger than"):
        fs.text("big", "x")


def test_listing_a_file_fails_clearly(fs: Sysfs) -> None:
    assert fs.indexed("devices/system/cpu/online", "x") == {}


def test_parse_meminfo_forms() -> None:
    node = (
        "Node 0 MemTotal:       32372996 kB\n"
        "Node 0 MemFree:        29309440 kB\n"
        "Node 0 HugePages_Total:     0\n"
        "\n"
    )
    assert parse_meminfo(node, "node0/meminfo") == {
        "MemTotal": 32372996 * 1024,
        "MemFree": 29309440 * 1024,
        "HugePages_Total": 0,
    }
    proc = "MemTotal:       65621548 kB\nHugepagesize:       2048 kB\n"
    assert parse_meminfo(proc, "/proc/meminfo")["MemTotal"] == 65621548 * 1024
    with pytest.raises(TopologyError, match=r"x:2: cannot parse"):
        parse_meminfo("MemTotal: 1 kB\nno colon here\n", "x")
    with pytest.raises(TopologyError, match="x:1: MemTotal is"):
        parse_meminfo("MemTotal: many kB\n", "x")
    with pytest.raises(TopologyError, match="unknown unit"):
        parse_meminfo("MemTotal: 1 furlongs\n", "x")
    with pytest.raises(TopologyError, match="cannot parse"):
        parse_meminfo("MemTotal:\n", "x")


def test_proc_meminfo_next_to_sysfs(tmp_path: Path, fs: Sysfs) -> None:
    assert fs.read_proc_meminfo(default=None) is None
    with pytest.raises(TopologyError, match="cannot read"):
        fs.read_proc_meminfo()
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 4 kB\n")
    assert fs.read_proc_meminfo() == {"MemTotal": 4096}
