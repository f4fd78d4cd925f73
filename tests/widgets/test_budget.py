"""The frame budget: at most fps frames a second, on average at most a share of one core."""

from __future__ import annotations

import pytest

from nsmagic.widgets.budget import FrameBudget


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_cheap_frames_come_at_the_frame_rate(clock):
    budget = FrameBudget(fps=2, share=0.04, burst=0.5, clock=clock)
    assert budget.wait() == 0.0, "the first frame is drawn at once"
    for _ in range(50):
        budget.spend(0.01)  # 10 ms a frame: 2 % of a core at 2 fps
        assert budget.wait() == pytest.approx(0.5)
        clock.now += 0.5


def test_dear_frames_are_spaced_to_keep_the_average_within_the_share(clock):
    budget = FrameBudget(fps=2, share=0.04, burst=0.5, clock=clock)
    spent, start = 0.0, clock.now
    for _ in range(200):
        clock.now += budget.wait()
        budget.spend(0.1)  # 100 ms a frame: 20 % of a core at 2 fps
        spent += 0.1
    share = spent / (clock.now - start)
    assert 0.04 <= share <= 0.045, share  # the burst is spent once, then 4 %


def test_a_quiet_dashboard_earns_back_only_one_burst(clock):
    budget = FrameBudget(fps=4, share=0.04, burst=0.5, clock=clock)
    budget.spend(0.5)
    clock.now += 3600  # an hour without a frame
    for _ in range(3):
        assert budget.wait() <= 0.25
        budget.spend(0.2)
        clock.now += 0.25
    assert budget.wait() > 1.0, "the credit of an hour is capped at the burst"
