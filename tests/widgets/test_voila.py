"""The Voila example (notebooks/dashboard-voila.ipynb): it runs under nbclient, and served by
a real `voila --no-browser` on 127.0.0.1 and opened in Debian's headless chromium (as
tests/browser does), its dashboard keeps drawing after every cell has ended, which is all
Voila shows live."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "notebooks" / "dashboard-voila.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def test_the_example_runs_and_ends_with_a_live_dashboard(tmp_path):
    notebook = nbformat.read(EXAMPLE, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", [])
              if o["output_type"] == "error"]
    assert not errors, errors
    last = notebook.cells[-1]
    assert last.source == "%container dashboard"
    assert any(WIDGET_VIEW in o.get("data", {}) for o in last.outputs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def voila(tmp_path):
    """`voila --no-browser` serving a copy of the example (which first notes its kernel's
    pid) on 127.0.0.1; stopped with SIGTERM, then SIGKILL of its session."""
    for module in ("voila", "playwright"):
        pytest.importorskip(module)
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    notebook = nbformat.read(EXAMPLE, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(
        "import os\n_ = open('kernel.pid', 'w').write(str(os.getpid()))"))
    nbformat.write(notebook, tmp_path / "dashboard-voila.ipynb")
    port = _free_port()
    env = dict(os.environ)
    for name, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config")):
        env[name] = str(tmp_path / sub)
    log = open(tmp_path / "voila.log", "wb")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [sys.executable, "-m", "voila", "--no-browser", f"--port={port}",
         "--Voila.ip=127.0.0.1", "--show_tracebacks=True", "dashboard-voila.ipynb"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{url}api/status", timeout=2):
                    return True
            except OSError as error:
                return getattr(error, "code", None) is not None or server.poll() is not None
        assert wait_until(up, 30, 0.2) and server.poll() is None, (
            (tmp_path / "voila.log").read_text(errors="replace")[-3000:])
        yield url, tmp_path
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        pid_file = tmp_path / "kernel.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text())
            gone = wait_until(lambda: not _alive(pid), 10)
            if not gone:
                os.kill(pid, signal.SIGKILL)
            assert gone, f"the kernel {pid} outlived Voila"


@pytest.mark.browser
def test_voila_shows_the_dashboard_live(voila):
    from playwright.sync_api import sync_playwright

    url, folder = voila
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, timeout=120_000)
            image = page.locator(".nsmagic-dashboard img").first
            image.wait_for(state="visible", timeout=120_000)
            sources = [image.get_attribute("src")]
            deadline = time.monotonic() + 30
            while len(set(sources)) < 4 and time.monotonic() < deadline:
                page.wait_for_timeout(250)
                sources.append(image.get_attribute("src"))
            assert len(set(sources)) >= 4, (
                f"the picture changed {len(set(sources)) - 1} times in Voila")
            table = page.locator(".nsmagic-dashboard-table").inner_text()
            assert "steady" in table and "pulse" in table, table
            page.screenshot(path=str(folder / "voila.png"))
        finally:
            browser.close()
