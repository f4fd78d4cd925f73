"""JupyterLab and Notebook 7 for browser tests: a server on 127.0.0.1 (empty token, a temporary
root dir), a notebook opened in a Playwright page, Run All, and what the kernel and the page
then show. Both front ends are built from JupyterLab's widgets, so one set of selectors and
one `window.jupyterapp` (exposed by a server flag) serve both.

Started here, stopped here: the server runs in a session of its own and is stopped with
SIGTERM (it shuts its kernels down), then SIGKILL of its group; every kernel it started is
checked gone by pid; every Jupyter directory is under the given folder.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from ..conftest import wait_until
from .test_dashboard_browser import CHROMIUM

TICKS = os.sysconf("SC_CLK_TCK")
STDERR = 'application/vnd.jupyter.stderr'
# The notebook panel in front (Lab: the current tab; Notebook 7: the page's only document).
PANEL = "window.jupyterapp.shell.currentWidget"


@dataclass(frozen=True)
class FrontEnd:
    name: str
    module: str  # what `python -m` starts
    flags: tuple[str, ...]
    url: str  # where a notebook opens, {path} relative to the root dir

    def missing(self) -> str | None:
        """Why this front end cannot run here, or None."""
        if not os.path.exists(CHROMIUM):
            return f"{CHROMIUM} is missing (apt-get install -y chromium)"
        for module, pip in (("playwright", "playwright"), (self.module, self.module)):
            try:
                __import__(module)
            except ImportError:
                return f"{module} is not installed (pip install {pip})"
        if self.module == "notebook":
            import notebook

            if int(notebook.__version__.split(".")[0]) < 7:
                return (f"notebook {notebook.__version__} is not Notebook 7"
                        " (pip install 'notebook>=7')")
        return None


LAB = FrontEnd("lab", "jupyterlab",
               ("--LabApp.expose_app_in_browser=True", "--LabServerApp.news_url="),
               # ?reset: a fresh workspace, not the tabs a previous test left open.
               "lab/tree/{path}?reset")
NOTEBOOK7 = FrontEnd("notebook7", "notebook",
                     ("--JupyterNotebookApp.expose_app_in_browser=True",),
                     "notebooks/{path}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Server:
    front: FrontEnd
    folder: Path
    url: str = ""
    process: subprocess.Popen | None = None
    kernels: set[int] = field(default_factory=set)  # every kernel pid seen

    @property
    def work(self) -> Path:
        return self.folder / "work"

    def start(self) -> Server:
        self.work.mkdir(parents=True)
        port = _free_port()
        env = dict(os.environ)
        for name, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                          ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                          ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
            env[name] = str(self.folder / sub)
        self._log = open(self.folder / "jupyter.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.front.module, "--no-browser", "--allow-root",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
             "--ServerApp.port_retries=0", "--IdentityProvider.token=",
             "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
             f"--ServerApp.root_dir={self.work}", "--ServerApp.shutdown_no_activity_timeout=600",
             *self.front.flags],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return self.process.poll() is not None  # died: stop waiting, report below
        if not (wait_until(up, 60, 0.2) and self.process.poll() is None):
            self.stop()
            raise AssertionError(f"{self.front.module} did not start: {self.log()[-3000:]}")
        return self

    def log(self) -> str:
        return (self.folder / "jupyter.log").read_text(errors="replace")

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(f"{self.url}/api/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            body = reply.read()
        return json.loads(body) if body else None

    def session(self, path: str) -> dict | None:
        return next((s for s in self.api("sessions") if s["path"] == path), None)

    def kernel_pid(self, path: str) -> int:
        """The pid of the kernel of the notebook at path: the server's REST API names its
        kernel, whose command line names its connection file kernel-<id>.json."""
        session = self.session(path)
        assert session, f"no session for {path}: {self.api('sessions')}"
        needle = f"kernel-{session['kernel']['id']}.json".encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        self.kernels.add(int(entry))
                        return int(entry)
            except OSError:
                continue
        raise AssertionError(f"no process has {needle.decode()} on its command line")

    def shut_down(self, path: str) -> None:
        """End the notebook's session: its kernel stops (and with it its containers)."""
        session = self.session(path)
        if session is None:
            return
        pid = self.kernel_pid(path)
        self.api(f"sessions/{session['id']}", method="DELETE")
        assert wait_until(lambda: not alive(pid), 15, 0.1), f"kernel {pid} of {path} lives on"

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)  # shuts down its kernels first
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # anything left in its session
        except ProcessLookupError:
            pass
        self._log.close()
        # Kernels run in sessions of their own.
        left = [pid for pid in self.kernels if not wait_until(lambda p=pid: not alive(p), 10)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        self.process = None
        assert not left, f"kernels {left} outlived the {self.front.module} server"


def new_notebook(*sources: str) -> nbformat.NotebookNode:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    return notebook


class Notebook:
    """A notebook open in a page, its kernel started and idle."""

    def __init__(self, server: Server, page: Any, path: str) -> None:
        self.server, self.page, self.path = server, page, path
        page.goto(f"{server.url}/{server.front.url.format(path=path)}", timeout=60_000)
        page.wait_for_function(
            f"path => window.jupyterapp && {PANEL} && {PANEL}.context"
            f" && {PANEL}.context.path === path && {PANEL}.sessionContext.session"
            f" && {PANEL}.sessionContext.session.kernel"
            f" && {PANEL}.sessionContext.session.kernel.status === 'idle'",
            arg=path, timeout=60_000)
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
        self.pid = server.kernel_pid(path)

    def status(self) -> str:
        return self.page.evaluate(f"() => {PANEL}.sessionContext.session.kernel.status")

    def run_all(self) -> None:
        """Run > Run All Cells. Not awaited: the command's promise ends with the last cell."""
        self.page.evaluate(
            "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")

    def prompts(self) -> list[Any]:
        """Each code cell's execution count, or '*' while it runs or waits to."""
        return self.page.evaluate(
            f"""() => {PANEL}.content.widgets.filter(c => c.model.type === 'code').map(c =>
                (c.promptNode && c.promptNode.textContent.includes('*')) ? '*'
                : c.model.executionCount)""")

    def wait_until_done(self, timeout: float) -> list[Any]:
        """Wait until no cell runs or waits and the kernel is idle twice in a row (Run All
        queues every cell at once; between two of them the kernel is idle for a moment)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            prompts = self.prompts()
            done = "*" not in prompts and any(p is not None for p in prompts)
            quiet = quiet + 1 if done and self.status() == "idle" else 0
            if quiet >= 3:
                return prompts
            time.sleep(0.3)
        raise AssertionError(f"{self.path}: cells still running after {timeout} s: "
                             f"{self.prompts()}")

    def save(self) -> nbformat.NotebookNode:
        """File > Save, then the notebook as the server wrote it."""
        self.page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        assert wait_until(lambda: not self.page.evaluate(f"() => {PANEL}.context.model.dirty"),
                          10, 0.1), "the notebook stays unsaved"
        return nbformat.read(self.server.work / self.path, as_version=4)

    def cell(self, index: int) -> Any:
        return self.page.locator(".jp-Notebook .jp-Cell").nth(index)

    def outputs(self, index: int | None = None) -> list[dict]:
        """What the page shows under a cell (every cell: None): for each output its mime
        type, text and computed background colour."""
        root = self.cell(index) if index is not None else self.page.locator(".jp-Notebook")
        return root.locator(".jp-OutputArea-output").evaluate_all(
            """els => els.map(e => ({mime: e.getAttribute('data-mime-type'),
                                     text: e.innerText,
                                     background: getComputedStyle(e).backgroundColor}))""")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all of its threads, the ended ones too (a
    thread's time stays in the process's own /proc/<pid>/stat when the thread ends)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def threads_cpu(pid: int) -> dict[str, float]:
    """Each live thread's CPU seconds (/proc/<pid>/task/*/stat utime + stime)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[tid] = (int(fields[11]) + int(fields[12])) / TICKS
    return found


def cpu_share(pid: int, seconds: float) -> tuple[float, dict[str, float]]:
    """The share of one core the process used over the next `seconds`, and the busiest
    threads' shares (for the failure message)."""
    began, before, threads = time.monotonic(), cpu_seconds(pid), threads_cpu(pid)
    time.sleep(seconds)
    elapsed = time.monotonic() - began
    after = threads_cpu(pid)
    busiest = sorted(((t, (c - threads.get(t, 0.0)) / elapsed) for t, c in after.items()),
                     key=lambda item: -item[1])[:3]
    return (cpu_seconds(pid) - before) / elapsed, {t: round(s, 4) for t, s in busiest if s}
