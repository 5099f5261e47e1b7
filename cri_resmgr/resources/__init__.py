"""The machine's CPU and memory resources, as policies see them.

* `cpuset`: `CPUSet`, immutable CPU set algebra in the kernel's list syntax
  (``"0-3,8,10-11"``) and hex mask syntax.
* `sysfs`: reading (and parsing) files under a sysfs root with errors that name the
  path and what was expected.
* `topology`: `load(root)` reads ``ROOT/sys/devices/system/{cpu,node}`` once into a
  frozen `Topology`: online CPUs, packages, dies, NUMA nodes (CPU nodes and
  memory-only PMEM/HBM nodes with their nearest CPU nodes), cores and threads, L3
  cache groups, isolated CPUs, node distances and memory sizes (bytes).
* `synthetic`: writes a realistic fake sysfs tree for a generated machine (tests and
  benchmarks).

Nothing here touches the host at import time; every read is under a root directory
given by the caller (the ``sysfs-root`` setting, default ``/``: the directory that
contains ``sys/``).
"""
