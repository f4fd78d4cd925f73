"""A dashboard costs nothing once its browser tab is closed: JupyterLab on 127.0.0.1 and
Debian's headless chromium (as tests/browser), a notebook with a dashboard and a container
whose CPU keeps changing; the kernel logs the dashboard's frames and its thread's CPU time."""

from __future__ import annotations

import json
import time

import nbformat
import pytest

from ..browser.test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS, jupyter_lab  # noqa: F401
from ..conftest import wait_until

pytestmark = pytest.mark.browser

SETUP = """\
import os, threading, time, json
open("kernel.pid", "w").write(str(os.getpid()))
%load_ext nsmagic
import nsmagic
from nsmagic.widgets import show_dashboard
PULSE = '''
import time
end = time.monotonic() + 60
while time.monotonic() < end:
    t = time.monotonic()
    while time.monotonic() - t < 0.4:
        pass
    time.sleep(0.4)
'''
box = {}
worker = threading.Thread(target=lambda: box.update(r=nsmagic.run(PULSE, cpus=0.5)), daemon=True)
worker.start()
dash = show_dashboard(window=60)
def log():
    with open("dashboard.log", "w") as out:
        while worker.is_alive():
            for t in threading.enumerate():
                if t.name == "nsmagic-dashboard":
                    cpu = time.clock_gettime(time.pthread_getcpuclockid(t.ident))
                    out.write(json.dumps({"t": time.monotonic(), "frames": dash.frames,
                                          "cpu": cpu})
                              + "\\n")
                    out.flush()
            time.sleep(0.5)
threading.Thread(target=log, daemon=True).start()
"""


def entries(folder) -> list[dict]:  # noqa: ANN001 - a pathlib.Path
    lines = (folder / "dashboard.log").read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def test_a_closed_tab_stops_the_drawing(jupyter_lab):  # noqa: F811 - the imported fixture
    from playwright.sync_api import sync_playwright

    url, work = jupyter_lab
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(SETUP)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    nbformat.write(notebook, work / "page.ipynb")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{url}/lab/tree/page.ipynb", timeout=60_000)
            page.wait_for_function(
                "() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                " && window.jupyterapp.shell.currentWidget.sessionContext"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
            page.evaluate(
                "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            image = page.locator(".nsmagic-dashboard img").first
            image.wait_for(state="visible", timeout=45_000)
            assert wait_until(lambda: (work / "dashboard.log").exists(), 30)
            # Long after the cell ended, frames still come: the page's heartbeat is heard.
            first = entries(work)[0]
            assert wait_until(lambda: entries(work)[-1]["t"] > first["t"] + 12, 30)
            late = [e for e in entries(work) if e["t"] > first["t"] + 8]
            assert late[-1]["frames"] > late[0]["frames"] + 2, late
            page.close()  # the tab goes: the kernel is not told
        finally:
            browser.close()
    closed = time.monotonic()
    assert wait_until(lambda: entries(work)[-1]["t"] > closed + 12, 20)
    after = [e for e in entries(work) if e["t"] > closed + 6]  # silence noticed by then
    assert after[-1]["frames"] == after[0]["frames"], "frames after the tab was closed"
    cpu = (after[-1]["cpu"] - after[0]["cpu"]) / (after[-1]["t"] - after[0]["t"])
    assert cpu < 0.003, f"the dashboard thread still uses {cpu:.2%} of a core"
