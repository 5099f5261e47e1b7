"""Kubelet files as kubeadm and the distributions install them, for the packaging tests."""

from __future__ import annotations

from typing import Optional

KUBELET_UNIT = """\
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
"""


def kubeadm_dropin(envfile: str = "/etc/default/kubelet") -> str:
    """kubeadm's 10-kubeadm.conf (with the user's environment file of the distribution)."""
    kubeconfig = (
        "--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf "
        "--kubeconfig=/etc/kubernetes/kubelet.conf"
    )
    variables = "$KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS"
    return (
        "# Note: This dropin only works with kubeadm and kubelet v1.11+\n"
        "[Service]\n"
        f'Environment="KUBELET_KUBECONFIG_ARGS={kubeconfig}"\n'
        'Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"\n'
        '# This is a file that "kubeadm init" and "kubeadm join" generates at runtime\n'
        "EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env\n"
        "# This is a file that the user can use for overrides of the kubelet args\n"
        f"EnvironmentFile=-{envfile}\n"
        "ExecStart=\n"
        f"ExecStart=/usr/bin/kubelet {variables} $KUBELET_EXTRA_ARGS\n"
    )


def kubelet_config(endpoint: Optional[str] = None) -> str:
    text = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false  # kubeadm default
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
cpuManagerPolicy: none
"""
    if endpoint:
        text += f'containerRuntimeEndpoint: "{endpoint}"\n'
    return text
