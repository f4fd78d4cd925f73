"""Runs a Python cell, or a named container's agent (cell after cell), in this interpreter.

It imports only the standard library, nsmagic.errors and the wire formats, because in a
container of an image it runs under the image's own python3 (`main()`, executed with the
container's descriptors), which has none of nsmagic's dependencies and may be another
Python version.
"""

from __future__ import annotations

import ast
import io
import json
import linecache
import os
import pickle
import signal
import socket
import sys
import traceback

from nsmagic.runtime import protocol, transfer
from nsmagic.runtime.protocol import Event

# How an image's python3 is told to run this module (sys.path: where the container's root
# shows nsmagic's package, read-only).
BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
        "from nsmagic.runtime.inside.python_runner import main; main()")


def _fresh_stdio() -> None:
    # Unbuffered text streams on fds 1 and 2, so each print reaches the notebook as it happens.
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False,
                                  line_buffering=True, errors="backslashreplace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=False,
                                  line_buffering=True, errors="backslashreplace")
    sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.__stdout__, sys.__stderr__, sys.__stdin__ = sys.stdout, sys.stderr, sys.stdin


def run(payload: dict, events_fd: int, data: socket.socket | None) -> int:
    """Run a payload of kind python or agent (its wire form) here; return the exit code."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _fresh_stdio()
    if payload["kind"] == "agent":
        return _serve_agent(data)
    namespace = _fresh_namespace()
    if payload.get("inputs") and data is not None:
        namespace.update(transfer.unpack_trusted(pickle.loads(protocol.receive_frame(data))))
    outcome = _run_python(payload["source"], payload.get("filename", "<container>"),
                          payload.get("first_line", 1), namespace)
    if outcome.exception is not None:
        _report_exception(outcome.exception, events_fd)
    outputs = tuple(payload.get("outputs") or ())
    if outputs and data is not None:
        _send_outputs(data, namespace, outputs, outcome.exception is None)
    return outcome.exit_code


def main() -> None:
    """An image's python3: argv is EVENTS_FD DATA_FD REQUEST_FD (a memfd holding the
    payload's wire form, as the container's main process read it)."""
    events_fd, data_fd, request_fd = (int(word) for word in sys.argv[1:4])
    with os.fdopen(request_fd, "rb") as handle:
        payload = json.loads(handle.read())
    os.set_inheritable(events_fd, False)
    data = socket.socket(fileno=data_fd)
    data.set_inheritable(False)
    code = 1
    try:
        code = run(payload, events_fd, data)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _fresh_namespace() -> dict:
    return {"__name__": "__main__", "__builtins__": __builtins__}


class _Outcome:
    def __init__(self, exit_code: int, exception: BaseException | None = None) -> None:
        self.exit_code = exit_code
        self.exception = exception


def _run_python(source: str, filename: str, first_line: int, namespace: dict) -> _Outcome:
    # Registering the source lets tracebacks print the offending lines, as in a normal cell.
    lines = source.splitlines(keepends=True)
    linecache.cache[filename] = (len(source), None, ["\n"] * (first_line - 1) + lines,
                                 filename)
    try:
        tree = ast.parse(source, filename)
        ast.increment_lineno(tree, first_line - 1)
        code = compile(tree, filename, "exec")
        exec(code, namespace)
    except SystemExit as exit_request:
        return _Outcome(_exit_code(exit_request.code))
    except BaseException as error:  # noqa: BLE001 - every failure is reported
        return _Outcome(1, error)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    return _Outcome(0)


def _send_outputs(data: socket.socket, namespace: dict, names: tuple[str, ...],
                  ran_to_end: bool) -> None:
    """Pickle the requested variables back; a missing or unpicklable one is named."""
    packed, errors = {}, {}
    for name in names:
        if name not in namespace:
            errors[name] = (f"variable {name!r} does not exist in the container"
                            + ("" if ran_to_end else " (the cell failed before setting it)"))
            continue
        try:
            packed.update(transfer.pack({name: namespace[name]}))
        except transfer.TransferError as error:
            errors[name] = str(error).replace("into the container", "out of the container")
    protocol.send_frame(data, json.dumps({"errors": errors}).encode())
    protocol.send_frame(data, pickle.dumps(packed, protocol=pickle.HIGHEST_PROTOCOL))


def _serve_agent(data: socket.socket) -> int:
    """A long-lived container's main process: run each cell sent to it in one namespace, so
    variables, imports and open sockets live on from cell to cell."""
    namespace = _fresh_namespace()
    while True:
        try:
            frame = protocol.receive_frame(data)
        except KeyboardInterrupt:
            continue  # an interrupt that arrived between cells
        if frame is None:
            return 0
        request = pickle.loads(frame)
        try:
            if request.get("inputs"):
                namespace.update(transfer.unpack_trusted(request["inputs"]))
            if request.get("kind") == "shell":
                outcome = _run_shell(request["source"])
            else:
                outcome = _run_python(request["source"], request["filename"],
                                      request["first_line"], namespace)
        except KeyboardInterrupt as error:
            outcome = _Outcome(1, error)
        reply = {"exit_code": outcome.exit_code, "exception": None}
        if outcome.exception is not None:
            reply["exception"] = _describe_exception(outcome.exception)
        protocol.send_frame(data, json.dumps(reply).encode())
        _send_outputs(data, namespace, tuple(request.get("outputs") or ()),
                      outcome.exception is None)


def _run_shell(script: str) -> _Outcome:
    import subprocess

    sys.stdout.flush()
    completed = subprocess.run(["/bin/sh", "-c", script], check=False)
    code = completed.returncode
    return _Outcome(code if code >= 0 else 128 - code)


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _describe_exception(error: BaseException) -> dict:
    tb = error.__traceback__
    # Drop our own frame so the traceback starts in the user's code, like a normal cell.
    if tb is not None and tb.tb_frame.f_code is _run_python.__code__:
        tb = tb.tb_next
    formatted = traceback.format_exception(type(error), error, tb)
    return {"type": type(error).__name__, "message": str(error), "traceback": formatted[-200:]}


def _report_exception(error: BaseException, events_fd: int) -> None:
    message = {"event": Event.EXCEPTION, **_describe_exception(error)}
    try:
        protocol.send(events_fd, message)
    except (OSError, ValueError):
        sys.stderr.write("".join(message["traceback"]))
