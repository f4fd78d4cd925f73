"""%%container and %nsmagic: parse options, call the nsmagic API, show the results."""

from __future__ import annotations

import contextlib
import shlex
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from traitlets import Unicode

from nsmagic import host
from nsmagic.cgroups.limits import Limits
from nsmagic.errors import ContainerSetupError, SpecError
from nsmagic.magics.images import ImageCommands
from nsmagic.runtime import groups
from nsmagic.runtime.container import Container, ContainerResult
from nsmagic.runtime.named import (
    MANAGER,
    BackgroundCell,
    CellInterrupted,
    ExecResult,
    ManagedContainer,
    options_fixed_at_start,
    script_for,
)
from nsmagic.runtime.options import CONTAINER_OPTIONS, build_spec, keywords_from_args
from nsmagic.runtime.spec import ContainerSpec, validate_name

SHELLS = {"bash": "/bin/bash", "sh": "/bin/sh"}
CONTAINER_SUBCOMMANDS = ("start", "ls", "logs", "stats", "wait", "stop", "rm", "prune",
                         "export", "dashboard")


class ContainerError(Exception):
    """A container cell failed; IPython shows only the container's own traceback or reason."""

    def __init__(self, summary: str, traceback_lines: list[str] | None = None) -> None:
        super().__init__(summary)
        self.traceback_lines = traceback_lines

    def _render_traceback_(self) -> list[str]:
        if self.traceback_lines:
            return "".join(self.traceback_lines).rstrip("\n").split("\n")
        return [f"ContainerError: {self}"]


class ContainerInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a container cell: one line, as IPython's own magics say it, not a
    traceback through nsmagic (a KeyboardInterrupt still: Run All stops there)."""

    def _render_traceback_(self) -> list[str]:
        return [str(self)]


def _container_arguments(func: Any) -> Any:
    """The options every front end shares (nsmagic.runtime.options), as magic arguments."""
    for option in reversed(CONTAINER_OPTIONS):
        func = argument(*option.flags, **option.settings)(func)
    return func


@magics_class
class ContainerMagics(ImageCommands, Magics):
    """%%container, %container and %nsmagic; defaults come from %config ContainerMagics.*"""

    memory = Unicode(None, allow_none=True, help="default --memory, e.g. '512M'").tag(config=True)
    cpus = Unicode(None, allow_none=True, help="default --cpus, e.g. '0.5'").tag(config=True)
    pids = Unicode(None, allow_none=True, help="default --pids, e.g. '256'").tag(config=True)

    @magic_arguments("%container")
    @argument("command", nargs="*", metavar="NAME bash|sh",
              help="NAME runs the cell in that named container (see above); 'bash' or 'sh' "
                   "runs the cell as a shell script; nothing runs Python in a new container")
    @argument("--shell", action="store_true", help="run the cell as a /bin/sh script")
    @_container_arguments
    @argument("--cgroup", metavar="NAME",
              help="run in a group made with %%cgroup create (instead of limit options)")
    @argument("--in", dest="inputs", metavar="a,b",
              help="copy these notebook variables into the container (pickled)")
    @argument("--out", dest="outputs", metavar="x,y",
              help="copy these container variables back into the notebook (plain data)")
    @argument("--plot", action="store_true",
              help="live CPU/memory plot of this container under the cell while it runs")
    @argument("--bg", action="store_true",
              help="return at once; output goes to the container's log and this cell "
                   "(%%container wait NAME waits)")
    @argument("--name", help="name of a new container's --bg run, for %%container "
                             "logs/wait/stop")
    @argument("--timeout", help="kill the container after this many seconds (in a named "
                                "container: interrupt the cell, kill it only if it will not "
                                "stop)")
    @argument("--no-raise", action="store_true",
              help="report a failure as a message instead of failing the cell")
    @argument("-o", "--output-result", action="store_true",
              help="return the ContainerResult (like %%timeit -o)")
    @argument("-q", "--quiet", action="store_true", help="do not print nsmagic's own notes")
    @argument("--export-oci", metavar="DIR",
              help="also write an OCI runtime bundle of this cell's container to DIR "
                   "(see nsmagic.oci), then run the cell as usual")
    @cell_magic
    def container(self, line: str, cell: str) -> ContainerResult | None:
        """Run the cell in fresh Linux namespaces with cgroup limits, streaming its output.

        Examples::

            %%container --hostname lab1 --memory 256M --cpus 0.5 --pids 64
            import os, socket
            print(os.getpid(), socket.gethostname())

            %%container bash
            hostname; ps ax

        In a named container, %%container NAME [bash|sh] runs the cell in the container
        that %container start NAME started, in its one Python process: variables, imports
        and open sockets live on from cell to cell::

            %container start web --memory 128M --net bridge
            %%container web --in data --out result
            result = sum(data)

        There a cell takes --in, --out, --shell, -o, -q, --no-raise and:

          --bg       run the cell in the background in NAME: its output shows under the
                     cell and in %container logs NAME, %container wait NAME waits for it,
                     and NAME takes no other cell until then
          --timeout  interrupt the cell after that many seconds; NAME is killed only if
                     the cell will not stop (the error says which)
          --plot     NAME's live CPU/memory plot under the cell while it runs

        The container's own options (limits, namespaces, --net, filesystems, --env,
        --hostname, --privileged, --security-opt, ..., --cgroup, --export-oci) were set by
        %container start and are refused in its cells; --name names a new container's
        --bg run. Ctrl-C interrupts the cell; NAME runs on unless the cell will not stop.
        """
        if line.split(None, 1)[:1] == ["build"]:  # %%container build REF: a Containerfile
            return self._build_cell(line.split(None, 1)[1] if " " in line.strip() else "", cell)
        args = self._parse(self.container, line)
        name, kind, shell = _split_command(args.command, args.shell)
        if name is not None:
            _check_named_cell_options(name, args)
        elif args.name is not None and not args.bg:
            raise UsageError("--name names a background run: %%container --bg --name NAME.")
        inputs = self._inputs(args.inputs)
        outputs = _names(args.outputs, "--out")
        if name is not None:
            return self._exec_in_named(name, args, cell, kind, shell, inputs, outputs)
        spec, notes = self._spec_from(args)
        if args.export_oci:
            self._export_oci(spec, args.export_oci, cell, kind, shell, args.quiet)
        if not args.quiet:
            for note in notes:
                _warn(note)
        count = getattr(self.shell, "execution_count", 0)
        source_options = ({"filename": f"Cell In[{count}] (container)", "first_line": 2}
                          if kind == "python" else {"filename": shell})
        if kind == "shell":
            cell = script_for(shell, cell)  # a shell payload is run by /bin/sh
        if args.bg:
            return self._run_in_background(args, spec, cell, kind, source_options, inputs,
                                           outputs)
        try:
            container = Container(spec)
        except SpecError as error:
            raise UsageError(str(error)) from None
        began = time.perf_counter()
        try:
            try:
                container.start(cell, kind=kind, inputs=inputs, outputs=outputs,
                                **source_options)
            except SpecError as error:
                raise UsageError(str(error)) from None
            with _live_plot(container.spec.container_id, args.plot):
                result = container.wait(on_stdout=_write_stdout, on_stderr=_write_stderr,
                                        timeout=args.timeout)
        except KeyboardInterrupt:
            # wait() raises it once nothing of the container is left.
            ran = container.result.timings.get("total_s", time.perf_counter() - began)
            raise ContainerInterrupted(f"interrupted: container stopped after {ran:.1f} s") \
                from None
        except (ContainerSetupError, TimeoutError) as error:
            message = f"{error}; it was killed" if isinstance(error, TimeoutError) else str(error)
            if args.no_raise:
                print(f"ContainerError: {message}", file=sys.stderr)
                return None
            raise ContainerError(message) from None
        finally:
            container.close()
        # Reachable from -o: the limits in force (for --cgroup, the group's own).
        result.limits = _limits_in_force(spec)
        if not args.quiet:
            for warning in result.warnings:
                _warn(warning)
            if result.oom is not None and result.describe() != result.oom["text"]:
                # A process was OOM-killed, but not the payload itself (or the payload
                # failed for another reason): still say so.
                _warn(f"a process was {result.oom['text']}")
        self._store_outputs(result.outputs, result.output_errors)
        self._report_failure(result, args.no_raise)
        return result if args.output_result else None

    def _inputs(self, text: str | None) -> dict[str, Any] | None:
        names = _names(text, "--in")
        if not names:
            return None
        missing = [n for n in names if n not in self.shell.user_ns]
        if missing:
            raise UsageError(f"--in names {missing[0]!r}, which is not a notebook variable.")
        return {n: self.shell.user_ns[n] for n in names}

    def _store_outputs(self, values: dict[str, Any], errors: dict[str, str]) -> None:
        self.shell.user_ns.update(values)
        if errors:
            raise ContainerError(next(iter(errors.values())))

    def _exec_in_named(self, name: str, args: Any, cell: str, kind: str, shell: str,
                       inputs: dict[str, Any] | None, outputs: tuple[str, ...]) -> Any:
        count = getattr(self.shell, "execution_count", 0)
        options = {"kind": kind, "shell": shell or None, "inputs": inputs, "outputs": outputs,
                   "filename": f"Cell In[{count}] ({name})", "first_line": 2,
                   "timeout": args.timeout}
        try:
            managed = MANAGER.get(name)
            if args.bg:
                return self._exec_in_background(managed, args, cell, options)
            with _live_plot(managed.spec.container_id, args.plot):
                result = managed.exec(cell, on_stdout=_write_stdout, on_stderr=_write_stderr,
                                      **options)
        except SpecError as error:
            raise UsageError(str(error)) from None
        except CellInterrupted as interrupt:
            raise ContainerInterrupted(interrupt.result.describe()) from None
        self.shell.user_ns.update(result.outputs)
        failure = _cell_failure(result)
        if failure is not None:
            if args.no_raise:
                print("".join(failure._render_traceback_()), file=sys.stderr)
            else:
                raise failure
        return result if args.output_result else None

    def _exec_in_background(self, managed: ManagedContainer, args: Any, cell: str,
                            options: dict[str, Any]) -> BackgroundCell | None:
        """%%container NAME --bg: the cell runs in NAME from a thread; its output shows under
        this cell (and in NAME's log), and %container wait NAME waits for it."""
        write = live_output(f"container {managed.name}")
        plot = {"stop": lambda: None}

        def ended(result: ExecResult) -> None:
            plot["stop"]()
            failure = _cell_failure(result)
            if failure is not None:
                write("stderr", "".join(failure._render_traceback_()) + "\n")

        background = managed.exec_background(
            cell, on_stdout=lambda text: write("stdout", text),
            on_stderr=lambda text: write("stderr", text), on_end=ended, **options)
        # Once the cell is accepted (a busy container refuses it), and until it ends: the
        # container itself runs on, so its plot would not stop by itself.
        plot["stop"] = _background_plot(managed.spec.container_id, args.plot)
        if background.done.is_set():
            plot["stop"]()  # it ended already (stop is safe twice)
        if not args.quiet:
            _note(f"running in the background in {managed.name!r}: %container wait "
                  f"{managed.name} waits for the cell, logs {managed.name} shows its output")
        return background if args.output_result else None

    def _run_in_background(self, args: Any, spec: ContainerSpec, cell: str, kind: str,
                           source_options: dict, inputs: dict[str, Any] | None,
                           outputs: tuple[str, ...]) -> Any:
        try:
            managed = MANAGER.run_background(spec, cell, kind=kind, name=args.name,
                                             inputs=inputs, outputs=outputs,
                                             timeout=args.timeout, **source_options)
        except SpecError as error:
            raise UsageError(str(error)) from None
        except ContainerSetupError as error:
            if args.no_raise:
                print(f"ContainerError: {error}", file=sys.stderr)
                return None
            raise ContainerError(str(error)) from None
        # The plot stops by itself when the container ends.
        _background_plot(spec.container_id, args.plot)
        show_live_output(managed)
        if not args.quiet:
            _note(f"running in the background as {managed.name!r}: %container logs "
                  f"{managed.name} / wait {managed.name} / stop {managed.name}")
        return managed if args.output_result else None

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
            args = parse_argstring(magic, line)
        except UsageError:
            raise
        except ValueError as error:  # shlex: "No closing quotation"
            raise UsageError(f"cannot read the options {line!r}: {error}.") from None
        except SystemExit:  # argparse's way of saying "bad option" in some versions
            raise UsageError(f"bad options: {line!r}; see %%container?") from None
        _check_common_options(args)
        return args

    def _spec_from(self, args: Any) -> tuple[ContainerSpec, list[str]]:
        """The spec of the options, through the policy every front end shares."""
        defaults = {} if args.cgroup is not None else {
            "cpus": self.cpus, "memory": self.memory, "pids": self.pids}
        try:
            keywords = keywords_from_args(args, defaults)
            resolved = build_spec(cgroup=args.cgroup, **keywords)
        except SpecError as error:
            raise UsageError(str(error)) from None
        return resolved.spec, resolved.notes

    @line_magic("container")
    def container_line(self, line: str) -> Any:
        """Manage long-lived containers.

        %container start NAME [options]   start a named container: the container options
                                          of %%container, -q, -o, --no-raise; then
                                          %%container NAME runs cells in it
        %container ls                     name, state, pid, namespaces, limits, uptime,
                                          cpu, memory, address
        %container logs NAME [-f]         what it printed (-f: follow until it ends)
        %container stats NAME             its cgroup's usage
        %container wait NAME [TIMEOUT]    block until it (a named container: its --bg
                                          cell) ends, show how
        %container stop NAME              SIGTERM, then SIGKILL after 2 s
        %container rm [-f] NAME           forget it (-f: kill it first)
        %container prune                  remove ended containers and every leftover kernel
                                          resource of nsmagic, including a dead kernel's
        %container export NAME --oci DIR  write an OCI runtime bundle (runc run) of it
        %container dashboard              live CPU and memory plots of every container
        %container pull REF               bring an image into the store (progress per layer)
        %container images                 the store's images: size, shared, unique, layers
        %container rmi REF | image-prune  remove an image | layers nothing uses
        %container diff NAME              what an image container changed (A/C/D)
        %container commit NAME REF        its writable layer as a new image
        %container push REF [DEST]        send an image to a registry
        %%container build REF             the cell is a Containerfile (docs/images.md)
        """
        try:
            words = shlex.split(line)
        except ValueError as error:
            raise UsageError(f"%container: cannot read {line!r}: {error}.") from None
        commands = subcommands(type(self))
        known = ", ".join(commands[:-1]) + f" or {commands[-1]}"
        if not words:
            raise UsageError(f"%container needs a subcommand: {known} (see %container?).")
        command, rest = words[0], words[1:]
        handler = getattr(self, f"_container_{command.replace('-', '_')}", None)
        if command not in commands or handler is None:
            raise UsageError(f"%container does not know {command!r}: use {known}.")
        try:
            return handler(rest, line.split(None, 1)[1] if len(words) > 1 else "")
        except SpecError as error:
            raise UsageError(str(error)) from None

    def _one_name(self, rest: list[str], usage: str) -> str:
        if len(rest) != 1:
            raise UsageError(f"usage: %container {usage}")
        return rest[0]

    def _container_start(self, rest: list[str], text: str) -> Any:
        if not rest or rest[0].startswith("-"):
            raise UsageError("usage: %container start NAME [options]; the name comes first.")
        name, options = rest[0], shlex.join(rest[1:])
        validate_name(name)
        args = self._parse(self.container, options)
        if args.command or args.shell:
            raise UsageError("%container start takes options only; the cell's code goes to "
                             f"%%container {name} (with 'bash' or 'sh' for a script).")
        cell_only = [flag for flag, given in CELL_ONLY_OPTIONS.items() if getattr(args, given)]
        if cell_only:
            raise UsageError(f"%container start takes container options (limits, namespaces, "
                             f"--net, filesystems); {cell_only[0]} is a cell's: "
                             f"%%container {name} {cell_only[0]} ...")
        if name in SHELLS:
            raise UsageError(f"{name!r} cannot name a container (it means a shell here).")
        spec, notes = self._spec_from(args)
        try:
            managed = MANAGER.start(name, spec)
            if managed.done.is_set():
                MANAGER.remove(name, force=True)
                raise ContainerSetupError(f"container {name!r} ended at once: "
                                          f"{managed.result.describe()}")
        except ContainerSetupError as error:
            if args.no_raise:
                print(f"ContainerError: {error}", file=sys.stderr)
                return None
            raise ContainerError(str(error)) from None
        if not args.quiet:
            for note in notes:
                _warn(note)
            address = f", address {managed.result.address}" if managed.result.address else ""
            print(f"started {name} (pid {managed.result.pid}{address})")
        return managed if args.output_result else None

    def _container_ls(self, rest: list[str], text: str) -> Any:
        from nsmagic.runtime.listing import container_table

        return container_table(MANAGER.all())

    def _container_logs(self, rest: list[str], text: str) -> None:
        follow = "-f" in rest
        name = self._one_name([w for w in rest if w != "-f"], "logs NAME [-f]")
        managed = MANAGER.get(name)
        sys.stdout.write(managed.logs())
        if follow and managed.state == "running":
            unfollow = managed.follow(lambda stream, text: (
                _write_stdout if stream == "stdout" else _write_stderr)(text))
            try:
                managed.done.wait()
            except KeyboardInterrupt:
                pass
            finally:
                unfollow()

    def _container_stats(self, rest: list[str], text: str) -> Any:
        from nsmagic.runtime.listing import stats_table

        return stats_table(MANAGER.get(self._one_name(rest, "stats NAME")))

    def _container_wait(self, rest: list[str], text: str) -> Any:
        if not 1 <= len(rest) <= 2:
            raise UsageError("usage: %container wait NAME [TIMEOUT_SECONDS]")
        managed = MANAGER.get(rest[0])
        timeout = _positive_seconds(rest[1], "%container wait TIMEOUT") if len(rest) == 2 \
            else None
        try:
            # A named container's background cell, else the container itself.
            if managed.background is not None:
                result = managed.background.wait(timeout)
                print(f"{managed.name}: the background cell ended: {result.describe()}")
            else:
                result = managed.wait(timeout)
                print(f"{managed.name}: {managed.describe()}")
        except TimeoutError as error:
            raise ContainerError(str(error)) from None
        except KeyboardInterrupt:
            raise ContainerInterrupted(f"interrupted: stopped waiting; {managed.name!r} runs "
                                       "on") from None
        self.shell.user_ns.update(result.outputs)
        return result

    def _container_stop(self, rest: list[str], text: str) -> None:
        managed = MANAGER.get(self._one_name(rest, "stop NAME"))
        print(f"{managed.name}: {managed.stop().describe()}")

    def _container_rm(self, rest: list[str], text: str) -> None:
        force = "-f" in rest
        name = self._one_name([w for w in rest if w != "-f"], "rm [-f] NAME")
        MANAGER.remove(name, force=force)

    def _container_prune(self, rest: list[str], text: str) -> None:
        from nsmagic.runtime.listing import prune

        for line in prune(MANAGER):
            print(line)

    def _container_export(self, rest: list[str], text: str) -> None:
        """%container export NAME --oci DIR [--bundle-root bind|busybox]: an OCI bundle."""
        usage = "usage: %container export NAME --oci DIR [--bundle-root bind|busybox]"
        if len(rest) not in (3, 5) or rest[1] != "--oci" or (
                len(rest) == 5 and rest[3] != "--bundle-root"):
            raise UsageError(usage)
        bundle_root = rest[4] if len(rest) == 5 else "bind"
        self._export_oci(MANAGER.get(rest[0]).spec, rest[2], None, "agent", "", False,
                         bundle_root)

    @staticmethod
    def _export_oci(spec: ContainerSpec, directory: str, cell: str | None, kind: str,
                    shell: str, quiet: bool, bundle_root: str = "bind") -> None:
        from nsmagic import oci

        if cell is None:
            command = None  # a named container's main process is nsmagic's agent: a shell
        elif kind == "shell":
            command = [shell, "-c", cell]
        else:
            command = [sys.executable, "-c", cell]
        try:
            bundle = oci.write_bundle(spec, directory, command, bundle_root=bundle_root)
        except (SpecError, OSError) as error:
            raise UsageError(f"OCI export: {error}") from None
        if not quiet:
            _note(f"wrote an OCI bundle to {bundle.path} (see its README.md)")
            for note in bundle.notes:
                _note(f"OCI bundle: {note}")  # what the bundle does unlike nsmagic

    def _container_dashboard(self, rest: list[str], text: str) -> None:
        from nsmagic.widgets import show_dashboard

        show_dashboard(rest or None)

    def close(self) -> None:
        """The extension unloads: end this kernel's named containers."""
        MANAGER.close_all()

    @line_magic
    def nsmagic(self, line: str) -> None:
        """%nsmagic doctor: what this host allows containers to do, and why not."""
        words = shlex.split(line)
        if words in ([], ["doctor"]):
            print(host.probe().describe())
            return
        raise UsageError(f"%nsmagic does not know {line!r}; try %nsmagic doctor.")


def _positive_seconds(text: object, option: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{option} must be a number of seconds above 0, not {text!r}.") \
            from None
    if not 0 < value < 1e9:  # also refuses nan and inf
        raise UsageError(f"{option} must be a number of seconds above 0, not {text!r}.")
    return value


def _check_common_options(args: Any) -> None:
    if getattr(args, "timeout", None) is not None:
        args.timeout = _positive_seconds(args.timeout, "--timeout")
    for option in ("net", "hostname", "rootfs", "name", "cgroup"):
        if getattr(args, option, None) == "":
            raise UsageError(f"--{option} needs a value.")


def subcommands(magics: type) -> list[str]:
    """%container's subcommands: its own, then any a mixin adds (a _container_NAME method
    serves 'NAME', with '-' for '_')."""
    found = [name.removeprefix("_container_").replace("_", "-") for name in dir(magics)
             if name.startswith("_container_") and callable(getattr(magics, name))]
    return [*(c for c in CONTAINER_SUBCOMMANDS if c in found),
            *sorted(c for c in found if c not in CONTAINER_SUBCOMMANDS)]


# Options of a cell, which %container start refuses (flag -> its parsed name).
CELL_ONLY_OPTIONS = {"--bg": "bg", "--in": "inputs", "--out": "outputs", "--plot": "plot",
                     "--timeout": "timeout", "--name": "name", "--export-oci": "export_oci"}


def _check_named_cell_options(name: str, args: Any) -> None:
    """A cell in a named container takes the cell's options; the container's own were set
    by %container start."""
    fixed = options_fixed_at_start(args)
    if "--export-oci" in fixed:
        raise UsageError(f"--export-oci writes a bundle of a container as %container start "
                         f"makes it; for {name!r} use %container export {name} --oci DIR.")
    if fixed:
        raise UsageError(f"{fixed[0]} is set when a container starts, and {name!r} runs "
                         f"already: give it to %container start (for a new container).")
    if args.name is not None:
        raise UsageError(f"--name names a new background run; this cell runs in {name!r} "
                         f"(%%container {name} --bg runs it in the background there).")


def _cell_failure(result: ExecResult) -> ContainerError | None:
    """How a cell in a named container failed, as the error the cell shows (None: it did
    not)."""
    if result.ok:
        if result.output_errors:
            return ContainerError(next(iter(result.output_errors.values())))
        return None
    stopped = result.timed_out is not None or result.killed or result.ended is not None
    if result.exception is not None and not stopped:
        return ContainerError(str(result.exception), result.exception.traceback)
    if stopped:
        return ContainerError(result.describe())
    return ContainerError(f"the cell ended with {result.describe()}")


def _split_command(words: list[str], shell_flag: bool) -> tuple[str | None, str, str]:
    """[NAME] [bash|sh] -> (name or None, kind, shell path)."""
    words = list(words)
    kind, shell = "python", ""
    if words and words[-1] in SHELLS:
        kind, shell = "shell", SHELLS[words.pop()]
    elif shell_flag:
        kind, shell = "shell", SHELLS["sh"]
    if len(words) > 1:
        raise UsageError(f"%%container takes at most a container name and 'bash' or 'sh', "
                         f"not {' '.join(words)!r}.")
    name = words[0] if words else None
    if name is not None and name not in MANAGER.names():
        raise UsageError(
            f"%%container does not know {name!r}: give the name of a container started with "
            "%container start, 'bash' or 'sh' to run a shell script, or nothing for Python."
        )
    return name, kind, shell


def _names(text: str | None, option: str) -> tuple[str, ...]:
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not name.isidentifier():
            raise UsageError(f"{option} takes variable names separated by commas, "
                             f"not {text!r}.")
    return names


def live_output(label: str = "a container") -> Any:
    """write(stream, text) that shows text under the cell running now, even after it ends.

    In Jupyter an Output widget, filled from a reader thread, stays attached to this cell
    even while other cells run; elsewhere the text is printed to the process's own streams.
    """
    try:
        from IPython import get_ipython
        from ipywidgets import Output

        if "ZMQ" not in type(get_ipython()).__name__:
            raise ImportError
    except ImportError:
        return lambda stream, text: (sys.__stdout__ if stream == "stdout"
                                     else sys.__stderr__).write(text)
    from IPython.display import display

    area = Output()
    # A saved notebook without widget state (JupyterLab's) shows this text, not "Output()".
    display({"text/plain": f"(live output of {label}: %container logs shows it)",
             "application/vnd.jupyter.widget-view+json": {
                 "version_major": 2, "version_minor": 0, "model_id": area.model_id}},
            raw=True)
    return lambda stream, text: (area.append_stdout if stream == "stdout"
                                 else area.append_stderr)(text)


def show_live_output(managed: ManagedContainer) -> None:
    """Show a background container's output under the cell that started it, as it comes."""
    managed.follow(live_output(f"container {managed.name}"), replay=True)


def _background_plot(container_id: str, wanted: bool) -> Any:
    """The live plot of a container under this cell, for a run in the background; returns
    the function that stops it (it stops by itself when the container ends)."""
    if not wanted:
        return lambda: None
    from nsmagic.widgets import show_dashboard  # matplotlib loads only when a plot is asked

    return show_dashboard([container_id], stop_when_done=True, title=None, fps=2.0).stop


def _live_plot(container_id: str, wanted: bool) -> Any:
    if not wanted:
        return contextlib.nullcontext()
    from nsmagic.widgets import live_plot  # matplotlib loads only when a plot is asked for

    return live_plot(container_id)


def _limits_in_force(spec: ContainerSpec) -> Limits:
    if spec.cgroup is None:
        return spec.limits
    try:
        return groups.get(spec.cgroup).limits()
    except (SpecError, OSError):
        return spec.limits


def _note(text: str) -> None:
    """What nsmagic did, as plain output (Jupyter shows stderr pink, as it shows errors)."""
    print(f"nsmagic: {text}")


def _warn(text: str) -> None:
    """A warning, on stderr: the container is less isolated or limited than a default one
    (PRIVILEGED, NO SECCOMP, HOST ROOT, NOT isolated, limits approximated) or than asked, or
    something of it was lost (output cut, a process OOM-killed)."""
    print(f"nsmagic: {text}", file=sys.stderr)


def _write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _write_stderr(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()


__all__ = ["ContainerError", "ContainerInterrupted", "ContainerMagics"]
