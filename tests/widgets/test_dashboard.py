"""Dashboard in-process: %dashboard / stop, live_plot around a real container, threads end; it
draws only while a page shows it, and only frames that look different."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

import nsmagic
from nsmagic.cgroups.limits import Limits
from nsmagic.monitor import Monitor, SeriesSnapshot, threads_named
from nsmagic.runtime.registry import ContainerRecord, Registry
from nsmagic.widgets import Dashboard, live_plot, open_dashboards
from nsmagic.widgets.presence import GONE_AFTER_S

from ..conftest import wait_until
from .page import FakePage

# Busy for 0.3 s, asleep for 0.3 s, over and over: a CPU figure that keeps moving.
PULSE = ("import time\nwhile True:\n    t = time.monotonic()\n"
         "    while time.monotonic() - t < 0.3:\n        pass\n    time.sleep(0.3)\n")


def dashboard_threads() -> list[threading.Thread]:
    return threads_named("nsmagic-dashboard") + threads_named("nsmagic-monitor")


@pytest.fixture
def pulsing():
    """A monitor over a registry with one container (no cgroup: psutil) whose CPU pulses."""
    process = subprocess.Popen([sys.executable, "-c", PULSE])
    try:
        registry = Registry()
        registry.add(ContainerRecord("feed" * 8, "pulse", Limits(), frozenset()))
        registry.started("feed" * 8, process.pid, None, None)
        yield Monitor(rate=10, registry=registry)
    finally:
        process.kill()
        process.wait()


def test_without_a_front_end_the_dashboard_draws_nothing(ipython_shell, capsys):
    ipython_shell.run_line_magic("dashboard", "--fps 4 --rate 10")
    assert len(open_dashboards()) == 1 and dashboard_threads()
    dash = open_dashboards()[0]
    assert not dash.front_end, "a shell without a kernel shows no widgets"
    nsmagic.run("import time; time.sleep(0.6)")
    ipython_shell.run_line_magic("dashboard", "stop")
    out = capsys.readouterr().out
    assert "stopped 1 dashboard" in out
    assert "no front end to draw in here" in out, "it says so, as text"
    assert "container" in out and "OOM kills" in out, "the final table, as text"
    assert not open_dashboards()
    assert wait_until(lambda: not dashboard_threads(), 3), dashboard_threads()
    assert dash.frames == 0 and dash.last_png is None


def test_a_page_showing_it_gets_frames_and_a_closed_page_gets_none(pulsing):
    dash = Dashboard(fps=4, monitor=pulsing, front_end=True).start()
    try:
        time.sleep(0.5)
        assert dash.frames == 0, "nothing is drawn before a page shows the widget"
        with FakePage(dash):
            assert wait_until(lambda: dash.frames >= 3, 10), dash.frames
        assert dash.last_png.startswith(b"\x89PNG") and "pulse" in dash.table.value
        time.sleep(GONE_AFTER_S + 0.5)  # the heartbeat has been silent long enough
        frames = dash.frames
        time.sleep(1.5)
        assert dash.frames == frames, "a closed tab gets no more frames"
        with FakePage(dash, every=0.2):  # the page is opened again
            assert wait_until(lambda: dash.frames > frames, 10)
    finally:
        dash.stop()
    assert wait_until(lambda: not dashboard_threads(), 3)


def test_an_idle_container_gets_few_frames():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        registry = Registry()
        registry.add(ContainerRecord("beef" * 8, "idle", Limits(), frozenset()))
        registry.started("beef" * 8, sleeper.pid, None, None)
        dash = Dashboard(fps=4, rate=10, monitor=Monitor(registry=registry), front_end=True)
        with FakePage(dash.start()):
            assert wait_until(lambda: dash.frames >= 1, 10)
            time.sleep(3)
            assert dash.frames <= 2, f"{dash.frames} frames of a container that does nothing"
        dash.stop()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert wait_until(lambda: not dashboard_threads(), 3)


def test_live_plot_follows_one_container_and_ends_with_it():
    container = nsmagic.Container()
    container.start("x = bytearray(30_000_000)\nimport time; time.sleep(1.5)")
    try:
        with live_plot(container.spec.container_id, fps=4, front_end=True) as plot, \
                FakePage(plot):
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
        dash.close()
    finally:
        sleeper.kill()
        sleeper.wait()
