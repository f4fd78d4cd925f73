"""The fork server's record of one container, supervised from outside its namespaces: create
its processes and kernel resources, drive its set-up handshake, notice how it ends, report it
on the supervisor socket, and release everything, whatever happens."""

from __future__ import annotations

import json
import os
import signal
import socket

from nsmagic.cgroups.base import Cgroup, CgroupDriver
from nsmagic.cgroups.devices import CONTAINER_DEVICES
from nsmagic.cgroups.limits import format_size
from nsmagic.errors import ContainerSetupError, explain
from nsmagic.isolation import idmaps, network
from nsmagic.runtime.inside.fds import ContainerFds
from nsmagic.runtime.protocol import Event, HandshakeError, Word, expect, say, send_quietly
from nsmagic.runtime.server.forker import Forker, reap
from nsmagic.runtime.server.pool import WarmContainer
from nsmagic.runtime.spec import ContainerSpec


class Step:
    """Names the set-up step under way, so a failure says where it happened."""

    def __init__(self) -> None:
        self.name = "starting"

    def __call__(self, name: str) -> None:
        self.name = name


class LaunchFds:
    """The descriptors a launch request carries, in the order Op.LAUNCH sends them."""

    def __init__(self, fds: list[int]) -> None:
        if len(fds) not in (5, 6):
            for fd in fds:
                os.close(fd)
            raise ValueError(f"a launch carries 5 or 6 descriptors, not {len(fds)}")
        self.stdout, self.stderr, supervisor, self.events, self.data = fds[:5]
        self.supervisor = socket.socket(fileno=supervisor)
        self.join = fds[5] if len(fds) == 6 else None  # pid 1 of the network to share

    def close_container_ends(self) -> None:
        """Once the container's processes hold their copies (or will never exist)."""
        for fd in (self.stdout, self.stderr, self.events, self.data, self.join):
            if fd is not None:
                os.close(fd)
        self.stdout = self.stderr = self.events = self.data = self.join = None


class SupervisedContainer:
    """One container: its pid 1, supervisor socket, cgroup and network attachment.

    `release()` is the one place that gives everything back; it is safe to call twice and is
    called whether the container ended, failed to start, or its notebook went away.
    """

    def __init__(self, spec: ContainerSpec, fds: LaunchFds, cgroup_driver: CgroupDriver | None,
                 bridge: network.Bridge | None = None) -> None:
        self.spec = spec
        self.fds = fds
        self.supervisor = fds.supervisor
        self.cgroup_driver = cgroup_driver
        self.bridge = bridge
        self.attachment: network.Attachment | None = None
        self.cgroup: Cgroup | None = None
        self.owns_cgroup = spec.cgroup is None
        self._oom_kills_before = 0
        self.init_pid: int | None = None
        self.pidfd: int | None = None
        self._lifeline_write: int | None = None
        self.ids: idmaps.IdMapping | None = None
        self._released = False

    # -- creation ------------------------------------------------------------------------
    def create(self, forker: Forker) -> None:
        """Create the container; raise ContainerSetupError naming the step that failed.

        On failure the caller reports it on the supervisor socket, then calls release().
        """
        step = Step()
        try:
            self._create(step, forker)
        except HandshakeError as error:
            raise ContainerSetupError(f"{error.step or step.name}: {error.message}") from error
        except Exception as error:  # noqa: BLE001 - turned into one message for the user
            raise ContainerSetupError(f"{step.name}: {explain(error)}") from error
        finally:
            self.fds.close_container_ends()

    def _create(self, step: Step, forker: Forker) -> None:
        if self.spec.cgroup is not None:
            step(f"opening the cgroup {self.spec.cgroup}")
            if self.cgroup_driver is None:
                raise OSError(f"no cgroup driver for {self.spec.cgroup}")
            self.cgroup = self.cgroup_driver.open(self.spec.cgroup)
            # The group is shared: only OOM kills from now on are this container's.
            self._oom_kills_before = self.cgroup.stats().oom_kills or 0
        elif self.cgroup_driver is not None:
            step("creating the cgroup")
            # Docker's device rules, which --privileged gives up (as Docker's does).
            self.cgroup = self.cgroup_driver.create(
                self.spec.container_id, self.spec.limits,
                devices=None if self.spec.privileged else CONTAINER_DEVICES)
        if self.spec.net == "bridge":
            step("creating the container's veth pair on the bridge")
            self.attachment = self.bridge.attach(self.spec.container_id)
        lifeline_read, self._lifeline_write = os.pipe2(os.O_CLOEXEC)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = ContainerFds(events=self.fds.events, stdout=self.fds.stdout,
                           stderr=self.fds.stderr, data=self.fds.data, lifeline=lifeline_read,
                           sync=theirs.fileno(), join=self.fds.join)
        directories = self.cgroup.directories() if self.cgroup is not None else []
        header = {"namespaces": sorted(self.spec.namespaces),
                  "privileged": self.spec.privileged, "dirs": directories}
        step("forking the container's first process")
        try:
            # With a user namespace, the forked process is the set-up process (see
            # inside/start.py); without, it only forks pid 1 and exits.
            child = forker.spawn("cold", header, fds)
        finally:
            os.close(lifeline_read)
            theirs.close()
        try:
            self._drive_setup(step, child, ours, "user" in self.spec.namespaces)
        finally:
            ours.close()

    def _drive_setup(self, step: Step, child: int, sync: socket.socket, userns: bool) -> None:
        """The server's half of the handshake: PID (root) -> GO -> [MAPS -> OK] ->
        [PID (user namespace)] and READY -> [NET -> OK] -> RUN."""
        if not userns:
            # pid 1 is (about to be) our child; track it before anything can fail.
            _, detail = expect(sync, Word.PID, step=step.name)
            self._track(int(detail))
            child = self.init_pid
        if self.cgroup is not None:
            step("moving the container into its cgroup")
            self.cgroup.attach(child)
        say(sync, Word.GO)
        step("setting up the container")
        if userns:
            word, detail = expect(sync, Word.MAPS, Word.PID, Word.READY, step=step.name)
            if word == Word.MAPS:
                step("writing the user namespace id maps")
                self.ids = idmaps.for_container(os.getpid(), self.spec.container_id)
                self.ids.write(child)
                self._give_writable_layer_to(self.ids)
                say(sync, Word.OK)
                step("setting up the container")
                word, detail = expect(sync, Word.PID, Word.READY, step=step.name)
            # The set-up process reports pid 1's pid and the main process says READY, on
            # one socket and in either order.
            said = {word: detail}
            other = Word.READY if word == Word.PID else Word.PID
            said[other] = expect(sync, other, step=step.name)[1]
            self._track(int(said[Word.PID]))
        else:
            expect(sync, Word.READY, step=step.name)
        if self.attachment is not None:
            step("moving the veth end into the container")
            self.bridge.move_into(self.attachment, self.init_pid)
            say(sync, Word.NET, json.dumps(self.attachment.to_wire()).encode())
            expect(sync, Word.OK, step="configuring the container's network")
        # The notebook learns pid 1 and the cgroup before the payload can print.
        self._announce(warm=False)
        say(sync, Word.RUN)

    def _give_writable_layer_to(self, ids: idmaps.IdMapping) -> None:
        # An image's writable layer on disk is written by root inside, whom the map made
        # another host uid (as root: the container's own range).
        if self.spec.image_upper and os.geteuid() == 0:
            for part in ("upper", "work"):
                os.chown(os.path.join(self.spec.image_upper, part), ids.root_outside,
                         ids.gids[0].outside)

    def _track(self, pid: int) -> None:
        self.init_pid = pid
        self.pidfd = os.pidfd_open(pid)

    def adopt(self, warm: WarmContainer) -> None:
        """Take over a pre-warmed pid 1 instead of creating one (see pool.py)."""
        try:
            self.cgroup, self.init_pid, self.pidfd = warm.cgroup, warm.pid, warm.pidfd
            self._lifeline_write = warm.lifeline_write
            self._announce(warm=True)  # before the payload can print
            warm.hand_over(self.spec, [self.fds.events, self.fds.stdout, self.fds.stderr,
                                       self.fds.data])
        except Exception as error:  # noqa: BLE001
            raise ContainerSetupError(f"handing over to a warm container: {explain(error)}") \
                from error
        finally:
            self.fds.close_container_ends()

    def _announce(self, warm: bool) -> None:
        # pid 1's pidfd travels with the message, so the notebook never looks a pid up (the
        # number could name another process by the time it did). Quietly: if the notebook
        # side has gone already, the server notices the closed socket right after.
        send_quietly(self.supervisor, {
            "event": Event.STARTED, "pid": self.init_pid, "warm": warm,
            "cgroup": self.cgroup.name if self.cgroup else None,
            "cgroup_driver": getattr(self.cgroup_driver, "name", None),
            "address": self.attachment.address if self.attachment else None,
            "root_outside": self.ids.root_outside if self.ids else None,
            "warnings": self._limit_warnings() + (self.ids.notes if self.ids else []),
        }, fds=[self.pidfd])

    def _limit_warnings(self) -> list[str]:
        """What the cgroup could not do here: approximated limits (only if limits were
        asked for), and a missing device policy (always: it is a protection)."""
        if self.cgroup is None:
            return []
        notes = self.cgroup.approximations()
        # Without kernel cgroups (rlimits) there is no device policy to miss: a user
        # namespace cannot make device nodes, and its mounts are nodev.
        real = getattr(self.cgroup_driver, "name", None) in ("v1", "v2")
        devices = [n for n in notes if "device" in n and real]
        if self.spec.limits.is_empty():
            return devices
        return devices + [f"limits only approximated: {n}" for n in notes if n not in devices]

    # -- end -----------------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL pid 1; its pid namespace, and so the whole container, dies with it."""
        if self.pidfd is not None:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass  # already gone (ESRCH, or EINVAL once its pid namespace is dead)
        if self.cgroup is not None and self.owns_cgroup and "pid" not in self.spec.namespaces:
            self.cgroup.kill()  # without a pid namespace, only the cgroup knows them all

    def reap(self) -> None:
        """pid 1 has ended: collect its status, tell the notebook, release everything."""
        wait_status = reap(self.init_pid)
        self.init_pid = None  # reaped: the number may belong to someone else from now on
        if os.WIFSIGNALED(wait_status):
            status = {"signal": os.WTERMSIG(wait_status)}
        else:
            status = {"code": os.waitstatus_to_exitcode(wait_status)}
        status.update(self._oom_report())
        send_quietly(self.supervisor, {"event": Event.EXITED, **status})
        self.release()

    def _oom_report(self) -> dict:
        if self.cgroup is None:
            return {}
        try:
            stats = self.cgroup.stats()
        except OSError:
            return {}
        report: dict = {"stats": stats.as_dict()}
        if (stats.oom_kills or 0) > self._oom_kills_before:
            limit = self.spec.limits.memory or stats.memory_limit
            peak = stats.memory_peak
            report["oom"] = {
                "kills": stats.oom_kills - self._oom_kills_before,
                "limit": limit,
                "peak": peak,
                "text": "killed: out of memory"
                + (f", limit {format_size(limit)}" if limit else "")
                + (f", peak {format_size(peak)}" if peak else ""),
            }
        return report

    def release(self) -> None:
        """Kill what is left and give back every resource; safe to call twice."""
        if self._released:
            return
        self._released = True
        self.fds.close_container_ends()
        if self.init_pid is not None:
            self.kill()
            try:
                reap(self.init_pid)
            except ChildProcessError:
                pass
            self.init_pid = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None
        if self._lifeline_write is not None:
            os.close(self._lifeline_write)
            self._lifeline_write = None
        problems = []
        if self.attachment is not None:
            try:
                self.bridge.detach(self.attachment)
            except Exception as error:  # noqa: BLE001
                problems.append(f"veth {self.attachment.host_ifname} not removed: "
                                f"{explain(error)}")
            self.attachment = None
        if self.cgroup is not None and self.owns_cgroup:
            try:
                self.cgroup.remove()
            except OSError as error:
                problems.append(f"cgroup not removed: {explain(error)}")
            self.cgroup = None
        if self.ids is not None:
            # Only now: a process of the container could hold the range until pid 1 died.
            self.ids.release()
        for problem in problems:
            send_quietly(self.supervisor, {"event": Event.WARNING, "message": problem})
        self.supervisor.close()
