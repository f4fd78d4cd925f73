"""Dashboard in-process: %dashboard / stop, live_plot around a real container, threads end."""

from __future__ import annotations

import threading

import nsmagic
from nsmagic.monitor import threads_named
from nsmagic.widgets import Dashboard, live_plot, open_dashboards

from ..conftest import wait_until


def dashboard_threads() -> list[threading.Thread]:
    return threads_named("nsmagic-dashboard") + threads_named("nsmagic-monitor")


def test_dashboard_magic_starts_and_stops(ipython_shell, capsys):
    ipython_shell.run_line_magic("dashboard", "--fps 4 --rate 10")
    assert len(open_dashboards()) == 1 and dashboard_threads()
    dash = open_dashboards()[0]
    nsmagic.run("import time; time.sleep(0.6)")
    assert wait_until(lambda: dash.frames >= 2, 3)
    ipython_shell.run_line_magic("dashboard", "stop")
    assert "stopped 1 dashboard" in capsys.readouterr().out
    assert not open_dashboards()
    assert wait_until(lambda: not dashboard_threads(), 3), dashboard_threads()
    assert dash.last_png.startswith(b"\x89PNG")
    assert dash.widget.layout.display == "none"  # replaced by the static picture


def test_live_plot_follows_one_container_and_ends_with_it():
    container = nsmagic.Container()
    container.start("x = bytearray(30_000_000)\nimport time; time.sleep(0.8)")
    try:
        with live_plot(container.spec.container_id, fps=4) as plot:
            result = container.wait(timeout=30)
    finally:
        container.close()
    assert result.ok
    assert not plot.running and plot.frames >= 2
    series = plot.visible_series()
    assert [s.container_id for s in series] == [container.spec.container_id]
    assert max(v for v in series[0].columns["memory_current"] if v) > 25_000_000
    assert wait_until(lambda: not dashboard_threads(), 3)


def test_closing_the_widget_stops_the_thread():
    dash = Dashboard(fps=4).start()
    assert dash.running
    dash.widget.close()
    assert wait_until(lambda: not dash.running, 3)
    dash.stop()
    assert wait_until(lambda: not dashboard_threads(), 3)


def test_the_dashboard_draws_snapshots_not_the_live_series():
    import subprocess

    from nsmagic.cgroups.limits import Limits
    from nsmagic.monitor import Monitor, SeriesSnapshot
    from nsmagic.runtime.registry import ContainerRecord, Registry

    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        registry = Registry()
        registry.add(ContainerRecord("feed" * 8, "drawn", Limits(), frozenset()))
        registry.started("feed" * 8, sleeper.pid, None, None)  # no cgroup: psutil figures
        monitor = Monitor(registry=registry)
        monitor.sample_once()
        monitor.sample_once()
        dash = Dashboard(["drawn"], monitor=monitor)
        (shown,) = dash.visible_series()
        assert isinstance(shown, SeriesSnapshot) and len(shown) == 2
        monitor.sample_once()
        assert len(shown) == 2, "a snapshot does not grow with the live series"
        assert dash.last_png.startswith(b"\x89PNG") and "drawn" in dash.table.value
        dash.close()
    finally:
        sleeper.kill()
        sleeper.wait()
