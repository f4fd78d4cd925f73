"""The renderer draws a frame only when it would look different, mostly over a kept
background; the axes move in steps."""

from __future__ import annotations

import pytest

from nsmagic.monitor import COLUMNS, SeriesSnapshot
from nsmagic.widgets.render import MIB, PlotRenderer
from nsmagic.widgets.scale import nice_ceiling, time_limits

T0 = 1_000_000.0
COLOURS = {"c1": "#1f77b4"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def snapshot(cpu: list[float], memory_mib: float | list[float] = 40.0, every: float = 0.25,
             events: int = 1, state: str = "running") -> SeriesSnapshot:
    """One container's samples from T0 on, every `every` seconds."""
    count = len(cpu)
    memory = memory_mib if isinstance(memory_mib, list) else [memory_mib] * count
    columns = {c: [None] * count for c in COLUMNS}
    columns["time"] = [T0 + i * every for i in range(count)]
    columns["cpu_percent"] = list(cpu)
    columns["memory_current"] = [m * MIB for m in memory]
    columns["memory_peak"] = [max(memory[: i + 1]) * MIB for i in range(count)]
    happened = tuple({"time": T0, "elapsed": 0.0, "kind": "start", "detail": ""}
                     for _ in range(events))
    return SeriesSnapshot("c1", "web", "web", 0.5, 128 * MIB, T0, None, state, None, "psutil",
                          {c: tuple(v) for c, v in columns.items()}, happened)


def now_of(item: SeriesSnapshot) -> float:
    return item.columns["time"][-1] + 0.01


@pytest.fixture
def drawn():
    """A renderer that drew 20 samples at 50 % CPU."""
    renderer = PlotRenderer()
    first = snapshot([50.0] * 20)
    png = renderer.render([first], COLOURS, T0, 120.0, now_of(first))
    assert png.startswith(PNG_MAGIC)
    return renderer


def test_nothing_new_means_no_change(drawn):
    same = snapshot([50.0] * 20)
    assert not drawn.changed([same], COLOURS, T0, 120.0, now_of(same))


def test_new_samples_on_the_same_pixels_are_no_change(drawn):
    flat = snapshot([50.0] * 20 + [50.1, 49.9, 50.0], memory_mib=40.01)
    assert not drawn.changed([flat], COLOURS, T0, 120.0, now_of(flat))


def test_a_sample_a_pixel_away_is_a_change(drawn):
    moved = snapshot([50.0] * 20 + [60.0])
    assert drawn.changed([moved], COLOURS, T0, 120.0, now_of(moved))


def test_a_spike_between_two_frames_is_a_change_even_if_it_is_over(drawn):
    spiked = snapshot([50.0] * 20 + [90.0, 50.0])
    assert drawn.changed([spiked], COLOURS, T0, 120.0, now_of(spiked))


def test_memory_growth_an_event_and_an_exit_are_changes(drawn):
    grown = snapshot([50.0] * 21, memory_mib=[40.0] * 20 + [45.0])
    assert drawn.changed([grown], COLOURS, T0, 120.0, now_of(grown))
    marked = snapshot([50.0] * 20, events=2)
    assert drawn.changed([marked], COLOURS, T0, 120.0, now_of(marked))
    ended = snapshot([50.0] * 20, state="exited")
    assert drawn.changed([ended], COLOURS, T0, 120.0, now_of(ended))
    assert drawn.changed([], COLOURS, T0, 120.0, now_of(ended)), "a container left"


def test_the_time_axis_steps_so_idle_frames_come_rarely(drawn):
    same = snapshot([50.0] * 20)
    assert not drawn.changed([same], COLOURS, T0, 120.0, T0 + 9.9)
    assert drawn.changed([same], COLOURS, T0, 120.0, T0 + 10.1), "the axis took a step"


def test_frames_with_unchanged_axes_reuse_the_background(drawn):
    for extra in range(1, 6):
        moving = snapshot([50.0] * 20 + [30.0 + 10 * (extra % 2)] * extra)
        assert drawn.render([moving], COLOURS, T0, 120.0, now_of(moving)).startswith(PNG_MAGIC)
    assert drawn.frames == 6 and drawn.full_draws == 1
    higher = snapshot([50.0] * 20 + [180.0])  # outgrows the CPU axis
    drawn.render([higher], COLOURS, T0, 120.0, now_of(higher))
    assert drawn.full_draws == 2


def test_a_frame_over_the_background_equals_a_full_draw():
    item = snapshot([50.0, 20.0, 70.0] * 8, memory_mib=[30.0 + i for i in range(24)])
    fresh, reused = PlotRenderer(), PlotRenderer()
    reused.render([snapshot([10.0] * 3)], COLOURS, T0, 120.0, now_of(item))
    assert fresh.render([item], COLOURS, T0, 120.0, now_of(item)) == \
        reused.render([item], COLOURS, T0, 120.0, now_of(item))
    assert reused.full_draws == 1


def test_axis_ends_are_nice_numbers_that_move_in_steps():
    assert [nice_ceiling(v) for v in (0.7, 1.0, 1.13, 112.0, 143.4, 460.0)] == \
        [0.8, 1.0, 1.2, 120.0, 150.0, 500.0]
    assert time_limits(3.0, 120.0) == (0.0, 10.0)
    assert time_limits(10.0, 120.0) == (0.0, 10.0)
    assert time_limits(10.5, 120.0) == (0.0, 20.0)
    assert time_limits(300.2, 120.0) == (190.0, 310.0)
