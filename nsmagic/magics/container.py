"""%%container and %nsmagic: parse options, call the nsmagic API, show the results."""

from __future__ import annotations

import shlex
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Unicode

from nsmagic import cgroup_api, host
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import ContainerSetupError, SpecError
from nsmagic.runtime.container import Container, ContainerResult
from nsmagic.runtime.spec import DEFAULT_NAMESPACES, ContainerSpec

SHELLS = {"bash": "/bin/bash", "sh": "/bin/sh"}


class ContainerError(Exception):
    """A container cell failed; IPython shows only the container's own traceback or reason."""

    def __init__(self, summary: str, traceback_lines: list[str] | None = None) -> None:
        super().__init__(summary)
        self.traceback_lines = traceback_lines

    def _render_traceback_(self) -> list[str]:
        if self.traceback_lines:
            return "".join(self.traceback_lines).rstrip("\n").split("\n")
        return [f"ContainerError: {self}"]


def _namespace_arguments(func: Any) -> Any:
    for name in ("pid", "uts", "ipc", "net", "mount"):
        func = argument(f"--no-{name}", action="store_true",
                        help=f"do not give the container its own {name.upper()} namespace")(func)
    func = argument("--no-cgroupns", action="store_true",
                    help="do not give the container its own cgroup namespace")(func)
    func = argument("--userns", action="store_true", default=None,
                    help="map root inside to an unprivileged user outside (automatic when "
                         "the kernel does not run as root)")(func)
    func = argument("--no-userns", action="store_true",
                    help="no user namespace (needs root)")(func)
    return func


@magics_class
class ContainerMagics(Magics):
    """%%container, %container and %nsmagic; defaults come from %config ContainerMagics.*"""

    memory = Unicode(None, allow_none=True, help="default --memory, e.g. '512M'").tag(config=True)
    cpus = Unicode(None, allow_none=True, help="default --cpus, e.g. '0.5'").tag(config=True)
    pids = Unicode(None, allow_none=True, help="default --pids, e.g. '256'").tag(config=True)

    @magic_arguments()
    @argument("command", nargs="*",
              help="'bash' or 'sh' runs the cell as a shell script; nothing runs Python")
    @argument("--shell", action="store_true", help="run the cell as a /bin/sh script")
    @argument("--hostname", help="host name inside the container (UTS namespace)")
    @_namespace_arguments
    @argument("--cpus", help="CPU quota in cores, e.g. 0.5")
    @argument("--memory", help="memory limit, e.g. 256M, 1.5G, 1GiB or bytes")
    @argument("--memory-swap", help="memory plus swap limit (as Docker's), or -1 for no limit")
    @argument("--pids", help="most processes at once, e.g. 64")
    @argument("--cpu-weight", help="relative CPU weight 1-10000 (100 is the default)")
    @argument("--cpuset", help="CPUs the container may use, e.g. 0 or 0-1")
    @argument("--cgroup", metavar="NAME",
              help="run in a group made with %%cgroup create (instead of limit options)")
    @argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE",
              help="set an environment variable inside (repeatable)")
    @argument("--timeout", type=float, help="kill the container after this many seconds")
    @argument("--no-raise", action="store_true",
              help="report a failure as a message instead of failing the cell")
    @argument("-o", "--output-result", action="store_true",
              help="return the ContainerResult (like %%timeit -o)")
    @argument("-q", "--quiet", action="store_true", help="do not print nsmagic's own notes")
    @cell_magic
    def container(self, line: str, cell: str) -> ContainerResult | None:
        """Run the cell in fresh Linux namespaces with cgroup limits, streaming its output.

        Examples::

            %%container --hostname lab1 --memory 256M --cpus 0.5 --pids 64
            import os, socket
            print(os.getpid(), socket.gethostname())

            %%container bash
            hostname; ps ax
        """
        args = self._parse(self.container, line)
        kind = "python"
        if args.command:
            if len(args.command) > 1 or args.command[0] not in SHELLS:
                raise UsageError(
                    f"%%container does not know {' '.join(args.command)!r}: give 'bash' or "
                    "'sh' to run the cell as a shell script, or nothing to run Python."
                )
            kind, shell = "shell", SHELLS[args.command[0]]
        elif args.shell:
            kind, shell = "shell", SHELLS["sh"]
        spec, notes = self._spec_from(args)
        report = _probe_quietly()
        if report is not None and report.tier == "none":
            raise UsageError(
                "this host allows no namespaces here (no root and no user namespaces); "
                "run %nsmagic doctor to see why."
            )
        if not args.quiet:
            for note in notes:
                print(f"nsmagic: {note}", file=sys.stderr)
        container = Container(spec)
        count = getattr(self.shell, "execution_count", 0)
        try:
            if kind == "python":
                container.start(cell, filename=f"Cell In[{count}] (container)", first_line=2)
            else:
                container.start(cell, kind="shell", filename=shell)
            result = container.wait(on_stdout=_write_stdout, on_stderr=_write_stderr,
                                    timeout=args.timeout)
        except ContainerSetupError as error:
            raise ContainerError(str(error)) from None
        except TimeoutError as error:
            raise ContainerError(f"{error}; it was killed") from None
        finally:
            container.close()
        # Reachable from -o: the limits in force (for --cgroup, the group's own).
        result.limits = _limits_in_force(spec)
        if not args.quiet:
            for warning in result.warnings:
                print(f"nsmagic: {warning}", file=sys.stderr)
            if result.oom is not None and result.describe() != result.oom["text"]:
                # A process was OOM-killed, but not the payload itself (or the payload
                # failed for another reason): still say so.
                print(f"nsmagic: a process was {result.oom['text']}", file=sys.stderr)
        self._report_failure(result, args.no_raise)
        return result if args.output_result else None

    @staticmethod
    def _report_failure(result: ContainerResult, no_raise: bool) -> None:
        if result.ok:
            return
        if result.exception is not None:
            failure = ContainerError(str(result.exception), result.exception.traceback)
        elif result.oom is not None and result.describe() == result.oom["text"]:
            failure = ContainerError(result.describe())  # "killed: out of memory, limit ..."
        else:
            failure = ContainerError(f"the container ended with {result.describe()}")
        if no_raise:
            print("".join(failure._render_traceback_()), file=sys.stderr)
            return
        raise failure

    def _parse(self, magic: Any, line: str) -> Any:
        try:
            return parse_argstring(magic, line)
        except UsageError:
            raise
        except SystemExit:  # argparse's way of saying "bad option" in some versions
            raise UsageError(f"bad options: {line!r}; see %%container?") from None

    def _spec_from(self, args: Any) -> tuple[ContainerSpec, list[str]]:
        namespaces = set(DEFAULT_NAMESPACES)
        for name in ("pid", "uts", "ipc", "net", "mount"):
            if getattr(args, f"no_{name}"):
                namespaces.discard(name)
        if args.no_cgroupns:
            namespaces.discard("cgroup")
        if args.userns and args.no_userns:
            raise UsageError("--userns and --no-userns contradict each other; give one.")
        userns = True if args.userns else (False if args.no_userns else None)
        env = {}
        for item in args.env:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise UsageError(f"--env takes KEY=VALUE, not {item!r}.")
            env[key] = value
        try:
            if args.cgroup is not None:
                # The group's limits apply: configured defaults do not, explicit options are
                # refused by ContainerSpec.build.
                limits = Limits.parse(cpus=args.cpus, memory=args.memory,
                                      memory_swap=args.memory_swap, pids=args.pids,
                                      cpu_weight=args.cpu_weight, cpuset=args.cpuset)
                ContainerSpec.build(namespaces=namespaces, userns=userns, limits=limits,
                                    cgroup=args.cgroup)
                options, notes = cgroup_api.container_options(args.cgroup)
                limits = options.pop("limits", limits)
            else:
                limits = Limits.parse(
                    cpus=args.cpus or self.cpus, memory=args.memory or self.memory,
                    memory_swap=args.memory_swap, pids=args.pids or self.pids,
                    cpu_weight=args.cpu_weight, cpuset=args.cpuset,
                )
                options, notes = {}, []
            spec = ContainerSpec.build(namespaces=namespaces, userns=userns,
                                       hostname=args.hostname, limits=limits, env=env,
                                       **options)
            return spec, notes
        except SpecError as error:
            raise UsageError(str(error)) from None

    @line_magic
    def nsmagic(self, line: str) -> None:
        """%nsmagic doctor: what this host allows containers to do, and why not."""
        words = shlex.split(line)
        if words in ([], ["doctor"]):
            print(host.probe().describe())
            return
        raise UsageError(f"%nsmagic does not know {line!r}; try %nsmagic doctor.")


def _limits_in_force(spec: ContainerSpec) -> Limits:
    if spec.cgroup is None:
        return spec.limits
    try:
        return cgroup_api.get(spec.cgroup).limits()
    except (SpecError, OSError):
        return spec.limits


def _probe_quietly() -> host.HostReport | None:
    try:
        return host.probe()
    except Exception:  # noqa: BLE001 - the container start will say what fails
        return None


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


__all__ = ["ContainerError", "ContainerMagics"]
