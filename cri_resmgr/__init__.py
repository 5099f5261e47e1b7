"""cri-resource-manager: a CRI relay between kubelet and the container runtime that
places containers on CPUs and memory nodes according to a resource policy."""
