"""`python -m nsmagic COMMAND` (or the `nsmagic` console script): the API outside notebooks.

Commands: `doctor` (what this host allows, and why not), `bench` (start-up benchmarks),
`pull`, `images`, `rmi`, `image-prune`, `push`, `save` (images: nsmagic/images/cli.py),
`run` (a command in a container, its output, exit status and signals passed through),
`export` (an OCI runtime bundle for the same options), `ls`, `stats` and `prune` (nsmagic's
cgroups and bridges as the whole machine shows them). Each command is a
`_cmd_NAME(args) -> exit code` function plus its parser in build_parser().

Exit status of `run`: the command's own; 128+N when it was killed by signal N; 124 when
--timeout killed it; 125 when the container could not be created; 2 for bad options (one line
on stderr).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import selectors
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

PROG = "nsmagic"
USAGE_ERROR = 2
SETUP_FAILED = 125  # as docker run: the container could not be created
TIMED_OUT = 124  # as timeout(1)
# Signals the CLI passes on to the container (pid 1 forwards them to the command).
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                     signal.SIGUSR1, signal.SIGUSR2)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (try --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Run code in Linux namespaces and cgroups.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    doctor = commands.add_parser("doctor", help="what this host allows, and why not")
    doctor.set_defaults(handler=_cmd_doctor)

    # Listed here for --help only: main() hands `bench ...` to the benchmark, which parses its
    # own options, so that no other command imports it (nsmagic_bench/, in a checkout).
    commands.add_parser("bench", add_help=False,
                        help="start-up benchmarks against unshare, bwrap and runc (from a "
                             "checkout)")

    run = commands.add_parser(
        "run", help="run a command in a container (exit status and signals passed through)",
        usage=f"{PROG} run [options] -- COMMAND [ARG...]",
        description="Run COMMAND in fresh namespaces with cgroup limits; its stdout and stderr "
                    "pass through as bytes, its exit status is this command's (128+N when "
                    "killed by signal N), and SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 "
                    "sent to this process reach it.")
    _container_options(run)
    run.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                     help="kill the container after this many seconds (exit status 124)")
    run.add_argument("-q", "--quiet", action="store_true",
                     help="do not print nsmagic's own notes (warnings, OOM) on stderr")
    run.add_argument("cmd_args", nargs=argparse.REMAINDER, metavar="COMMAND",
                     help="the command and its arguments")
    run.set_defaults(handler=_cmd_run)

    export = commands.add_parser(
        "export", help="write an OCI runtime bundle (runc) or Kubernetes manifests for the "
                       "same options as run",
        usage=f"{PROG} export --oci DIR | --kubernetes FILE [options] [-- COMMAND [ARG...]]",
        description="Write DIR/config.json (OCI runtime spec 1.0.2), the root filesystem and "
                    "a README saying how to `runc run` it; or, with --kubernetes and --image, "
                    "a Job and a Pod manifest running the same command with the same limits.")
    export.add_argument("--oci", metavar="DIR", help="the bundle directory")
    export.add_argument("--kubernetes", metavar="FILE",
                        help="write a Job and a Pod manifest (YAML) to FILE ('-': stdout)")
    export.add_argument("--bundle-root", choices=("bind", "busybox"), default="bind",
                        help="without --rootfs: the default container's view of the host, "
                             "mounted by runc itself (bind, the default), or a busybox-static "
                             "root (see docs/oci.md)")
    export.add_argument("--copy-rootfs", action="store_true",
                        help="copy the --rootfs directory into the bundle (default: refer "
                             "to it)")
    _container_options(export)
    export.add_argument("cmd_args", nargs=argparse.REMAINDER, metavar="COMMAND",
                        help="process.args (default /bin/sh)")
    export.set_defaults(handler=_cmd_export)

    ls = commands.add_parser(
        "ls", help="nsmagic cgroups and bridges on this machine, their owners, alive or not",
        description="What the whole machine shows (containers of `nsmagic run` end with it, "
                    "so none persist): every cgroup named nsmagic-<owner pid>-<id> under the "
                    "cgroup mounts this process sees, with its owner (the nsmagic process "
                    "that made it: a kernel's fork server, or a `run`) and whether that "
                    "owner is alive, and the nsmb<pid> bridges with theirs. Owners are pids "
                    "of this pid namespace.")
    ls.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ls.set_defaults(handler=_cmd_ls)

    stats = commands.add_parser(
        "stats", help="limits and usage of one nsmagic cgroup (see ls)",
        description="NAME is a cgroup name as `ls` prints it (nsmagic-<pid>-<id>) or its "
                    "<id> part (a container id, or a %%cgroup name) when only one group "
                    "has it.")
    stats.add_argument("name", metavar="NAME")
    stats.add_argument("--json", action="store_true",
                       help="one JSON object: name, owner_pid, owner_alive, driver, "
                            "directories, pids, limits, stats")
    stats.set_defaults(handler=_cmd_stats)

    prune = commands.add_parser(
        "prune", help="remove cgroups and bridges whose owner process is dead",
        description="The runtime's prune (the groups under this process's cgroup and the "
                    "bridges whose owner is dead), then every other nsmagic group on the "
                    "machine whose owner is dead and that holds no process.")
    prune.set_defaults(handler=_cmd_prune)

    from nsmagic.images import cli as image_commands

    image_commands.add_commands(commands)  # pull, images, rmi, image-prune, push, save
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _container_options(parser: argparse.ArgumentParser) -> None:
    """The options every front end shares (nsmagic.runtime.options), and a name."""
    from nsmagic.runtime.options import add_container_options

    parser.add_argument("--name", help="a name for the container (its host name by default)")
    add_container_options(parser)


def _spec_from(args: argparse.Namespace) -> Any:
    """A ContainerSpec from the options, through the policy every front end shares;
    SpecError (one sentence) when they are wrong. Notes are printed on stderr."""
    from nsmagic.runtime.options import build_spec, keywords_from_args

    resolved = build_spec(name=args.name, **keywords_from_args(args))
    if not getattr(args, "quiet", False):
        for note in resolved.notes:
            print(f"{PROG}: {note}", file=sys.stderr)
    return resolved.spec


def _command_of(args: argparse.Namespace) -> list[str]:
    command = list(args.cmd_args)
    if command and command[0] == "--":
        command = command[1:]
    return command


def _usage_error(command: str, message: str) -> int:
    print(f"{PROG} {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def _cmd_doctor(args: argparse.Namespace) -> int:
    from nsmagic.host import probe

    print(probe().describe())
    return 0


def _cmd_bench(argv: list[str]) -> int:
    # The benchmark is developer tooling beside the package in the source tree, not in it.
    try:
        from nsmagic_bench.cli import main as bench_main
    except ModuleNotFoundError as error:
        if error.name != "nsmagic_bench":
            raise
        print(f"{PROG} bench: error: the benchmark is not installed with nsmagic: run `python "
              "-m nsmagic bench` in a clone of nsmagic's repository, set up by `bash "
              "scripts/setup`", file=sys.stderr)
        return USAGE_ERROR
    return bench_main(argv)


# -- run -------------------------------------------------------------------------------------
class _Passthrough:
    """Copies the container's stdout and stderr to ours as bytes, and delivers the signals
    that arrived before the container's pid 1 was known, on a thread of its own."""

    def __init__(self, container: Any) -> None:
        self.container = container
        self.pipes: dict[str, int] = {}
        self.pending: list[int] = []
        self.stop_read, self.stop_write = os.pipe2(os.O_CLOEXEC)
        self.thread = threading.Thread(target=self._copy, name="nsmagic-run-io", daemon=True)

    def start(self, pipes: dict[str, int]) -> None:
        self.pipes = dict(pipes)
        self.thread.start()

    def _copy(self) -> None:
        targets = {self.pipes["stdout"]: 1, self.pipes["stderr"]: 2}
        selector = selectors.DefaultSelector()
        for fd in targets:
            selector.register(fd, selectors.EVENT_READ)
        selector.register(self.stop_read, selectors.EVENT_READ)
        try:
            while len(selector.get_map()) > 1:
                for key, _ in selector.select(0.05):
                    if key.fd == self.stop_read:
                        return
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fd)
                        continue
                    if not self._write(targets[key.fd], data):
                        # Our reader went away (`| head`): close the pipe, so the command
                        # gets SIGPIPE/EPIPE as it would writing there directly.
                        selector.unregister(key.fd)
                        os.close(key.fd)
                        self.pipes = {k: v for k, v in self.pipes.items() if v != key.fd}
                self._deliver_pending()
        finally:
            selector.close()

    @staticmethod
    def _write(fd: int, data: bytes) -> bool:
        """Write all of data; False when the reader of fd is gone (EPIPE)."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(fd, view)
            except InterruptedError:
                continue
            except OSError as error:
                if error.errno == errno.EPIPE:
                    return False
                raise
            view = view[written:]
        return True

    def _deliver_pending(self) -> None:
        while self.pending and self.container.pid_known:
            try:
                self.container.send_signal(self.pending.pop(0))
            except OSError:
                return

    def on_signal(self, signum: int, frame: object) -> None:
        """Signal handler: pass it on now, or once pid 1 is known."""
        if self.container.pid_known:
            self.container.send_signal(signum)
        else:
            self.pending.append(signum)

    def finish(self, wait_s: float) -> None:
        """Wait for the output to end (a stray writer may hold a pipe), then release."""
        if self.thread.ident is not None:
            self.thread.join(wait_s)
        if self.thread.is_alive():
            os.write(self.stop_write, b"x")
            self.thread.join()
        for fd in (*self.pipes.values(), self.stop_read, self.stop_write):
            try:
                os.close(fd)
            except OSError:
                pass


def _cmd_run(args: argparse.Namespace) -> int:
    from nsmagic.errors import ContainerSetupError, SpecError
    from nsmagic.runtime.container import Container

    command = _command_of(args)
    if not command and not args.image:
        return _usage_error("run", "give the command to run after --, e.g. "
                                   f"{PROG} run -- sh -c 'echo hi'")
    try:
        spec = _spec_from(args)
        container = Container(spec)
    except SpecError as error:
        return _usage_error("run", str(error))
    if spec.image:
        # As docker run: the image's Entrypoint, then the arguments given (else its Cmd).
        from nsmagic import images

        config = images.get(spec.image).config
        command = [*config.entrypoint, *(command or config.cmd)]
        if not command:
            container.close()
            return _usage_error("run", f"the image {spec.image} names no command to run: "
                                       "give one after --")
    passthrough = _Passthrough(container)
    # From here on a signal is passed on (or kept until the container runs), never raised.
    previous = {signum: signal.signal(signum, passthrough.on_signal)
                for signum in FORWARDED_SIGNALS}
    try:
        try:
            # Executed as it is: the command itself is the container's main process, so its
            # exit status and the signals pid 1 forwards are its own, not a shell's.
            container.start(kind="command", argv=command)
        except SpecError as error:
            return _usage_error("run", str(error))
        # Raw bytes: take the output pipes from the Container, which would decode them.
        passthrough.start(container.take_output_fds())
        try:
            result = container.wait(timeout=args.timeout)
        except TimeoutError:
            passthrough.finish(1.0)
            passthrough = None
            print(f"{PROG} run: still running after {args.timeout:g} s: killed",
                  file=sys.stderr)
            return TIMED_OUT
    except ContainerSetupError as error:
        print(f"{PROG} run: {error}", file=sys.stderr)
        return SETUP_FAILED
    finally:
        if passthrough is not None:
            passthrough.finish(1.0)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        container.close()
    if not args.quiet:
        for warning in result.warnings:
            print(f"{PROG}: {warning}", file=sys.stderr)
        if result.oom is not None:
            print(f"{PROG}: {result.oom['text']}", file=sys.stderr)
    if result.signal is not None:
        return 128 + result.signal
    return result.exit_code if result.exit_code is not None else SETUP_FAILED


def _cmd_export(args: argparse.Namespace) -> int:
    from nsmagic import oci
    from nsmagic.errors import SpecError

    if (args.oci is None) == (args.kubernetes is None):
        return _usage_error("export", "give --oci DIR (an OCI runtime bundle) or --kubernetes "
                                      "FILE (a Job and a Pod manifest), one of them")
    if args.kubernetes is not None:
        from nsmagic import kubernetes
        from nsmagic.runtime.options import keywords_from_args

        try:
            manifests = kubernetes.from_keywords(keywords_from_args(args),
                                                 _command_of(args) or None, args.name)
            kubernetes.write(manifests, args.kubernetes)
        except (SpecError, OSError) as error:
            return _usage_error("export", str(error))
        for note in manifests.notes:
            print(f"note: {note}", file=sys.stderr)
        return 0
    try:
        spec = _spec_from(args)
        bundle = oci.write_bundle(spec, args.oci, _command_of(args) or None,
                                  bundle_root=args.bundle_root, copy_rootfs=args.copy_rootfs)
    except SpecError as error:
        return _usage_error("export", str(error))
    print(f"wrote an OCI bundle to {bundle.path} (see its README.md)")
    for note in bundle.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


# -- ls, stats, prune ----------------------------------------------------------------------------
def _bridges() -> tuple[list[dict[str, Any]], str | None]:
    """The machine's nsmagic bridges as JSON-ready dicts, or a note saying why not listed."""
    from nsmagic.cgroups import pid_alive

    try:
        from nsmagic.isolation import network

        found = network.bridges()
    except Exception as error:  # noqa: BLE001 - no netlink access here: say so
        return [], f"network links not listed: {error}"
    return [{"name": b.name, "owner_pid": b.owner_pid,
             "owner_alive": b.owner_pid is not None and pid_alive(b.owner_pid)}
            for b in found], None


def _cmd_ls(args: argparse.Namespace) -> int:
    from nsmagic.cgroups import machine
    from nsmagic.cgroups.limits import format_size
    from nsmagic.runtime.listing import Table

    groups = [g.summary() for _, g in sorted(machine.find_all().items())]
    bridges, bridge_note = _bridges()
    if args.json:
        print(json.dumps({"cgroups": groups, "bridges": bridges, "notes": [
            n for n in (bridge_note,) if n]}, indent=2))
        return 0
    print("nsmagic cgroups on this machine (containers of `nsmagic run` end with it; owners "
          "are pids of this pid namespace):")
    rows = []
    for g in groups:
        memory = g["stats"].get("memory_current")
        owner = (f"{g['owner_pid']} ({g['owner_command']})" if g["owner_alive"]
                 else f"{g['owner_pid']} (dead)")
        rows.append([g["name"], owner, str(len(g["pids"])),
                     format_size(memory) if memory is not None else "-", g["limits_text"],
                     g["driver"]])
    table = Table(["cgroup", "owner", "procs", "memory", "limits", "driver"], rows)
    print(table.text() if rows else "  none")
    print("nsmagic bridges:")
    if bridge_note:
        print(f"  {bridge_note}")
    elif bridges:
        print(Table(["bridge", "owner", "alive"],
                    [[b["name"], str(b["owner_pid"]), "yes" if b["owner_alive"] else "no"]
                     for b in bridges]).text())
    else:
        print("  none")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from nsmagic.cgroups import machine
    from nsmagic.runtime.listing import Table, figure_rows

    groups = machine.find_all()
    matches = machine.lookup(args.name, groups)
    if len(matches) != 1:
        why = "no nsmagic cgroup" if not matches else f"{len(matches)} nsmagic cgroups"
        known = ", ".join(sorted(groups)) or "none"
        print(f"{PROG} stats: {why} named {args.name!r} on this machine (there are: {known})",
              file=sys.stderr)
        return 1
    summary = matches[0].summary()
    if args.json:
        summary.pop("limits_text")
        print(json.dumps(summary, indent=2))
        return 0
    rows = [["owner", f"{summary['owner_pid']} ({'alive' if summary['owner_alive'] else 'dead'})"],
            ["limits", summary["limits_text"]], ["processes", str(len(summary["pids"]))]]
    rows += figure_rows(summary["stats"])
    print(Table(["figure", summary["name"]], rows).text())
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from nsmagic.cgroups import machine, owner_of
    from nsmagic.runtime.listing import prune
    from nsmagic.runtime.named import MANAGER

    lines = [line for line in prune(MANAGER) if line != "nothing to prune"]
    report = machine.prune_dead_owners()
    lines += [f"removed orphaned cgroup {name}" for name in report.removed]
    lines += [f"kept {name}: its owner {owner_of(name)} is dead here, but {count} processes "
              "are inside (another pid namespace's?)" for name, count in report.kept.items()]
    lines += [f"cgroup {name} not removed: {why}" for name, why in report.failed.items()]
    print("\n".join(lines or ["nothing to prune"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `nsmagic` and `python -m nsmagic`; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        return _cmd_bench(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("choose a command: doctor, bench, run, export, ls, stats, prune, pull, "
                     "images, rmi, image-prune, push or save")
    if hasattr(args, "run"):  # an image command
        from nsmagic.images import cli as image_commands

        return image_commands.run(args)
    return args.handler(args)
