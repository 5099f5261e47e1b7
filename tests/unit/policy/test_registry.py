"""The policy registry: names, aliases, look-ups, -list-policies text, config agreement."""

from __future__ import annotations

import pytest

from cri_resmgr import config, policy
from cri_resmgr.errors import PolicyError
from cri_resmgr.policy.base import Policy
from cri_resmgr.policy.none import NonePolicy
from cri_resmgr.policy.static import StaticPolicy
from cri_resmgr.resources.cpuset import CPUSet
from cri_resmgr.resources.topology import Topology


def test_names_and_aliases() -> None:
    assert policy.names()[:2] == ("none", "static")
    assert policy.aliases()["null"] == "none"
    assert policy.get("none") is NonePolicy
    assert policy.get("null") is NonePolicy
    assert policy.get("static") is StaticPolicy
    assert policy.canonical("null") == "none"


def test_unknown_policy() -> None:
    with pytest.raises(PolicyError, match=r"unknown policy 'statik'.*none \(alias null\), static"):
        policy.get("statik")


def test_every_class_is_consistent() -> None:
    for name in policy.names():
        cls = policy.get(name)
        assert issubclass(cls, Policy) and cls.NAME == name
        assert cls.description().strip(), f"{name} has no manual"
        for alias in cls.ALIASES:
            assert alias not in policy.names()


def test_config_accepts_every_registered_name_and_alias() -> None:
    key = next(k for k in config.KEYS if (k.section, k.name) == ("policy", "name"))
    for name in policy.names():
        assert key.type.parse(name) == name
    for alias, name in policy.aliases().items():
        assert key.type.parse(alias) == name


def test_static_options_match_the_config_keys(desktop: Topology) -> None:
    cfg = config.default_config()
    options = cfg.policy_options("static")
    assert set(options) == {"on-error", "strict-reservation", "full-pcpus-only"}
    p = policy.create("static", desktop, CPUSet.of(0), options)
    assert isinstance(p, StaticPolicy) and not p.strict_reservation


def test_describe_all() -> None:
    text = policy.describe_all()
    assert text.startswith("none (alias null): Forward every request unmodified")
    assert "\nstatic: Exclusive CPUs for Guaranteed containers" in text
    assert "cpuManagerPolicy: none" in text
    assert "strict-reservation = false" in text
