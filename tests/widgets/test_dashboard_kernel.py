"""The dashboard in a real kernel run by nbclient, as `jupyter nbconvert --execute` would: it
draws while the kernel runs cell after cell, and when it stops its cell keeps a static PNG of
the final figure and the final table, and no widget."""

from __future__ import annotations

import base64

import nbformat
from nbclient import NotebookClient

from ..conftest import wait_until
from .notebook import containers_gone, dashboard_notebook

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_notebook_with_a_dashboard_keeps_a_static_png_and_table(tmp_path):
    notebook = dashboard_notebook(seconds=4.0, fps=4.0)
    client = NotebookClient(notebook, timeout=90, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    assert client.store_widget_state
    client.execute()
    nbformat.write(notebook, tmp_path / "dashboard.ipynb")
    saved = nbformat.read(tmp_path / "dashboard.ipynb", as_version=4)

    # Both containers ran to their end under their quotas.
    waited = "".join(o.get("text", "") for o in saved.cells[2].outputs)
    assert "'quota-0.25': 'exit status 0'" in waited and "'quota-0.5': 'exit status 0'" in waited
    frames = int("".join(o.get("text", "") for o in saved.cells[3].outputs).split()[-1])
    # No page under nbclient, but a kernel busy with cell after cell cannot know that.
    assert frames >= 4, f"a dashboard drew only {frames} frames in about 6 s"

    # The dashboard's cell: the widget's output became the final picture, the placeholder
    # under it the final table (dash.stop() ran in the last cell).
    outputs = saved.cells[0].outputs
    assert not [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    picture, table = outputs
    png = base64.b64decode(picture["data"]["image/png"])
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "2 containers, 2 ended" in picture["data"]["text/plain"]
    for name in ("quota-0.25", "quota-0.5"):
        assert name in table["data"]["text/plain"] and name in table["data"]["text/html"]
    # nbclient keeps the closed widgets' models in the saved state (it ignores comm_close),
    # but no output refers to them any more.
    state = saved.metadata["widgets"][WIDGET_STATE]["state"]
    views = [o["data"][WIDGET_VIEW]["model_id"] for cell in saved.cells for o in cell.outputs
             if WIDGET_VIEW in o.get("data", {})]
    assert state and not views
    assert wait_until(lambda: containers_gone(tmp_path), 5)
