"""Export a ContainerSpec as an OCI runtime bundle (config.json, root filesystem, README) whose
container runc protects as nsmagic protects its own.

The bundle follows the OCI runtime specification 1.0.2, the version Debian 12's runc 1.1.5
implements; the tests check every config it writes against that release's JSON schemas
(tests/oci_schema.py) and run the default bundle under runc beside an nsmagic container.

- config.py: namespaces, id maps, limits, the process and its environment.
- protections.py: capabilities, no_new_privs, seccomp, devices, masked paths, /dev and /sys.
- root.py: the root nsmagic shows (the view of the host's userland, its writable layer, the
  host's secrets hidden, the container's own /etc files) as runc mounts; --rootfs, busybox,
  --host-root.
- bundle.py: the bundle on disk; readme.py: its README and the option-by-option MAPPING.

    from nsmagic import oci
    oci.export(spec, "bundle", ["python3", "-c", "print(1)"])   # then: runc run --bundle ...
"""

from __future__ import annotations

from nsmagic.oci.bundle import Bundle, export, write_bundle
from nsmagic.oci.config import BUNDLE_ID_BASE, NAMESPACE_TYPES, OCI_VERSION, config_for
from nsmagic.oci.protections import ALL_CAPABILITIES, DOCKER_CAPABILITIES
from nsmagic.oci.readme import MAPPING
from nsmagic.oci.root import BUNDLE_ROOT_MODES, BUSYBOX, LAYERS, ROOTFS_DIR

__all__ = ["ALL_CAPABILITIES", "BUNDLE_ID_BASE", "BUNDLE_ROOT_MODES", "BUSYBOX",
           "DOCKER_CAPABILITIES", "LAYERS", "MAPPING", "NAMESPACE_TYPES", "OCI_VERSION",
           "ROOTFS_DIR", "Bundle", "config_for", "export", "write_bundle"]
