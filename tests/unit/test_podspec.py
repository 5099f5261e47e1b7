"""podspec: kubelet's encoding of requests/limits into CRI fields, and the estimates back."""

from __future__ import annotations

import pytest

from cri_resmgr import podspec as ps
from cri_resmgr.policy.base import BESTEFFORT, BURSTABLE, GUARANTEED

GIB = 1 << 30
UID = "2a5e0ea5-7b2c-4a8e-9d0f-1c3b5d7e9f11"

# (cpu milli-CPUs, shares kubelet writes) - values of MilliCPUToShares
SHARES = [
    (0, 2),
    (1, 2),
    (2, 2),
    (3, 3),
    (10, 10),
    (100, 102),
    (250, 256),
    (500, 512),
    (1000, 1024),
    (1500, 1536),
    (2000, 2048),
    (7300, 7475),
    (256000, 262144),
    (300000, 262144),
]

# (cpu limit milli-CPUs, quota kubelet writes with the default 100 ms period)
QUOTAS = [
    (0, 0),
    (1, 1000),
    (9, 1000),
    (10, 1000),
    (11, 1100),
    (250, 25000),
    (1000, 100000),
    (2500, 250000),
]


@pytest.mark.parametrize(("milli", "shares"), SHARES)
def test_milli_cpu_to_shares_matches_kubelet(milli: int, shares: int) -> None:
    assert ps.milli_cpu_to_shares(milli) == shares


@pytest.mark.parametrize(("milli", "quota"), QUOTAS)
def test_milli_cpu_to_quota_matches_kubelet(milli: int, quota: int) -> None:
    assert ps.milli_cpu_to_quota(milli) == quota


def test_shares_round_trip_is_exact_above_the_minimum() -> None:
    for milli in range(3, 256001):
        assert ps.shares_to_milli_cpu(ps.milli_cpu_to_shares(milli)) == milli, milli


def test_shares_lossy_ends() -> None:
    # 0, 1 and 2 milli-CPUs are all written as 2 shares and read back as 0.
    for milli in (0, 1, 2):
        assert ps.shares_to_milli_cpu(ps.milli_cpu_to_shares(milli)) == 0
    # Everything from 256 CPUs up is clamped to the kernel maximum.
    assert ps.shares_to_milli_cpu(ps.milli_cpu_to_shares(400000)) == 256000
    assert ps.shares_to_milli_cpu(0) == 0


def test_quota_round_trip() -> None:
    for milli in range(10, 200001, 7):
        assert ps.quota_to_milli_cpu(ps.milli_cpu_to_quota(milli), ps.QUOTA_PERIOD) == milli
    # Non-default periods (CPUCFSQuotaPeriod gate) are exact as well.
    for period in (1000, 5000, 33333, 250000):
        first = -(-1000 * 1000 // period)  # the smallest limit above the 1 ms minimum quota
        for milli in range(first, first + 20000, 13):
            assert ps.quota_to_milli_cpu(ps.milli_cpu_to_quota(milli, period), period) == milli
    # Below 10m the quota is the 1 ms minimum, read back as 10m.
    assert ps.quota_to_milli_cpu(ps.milli_cpu_to_quota(3), ps.QUOTA_PERIOD) == 10
    assert ps.quota_to_milli_cpu(-1, ps.QUOTA_PERIOD) == 0
    assert ps.quota_to_milli_cpu(0, ps.QUOTA_PERIOD) == 0
    assert ps.quota_to_milli_cpu(50000, 0) == 0


# --- QoS class and oom_score_adj ------------------------------------------------


def R(**kw: int) -> ps.Requirements:  # noqa: N802 - short table builder
    return ps.Requirements(**kw)


@pytest.mark.parametrize(
    ("containers", "qos"),
    [
        ([R()], BESTEFFORT),
        ([R(), R()], BESTEFFORT),
        ([R(cpu_limit=1000, memory_limit=GIB)], GUARANTEED),  # requests default to limits
        ([R(cpu_request=1000, cpu_limit=1000, memory_request=GIB, memory_limit=GIB)], GUARANTEED),
        ([R(cpu_request=500, cpu_limit=500, memory_limit=GIB)], GUARANTEED),
        ([R(cpu_request=500, cpu_limit=1000, memory_limit=GIB)], BURSTABLE),
        ([R(cpu_limit=1000)], BURSTABLE),  # no memory limit
        ([R(cpu_request=100)], BURSTABLE),
        ([R(memory_request=GIB)], BURSTABLE),
        ([R(cpu_limit=1000, memory_limit=GIB), R()], BURSTABLE),
        ([R(cpu_limit=1000, memory_limit=GIB), R(cpu_limit=2000, memory_limit=GIB)], GUARANTEED),
    ],
)
def test_pod_qos(containers: list, qos: str) -> None:
    assert ps.pod_qos(containers) == qos


def test_oom_score_adj() -> None:
    assert ps.oom_score_adj(GUARANTEED, GIB, 16 * GIB) == -997
    assert ps.oom_score_adj(BESTEFFORT, 0, 16 * GIB) == 1000
    assert ps.oom_score_adj(BURSTABLE, 4 * GIB, 16 * GIB) == 750
    assert ps.oom_score_adj(BURSTABLE, 0, 16 * GIB) == 999  # never equal to BestEffort
    assert ps.oom_score_adj(BURSTABLE, 16 * GIB, 16 * GIB) == 3  # above Guaranteed
    with pytest.raises(ValueError):
        ps.oom_score_adj(BURSTABLE, 0, 0)


# --- CRI fields as kubelet writes them ------------------------------------------


@pytest.mark.parametrize(
    ("spec", "qos", "expected"),
    [
        (R(), BESTEFFORT, ps.LinuxResources(100000, 0, 2, 0, 1000)),
        (
            R(cpu_limit=2000, memory_limit=GIB),
            GUARANTEED,
            ps.LinuxResources(100000, 200000, 2048, GIB, -997),
        ),
        (
            R(cpu_request=250, memory_request=2 * GIB),
            BURSTABLE,
            ps.LinuxResources(100000, 0, 256, 0, 875),
        ),
        (
            R(cpu_request=100, cpu_limit=1500, memory_limit=GIB),
            BURSTABLE,
            # memory request defaults to the limit: 1000 - 1000 * 1 / 16
            ps.LinuxResources(100000, 150000, 102, GIB, 938),
        ),
    ],
)
def test_container_resources(spec: ps.Requirements, qos: str, expected: ps.LinuxResources) -> None:
    assert ps.container_resources(spec, qos, 16 * GIB) == expected


def test_container_resources_quota_variants() -> None:
    spec = R(cpu_limit=1000, memory_limit=GIB)
    assert ps.container_resources(spec, GUARANTEED, GIB, cfs_quota=False) == ps.LinuxResources(
        0, 0, 1024, GIB, -997
    )
    disabled = ps.container_resources(spec, GUARANTEED, GIB, disable_cpu_quota=True)
    assert (disabled.cpu_period, disabled.cpu_quota) == (100000, -1)
    custom = ps.container_resources(spec, GUARANTEED, GIB, period=50000)
    assert (custom.cpu_period, custom.cpu_quota) == (50000, 50000)


def test_sandbox_and_overhead_resources() -> None:
    res = ps.sandbox_resources(
        [R(cpu_limit=1000, memory_limit=GIB), R(cpu_request=500, memory_request=GIB)]
    )
    # requests 1000 + 500 -> 1536 shares; limits: only the first container has them
    assert res == ps.LinuxResources(100000, 100000, 1536, GIB, 0)
    assert ps.sandbox_resources([R(), R()]) == ps.LinuxResources(100000, 0, 2, 0, 0)
    # an init container asking more than the sum wins
    init = ps.sandbox_resources([R(cpu_request=500)], [R(cpu_request=2000)])
    assert init.cpu_shares == 2048
    assert ps.overhead_resources(250, 64 << 20) == ps.LinuxResources(100000, 25000, 256, 64 << 20)
    assert ps.overhead_resources(0, 0) == ps.LinuxResources()


# --- cgroup parents --------------------------------------------------------------

UID_ = UID.replace("-", "_")
CGROUP_PARENTS = [
    (GUARANTEED, ps.CGROUPFS, "/", f"/kubepods/pod{UID}"),
    (BURSTABLE, ps.CGROUPFS, "/", f"/kubepods/burstable/pod{UID}"),
    (BESTEFFORT, ps.CGROUPFS, "/", f"/kubepods/besteffort/pod{UID}"),
    (GUARANTEED, ps.SYSTEMD, "/", f"/kubepods.slice/kubepods-pod{UID_}.slice"),
    (
        BURSTABLE,
        ps.SYSTEMD,
        "/",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
    ),
    (
        BESTEFFORT,
        ps.SYSTEMD,
        "/",
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice",
    ),
    (BURSTABLE, ps.CGROUPFS, "/kubelet", f"/kubelet/kubepods/burstable/pod{UID}"),
    (
        GUARANTEED,
        ps.SYSTEMD,
        "/kubelet",
        f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_}.slice",
    ),
]


@pytest.mark.parametrize(("qos", "driver", "root", "parent"), CGROUP_PARENTS)
def test_cgroup_parent_both_ways(qos: str, driver: str, root: str, parent: str) -> None:
    assert ps.cgroup_parent(UID, qos, driver, root) == parent
    assert ps.parse_cgroup_parent(parent) == ps.CgroupParent(qos, UID, driver)


def test_parse_cgroup_parent_other_forms() -> None:
    # the bare slice name, as some tools pass it
    assert ps.parse_cgroup_parent(f"kubepods-burstable-pod{UID_}.slice") == ps.CgroupParent(
        BURSTABLE, UID, ps.SYSTEMD
    )
    assert ps.parse_cgroup_parent(f"/kubepods/besteffort/pod{UID}/") == ps.CgroupParent(
        BESTEFFORT, UID, ps.CGROUPFS
    )
    for parent in (
        "",
        "/",
        "/k8s.io",
        "/system.slice",
        f"/other/pod{UID}",
        "/kubepods/pod",
        "machine.slice",
        f"/foo/burstable/pod{UID}",
        "user-1000.slice",
    ):
        assert ps.parse_cgroup_parent(parent) is None, parent


def test_cgroup_parent_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="QoS"):
        ps.cgroup_parent(UID, "gold")
    with pytest.raises(ValueError, match="driver"):
        ps.cgroup_parent(UID, BURSTABLE, "runit")


# --- records ---------------------------------------------------------------------


def _pod(qos: str, driver: str = ps.CGROUPFS, **kw: object) -> object:
    return ps.make_pod(
        "sandbox1",
        UID,
        "web",
        "prod",
        ps.cgroup_parent(UID, qos, driver),
        annotations={"a": "1"},
        labels={ps.LABEL_POD_NAME: "web"},
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("driver", [ps.CGROUPFS, ps.SYSTEMD])
@pytest.mark.parametrize(
    ("spec", "qos", "cpu_req", "limit", "memory"),
    [
        (R(cpu_limit=2000, memory_limit=GIB), GUARANTEED, 2000, 2000, GIB),
        (R(cpu_request=1500, cpu_limit=1500, memory_limit=GIB), GUARANTEED, 1500, 1500, GIB),
        (R(cpu_request=250, cpu_limit=4000), BURSTABLE, 250, 4000, 0),
        (R(cpu_request=100, memory_limit=GIB), BURSTABLE, 100, 0, GIB),
        (R(), BESTEFFORT, 0, 0, 0),
    ],
)
def test_container_record_from_kubelet_values(  # noqa: PLR0917
    driver: str, spec: ps.Requirements, qos: str, cpu_req: int, limit: int, memory: int
) -> None:
    pod = _pod(ps.pod_qos([spec]), driver)
    res = ps.container_resources(spec, ps.pod_qos([spec]), 16 * GIB)
    c = ps.make_container("", "app", pod, res, annotations={"b": "2"})  # type: ignore[arg-type]
    assert (c.qos, c.cpu_request, c.cpu_limit, c.memory_limit) == (qos, cpu_req, limit, memory)
    assert (c.name, c.pod_name, c.namespace, c.pod_id, c.id) == (
        "app",
        "web",
        "prod",
        "sandbox1",
        "",
    )
    assert c.key == "prod/web:app"
    assert c.annotations == {"b": "2"} and c.pod_annotations == {"a": "1"}


def test_guaranteed_without_quota_has_limit_equal_to_request() -> None:
    spec = R(cpu_limit=2000, memory_limit=GIB)
    pod = _pod(GUARANTEED)
    for kw in ({"cfs_quota": False}, {"disable_cpu_quota": True}):
        res = ps.container_resources(spec, GUARANTEED, GIB, **kw)  # type: ignore[arg-type]
        c = ps.make_container("c1", "app", pod, res)  # type: ignore[arg-type]
        assert (c.cpu_request, c.cpu_limit, c.exclusive_cpus) == (2000, 2000, 2)


def test_guaranteed_above_the_shares_maximum_uses_the_quota() -> None:
    pod = _pod(GUARANTEED)
    res = ps.container_resources(R(cpu_limit=300000, memory_limit=GIB), GUARANTEED, GIB)
    assert res.cpu_shares == ps.MAX_SHARES
    c = ps.make_container("", "big", pod, res)  # type: ignore[arg-type]
    assert (c.cpu_request, c.cpu_limit, c.exclusive_cpus) == (300000, 300000, 300)
    # Burstable: the request stays the (clamped) shares estimate
    res = ps.container_resources(R(cpu_request=300000, cpu_limit=400000), BURSTABLE, GIB)
    c = ps.make_container("", "big", _pod(BURSTABLE), res)  # type: ignore[arg-type]
    assert (c.cpu_request, c.cpu_limit) == (256000, 400000)


def test_qos_without_a_kubelet_cgroup_parent() -> None:
    pod = ps.make_pod("s", "u", "p", "default", "")
    assert pod.qos == BESTEFFORT
    g = ps.make_container("", "c", pod, ps.linux_resources(1000, 1000, GIB))
    b = ps.make_container("", "c", pod, ps.linux_resources(500, None, None))
    e = ps.make_container("", "c", pod, ps.LinuxResources())
    assert (g.qos, b.qos, e.qos) == (GUARANTEED, BURSTABLE, BESTEFFORT)
    # a pod whose sandbox carries pod-level resources but no kubelet cgroup parent
    pod2 = ps.make_pod("s", "u", "p", "default", "", resources=ps.linux_resources(2000, 2000, GIB))
    assert pod2.qos == GUARANTEED


def test_pod_record_with_pod_level_resources_and_overhead() -> None:
    specs = [R(cpu_limit=1000, memory_limit=GIB), R(cpu_limit=500, memory_limit=GIB)]
    pod = _pod(
        GUARANTEED,
        resources=ps.sandbox_resources(specs),
        overhead=ps.overhead_resources(250, 128 << 20),
    )
    assert (pod.qos, pod.cpu_request, pod.cpu_limit, pod.memory_limit) == (
        GUARANTEED,
        1500,
        1500,
        2 * GIB,
    )
    assert (pod.overhead_cpu, pod.overhead_memory) == (250, 128 << 20)
    assert pod.uid == UID and pod.key == "prod/web"
    # uid from the cgroup parent when the metadata has none
    assert ps.make_pod("s", "", "p", "n", ps.cgroup_parent(UID, BURSTABLE)).uid == UID


def test_linux_resources_json_round_trip() -> None:
    res = ps.LinuxResources(100000, 50000, 512, GIB, 900, "0-3", "0")
    assert ps.LinuxResources.from_json(res.to_json()) == res
    assert ps.LinuxResources().to_json() == {}
    assert ps.LinuxResources.from_json({"cpu_shares": 2, "unknown": 1}) == ps.LinuxResources(
        cpu_shares=2
    )


# --- quantities ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "milli"),
    [
        ("2", 2000),
        ("500m", 500),
        ("1.5", 1500),
        ("0.1", 100),
        (2, 2000),
        (0.25, 250),
        ("1500000u", 1500),
        ("1n", 1),
        ("2e3", 2000000),
        (".5", 500),
        ("0", 0),
    ],
)
def test_parse_cpu(text: object, milli: int) -> None:
    assert ps.parse_cpu(text) == milli


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("1Gi", GIB),
        ("128Mi", 128 << 20),
        ("1G", 10**9),
        ("129e6", 129 * 10**6),
        ("1k", 1000),
        (1024, 1024),
        ("1.5Gi", 3 << 29),
        ("100m", 1),
    ],
)
def test_parse_memory(text: object, nbytes: int) -> None:
    assert ps.parse_memory(text) == nbytes


@pytest.mark.parametrize("text", ["", "abc", "1X", "-1", "1 Gi", "1e", True, None, [], "1.2.3"])
def test_parse_quantity_errors(text: object) -> None:
    with pytest.raises(ValueError):
        ps.parse_quantity(text)


def test_huge_exponents_are_refused_without_computing_them() -> None:
    """1e10000000 took seconds (10**10**7 exactly); larger ones hung."""
    assert ps.parse_quantity("1e400") == 10**400
    for text in ("1e401", "1e10000000", "1e-99999999999"):
        with pytest.raises(ValueError, match="exponent .* is out of range"):
            ps.parse_quantity(text)


def test_explicit_zero_cpu_request_takes_the_limits_shares() -> None:
    """kubelet: `if cpuRequest.IsZero() && !cpuLimit.IsZero()` -> shares of the limit."""
    assert ps.linux_resources(0, 2000, None).cpu_shares == 2048
    assert ps.linux_resources(None, 2000, None).cpu_shares == 2048
    assert ps.linux_resources(0, None, None).cpu_shares == 2
