"""%cgroup: create, change, show, list, remove named cgroups and run host commands in them."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from nsmagic.cgroups.limits import Limits
from nsmagic.errors import CapabilityError, ContainerSetupError, NsmagicError, SpecError
from nsmagic.magics.container import ContainerInterrupted
from nsmagic.runtime import groups
from nsmagic.runtime.container import Container, ContainerResult

SUBCOMMANDS = ("create", "set", "show", "ls", "rm", "run")


class CgroupError(Exception):
    """The host refused a cgroup operation, or a command run in a group failed: one line."""

    def _render_traceback_(self) -> list[str]:
        return [f"CgroupError: {self}"]


def limit_arguments(func: Any) -> Any:
    """The limit options shared by %cgroup create/set (and %%container)."""
    for flag, text in reversed((
        ("--cpus", "CPU quota in cores, e.g. 0.5"),
        ("--memory", "memory limit, e.g. 256M, 1.5G, 1GiB or bytes"),
        ("--memory-swap", "memory plus swap limit (as Docker's), or -1 for no swap limit"),
        ("--pids", "most processes at once, e.g. 64"),
        ("--cpu-weight", "relative CPU weight 1-10000 (100 is the default)"),
        ("--cpuset", "CPUs the group may use, e.g. 0 or 0-1"),
    )):
        func = argument(flag, help=text)(func)
    return func


def limits_from(args: Any) -> Limits:
    """Limits from parsed options; SpecError with one sentence on bad input."""
    return Limits.parse(cpus=args.cpus, memory=args.memory, memory_swap=args.memory_swap,
                        pids=args.pids, cpu_weight=args.cpu_weight, cpuset=args.cpuset)


# One parser per subcommand; magic_arguments turns each into its help text, and %cgroup's own
# docstring is made of them, so %cgroup? documents every subcommand.
@magic_arguments("cgroup create")
@argument("name", help="short name: letters, digits, '_', '.', '-'")
@limit_arguments
def _create(line: str) -> None:
    """Create a cgroup under the kernel's own, with limits; it lives as long as the kernel."""


@magic_arguments("cgroup set")
@argument("name", help="a group made with %%cgroup create")
@limit_arguments
def _set(line: str) -> None:
    """Change limits of a group (options not given stay as they are)."""


@magic_arguments("cgroup show")
@argument("name", help="a group made with %%cgroup create")
def _show(line: str) -> None:
    """Limits and live usage: cpu time, throttling, memory, swap, OOM kills, pids, pressure."""


@magic_arguments("cgroup ls")
def _ls(line: str) -> None:
    """This kernel's groups with their limits and current memory and pids."""


@magic_arguments("cgroup rm")
@argument("name", help="a group made with %%cgroup create")
def _rm(line: str) -> None:
    """Remove a group, killing every process still in it."""


@magic_arguments("cgroup run")
@argument("name", help="a group made with %%cgroup create")
@argument("command", nargs="*", metavar="-- command",
          help="the host command and its arguments, after --")
@argument("--timeout", type=float, help="kill the command after this many seconds")
@argument("--no-raise", action="store_true",
          help="report a failure as a message instead of failing the cell")
@argument("-o", "--output-result", action="store_true", help="return the ContainerResult")
@argument("-q", "--quiet", action="store_true", help="do not print nsmagic's own notes")
def _run(line: str) -> None:
    """Run a host command inside a group, streaming its output: %cgroup run NAME -- cmd args.

    The command gets no namespaces (it sees the host), only the group's limits; it is
    started by nsmagic's fork server, so the notebook kernel itself never forks.
    """


PARSERS = {"create": _create, "set": _set, "show": _show, "ls": _ls, "rm": _rm, "run": _run}


def _help() -> str:
    parts = ["Named cgroups for this kernel: %cgroup create|set|show|ls|rm|run ...\n",
             "Examples::\n",
             "    %cgroup create exp1 --cpus 0.25 --memory 64M",
             "    %%container --cgroup exp1      (run a cell in it)",
             "    %cgroup run exp1 -- stress-ng --vm 1 --vm-bytes 100M -t 2",
             "    %cgroup show exp1",
             "    %cgroup rm exp1\n",
             "Groups are removed when the extension is unloaded or the kernel exits. Without a",
             "writable cgroup filesystem, limits are approximated by per-process rlimits.\n"]
    parts += [PARSERS[name].__doc__ for name in SUBCOMMANDS]
    return "\n".join(parts)


@magics_class
class CgroupMagics(Magics):
    """%cgroup: named cgroups that cells (%%container --cgroup) and host commands run in."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        super().__init__(shell, **kwargs)
        try:
            # What a kernel that crashed left behind (groups named after a dead pid).
            groups.prune_orphans()
        except (NsmagicError, OSError):
            pass

    def close(self) -> None:
        """Remove the groups this kernel created (called when the extension unloads)."""
        groups.remove_all()

    @line_magic
    def cgroup(self, line: str) -> ContainerResult | None:
        try:
            return self._cgroup(line)
        except ValueError as error:  # shlex: "No closing quotation" and the like
            if isinstance(error, SpecError):
                raise UsageError(str(error)) from None
            raise UsageError(f"%cgroup: cannot read {line!r}: {error}.") from None

    def _cgroup(self, line: str) -> ContainerResult | None:
        sub, _, rest = line.strip().partition(" ")
        if not sub:
            raise UsageError("%cgroup needs a subcommand: create, set, show, ls, rm or run "
                             "(see %cgroup?).")
        if sub not in PARSERS:
            raise UsageError(f"%cgroup does not know {sub!r}: use create, set, show, ls, rm "
                             "or run (see %cgroup?).")
        before_command = shlex.split(rest.partition(" -- ")[0]) if sub == "run" else None
        if {"-h", "--help"} & set(before_command if before_command is not None
                                  else rest.split()):
            print(PARSERS[sub].__doc__)
            return None
        try:
            return getattr(self, f"_do_{sub}")(rest)
        except SpecError as error:
            raise UsageError(str(error)) from None
        except CapabilityError as error:
            raise CgroupError(str(error)) from None

    cgroup.__doc__ = _help()

    # -- subcommands -----------------------------------------------------------------------
    def _do_create(self, rest: str) -> None:
        args = _parse("create", rest)
        limits = limits_from(args)  # validated before anything is created
        group = groups.create(args.name, limits)
        kind = "rlimit group" if group.driver == "rlimit" else f"cgroup {group.driver}"
        print(f"created {args.name} ({group.name}, {kind}): {group.limits().describe()}")
        _print_notes(group.approximations())

    def _do_set(self, rest: str) -> None:
        args = _parse("set", rest)
        group = groups.set_limits(args.name, limits_from(args))
        print(f"{args.name}: {group.limits().describe()}")
        _print_notes(group.approximations())

    def _do_show(self, rest: str) -> None:
        args = _parse("show", rest)
        display(groups.report(args.name))

    def _do_ls(self, rest: str) -> None:
        _parse("ls", rest)
        display(groups.table())

    def _do_rm(self, rest: str) -> None:
        args = _parse("rm", rest)
        full = groups.remove(args.name)
        print(f"removed {args.name} ({full})")

    def _do_run(self, rest: str) -> ContainerResult | None:
        words = shlex.split(rest)
        if "--" in words:
            cut = words.index("--")
            head, command = words[:cut], words[cut + 1:]
        else:  # %cgroup run NAME cmd args: everything after the name is the command
            head, command = words[:1], words[1:]
        args = _parse("run", shlex.join(head))
        if args.command:
            raise UsageError("%cgroup run: put the command after --: %cgroup run NAME "
                             "[options] -- cmd args...")
        if not command:
            raise UsageError(f"%cgroup run needs a command: %cgroup run {args.name} -- cmd "
                             "args...")
        options, notes = groups.container_options(args.name)
        # No namespaces at all: the command sees the host and needs no privilege; only the
        # group applies. The fork server starts it, so this (threaded) kernel never forks.
        container = Container(namespaces=set(), userns=False, **options)
        began = time.perf_counter()
        try:
            container.start(shlex.join(command), kind="shell")
            result = container.wait(on_stdout=_write_stdout, on_stderr=_write_stderr,
                                    timeout=args.timeout)
        except KeyboardInterrupt:
            ran = container.result.timings.get("total_s", time.perf_counter() - began)
            raise ContainerInterrupted(f"interrupted: {command[0]} stopped after {ran:.1f} s") \
                from None
        except ContainerSetupError as error:
            raise CgroupError(str(error)) from None
        except TimeoutError as error:
            raise CgroupError(f"{error}; it was killed") from None
        finally:
            container.close()
        result.limits = options.get("limits") or groups.get(args.name).limits()
        if not args.quiet:
            _print_notes([*notes, *result.warnings])
        if not result.ok:
            message = f"{command[0]} ended with {result.describe()}"
            if args.no_raise:
                print(f"nsmagic: {message}", file=sys.stderr)
            else:
                raise CgroupError(message)
        return result if args.output_result else None


def _parse(sub: str, rest: str) -> argparse.Namespace:
    try:
        return parse_argstring(PARSERS[sub], rest)
    except UsageError as error:
        if "required: name" in str(error):
            raise UsageError(f"%cgroup {sub} needs a NAME, e.g. %cgroup {sub} exp1.") from None
        hint = " (see %cgroup?)"
        if sub == "run" and "unrecognized arguments" in str(error):
            hint = "; put the command after --: %cgroup run NAME [options] -- cmd args..."
        raise UsageError(f"%cgroup {sub}: {error}{hint}.") from None


def _print_notes(notes: list[str]) -> None:
    """Warnings (limits only approximated, rlimits instead of a cgroup): on stderr."""
    for note in notes:
        print(f"nsmagic: {note}", file=sys.stderr)


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


__all__ = ["CgroupError", "CgroupMagics", "limit_arguments", "limits_from"]
