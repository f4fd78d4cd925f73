"""Real qemu guests: the VM baseline, guest images and boots, and the cgroup v2 test guest."""
