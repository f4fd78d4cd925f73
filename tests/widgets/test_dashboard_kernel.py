"""The dashboard in a real kernel run by nbclient, as `jupyter nbconvert --execute` would:
the saved notebook keeps the Image widget's PNG frames (metadata.widgets) and the static
fallback PNG of the final figure in the dashboard cell's outputs."""

from __future__ import annotations

import base64

import nbformat
from nbclient import NotebookClient

from ..conftest import wait_until
from .notebook import containers_gone, dashboard_notebook

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def test_notebook_with_a_dashboard_saves_frames_and_a_static_png(tmp_path):
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

    # Widget state: an ImageModel whose value buffer is a PNG.
    state = saved.metadata["widgets"][WIDGET_STATE]["state"]
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    assert len(images) == 1, [m["model_name"] for m in state.values()]
    buffers = images[0].get("buffers", [])
    value = [b for b in buffers if b["path"] == ["value"]]
    assert value and base64.b64decode(value[0]["data"]).startswith(PNG_MAGIC)
    assert images[0]["state"]["format"] == "png"
    html_models = [m for m in state.values() if m["model_name"] == "HTMLModel"]
    assert any("quota-0.25" in m["state"].get("value", "") for m in html_models)

    # Outputs of the dashboard cell: the widget view, then the static PNG that replaced the
    # placeholder when dash.stop() ran in the last cell.
    outputs = saved.cells[0].outputs
    views = [o for o in outputs if "application/vnd.jupyter.widget-view+json"
             in o.get("data", {})]
    assert len(views) == 1
    statics = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(statics) == 1, outputs
    png = base64.b64decode(statics[0]["data"]["image/png"])
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    assert "quota-0.25" in statics[0]["data"]["text/plain"]
    assert wait_until(lambda: containers_gone(tmp_path), 5)
