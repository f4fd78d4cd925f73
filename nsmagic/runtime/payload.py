"""Runs the user's code as the container's main process: Python source or a shell script."""

from __future__ import annotations

import ast
import io
import linecache
import os
import signal
import sys
import traceback

from nsmagic.runtime import protocol
from nsmagic.runtime.spec import Payload


def _fresh_stdio() -> None:
    # Unbuffered text streams on fds 1 and 2, so each print reaches the notebook as it happens.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False,
                                  line_buffering=True, errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=False,
                                  line_buffering=True, errors="backslashreplace")
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin


def run_payload(payload: Payload, ctl_fd: int, env: dict[str, str], cwd: str) -> int:
    """Execute the payload in this (already isolated) process; return its exit code."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD,
                   signal.SIGPIPE, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    if payload.kind == "shell":
        os.execve(payload.shell, [payload.shell, "-c", payload.source], env)
    _fresh_stdio()
    return _run_python(payload, ctl_fd)


def _run_python(payload: Payload, ctl_fd: int) -> int:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    # Registering the source lets tracebacks print the offending lines, as in a normal cell.
    lines = payload.source.splitlines(keepends=True)
    linecache.cache[payload.filename] = (len(payload.source), None,
                                         ["\n"] * (payload.first_line - 1) + lines,
                                         payload.filename)
    try:
        tree = ast.parse(payload.source, payload.filename)
        ast.increment_lineno(tree, payload.first_line - 1)
        code = compile(tree, payload.filename, "exec")
        exec(code, namespace)
    except SystemExit as exit_request:
        return _exit_code(exit_request.code)
    except BaseException as error:  # noqa: BLE001 - every failure is reported, then ends the run
        _report_exception(error, ctl_fd)
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return 0


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _report_exception(error: BaseException, ctl_fd: int) -> None:
    tb = error.__traceback__
    # Drop our own frame so the traceback starts in the user's code, like a normal cell.
    if tb is not None and tb.tb_frame.f_code is _run_python.__code__:
        tb = tb.tb_next
    formatted = traceback.format_exception(type(error), error, tb)
    message = {
        "event": "exception",
        "type": type(error).__name__,
        "message": str(error),
        "traceback": formatted[-200:],
    }
    try:
        protocol.send(ctl_fd, message)
    except (OSError, ValueError):
        sys.stderr.write("".join(formatted))
