"""Tests for cri_resmgr.kubelet: `cri-resmgr kubelet enable|disable|status` on directory
trees (tmp_path as --root) laid out like real kubelet installations."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from cri_resmgr import kubelet
from cri_resmgr.kubelet import (
    DEFAULT_BACKUP_DIR,
    RELAY_ENDPOINT,
    KubeletConfigError,
    KubeletWiring,
    same_endpoint,
)

CONTAINERD = "unix:///var/run/containerd/containerd.sock"

KUBELET_SERVICE = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""

# kubeadm's drop-in as the Debian packages ship it (the RPMs say /etc/sysconfig/kubelet).
KUBEADM_DROPIN = """\
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
"""  # noqa: E501

KUBEADM_FLAGS = (
    'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock'
    ' --pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
)
KUBEADM_FLAGS_NO_ENDPOINT = (
    'KUBELET_KUBEADM_ARGS="--pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
)

CONFIG_YAML = """\
# kubelet configuration written by kubeadm, with a comment of mine
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
"""

UNIT = "/usr/lib/systemd/system/kubelet.service"
DROPIN = "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf"
FLAGS_ENV = "/var/lib/kubelet/kubeadm-flags.env"
CONFIG = "/var/lib/kubelet/config.yaml"
DEFAULT_KUBELET = "/etc/default/kubelet"
SYSCONFIG_KUBELET = "/etc/sysconfig/kubelet"


def write_tree(root: Path, files: Dict[str, Optional[str]]) -> None:
    """Create files (None: an empty directory) under root."""
    for path, text in files.items():
        host = root / path.lstrip("/")
        if text is None:
            host.mkdir(parents=True, exist_ok=True)
            continue
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(text.encode("utf-8"))


def snapshot(root: Path) -> Dict[str, bytes]:
    """Every file under root, except the backup directory, as bytes (symlinks: target)."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in names + dirs:
            p = Path(dirpath) / name
            rel = "/" + str(p.relative_to(root))
            if rel.startswith(DEFAULT_BACKUP_DIR):
                continue
            if p.is_symlink():
                out[rel] = b"-> " + os.readlink(p).encode()
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


def read(root: Path, path: str) -> str:
    return (root / path.lstrip("/")).read_text()


def kubeadm_tree(root: Path, **extra: Optional[str]) -> None:
    files: Dict[str, Optional[str]] = {
        UNIT: KUBELET_SERVICE,
        DROPIN: KUBEADM_DROPIN,
        FLAGS_ENV: KUBEADM_FLAGS,
        CONFIG: CONFIG_YAML,
        DEFAULT_KUBELET: "KUBELET_EXTRA_ARGS=\n",
    }
    files.update(extra)
    write_tree(root, {k: v for k, v in files.items()})


def roundtrip(root: Path) -> None:
    """enable, enable again (no-op), disable: the tree ends byte for byte as it began."""
    before = snapshot(root)
    w = KubeletWiring(root=str(root))
    first = w.enable()
    assert first.ok, str(first)
    assert first.points_at_relay, str(first)
    assert snapshot(root) != before
    finish(root, w, before)


def finish(root: Path, w: KubeletWiring, before: Dict[str, bytes]) -> None:
    """On an enabled tree: enable again is a no-op; disable restores `before` exactly."""
    enabled = snapshot(root)
    second = w.enable()
    assert second.changed == [] and second.created == [], str(second)
    assert snapshot(root) == enabled
    off = w.disable()
    assert off.ok, str(off)
    assert not off.points_at_relay
    assert snapshot(root) == before
    assert not (root / DEFAULT_BACKUP_DIR.lstrip("/")).exists()


# --- layouts -----------------------------------------------------------------------------


def test_kubeadm_flags_env(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert not st.points_at_relay
    assert st.effective is not None
    assert (st.effective.path, st.effective.source) == (FLAGS_ENV, "KUBELET_KUBEADM_ARGS")
    assert st.effective.value == CONTAINERD

    rep = w.enable()
    assert rep.changed == [FLAGS_ENV]
    assert rep.previous_endpoints == [CONTAINERD]
    assert read(tmp_path, FLAGS_ENV) == (
        f'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint={RELAY_ENDPOINT}'
        ' --pod-infra-container-image=registry.k8s.io/pause:3.9"\n'
    )
    st = w.status()
    assert st.points_at_relay
    assert st.effective is not None and st.effective.path == FLAGS_ENV
    assert st.saved == [FLAGS_ENV]
    assert st.previous_endpoints == [CONTAINERD]
    assert "kubelet points at the relay" in str(st)
    assert any("kubeadm rewrites" in x for x in rep.warnings)


def test_kubeadm_flags_env_roundtrip(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    roundtrip(tmp_path)


def test_default_kubelet_extra_args_quoted_other_args_kept_in_order(tmp_path: Path) -> None:
    extra = (
        "# local overrides\n"
        "KUBELET_EXTRA_ARGS='--node-ip=10.0.0.5 --container-runtime-endpoint "
        '"unix:///run/containerd/containerd.sock" --v=2 --max-pods=200\'\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, DEFAULT_KUBELET: extra})
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert st.effective is not None
    assert (st.effective.path, st.effective.source) == (DEFAULT_KUBELET, "KUBELET_EXTRA_ARGS")
    assert st.effective.value == "unix:///run/containerd/containerd.sock"
    rep = w.enable()
    assert rep.changed == [DEFAULT_KUBELET]
    assert read(tmp_path, DEFAULT_KUBELET) == (
        "# local overrides\n"
        "KUBELET_EXTRA_ARGS='--node-ip=10.0.0.5 --container-runtime-endpoint "
        f'"{RELAY_ENDPOINT}" --v=2 --max-pods=200\'\n'
    )
    w.disable()
    assert read(tmp_path, DEFAULT_KUBELET) == extra


def test_sysconfig_kubelet(tmp_path: Path) -> None:
    dropin = KUBEADM_DROPIN.replace("/etc/default/kubelet", "/etc/sysconfig/kubelet")
    write_tree(
        tmp_path,
        {
            UNIT: KUBELET_SERVICE,
            DROPIN: dropin,
            FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT,
            CONFIG: CONFIG_YAML,
            SYSCONFIG_KUBELET: f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={CONTAINERD}\n",
            # Not named by the unit: not read, not changed.
            DEFAULT_KUBELET: f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={CONTAINERD}\n",
        },
    )
    w = KubeletWiring(root=str(tmp_path))
    rep = w.enable()
    assert rep.changed == [SYSCONFIG_KUBELET]
    assert CONTAINERD in read(tmp_path, DEFAULT_KUBELET)
    assert read(tmp_path, SYSCONFIG_KUBELET) == (
        f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={RELAY_ENDPOINT}\n"
    )
    w.disable()
    assert read(tmp_path, SYSCONFIG_KUBELET) == (
        f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={CONTAINERD}\n"
    )


def test_config_yaml_endpoint_keeps_comments_and_quotes(tmp_path: Path) -> None:
    config = CONFIG_YAML.replace(
        "cgroupDriver: systemd\n",
        "cgroupDriver: systemd\n"
        "# where the runtime listens\n"
        'containerRuntimeEndpoint: "unix:///run/containerd/containerd.sock"  # containerd\n',
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, CONFIG: config})
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert st.effective is not None
    assert (st.effective.path, st.effective.layer) == (CONFIG, "config")
    rep = w.enable()
    assert rep.changed == [CONFIG]
    assert read(tmp_path, CONFIG) == config.replace(
        "unix:///run/containerd/containerd.sock", RELAY_ENDPOINT
    )
    assert w.disable().ok
    assert read(tmp_path, CONFIG) == config


def test_flags_override_config_file_and_both_are_changed(tmp_path: Path) -> None:
    config = CONFIG_YAML + "containerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n"
    kubeadm_tree(tmp_path, **{CONFIG: config})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert st.effective is not None and st.effective.path == FLAGS_ENV
    overridden = [s for s in st.found if s.path == CONFIG]
    assert len(overridden) == 1 and overridden[0].read and not overridden[0].effective
    rep = w.enable()
    assert sorted(rep.changed) == sorted([FLAGS_ENV, CONFIG])
    assert all(same_endpoint(s.value, RELAY_ENDPOINT) for s in w.status().found)
    finish(tmp_path, w, before)


def test_later_flag_wins_extra_args_over_kubeadm_args(tmp_path: Path) -> None:
    kubeadm_tree(
        tmp_path,
        **{DEFAULT_KUBELET: "KUBELET_EXTRA_ARGS=--container-runtime-endpoint=unix:///crio.sock\n"},
    )
    st = KubeletWiring(root=str(tmp_path)).status()
    assert st.effective is not None
    assert (st.effective.path, st.effective.value) == (DEFAULT_KUBELET, "unix:///crio.sock")
    roundtrip(tmp_path)


def test_config_dir_dropins(tmp_path: Path) -> None:
    dropin = KUBEADM_DROPIN.replace(
        "--config=/var/lib/kubelet/config.yaml",
        "--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d",
    )
    confd = "/etc/kubernetes/kubelet.conf.d"
    kubeadm_tree(
        tmp_path,
        **{
            DROPIN: dropin,
            FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT,
            CONFIG: CONFIG_YAML + f"containerRuntimeEndpoint: {CONTAINERD}\n",
            f"{confd}/10-runtime.conf": (
                "apiVersion: kubelet.config.k8s.io/v1beta1\n"
                "kind: KubeletConfiguration\n"
                "containerRuntimeEndpoint: 'unix:///var/run/crio/crio.sock'\n"
            ),
            f"{confd}/20-other.conf": (
                "apiVersion: kubelet.config.k8s.io/v1beta1\n"
                "kind: KubeletConfiguration\n"
                "maxPods: 50\n"
            ),
            f"{confd}/30-ignored.yaml": "containerRuntimeEndpoint: unix:///nope.sock\n",
        },
    )
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert st.effective is not None
    assert (st.effective.path, st.effective.layer) == (f"{confd}/10-runtime.conf", "drop-in")
    rep = w.enable()
    assert sorted(rep.changed) == sorted([CONFIG, f"{confd}/10-runtime.conf"])
    assert read(tmp_path, f"{confd}/10-runtime.conf").endswith(
        f"containerRuntimeEndpoint: '{RELAY_ENDPOINT}'\n"
    )
    assert "nope" in read(tmp_path, f"{confd}/30-ignored.yaml")
    finish(tmp_path, w, before)


def test_endpoint_in_unit_environment_line(tmp_path: Path) -> None:
    local = "/etc/systemd/system/kubelet.service.d/20-runtime.conf"
    text = (
        "[Service]\n"
        'Environment="KUBELET_EXTRA_ARGS=--container-runtime=remote '
        f'--container-runtime-endpoint={CONTAINERD} --v=2"\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, local: text})
    # /etc/default/kubelet (EnvironmentFile=) overrides the unit's Environment= value:
    os.unlink(tmp_path / DEFAULT_KUBELET.lstrip("/"))
    w = KubeletWiring(root=str(tmp_path))
    rep = w.enable()
    assert rep.changed == [local]
    assert any("daemon-reload" in n for n in rep.notes)
    assert read(tmp_path, local) == text.replace(CONTAINERD, RELAY_ENDPOINT)
    w.disable()
    assert read(tmp_path, local) == text


def test_env_file_overrides_unit_environment(tmp_path: Path) -> None:
    local = "/etc/systemd/system/kubelet.service.d/20-runtime.conf"
    text = (
        f'[Service]\nEnvironment="KUBELET_EXTRA_ARGS=--container-runtime-endpoint={CONTAINERD}"\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, local: text})
    st = KubeletWiring(root=str(tmp_path)).status()
    # /etc/default/kubelet sets KUBELET_EXTRA_ARGS= (empty), which wins over Environment=.
    assert [s.read for s in st.found] == [False]
    assert st.effective is None
    assert "set nowhere" in str(st)


def test_no_unit_assumes_kubeadm_layout(tmp_path: Path) -> None:
    write_tree(tmp_path, {FLAGS_ENV: KUBEADM_FLAGS, CONFIG: CONFIG_YAML})
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert any("kubelet.service was not found" in n for n in st.notes)
    assert st.effective is not None and st.effective.path == FLAGS_ENV
    roundtrip(tmp_path)


def test_space_separated_flag_and_var_run_equals_run(tmp_path: Path) -> None:
    flags = 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint unix:///run/cri-resmgr/cri-resmgr.sock"\n'
    kubeadm_tree(tmp_path, **{FLAGS_ENV: flags})
    w = KubeletWiring(root=str(tmp_path))
    assert w.status().points_at_relay
    rep = w.enable()
    assert rep.changed == [] and rep.points_at_relay
    off = w.disable()
    assert any("nothing saved" in n for n in off.notes)
    assert any("set outside" in n for n in off.notes)
    assert read(tmp_path, FLAGS_ENV) == flags


def test_json_config(tmp_path: Path) -> None:
    config = (
        '{"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",\n'
        ' "containerRuntimeEndpoint": "unix:///run/containerd/containerd.sock"}\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, CONFIG: config})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    assert json.loads(read(tmp_path, CONFIG))["containerRuntimeEndpoint"] == RELAY_ENDPOINT
    finish(tmp_path, w, before)


def test_crlf_and_comments_kept(tmp_path: Path) -> None:
    flags = (
        "# written by kubeadm\r\n"
        '#KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///old.sock"\r\n'
        'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock"\r\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: flags})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    data = (tmp_path / FLAGS_ENV.lstrip("/")).read_bytes()
    assert data == flags.replace(CONTAINERD, RELAY_ENDPOINT).encode()
    finish(tmp_path, w, before)


# --- endpoint set nowhere -----------------------------------------------------------------


def test_none_set_adds_to_kubelet_extra_args(tmp_path: Path) -> None:
    kubeadm_tree(
        tmp_path,
        **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, DEFAULT_KUBELET: 'KUBELET_EXTRA_ARGS="--v=2"\n'},
    )
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    assert w.status().effective is None
    rep = w.enable()
    assert rep.changed == [DEFAULT_KUBELET]
    assert read(tmp_path, DEFAULT_KUBELET) == (
        f'KUBELET_EXTRA_ARGS="--v=2 --container-runtime-endpoint={RELAY_ENDPOINT}"\n'
    )
    finish(tmp_path, w, before)


def test_none_set_empty_extra_args(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT})
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    assert read(tmp_path, DEFAULT_KUBELET) == (
        f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={RELAY_ENDPOINT}\n"
    )
    # An image build before `kubeadm join`: the flag kubeadm writes later comes earlier on
    # kubelet's command line, so the relay still wins.
    write_tree(tmp_path, {FLAGS_ENV: KUBEADM_FLAGS})
    st = w.status()
    assert st.points_at_relay and st.effective is not None
    assert st.effective.path == DEFAULT_KUBELET
    assert any("still names" in n for n in st.notes)


def test_none_set_creates_extra_args_file_and_disable_removes_it(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT})
    os.unlink(tmp_path / DEFAULT_KUBELET.lstrip("/"))
    w = KubeletWiring(root=str(tmp_path))
    rep = w.enable()
    assert rep.created == [DEFAULT_KUBELET]
    assert read(tmp_path, DEFAULT_KUBELET) == (
        f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={RELAY_ENDPOINT}\n"
    )
    off = w.disable()
    assert off.removed == [DEFAULT_KUBELET]
    assert not (tmp_path / DEFAULT_KUBELET.lstrip("/")).exists()


def test_none_set_with_config_dir_creates_dropin(tmp_path: Path) -> None:
    confd = "/etc/kubernetes/kubelet.conf.d"
    dropin = KUBEADM_DROPIN.replace(
        "--config=/var/lib/kubelet/config.yaml",
        f"--config=/var/lib/kubelet/config.yaml --config-dir={confd}",
    )
    kubeadm_tree(tmp_path, **{DROPIN: dropin, FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, confd: None})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    rep = w.enable()
    ours = f"{confd}/99-cri-resmgr.conf"
    assert rep.created == [ours]
    st = w.status()
    assert st.effective is not None and st.effective.path == ours
    finish(tmp_path, w, before)
    assert not (tmp_path / ours.lstrip("/")).exists()


def test_disable_keeps_user_additions_to_the_created_dropin(tmp_path: Path) -> None:
    confd = "/etc/kubernetes/kubelet.conf.d"
    dropin = KUBEADM_DROPIN.replace(
        "--config=/var/lib/kubelet/config.yaml",
        f"--config=/var/lib/kubelet/config.yaml --config-dir={confd}",
    )
    kubeadm_tree(tmp_path, **{DROPIN: dropin, FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT, confd: None})
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    ours = tmp_path / confd.lstrip("/") / "99-cri-resmgr.conf"
    ours.write_text(ours.read_text() + "maxPods: 50\n")
    rep = w.disable()
    assert rep.ok, str(rep)
    text = ours.read_text()
    assert "maxPods: 50" in text and "kind: KubeletConfiguration" in text
    assert "containerRuntimeEndpoint" not in text


def test_none_set_config_file_only(tmp_path: Path) -> None:
    write_tree(tmp_path, {CONFIG: CONFIG_YAML})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    rep = w.enable()
    assert rep.changed == [CONFIG]
    assert read(tmp_path, CONFIG) == CONFIG_YAML.replace(
        "kind: KubeletConfiguration\n",
        f"kind: KubeletConfiguration\ncontainerRuntimeEndpoint: {RELAY_ENDPOINT}\n",
    )
    finish(tmp_path, w, before)


def test_none_set_empty_yaml_value(tmp_path: Path) -> None:
    config = CONFIG_YAML + "containerRuntimeEndpoint:\n"
    write_tree(tmp_path, {CONFIG: config})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    assert read(tmp_path, CONFIG) == CONFIG_YAML + f"containerRuntimeEndpoint: {RELAY_ENDPOINT}\n"
    finish(tmp_path, w, before)


def test_nothing_found_is_an_actionable_error(tmp_path: Path) -> None:
    with pytest.raises(KubeletConfigError, match="is kubelet installed"):
        KubeletWiring(root=str(tmp_path)).enable()


# --- warnings and decisions ----------------------------------------------------------------


def test_container_runtime_remote_is_kept_with_a_warning(tmp_path: Path) -> None:
    flags = (
        'KUBELET_KUBEADM_ARGS="--container-runtime=remote '
        f"--container-runtime-endpoint={CONTAINERD} "
        '--pod-infra-container-image=k8s.gcr.io/pause:3.6"\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: flags})
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    rep = w.enable()
    assert read(tmp_path, FLAGS_ENV) == flags.replace(CONTAINERD, RELAY_ENDPOINT)
    assert any("--container-runtime=remote" in x and "1.27" in x for x in rep.warnings)
    finish(tmp_path, w, before)


def test_enable_never_adds_container_runtime(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT})
    KubeletWiring(root=str(tmp_path)).enable()
    for text in snapshot(tmp_path).values():
        assert b"--container-runtime=" not in text
        assert b"--container-runtime " not in text


def test_container_runtime_docker_warns_relay_is_bypassed(tmp_path: Path) -> None:
    flags = (
        'KUBELET_KUBEADM_ARGS="--container-runtime=docker '
        f'--container-runtime-endpoint={CONTAINERD}"\n'
    )
    kubeadm_tree(tmp_path, **{FLAGS_ENV: flags})
    st = KubeletWiring(root=str(tmp_path)).status()
    assert any("ignores the runtime endpoint" in x for x in st.warnings)


def test_static_cpu_manager_policy_warns(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path, **{CONFIG: CONFIG_YAML + "cpuManagerPolicy: static\n"})
    rep = KubeletWiring(root=str(tmp_path)).enable()
    assert any("static" in x and CONFIG in x for x in rep.warnings)


def test_static_cpu_manager_policy_flag_overrides_config(tmp_path: Path) -> None:
    kubeadm_tree(
        tmp_path,
        **{
            CONFIG: CONFIG_YAML + "cpuManagerPolicy: none\n",
            DEFAULT_KUBELET: "KUBELET_EXTRA_ARGS=--cpu-manager-policy=static\n",
        },
    )
    st = KubeletWiring(root=str(tmp_path)).status()
    assert any("static" in x and DEFAULT_KUBELET in x for x in st.warnings)


def test_no_warning_for_none_cpu_manager_policy(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path, **{CONFIG: CONFIG_YAML + "cpuManagerPolicy: none\n"})
    st = KubeletWiring(root=str(tmp_path)).status()
    assert not [x for x in st.warnings if "CPU manager" in x]


# --- backups and disable --------------------------------------------------------------------


def test_backup_layout(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    KubeletWiring(root=str(tmp_path)).enable()
    backup = tmp_path / DEFAULT_BACKUP_DIR.lstrip("/")
    manifest = json.loads((backup / "manifest.json").read_text())
    assert [r["path"] for r in manifest["files"]] == [FLAGS_ENV]
    assert (backup / "files" / FLAGS_ENV.lstrip("/")).read_text() == KUBEADM_FLAGS
    assert manifest["previous_endpoints"] == [CONTAINERD]


def test_custom_backup_dir(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path), backup_dir="/srv/kb")
    w.enable()
    assert (tmp_path / "srv/kb/manifest.json").exists()
    w.disable()
    assert read(tmp_path, FLAGS_ENV) == KUBEADM_FLAGS


def test_disable_with_nothing_saved_is_a_noop(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    before = snapshot(tmp_path)
    rep = KubeletWiring(root=str(tmp_path)).disable()
    assert rep.ok and not rep.changed
    assert any("nothing saved" in n for n in rep.notes)
    assert snapshot(tmp_path) == before


def test_disable_after_user_edit_restores_only_the_endpoint(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    path = tmp_path / FLAGS_ENV.lstrip("/")
    path.write_text(path.read_text().replace("pause:3.9", "pause:3.10"))
    rep = w.disable()
    assert rep.ok, str(rep)
    assert read(tmp_path, FLAGS_ENV) == KUBEADM_FLAGS.replace("pause:3.9", "pause:3.10")
    assert any("kept the other edits" in n for n in rep.notes)


def test_disable_after_user_repointed_leaves_file(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    mine = 'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/crio/crio.sock"\n'
    write_tree(tmp_path, {FLAGS_ENV: mine})
    rep = w.disable()
    assert rep.ok
    assert read(tmp_path, FLAGS_ENV) == mine
    assert any("no longer names the relay" in n for n in rep.notes)


def test_disable_refuses_ambiguous_edit_and_force_restores(tmp_path: Path) -> None:
    flags = (
        f'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint={CONTAINERD}"\n'
        'KUBELET_EXTRA_ARGS="--container-runtime-endpoint=unix:///var/run/crio/crio.sock"\n'
    )
    write_tree(tmp_path, {FLAGS_ENV: flags})  # no unit: both variables are read
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    path = tmp_path / FLAGS_ENV.lstrip("/")
    path.write_text("# my note\n" + path.read_text())
    rep = w.disable()
    assert not rep.ok
    assert "ambiguous" in rep.problems[0]
    assert "--force" in str(rep)
    assert kubelet.main(["disable", "--root", str(tmp_path)]) == 1
    assert w.status().points_at_relay
    forced = w.disable(force=True)
    assert forced.ok
    assert read(tmp_path, FLAGS_ENV) == flags
    assert not (tmp_path / DEFAULT_BACKUP_DIR.lstrip("/")).exists()


def test_reenable_after_user_repointed_then_disable(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    mine = (
        'KUBELET_KUBEADM_ARGS="--container-runtime-endpoint=unix:///var/run/crio/crio.sock --v=3"\n'
    )
    write_tree(tmp_path, {FLAGS_ENV: mine})
    assert w.enable().changed == [FLAGS_ENV]
    w.disable()
    assert read(tmp_path, FLAGS_ENV) == mine


def test_disable_when_file_removed_after_enable(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    os.unlink(tmp_path / FLAGS_ENV.lstrip("/"))
    rep = w.disable()
    assert not rep.ok and "removed after enable" in rep.problems[0]
    assert w.disable(force=True).ok
    assert read(tmp_path, FLAGS_ENV) == KUBEADM_FLAGS


def test_file_mode_kept(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    path = tmp_path / FLAGS_ENV.lstrip("/")
    path.chmod(0o640)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    assert path.stat().st_mode & 0o777 == 0o640
    w.disable()
    assert path.stat().st_mode & 0o777 == 0o640


def test_absolute_symlinks_stay_inside_root(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    (tmp_path / "lib").symlink_to("/usr/lib")  # like merged /usr, but absolute
    env = "/opt/k8s/kubelet.env"
    write_tree(tmp_path, {env: f"KUBELET_EXTRA_ARGS=--container-runtime-endpoint={CONTAINERD}\n"})
    os.unlink(tmp_path / DEFAULT_KUBELET.lstrip("/"))
    (tmp_path / DEFAULT_KUBELET.lstrip("/")).symlink_to(env)
    before = snapshot(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    st = w.status()
    assert st.effective is not None and st.effective.path == DEFAULT_KUBELET
    rep = w.enable()
    assert sorted(rep.changed) == sorted([FLAGS_ENV, DEFAULT_KUBELET])
    assert (tmp_path / DEFAULT_KUBELET.lstrip("/")).is_symlink()
    assert RELAY_ENDPOINT in read(tmp_path, env)
    finish(tmp_path, w, before)
    assert (tmp_path / DEFAULT_KUBELET.lstrip("/")).is_symlink()


def test_host_path_resolves_inside_root(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "lib").symlink_to("/usr/lib")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/up").symlink_to("../../../../..")
    assert kubelet.host_path(str(tmp_path), "/lib/x") == str(tmp_path / "usr/lib/x")
    assert kubelet.host_path(str(tmp_path), "/etc/up/etc/x") == str(tmp_path / "etc/x")
    assert kubelet.host_path("/", "/etc/default/kubelet") == "/etc/default/kubelet"


# --- dry run, CLI, arguments --------------------------------------------------------------


def test_dry_run_writes_nothing_and_shows_a_diff(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    before = snapshot(tmp_path)
    rep = KubeletWiring(root=str(tmp_path)).enable(dry_run=True)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / DEFAULT_BACKUP_DIR.lstrip("/")).exists()
    assert rep.changed == [FLAGS_ENV]
    assert (
        f"--- {FLAGS_ENV}" in rep.diff
        and f'+KUBELET_KUBEADM_ARGS="--container-runtime-endpoint={RELAY_ENDPOINT}' in rep.diff
    )
    assert "would change" in str(rep)


def test_disable_dry_run(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    enabled = snapshot(tmp_path)
    rep = w.disable(dry_run=True)
    assert snapshot(tmp_path) == enabled
    assert f"+{KUBEADM_FLAGS.rstrip()}" in rep.diff


def test_main_status_enable_disable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeadm_tree(tmp_path)
    root = ["--root", str(tmp_path)]
    assert kubelet.main(["status", *root]) == 3
    assert "does not point at the relay" in capsys.readouterr().out
    assert kubelet.main(["enable", "--dry-run", *root]) == 0
    assert "+KUBELET_KUBEADM_ARGS" in capsys.readouterr().out
    assert kubelet.main(["enable", *root]) == 0
    assert kubelet.main(["status", *root]) == 0
    out = capsys.readouterr().out
    assert FLAGS_ENV in out and "points at the relay" in out
    assert kubelet.main(["disable", *root]) == 0
    assert read(tmp_path, FLAGS_ENV) == KUBEADM_FLAGS


def test_main_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert kubelet.main(["enable", "--root", str(tmp_path)]) == 1
    assert "cri-resmgr kubelet: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        kubelet.main(["enable", "--force", "--root", str(tmp_path)])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--root", "nope"], "--root 'nope': not a directory"),
        (["--endpoint", "foo"], "--endpoint 'foo': expected a CRI endpoint"),
        (["--backup-dir", "rel"], "--backup-dir 'rel': must be an absolute path"),
    ],
)
def test_bad_option_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: List[str], message: str
) -> None:
    """Exit 2, as documented for usage errors (and never 3: removal goes on only then)."""
    args = ["--root", str(tmp_path), *flags] if flags[0] != "--root" else flags
    with pytest.raises(SystemExit) as exc:
        kubelet.main(["status", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("usage: cri-resmgr kubelet")
        and f"cri-resmgr kubelet: error: {message}" in err
    )


def test_custom_endpoint(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path), endpoint="unix:///tmp/relay.sock")
    w.enable()
    assert "unix:///tmp/relay.sock" in read(tmp_path, FLAGS_ENV)
    w.disable()
    assert read(tmp_path, FLAGS_ENV) == KUBEADM_FLAGS


@pytest.mark.parametrize(
    "bad", ["", "/var/run/x.sock", "unix:///a b", 'unix:///"x"', "unix:///x#y"]
)
def test_invalid_endpoint(tmp_path: Path, bad: str) -> None:
    with pytest.raises(KubeletConfigError, match="--endpoint"):
        KubeletWiring(root=str(tmp_path), endpoint=bad)


def test_broken_yaml_names_file_and_line(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path, **{CONFIG: "kind: KubeletConfiguration\nfoo: [\n"})
    with pytest.raises(KubeletConfigError, match=r"/var/lib/kubelet/config.yaml:\d+"):
        KubeletWiring(root=str(tmp_path)).status()


def test_same_endpoint() -> None:
    assert same_endpoint("/run/x.sock", "unix:///var/run/x.sock")
    assert not same_endpoint("", RELAY_ENDPOINT)
    assert not same_endpoint("unix:///run/a.sock", "unix:///run/b.sock")


# --- a damaged backup must not hide that kubelet uses the relay ----------------------------


@pytest.mark.parametrize(
    "damage",
    ["{not json", '{"version": 99, "files": []}', "\xff\xfe"],
    ids=["json", "version", "bytes"],
)
def test_status_with_damaged_manifest_still_answers(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Removal scripts ask `status` whether kubelet uses the relay; a damaged
    manifest.json used to make it exit 1, which they took as "does not point"."""
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    manifest = tmp_path / DEFAULT_BACKUP_DIR.lstrip("/") / "manifest.json"
    manifest.write_bytes(damage.encode("latin-1"))
    st = w.status()
    assert st.points_at_relay and st.ok, str(st)
    assert any("manifest.json" in x and "disable" in x for x in st.warnings), st.warnings
    assert kubelet.main(["status", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "kubelet points at the relay" in out and "warning: " in out
    # disable cannot restore from it: an error, kubelet untouched.
    assert kubelet.main(["disable", "--root", str(tmp_path)]) == 1
    assert "manifest.json" in capsys.readouterr().err
    assert RELAY_ENDPOINT in read(tmp_path, FLAGS_ENV)


def test_status_with_damaged_manifest_not_pointing(tmp_path: Path) -> None:
    kubeadm_tree(tmp_path)
    manifest = tmp_path / DEFAULT_BACKUP_DIR.lstrip("/") / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{")
    st = KubeletWiring(root=str(tmp_path)).status()
    assert not st.points_at_relay and st.warnings
    assert kubelet.main(["status", "--root", str(tmp_path)]) == 3


def test_a_file_in_place_of_the_backup_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing was enabled: the message says what is in the way, not "restore by hand"."""
    kubeadm_tree(tmp_path)
    backup = tmp_path / DEFAULT_BACKUP_DIR.lstrip("/")
    backup.parent.mkdir(parents=True)
    backup.write_text("")
    assert kubelet.main(["enable", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"cannot read {DEFAULT_BACKUP_DIR}/manifest.json: Not a directory" in err
    assert "move it away" in err and "by hand" not in err and "Errno" not in err
    assert read(tmp_path, FLAGS_ENV) == KUBEADM_FLAGS


# --- the relay endpoint: --endpoint, else what the caller resolves -------------------------


def test_main_endpoint_resolver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen = []

    def resolve(root: str, config_dir: Optional[str]) -> str:
        seen.append((root, config_dir))
        return "unix:///run/cri-resmgr/other.sock"

    kubeadm_tree(tmp_path)
    root = ["--root", str(tmp_path)]
    assert kubelet.main(["endpoint", *root], default_endpoint=resolve) == 0
    assert capsys.readouterr().out == "unix:///run/cri-resmgr/other.sock\n"
    assert kubelet.main(["enable", *root, "--config-dir", "/c"], default_endpoint=resolve) == 0
    assert seen == [(str(tmp_path), None), (str(tmp_path), "/c")]
    assert "unix:///run/cri-resmgr/other.sock" in read(tmp_path, FLAGS_ENV)
    # --endpoint wins; the resolver is not asked.
    assert kubelet.main(["endpoint", "--endpoint", "unix:///x.sock"], default_endpoint=resolve) == 0
    assert capsys.readouterr().out.endswith("unix:///x.sock\n") and len(seen) == 2
    # Without a resolver: the built-in default.
    assert kubelet.main(["endpoint"]) == 0
    assert capsys.readouterr().out == RELAY_ENDPOINT + "\n"
    with pytest.raises(SystemExit):
        kubelet.main(["endpoint", "--dry-run"])


# --- OS errors name the path (main catches only errors.Error) -----------------------------


def _fail_for(monkeypatch: pytest.MonkeyPatch, name: str, target: Path, err: int) -> None:
    real = getattr(os, name)

    def fake(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        if os.fspath(path) == str(target):
            raise OSError(err, os.strerror(err), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, name, fake)


def test_unlink_error_on_disable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """disable removes a file enable created: EACCES is an error naming it."""
    kubeadm_tree(tmp_path, **{FLAGS_ENV: KUBEADM_FLAGS_NO_ENDPOINT})
    os.unlink(tmp_path / DEFAULT_KUBELET.lstrip("/"))
    w = KubeletWiring(root=str(tmp_path))
    assert w.enable().created == [DEFAULT_KUBELET]
    _fail_for(monkeypatch, "unlink", tmp_path / DEFAULT_KUBELET.lstrip("/"), 13)
    with pytest.raises(KubeletConfigError, match=f"cannot remove {DEFAULT_KUBELET}: .*run as root"):
        w.disable()


def test_unlink_error_on_manifest_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kubeadm_tree(tmp_path)
    KubeletWiring(root=str(tmp_path)).enable()
    manifest = tmp_path / DEFAULT_BACKUP_DIR.lstrip("/") / "manifest.json"
    _fail_for(monkeypatch, "unlink", manifest, 30)  # EROFS
    assert kubelet.main(["disable", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"cannot remove {DEFAULT_BACKUP_DIR}/manifest.json: Read-only file system" in err
    assert "Traceback" not in err


def test_backup_unlink_error_names_the_saved_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    w.enable()
    saved = tmp_path / DEFAULT_BACKUP_DIR.lstrip("/") / "files" / FLAGS_ENV.lstrip("/")
    _fail_for(monkeypatch, "unlink", saved, 1)  # EPERM (immutable)
    with pytest.raises(KubeletConfigError, match=f"cannot remove {DEFAULT_BACKUP_DIR}/files"):
        w.disable()


@pytest.mark.parametrize("action", ["enable", "disable"])
def test_file_gone_between_scan_and_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    """os.stat of a file that vanished after the scan (kubeadm ran meanwhile): an error
    naming it and saying to run the command again, not a traceback."""
    kubeadm_tree(tmp_path)
    w = KubeletWiring(root=str(tmp_path))
    if action == "disable":
        w.enable()
    target = tmp_path / FLAGS_ENV.lstrip("/")
    real = KubeletWiring._note_changes

    def remove_then_note(*args, **kwargs):  # type: ignore[no-untyped-def]
        target.unlink()
        return real(*args, **kwargs)

    monkeypatch.setattr(KubeletWiring, "_note_changes", staticmethod(remove_then_note))
    with pytest.raises(
        KubeletConfigError, match=f"read the mode of {FLAGS_ENV}: .*run the command again"
    ):
        getattr(w, action)()


def test_main_reports_a_stray_oserror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(self):  # type: ignore[no-untyped-def]
        raise PermissionError(13, "Permission denied", "/var/lib/kubelet/x")

    monkeypatch.setattr(KubeletWiring, "status", boom)
    assert kubelet.main(["status", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "/var/lib/kubelet/x: Permission denied; run as root" in err
