"""Notebook widgets over the monitor's data: the live CPU/memory dashboard and live plots.

    from nsmagic.widgets import show_dashboard, live_plot
    dash = show_dashboard()                 # every container of this kernel, live
    with live_plot(container_id): ...       # one container, while the block runs

See nsmagic.widgets.dashboard for why the plots are PNGs in an ipywidgets.Image.
"""

from __future__ import annotations

from nsmagic.widgets.dashboard import (
    Dashboard,
    live_plot,
    open_dashboards,
    show_dashboard,
    stop_all,
)

# The name the container magic's --plot option calls.
live_plot_for = live_plot

__all__ = ["Dashboard", "live_plot", "live_plot_for", "open_dashboards", "show_dashboard",
           "stop_all"]
