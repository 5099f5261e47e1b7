"""Tests of cri_resmgr.resources.cpuset: parsing, formatting, algebra, errors."""

from __future__ import annotations

import copy
import pickle
import random

import pytest

from cri_resmgr.resources.cpuset import MAX_CPU_ID, CPUSet


@pytest.mark.parametrize(
    "text, ids, canonical",
    [
        ("", [], ""),
        ("\n", [], ""),
        ("   \n", [], ""),
        ("0", [0], "0"),
        ("0\n", [0], "0"),
        ("0-3", [0, 1, 2, 3], "0-3"),
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"),
        ("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"),
        # the kernel writes pairs as ranges too (node0/cpulist of the 80-CPU box)
        ("0-2,5-6,10-12", [0, 1, 2, 5, 6, 10, 11, 12], "0-2,5-6,10-12"),
        ("5,6", [5, 6], "5-6"),
        ("3,1,2", [1, 2, 3], "1-3"),
        ("1-1", [1], "1"),
        ("0-2,1-4", [0, 1, 2, 3, 4], "0-4"),
        ("007", [7], "7"),
        ("4-7,60-63", [4, 5, 6, 7, 60, 61, 62, 63], "4-7,60-63"),
        (str(MAX_CPU_ID), [MAX_CPU_ID], str(MAX_CPU_ID)),
    ],
)
def test_parse_and_format(text: str, ids: list, canonical: str) -> None:
    cpus = CPUSet.parse(text)
    assert list(cpus) == ids
    assert cpus.ids == tuple(ids)
    assert len(cpus) == len(ids)
    assert str(cpus) == canonical
    assert CPUSet.parse(str(cpus)) == cpus
    assert CPUSet(ids) == cpus
    assert repr(cpus) == f"CPUSet({canonical!r})"
    assert f"{cpus}" == canonical


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("a", "bad item 'a'"),
        ("0-", "bad item '0-'"),
        ("-1", "bad item '-1'"),
        ("1-", "bad item '1-'"),
        ("3-1", "range '3-1' runs backwards"),
        ("0,,1", "empty item"),
        (",", "empty item"),
        ("0,", "empty item"),
        (",0", "empty item"),
        ("0 - 3", "bad item '0 - 3'"),
        ("0, 1", "bad item ' 1'"),
        ("1 2", "bad item '1 2'"),
        ("0x3", "bad item '0x3'"),
        ("1.5", "bad item '1.5'"),
        ("0-3:2", "bad item '0-3:2'"),
        ("١", "bad item"),  # a non-ASCII digit
        (f"0-{MAX_CPU_ID + 1}", f"larger than {MAX_CPU_ID}"),
        ("9" * 5000, f"larger than {MAX_CPU_ID}"),
    ],
)
def test_parse_errors(text: str, fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        CPUSet.parse(text)
    message = str(info.value)
    assert fragment in message
    assert "invalid CPU list" in message
    assert '"0-3,8,10-11"' in message  # the allowed syntax is shown
    assert len(message) < 500  # long input is shortened


def test_parse_type_errors() -> None:
    with pytest.raises(TypeError):
        CPUSet.parse(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CPUSet.parse"):
        CPUSet("0-3")  # type: ignore[arg-type]


def test_construct_from_ints() -> None:
    assert CPUSet() == CPUSet.parse("")
    assert CPUSet([3, 1, 2, 2]) == CPUSet.parse("1-3")
    assert CPUSet(range(4)) == CPUSet.parse("0-3")
    assert CPUSet.of(0, 8) == CPUSet.parse("0,8")
    assert CPUSet(CPUSet.of(1)) == CPUSet.of(1)
    assert CPUSet.range(2, 5) == CPUSet.parse("2-5")
    assert CPUSet.range(5, 2) == CPUSet()
    assert CPUSet.from_bits(0b1011) == CPUSet.parse("0-1,3")
    assert CPUSet.parse("0-1,3").bits == 0b1011
    with pytest.raises(ValueError, match="out of range"):
        CPUSet([-1])
    with pytest.raises(ValueError, match="out of range"):
        CPUSet.of(MAX_CPU_ID + 1)
    with pytest.raises(TypeError):
        CPUSet([1.0])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        CPUSet([True])
    with pytest.raises(TypeError):
        CPUSet(["1"])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        CPUSet.from_bits(-1)
    with pytest.raises(ValueError):
        CPUSet.from_bits(1 << (MAX_CPU_ID + 1))
    with pytest.raises(ValueError):
        CPUSet.range(-1, 3)


@pytest.mark.parametrize(
    "mask, text",
    [
        ("0", ""),
        ("00000000", ""),
        ("1", "0"),
        ("f", "0-3"),
        ("ff\n", "0-7"),
        ("0xff", "0-7"),
        ("00000d0f", "0-3,8,10-11"),
        ("00000001,00000000", "32"),
        ("1,0", "32"),  # words are 32 bits even when printed short
        ("00000000,00000000,00010000,00000000", "48"),
        ("ffffffff,ffffffff", "0-63"),
    ],
)
def test_mask_round_trip(mask: str, text: str) -> None:
    cpus = CPUSet.from_mask(mask)
    assert str(cpus) == text
    assert CPUSet.from_mask(cpus.to_mask()) == cpus


def test_to_mask_format() -> None:
    assert CPUSet().to_mask() == "00000000"
    assert CPUSet.parse("0-3,8,10-11").to_mask() == "00000d0f"
    assert CPUSet.of(32).to_mask() == "00000001,00000000"


@pytest.mark.parametrize(
    "mask, fragment",
    [
        ("", "invalid CPU mask"),
        ("g", "invalid CPU mask"),
        ("1,,2", "invalid CPU mask"),
        ("1,", "invalid CPU mask"),
        ("123456789,0", "at most 8 hex digits"),
        ("f" * 20000, f"above {MAX_CPU_ID}"),
    ],
)
def test_mask_errors(mask: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        CPUSet.from_mask(mask)


def test_algebra() -> None:
    a = CPUSet.parse("0-7")
    b = CPUSet.parse("4-11")
    assert a | b == CPUSet.parse("0-11")
    assert a & b == CPUSet.parse("4-7")
    assert a - b == CPUSet.parse("0-3")
    assert a ^ b == CPUSet.parse("0-3,8-11")
    assert a.union(b, [20]) == CPUSet.parse("0-11,20")
    assert a.union() == a
    assert a.intersection(b, range(5, 100)) == CPUSet.parse("5-7")
    assert a.difference(b, [0]) == CPUSet.parse("1-3")
    assert a.symmetric_difference([0, 20]) == CPUSet.parse("1-7,20")
    assert a.isdisjoint(CPUSet.parse("8-9"))
    assert not a.isdisjoint(b)
    assert CPUSet.parse("1-2").issubset(a)
    assert CPUSet.parse("1-2").issubset([1, 2])
    assert a.issuperset([1, 2])
    assert not a.issubset(b)
    with pytest.raises(TypeError):
        _ = a | {1}  # type: ignore[operator]
    with pytest.raises(TypeError, match="CPUSet.parse"):
        a.union("0-3")  # type: ignore[arg-type]


def test_comparisons_are_subset_tests() -> None:
    a = CPUSet.parse("0-3")
    assert CPUSet.parse("1-2") < a
    assert CPUSet.parse("1-2") <= a
    same = CPUSet.parse("0-3")
    assert a <= same
    assert not a < same
    assert a > CPUSet.parse("1")
    assert a >= same
    assert not a > same
    assert not CPUSet.parse("4") <= a
    assert a != CPUSet.parse("0-4")
    assert a != "0-3"
    assert (a == frozenset(range(4))) is False
    with pytest.raises(TypeError):
        _ = a < {1}  # type: ignore[operator]


def test_container_protocol() -> None:
    cpus = CPUSet.parse("2,5-6")
    assert 2 in cpus
    assert 3 not in cpus
    assert -1 not in cpus
    assert "2" not in cpus
    assert 10**9 not in cpus
    assert bool(cpus)
    assert not CPUSet()
    assert len(CPUSet()) == 0
    assert list(CPUSet()) == []
    assert cpus.first() == 2
    assert cpus.last() == 6
    assert cpus.take(2) == CPUSet.parse("2,5")
    assert cpus.take(0) == CPUSet()
    assert cpus.take(10) == cpus
    with pytest.raises(ValueError):
        CPUSet().first()
    with pytest.raises(ValueError):
        CPUSet().last()
    assert sorted([CPUSet.of(3), CPUSet.of(1)], key=CPUSet.first) == [CPUSet.of(1), CPUSet.of(3)]


def test_hashable_immutable_picklable() -> None:
    a = CPUSet.parse("0-3")
    b = CPUSet([0, 1, 2, 3])
    str(a)  # fill the caches: they must not change equality or hash
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert len({a, b, CPUSet.of(1)}) == 2
    with pytest.raises(AttributeError):
        a._bits = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.foo = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        del a._bits
    assert pickle.loads(pickle.dumps(a)) == a
    assert copy.copy(a) is a
    assert copy.deepcopy({"x": a})["x"] is a


def test_random_against_frozenset() -> None:
    rng = random.Random(42)
    for _ in range(300):
        xs = frozenset(rng.sample(range(200), rng.randint(0, 60)))
        ys = frozenset(rng.sample(range(200), rng.randint(0, 60)))
        a, b = CPUSet(xs), CPUSet(ys)
        assert set(a) == xs
        assert list(a) == sorted(xs)
        assert len(a) == len(xs)
        assert set(a | b) == xs | ys
        assert set(a & b) == xs & ys
        assert set(a - b) == xs - ys
        assert set(a ^ b) == xs ^ ys
        assert (a <= b) == (xs <= ys)
        assert (a < b) == (xs < ys)
        assert CPUSet.parse(str(a)) == a
        assert CPUSet.from_mask(a.to_mask()) == a
        if xs:
            assert a.first() == min(xs)
            assert a.last() == max(xs)
