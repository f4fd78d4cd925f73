"""The dashboard in a real browser: JupyterLab on 127.0.0.1, Debian's headless chromium driven
by Playwright. Runs every cell of a notebook with a dashboard and two containers, waits until
the dashboard's image is visible and has been replaced at least twice while a later cell is
still busy, and saves a screenshot (also copied to out/dashboard.png).

Started here, stopped here: the Jupyter server runs in its own session (process group) and
is stopped with SIGTERM (it shuts its kernels down), then SIGKILL of the group if needed;
chromium ends with the Playwright browser; every Jupyter directory is under tmp_path.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from ..conftest import wait_until
from ..widgets.notebook import containers_gone, dashboard_notebook

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.browser


def _skip_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (pip install jupyterlab playwright)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyter_lab(tmp_path):
    """A JupyterLab server on 127.0.0.1 with no token, rooted at tmp_path/work."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    work = tmp_path / "work"
    work.mkdir()
    port = _free_port()
    env = dict(os.environ)
    for name, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                      ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                      ("JUPYTERLAB_WORKSPACES_DIR", "workspaces")):
        env[name] = str(tmp_path / sub)
    log = open(tmp_path / "jupyter.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
         "--IdentityProvider.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={work}",
         "--LabApp.expose_app_in_browser=True", "--LabServerApp.news_url=",
         "--ServerApp.shutdown_no_activity_timeout=300"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return server.poll() is not None  # died: stop waiting, report below
        assert wait_until(up, 30, 0.2) and server.poll() is None, (
            (tmp_path / "jupyter.log").read_text(errors="replace")[-3000:])
        yield url, work
    finally:
        server.send_signal(signal.SIGTERM)  # shuts down its kernels first
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
        try:
            os.killpg(server.pid, signal.SIGKILL)  # anything left in its session
        except ProcessLookupError:
            pass
        log.close()
        # Kernels run in sessions of their own: the notebook wrote its kernel's pid.
        pid_file = work / "kernel.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            gone = wait_until(lambda: not _alive(pid), 10)
            if not gone:
                os.kill(pid, signal.SIGKILL)
            assert gone, f"the kernel {pid} outlived the Jupyter server"
        if (work / "container.pids").exists():
            assert wait_until(lambda: containers_gone(work), 10), "containers outlived the kernel"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_dashboard_updates_in_jupyterlab(jupyter_lab, tmp_path):
    from playwright.sync_api import sync_playwright

    url, work = jupyter_lab
    # No stop cell: the dashboard must update while the last cell (join) keeps the kernel busy.
    notebook = dashboard_notebook(seconds=14.0, fps=2.0, linger=0.5, stop=False)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(
        "import os\nopen('kernel.pid', 'w').write(str(os.getpid()))"))
    nbformat.write(notebook, work / "dashboard.ipynb")
    shot = tmp_path / "dashboard.png"
    started = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{url}/lab/tree/dashboard.ipynb", timeout=60_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
            # Run all cells. Not awaited: the command's promise resolves only when the last
            # cell (which joins the containers' threads) has finished.
            page.evaluate(
                "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            image = page.locator(".jupyter-widgets img").first
            image.wait_for(state="visible", timeout=45_000)
            sources = [image.get_attribute("src")]
            busy_changes = 0
            deadline = time.monotonic() + 20
            while busy_changes < 3 and time.monotonic() < deadline:
                page.wait_for_timeout(150)
                src = image.get_attribute("src")
                if src != sources[-1]:
                    sources.append(src)
                    # Counted only while the kernel is busy with a later cell.
                    busy_changes += page.evaluate(
                        "() => window.jupyterapp.shell.currentWidget.sessionContext"
                        ".session.kernel.status === 'busy'")
            assert len(set(sources)) >= 3, f"the image changed {len(set(sources)) - 1} times"
            assert busy_changes >= 2, (
                f"the image changed {busy_changes} times while another cell ran")
            assert image.is_visible()
            # Let a few more frames come so the picture shows both containers at work.
            page.wait_for_timeout(1500)
            box = image.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 100, box
            table = page.locator(".nsmagic-dashboard-table")
            assert "quota-0.25" in table.inner_text() and "quota-0.5" in table.inner_text()
            image.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    try:  # for people to look at; the test's own copy is in tmp_path
        (REPO / "out").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "out" / "dashboard.png")
    except PermissionError:
        pass
    assert time.monotonic() - started < 80
