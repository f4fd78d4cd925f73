"""A notebook saved as JupyterLab saves it (outputs kept, no widget state) and exported to
HTML shows what a live plot and a dashboard ended with: a picture and the value table, no
widget repr (`VBox(children=(Image(value=b'\\x89PNG...`), no text that was only true while
they ran."""

from __future__ import annotations

import base64
import re

import nbformat
import pytest
from nbclient import NotebookClient

from ..conftest import IS_ROOT

nbconvert = pytest.importorskip("nbconvert")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# Busy under its quota (throttled), then more memory than its limit: OOM-killed.
PLOT_CELL = """\
%%container --plot --cpus 0.5 --memory 48M --no-raise --quiet
import time
t = time.monotonic()
while time.monotonic() - t < 2:
    pass
x = [bytearray(8_000_000) for _ in range(12)]
"""
CELLS = [
    "%load_ext nsmagic\nfrom nsmagic.widgets import show_dashboard\n"
    "dash = show_dashboard(window=60)",
    PLOT_CELL,
    "dash.stop()",
]
RAW_REPRS = ("VBox(", "Image(value=", "HTML(value=", "Play(", "Error displaying widget",
             "model not found")
LIVE_ONLY = "only a running kernel draws"  # the live widget's text/plain


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The notebook run by nbclient, then saved as JupyterLab saves it: no widget state."""
    folder = tmp_path_factory.mktemp("saved")
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    notebook.metadata.pop("widgets", None)
    nbformat.write(notebook, folder / "saved.ipynb")
    return nbformat.read(folder / "saved.ipynb", as_version=4)


def outputs_of(notebook, index: int) -> list[dict]:
    return notebook.cells[index].outputs


def test_no_widget_output_is_left_once_their_work_is_done(saved):
    for cell in saved.cells:
        for output in cell.outputs:
            assert WIDGET_VIEW not in output.get("data", {}), output
            assert LIVE_ONLY not in output.get("data", {}).get("text/plain", "")


@pytest.mark.skipif(not IS_ROOT, reason="the quota and the OOM kill need root's cgroups")
def test_the_live_plot_ends_as_a_picture_and_its_table(saved):
    picture, table = [o for o in outputs_of(saved, 1) if o.get("output_type") == "display_data"]
    png = base64.b64decode(picture["data"]["image/png"])
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "nsmagic live plot of" in picture["data"]["text/plain"]
    text = table["data"]["text/plain"]
    header, _, row = text.splitlines()
    assert header.split() == ["container", "state", "CPU", "%", "core", "%", "of", "limit",
                              "memory", "peak", "limit", "throttled", "OOM", "kills"]
    assert "exited" in row and "48 MiB" in row, row
    throttled, kills = (int(v) for v in row.split()[-2:])
    assert throttled > 0 and kills >= 1, row
    assert "peak" in table["data"]["text/html"] and "OOM kills" in table["data"]["text/html"]


def test_the_dashboard_ends_as_a_picture_and_its_table(saved):
    picture, table = [o for o in outputs_of(saved, 0) if o.get("output_type") == "display_data"]
    assert base64.b64decode(picture["data"]["image/png"]).startswith(PNG_MAGIC)
    assert picture["data"]["text/plain"].startswith("[nsmagic dashboard, final picture:")
    assert "exited" in table["data"]["text/plain"]


def test_the_html_export_shows_pictures_and_tables_and_no_raw_repr(saved):
    page, _ = nbconvert.HTMLExporter().from_notebook_node(saved)
    for raw in RAW_REPRS:
        assert raw not in page, raw
    assert LIVE_ONLY not in page
    assert len(re.findall(r"data:image/png;base64,", page)) >= 2
    assert page.count("nsmagic-dashboard-table") >= 2
    assert page.count("OOM kills") >= 2
