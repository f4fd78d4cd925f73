"""The fork server's process (and its fork helper): trusted, single-threaded, the only source
of pids, cgroups and namespaces the kernel believes."""
