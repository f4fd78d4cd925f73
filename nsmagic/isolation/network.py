"""Network set-up inside a container's network namespace."""

from __future__ import annotations

import errno
import fcntl
import functools
import ipaddress
import socket
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def bring_loopback_up() -> None:
    """A new network namespace has lo down; bring it up so 127.0.0.1 works inside.

    This is two ioctls on a socket rather than a netlink request through pyroute2: it runs on
    every container start, where pyroute2's set-up costs about 2 ms, more than the rest of the
    namespace set-up together. Links, veth pairs and addresses go through pyroute2.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | _IFF_UP))


# -- bridge networking (pyroute2 / netlink) ---------------------------------------------
# Interface names are at most 15 characters; every one of ours starts with "nsm" so that
# prune and leak checks can find them: nsmb<pid> bridges, nsmv<id> host ends of veth pairs
# (the container end is created as nsmp<id> and renamed eth0 once inside).
BRIDGE_PREFIX = "nsmb"
VETH_PREFIX = "nsmv"
PEER_PREFIX = "nsmp"

Result = TypeVar("Result")


def _outside_event_loop(function: Callable[..., Result]) -> Callable[..., Result]:
    """Make a function that uses pyroute2's synchronous API callable from any thread.

    pyroute2 0.9's sync classes run their asyncio core with run_until_complete() on the
    calling thread's running loop when there is one, which fails ("This event loop is
    already running", plus a never-awaited coroutine) in a thread that runs a loop, as an
    IPython kernel's main thread does. There the call goes to a short-lived worker thread,
    which has no loop, and the caller waits for it; anywhere else (the fork server, a
    container's set-up) it runs as it is, with no thread. Network namespaces are per
    thread, and a new thread starts in its creator's, so the worker sees the same links.
    """

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Result:
        if not _loop_running():
            return function(*args, **kwargs)
        import threading

        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["value"] = function(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                outcome["error"] = error

        worker = threading.Thread(target=work, name="nsmagic-netlink", daemon=True)
        worker.start()
        worker.join()
        if "error" in outcome:
            raise outcome.pop("error")
        return outcome["value"]

    return call


def _loop_running() -> bool:
    """True when the calling thread runs an asyncio event loop."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:  # no loop can run without asyncio imported (the fork server)
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True)
class Attachment:
    """One container's place on a bridge."""

    host_ifname: str
    peer_ifname: str
    address: str
    prefixlen: int
    gateway: str

    def to_wire(self) -> dict:
        """For the container's set-up message."""
        return {"peer": self.peer_ifname, "address": self.address,
                "prefixlen": self.prefixlen, "gateway": self.gateway}


class Bridge:
    """A host bridge owned by one nsmagic fork server, with an address allocator.

    The host end of the bridge has the subnet's first address, so the notebook reaches
    every container and containers reach each other; nothing is routed further (no NAT).
    """

    def __init__(self, owner_pid: int, subnet: str) -> None:
        self.network = ipaddress.ip_network(subnet)
        if self.network.prefixlen > 29:
            raise ValueError(f"subnet {subnet} is too small for containers")
        self.name = f"{BRIDGE_PREFIX}{owner_pid}"[:15]
        hosts = self.network.hosts()
        self.gateway = str(next(hosts))
        self._free = [str(h) for h in hosts]
        self._used: dict[str, Attachment] = {}
        self._index: int | None = None

    @_outside_event_loop
    def ensure(self) -> None:
        """Create the bridge (idempotent)."""
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            found = ip.link_lookup(ifname=self.name)
            if not found:
                ip.link("add", ifname=self.name, kind="bridge")
                found = ip.link_lookup(ifname=self.name)
                ip.addr("add", index=found[0], address=self.gateway,
                        prefixlen=self.network.prefixlen)
            ip.link("set", index=found[0], state="up")
            self._index = found[0]

    @_outside_event_loop
    def attach(self, container_id: str) -> Attachment:
        """Create a veth pair with its host end on the bridge; allocate an address."""
        if not self._free:
            raise OSError(f"no free address left in {self.network}")
        from pyroute2 import IPRoute

        self.ensure()
        suffix = container_id[:8]
        attachment = Attachment(f"{VETH_PREFIX}{suffix}", f"{PEER_PREFIX}{suffix}",
                                self._free.pop(0), self.network.prefixlen, self.gateway)
        try:
            with IPRoute() as ip:
                ip.link("add", ifname=attachment.host_ifname, kind="veth",
                        peer=attachment.peer_ifname)
                host_end = ip.link_lookup(ifname=attachment.host_ifname)[0]
                ip.link("set", index=host_end, master=self._index, state="up")
        except Exception:
            self._free.insert(0, attachment.address)
            delete_link(attachment.host_ifname)
            raise
        self._used[attachment.address] = attachment
        return attachment

    @_outside_event_loop
    def move_into(self, attachment: Attachment, pid: int) -> None:
        """Move the container end into the network namespace of process pid."""
        from pyroute2 import IPRoute

        with IPRoute() as ip:
            peer = ip.link_lookup(ifname=attachment.peer_ifname)[0]
            ip.link("set", index=peer, net_ns_pid=pid)

    def detach(self, attachment: Attachment) -> None:
        """Delete the veth pair and free the address; safe to call twice.

        The host end is deleted explicitly: the kernel removes it on its own only once the
        container's network namespace is gone, asynchronously, and a new pair with the
        same name would fail with EEXIST meanwhile.
        """
        delete_link(attachment.host_ifname)
        if self._used.pop(attachment.address, None) is not None:
            self._free.insert(0, attachment.address)

    @property
    def in_use(self) -> bool:
        """True while some container is attached."""
        return bool(self._used)

    def remove(self) -> None:
        """Delete the bridge and whatever veth ends are left on it."""
        for attachment in list(self._used.values()):
            self.detach(attachment)
        delete_link(self.name)
        self._index = None


@_outside_event_loop
def configure_inside(config: dict) -> None:
    """In the container's network namespace: rename the veth end to eth0, address it, bring
    it up and route through the bridge."""
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        index = ip.link_lookup(ifname=config["peer"])[0]
        ip.link("set", index=index, ifname="eth0")
        ip.addr("add", index=index, address=config["address"], prefixlen=config["prefixlen"])
        ip.link("set", index=index, state="up")
        ip.route("add", dst="0.0.0.0/0", gateway=config["gateway"])


@_outside_event_loop
def delete_link(ifname: str) -> None:
    """Delete a network interface by name if it exists."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ip:
        found = ip.link_lookup(ifname=ifname)
        if found:
            try:
                ip.link("del", index=found[0])
            except NetlinkError as error:
                if error.code != errno.ENODEV:
                    raise


@_outside_event_loop
def our_links() -> list[str]:
    """Names of the interfaces on this host that nsmagic created."""
    from pyroute2 import IPRoute

    with IPRoute() as ip:
        names = [link.get_attr("IFLA_IFNAME") for link in ip.get_links()]
    return [n for n in names if n.startswith((BRIDGE_PREFIX, VETH_PREFIX, PEER_PREFIX))]


@dataclass(frozen=True)
class BridgeInfo:
    """An nsmagic bridge found on this host, and the fork server its name says made it."""

    name: str
    owner_pid: int | None  # None when what follows the prefix is not a pid


def bridges() -> list[BridgeInfo]:
    """The nsmb<owner pid> bridges on this host, whoever made them (netlink errors, such as
    no permission, propagate)."""
    found = []
    for name in our_links():
        if name.startswith(BRIDGE_PREFIX):
            owner = name[len(BRIDGE_PREFIX):]
            found.append(BridgeInfo(name, int(owner) if owner.isdigit() else None))
    return found


def default_subnet(owner_pid: int) -> str:
    """A private /24 per fork server, so two notebooks on one host do not collide."""
    return f"10.213.{owner_pid % 250 + 1}.0/24"
