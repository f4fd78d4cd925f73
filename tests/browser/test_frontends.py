"""The tour and a course notebook as a class sees them, in JupyterLab and in Notebook 7:
each front end's server on 127.0.0.1 (empty token, a temporary root dir with copies of the
notebooks), Debian's headless chromium driven by Playwright (issue 22's "How to check").

- Run All of notebooks/00-tour.ipynb and 01-what-is-a-container.ipynb ends with every cell
  run, no error output, no traceback and nothing on stderr.
- An informational note ("running in the background") is plain output; a loud warning
  (PRIVILEGED) may be on stderr, which both front ends render with a coloured background.
- Interrupting a running %%container cell (I, I) shows one line, "interrupted: container
  stopped after ...", not a traceback through nsmagic.
- The live image of %%container --plot changes while its cell runs.
- Tab after `%%container --me` offers --memory in the completer.
- The dashboard's kernel-side CPU drops to about 0 within seconds of its tab closing
  (the kernel process's CPU time, from /proc).

One server per front end and one chromium for the module; each test opens its notebook in a
fresh page and shuts its kernel down at the end (its containers end with it).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from .frontends import (
    LAB,
    NOTEBOOK7,
    PANEL,
    STDERR,
    Notebook,
    Server,
    cpu_share,
    new_notebook,
)
from .test_dashboard_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
COURSE = ("00-tour.ipynb", "01-what-is-a-container.ipynb")
# Errors a notebook shows on purpose (ename), none so far.
EXPECTED_ERRORS: dict[str, set[str]] = {name: set() for name in COURSE}
TRANSPARENT = "rgba(0, 0, 0, 0)"


@pytest.fixture(scope="module", params=[LAB, NOTEBOOK7], ids=lambda front: front.name)
def server(request, tmp_path_factory):
    reason = request.param.missing()
    if reason:
        pytest.skip(reason)
    started = Server(request.param, tmp_path_factory.mktemp(request.param.name)).start()
    try:
        for name in COURSE:
            shutil.copyfile(REPO / "notebooks" / name, started.work / name)
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def open_notebook(server, browser):
    """open_notebook(path, notebook=None): (write and) open a notebook in a new page; at the
    end the page closes and the notebook's kernel is shut down."""
    pages, paths = [], []

    def open_(path: str, notebook: nbformat.NotebookNode | None = None) -> Notebook:
        if notebook is not None:
            nbformat.write(notebook, server.work / path)
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        pages.append(context)
        paths.append(path)
        return Notebook(server, context.new_page(), path)

    yield open_
    for context in pages:
        context.close()
    for path in paths:
        server.shut_down(path)


def _run(notebook: Notebook, timeout: float = 60) -> list:
    notebook.run_all()
    return notebook.wait_until_done(timeout)


@pytest.mark.parametrize("path", COURSE)
def test_run_all_shows_no_error(open_notebook, path):
    notebook = open_notebook(path)
    began = time.monotonic()
    prompts = _run(notebook, 150)
    took = time.monotonic() - began
    shown = notebook.outputs()
    saved = notebook.save()
    code = [cell for cell in saved.cells if cell.cell_type == "code"]
    errors = [(i, out.get("ename"), out.get("evalue")) for i, cell in enumerate(code)
              for out in cell.outputs if out.output_type == "error"
              and out.get("ename") not in EXPECTED_ERRORS[path]]
    assert not errors, f"{path}: error outputs (code cell, ename, evalue): {errors}"
    assert prompts == list(range(1, len(code) + 1)), (
        f"{path}: Run All did not run every cell once, in order (took {took:.1f} s): {prompts}")
    stderr = [(i, out.text) for i, cell in enumerate(code) for out in cell.outputs
              if out.output_type == "stream" and out.name == "stderr"]
    assert not stderr, f"{path}: stderr (shown pink) in code cells: {stderr}"
    pink = [out["text"] for out in shown if out["mime"] == STDERR]
    assert not pink, f"{path}: the page shows stderr outputs: {pink}"
    broken = [out["text"][:300] for out in shown
              if "Traceback" in out["text"] or "Error displaying widget" in out["text"]]
    assert not broken, f"{path}: {broken}"
    assert took < 120, f"{path}: Run All took {took:.1f} s"


def test_notes_are_plain_output_and_warnings_stderr(open_notebook):
    notebook = open_notebook("notes.ipynb", new_notebook(
        "%load_ext nsmagic",
        "%%container --bg --name x\nimport time\nprint('hello from x', flush=True)\n"
        "time.sleep(0.5)",
        "%container wait x",
        "%%container --privileged\nprint('privileged ok')"))
    _run(notebook)
    background, waited, privileged = (notebook.outputs(i) for i in (1, 2, 3))
    notes = [out for out in background if "running in the background" in out["text"]]
    assert notes, f"no 'running in the background' note under the --bg cell: {background}"
    for note in notes:
        assert note["mime"] == "application/vnd.jupyter.stdout", note
        assert note["background"] == TRANSPARENT, f"the note is shown coloured: {note}"
    for out in background + waited:
        assert out["mime"] != STDERR, f"stderr under --bg / wait: {out}"
    # The warning is loud on purpose: on stderr it is shown coloured (so the check above
    # tells a real difference in this front end).
    warnings = [out for out in privileged if "PRIVILEGED" in out["text"]]
    assert warnings, f"no PRIVILEGED warning: {privileged}"
    for warning in warnings:
        if warning["mime"] == STDERR:
            assert warning["background"] != TRANSPARENT, warning
    saved = notebook.save()
    note_streams = [out.name for out in saved.cells[1].outputs if out.output_type == "stream"
                    and "running in the background" in out.text]
    assert note_streams == ["stdout"], saved.cells[1].outputs


def test_interrupt_shows_one_line(open_notebook):
    notebook = open_notebook("interrupt.ipynb", new_notebook(
        "%load_ext nsmagic",
        "%%container\nimport time\nprint('sleeping', flush=True)\ntime.sleep(60)"))
    notebook.run_all()
    notebook.cell(1).locator(".jp-OutputArea-output", has_text="sleeping").first.wait_for(
        timeout=30_000)
    page = notebook.page
    notebook.cell(1).locator(".jp-InputPrompt").first.click()  # select the cell: command mode
    page.keyboard.press("Escape")
    began = time.monotonic()
    page.keyboard.press("i")
    page.keyboard.press("i")  # I, I: interrupt the kernel
    notebook.wait_until_done(20)
    stopped = time.monotonic() - began
    shown = [out for out in notebook.outputs(1) if out["mime"] == STDERR]
    assert len(shown) == 1, f"stderr/error outputs under the cell: {shown}"
    text = shown[0]["text"].strip()
    assert text.startswith("interrupted: container stopped after"), text
    assert len(text.splitlines()) == 1, f"more than one line: {text!r}"
    saved = notebook.save()
    errors = [out for out in saved.cells[1].outputs if out.output_type == "error"]
    assert len(errors) == 1, saved.cells[1].outputs
    lines = "\n".join(errors[0].traceback).splitlines()
    assert len(lines) == 1 and "nsmagic" not in lines[0], errors[0].traceback
    assert stopped < 10, f"the interrupt took {stopped:.1f} s"


def test_live_plot_changes_while_the_cell_runs(open_notebook):
    notebook = open_notebook("plot.ipynb", new_notebook(
        "%load_ext nsmagic",
        "%%container --plot --cpus 0.5\nimport time\nend = time.monotonic() + 6\n"
        "while time.monotonic() < end:\n    pass"))
    notebook.run_all()
    image = notebook.cell(1).locator(".jupyter-widgets img").first
    image.wait_for(state="visible", timeout=30_000)
    sources, busy_changes = [image.get_attribute("src")], 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Both at once: when the cell ends, a static picture replaces the live widget.
        running, src = notebook.page.evaluate(
            f"""() => {{
                const cell = {PANEL}.content.widgets[1];
                const image = cell.node.querySelector('.jupyter-widgets img');
                return [cell.promptNode.textContent.includes('*'), image && image.src];
            }}""")
        if not running:
            break
        if src and src != sources[-1]:
            sources.append(src)
            busy_changes += 1
        notebook.page.wait_for_timeout(100)
    notebook.wait_until_done(30)
    assert busy_changes >= 2, f"the live image changed {busy_changes} times while the cell ran"


def test_tab_completes_container_options(open_notebook):
    notebook = open_notebook("complete.ipynb", new_notebook("%load_ext nsmagic", ""))
    _run(notebook)
    page = notebook.page
    notebook.cell(1).locator(".cm-content").click()
    page.keyboard.type("%%container --me")
    page.keyboard.press("Tab")
    items = page.locator(".jp-Completer-item")
    items.first.wait_for(state="visible", timeout=15_000)
    offered = page.locator(".jp-Completer-item .jp-Completer-match").all_inner_texts()
    page.keyboard.press("Escape")
    assert "--memory" in offered, f"the completer offers {offered}"
    assert all(text.startswith("--me") for text in offered), offered


PULSE = """\
%%container --bg --name pulse --cpus 0.5
import time
end = time.monotonic() + 45
while time.monotonic() < end:
    t = time.monotonic()
    while time.monotonic() - t < 0.4:
        pass
    time.sleep(0.4)"""


def test_dashboard_costs_nothing_once_its_tab_is_closed(open_notebook):
    notebook = open_notebook("dashboard.ipynb", new_notebook(
        "%load_ext nsmagic", PULSE, "%container dashboard"))
    _run(notebook)
    image = notebook.page.locator(".nsmagic-dashboard img").first
    image.wait_for(state="visible", timeout=30_000)
    # Open: it draws (its image changes) while the container's CPU keeps changing.
    sources = [image.get_attribute("src")]
    began = time.monotonic()
    while time.monotonic() - began < 5:
        notebook.page.wait_for_timeout(200)
        if (src := image.get_attribute("src")) != sources[-1]:
            sources.append(src)
    assert len(sources) >= 3, f"the open dashboard changed {len(sources) - 1} times in 5 s"
    open_share, open_threads = cpu_share(notebook.pid, 4)
    notebook.page.close()  # the tab goes; the kernel is not told
    closed = time.monotonic()
    windows = []
    while time.monotonic() - closed < 12:
        share, threads = cpu_share(notebook.pid, 2)
        windows.append((round(time.monotonic() - closed, 1), round(share, 4), threads))
        if share <= 0.01:
            break
    quiet_after = windows[-1][0]
    assert windows[-1][1] <= 0.01, (
        f"the kernel still uses CPU after the tab closed (open: {open_share:.1%} "
        f"{open_threads}); (s after close, share, threads): {windows}")
    share, threads = cpu_share(notebook.pid, 4)
    print(f"dashboard: {len(sources) - 1} frames in 5 s; kernel CPU open {open_share:.1%} "
          f"{open_threads}; after the close {windows}; then {share:.1%} over 4 s")
    assert share <= 0.01, f"{share:.1%} of a core {threads} after {quiet_after} s of quiet"
    assert quiet_after <= 10, f"quiet only {quiet_after} s after the close: {windows}"
