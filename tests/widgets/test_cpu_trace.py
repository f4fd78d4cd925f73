"""The plotted CPU trace of a container under a CFS quota is flat at the quota: no zig-zag
from samples that cover 2 or 3 of its periods (CFS runs it in bursts of quota per 100 ms)."""

from __future__ import annotations

import statistics
import threading

import pytest

import nsmagic
from nsmagic.cgroups import detect_driver
from nsmagic.monitor import MAX_RATE_HZ, Monitor
from nsmagic.widgets.render import PlotRenderer

from ..conftest import IS_ROOT

BUSY = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 6:\n    pass\n"
pytestmark = pytest.mark.skipif(not (IS_ROOT and detect_driver().name in ("v1", "v2")),
                                reason="needs root and a writable cgroup hierarchy")


@pytest.mark.parametrize("rate", [4.0, MAX_RATE_HZ])
def test_half_a_cpu_is_plotted_as_half_a_cpu(rate):
    monitor = Monitor(rate=rate, idle_rate=None)
    with monitor.watch():
        box: dict = {}
        worker = threading.Thread(target=lambda: box.update(r=nsmagic.run(BUSY, cpus=0.5)))
        worker.start()
        worker.join(60)
    assert box["r"].ok, box["r"].describe()
    (series,) = [s for s in monitor.snapshots() if s.cpus == 0.5]
    renderer = PlotRenderer()
    renderer.render([series], {}, series.started_at, 120.0, series.columns["time"][-1])
    xs, ys = renderer.plotted(series.container_id)["cpu"]
    start, end = xs[0], xs[-1]
    steady = [y for x, y in zip(xs, ys, strict=True) if start + 2.0 <= x <= end - 0.5]
    assert len(steady) >= 8, (xs, ys)
    # At the quota, give or take what a shared machine's other work takes from it...
    middle = statistics.median(steady)
    assert 45 <= middle <= 52, steady
    # ...and flat: the zig-zag was 40-57 % (80-120 % of the limit).
    assert all(abs(y - middle) <= 4 for y in steady), f"the trace zig-zags: {steady}"
    of_limit = [v for v in series.columns["cpu_limit_percent"][-8:-2] if v is not None]
    assert all(88 <= v <= 106 for v in of_limit), of_limit
