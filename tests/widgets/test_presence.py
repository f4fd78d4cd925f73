"""Whether a front end shows a widget: views, the page's heartbeat, the kernel's busy cells."""

from __future__ import annotations

import pytest

from nsmagic.widgets.presence import (
    GONE_AFTER_S,
    NoFrontEnd,
    Presence,
    heartbeat_widget,
    kernel_shell,
)


class Clock:
    """A hand-moved clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Activity:
    """What KernelActivity says: when the running cell started or the last one ended."""

    busy_since: float | None = None
    idle_since: float | None = None

    def close(self) -> None:
        pass


@pytest.fixture
def page():
    clock, changes, activity = Clock(), [], Activity()
    beat = heartbeat_widget()
    presence = Presence(beat, lambda: changes.append(clock.now), activity, clock=clock)
    yield presence, beat, clock, changes, activity
    presence.close()
    beat.close()


def test_nothing_is_seen_before_a_view_appears(page):
    presence, beat, clock, _, activity = page
    assert beat._view_count == 0, "the front end is asked to count its views"
    assert not beat.playing
    activity.idle_since = clock.now - GONE_AFTER_S  # the kernel has been idle a while
    assert not presence.seen()


def test_a_busy_kernel_that_could_not_hear_of_a_view_yet_counts_it_as_seen(page):
    presence, beat, clock, _, activity = page
    activity.busy_since = clock.now  # "Run All": the next cells run before any page message
    clock.now += 30
    assert presence.seen()
    activity.busy_since, activity.idle_since = None, clock.now
    clock.now += GONE_AFTER_S - 1
    assert presence.seen(), "the page's first messages come right after the cells"
    clock.now += 2
    assert not presence.seen(), "idle and no word from any page: nobody shows it"
    beat._view_count = 1  # a page reports its view, then that it went (output cleared):
    beat._view_count = 0  # no more guessing
    activity.busy_since = clock.now
    assert not presence.seen()


def test_a_view_is_seen_and_starts_the_heartbeat(page):
    presence, beat, _, changes, _ = page
    beat._view_count = 1  # what the front end sends when it shows the widget
    assert presence.seen() and beat.playing
    assert changes, "the dashboard is woken up"


def test_a_closed_tab_is_noticed_by_its_silent_heartbeat(page):
    presence, beat, clock, changes, _ = page
    beat._view_count = 1
    clock.now += GONE_AFTER_S - 0.5
    beat.value += 1  # a step from the page
    clock.now += GONE_AFTER_S - 0.5
    assert presence.seen()
    clock.now += 1.0  # the tab was closed: no step any more, and the view stays counted
    assert beat._view_count == 1 and not presence.seen()
    changes.clear()
    beat.value += 1  # the tab is back (reopened, or in the foreground again)
    assert presence.seen() and changes, "steps after a silence wake the dashboard"


def test_a_busy_kernel_reads_no_heartbeat_so_the_page_counts_as_there(page):
    presence, beat, clock, _, activity = page
    beat._view_count = 1
    activity.busy_since = clock.now + 1.0  # a long cell starts while the page is alive
    clock.now += 10 * GONE_AFTER_S
    assert presence.seen()
    activity.busy_since = None  # the cell ended and no queued step arrived: the page is gone
    assert not presence.seen()


def test_a_cell_started_after_the_page_went_silent_does_not_revive_it(page):
    presence, beat, clock, _, activity = page
    beat._view_count = 1
    clock.now += 2 * GONE_AFTER_S
    activity.busy_since = clock.now
    assert not presence.seen()


def test_no_view_left_means_not_seen(page):
    presence, beat, _, changes, _ = page
    beat._view_count = 1
    changes.clear()
    beat._view_count = 0  # the output was cleared, the cell deleted, the notebook closed
    assert not presence.seen() and changes


def test_a_new_view_restarts_the_heartbeat_of_a_reloaded_page(page):
    presence, beat, clock, _, _ = page
    beat._view_count = 1
    clock.now += 2 * GONE_AFTER_S
    assert not presence.seen()
    toggles = []
    beat.observe(lambda change: toggles.append(change["new"]), names="playing")
    beat._view_count = 2  # the reloaded page's view (the closed one's is never taken back)
    assert toggles == [False, True], "the new page's model starts on playing turning true"
    assert presence.seen()


def test_without_a_kernel_there_is_no_front_end():
    assert kernel_shell() is None
    assert not NoFrontEnd().seen()
