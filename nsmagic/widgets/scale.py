"""Where the dashboard's axes end: limits that move in steps, so most frames keep their axes.

A frame whose axes, ticks and legend are those of the previous frame is cheap (the renderer
restores a saved background and draws the lines only); one whose axes moved costs a full
redraw, about ten times as much. So the time axis advances in steps of about a twelfth of the
window, and the value axes end at "nice" numbers that change only when the data outgrow them.
"""

from __future__ import annotations

import math

# Mantissas of the nice axis ends (x 10^k).
NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)
# Headroom above the highest value, so lines never touch the top of the axes.
HEADROOM = 1.12


def nice_ceiling(value: float) -> float:
    """The smallest nice number (NICE x 10^k) that is >= value (value > 0)."""
    exponent = math.floor(math.log10(value))
    base = 10.0 ** exponent
    for mantissa in NICE:
        if mantissa * base >= value * (1 - 1e-9):
            return mantissa * base
    return 10.0 * base


def axis_top(highest: float, floor: float) -> float:
    """The top of a value axis showing values up to highest (never below floor)."""
    return nice_ceiling(max(floor, highest) * HEADROOM)


def time_step(window: float) -> float:
    """How far the time axis jumps at a time: about window / 12, a nice number of seconds."""
    return nice_ceiling(max(window, 1.0) / 12.0)


def time_limits(elapsed: float, window: float) -> tuple[float, float]:
    """(left, right) of the time axis, in seconds since the plot's origin, `elapsed` now.

    The right end is the next whole step at or after now, so the axis stays put for a step.
    """
    step = time_step(window)
    right = step * max(1, math.ceil(elapsed / step - 1e-9))
    return max(0.0, right - window), right


__all__ = ["axis_top", "nice_ceiling", "time_limits", "time_step"]
