"""The files of /etc a container gets of its own, as Docker writes them: hostname, hosts,
resolv.conf, and passwd/group without the host's people."""

from __future__ import annotations

import ipaddress
import os

GENERATED = ("hostname", "hosts", "resolv.conf", "passwd", "group")
# Bound over the root's own, as Docker does (hostname and hosts are rewritten once the
# container's name is known, which may be after the rest is set up).
BOUND = ("hostname", "hosts", "resolv.conf")
# Accounts of the system (services, nobody) keep their names inside; people's do not.
_FIRST_PERSON_ID = 1000
_NOBODY = 65534


def generate(name: str, host_etc: str = "/etc") -> str:
    """The content of /etc/<name> for a container, before its host name is known."""
    if name == "hostname":
        return "localhost\n"
    if name == "hosts":
        return hosts_file("localhost")
    if name == "resolv.conf":
        return resolv_conf(_read(os.path.join(host_etc, "resolv.conf")))
    if name in ("passwd", "group"):
        return system_accounts(_read(os.path.join(host_etc, name)), name)
    raise ValueError(f"nsmagic writes no /etc/{name}")


def hosts_file(hostname: str, address: str | None = None) -> str:
    """/etc/hosts: loopback, and the container's own name on its address (or loopback)."""
    own = f"{address or '127.0.1.1'}\t{hostname}\n"
    return ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            "fe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\n" + own)


def resolv_conf(host: str) -> str:
    """The host's resolver settings without loopback servers (a local resolver such as
    systemd-resolved's 127.0.0.53 is not reachable from the container's network)."""
    kept = []
    for line in host.splitlines():
        words = line.split()
        if words[:1] == ["nameserver"] and len(words) > 1:
            try:
                if ipaddress.ip_address(words[1].split("%")[0]).is_loopback:
                    continue
            except ValueError:
                continue
        kept.append(line)
    return "\n".join(kept) + ("\n" if kept else "")


_ROOT = {"passwd": "root:x:0:0:root:/root:/bin/sh", "group": "root:x:0:"}


def system_accounts(host: str, kind: str) -> str:
    """passwd or group (kind) lines of system accounts only (id below 1000, or nobody's),
    so the host's user names and home directories are not listed; root always."""
    lines = []
    for line in host.splitlines():
        fields = line.split(":")
        if len(fields) < 3 or not fields[2].isdigit():
            continue
        number = int(fields[2])
        if number < _FIRST_PERSON_ID or number == _NOBODY:
            lines.append(line)
    if not any(line.startswith("root:") for line in lines):
        lines.insert(0, _ROOT[kind])
    return "\n".join(lines) + "\n"


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""
