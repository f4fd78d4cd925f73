"""Kernel isolation primitives: namespaces, mounts and the container's network."""
