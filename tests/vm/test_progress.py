"""A baseline's progress, without a VM: stages in the plan's order, skipped stages of a failed
boot, full only at done, and a widget whose final text says what its bar shows."""

from __future__ import annotations

from html import escape

import IPython.display
import pytest

from nsmagic.vm.progress import VM_STAGES, ProgressEvent, ProgressTracker, plan
from nsmagic.widgets.vm_compare import ProgressView


def test_the_plan_is_image_accelerator_containers_then_each_round_then_disk_then_done() -> None:
    assert plan(2, "cpu") == [
        ("image", None), ("accelerator", None), ("containers-warm", None),
        *[(s, 1) for s in VM_STAGES], ("containers", 1),
        *[(s, 2) for s in VM_STAGES], ("containers", 2),
        ("workload", None), ("disk", None), ("done", None),
    ]  # fmt: skip
    assert plan(1, "none")[-3:] == [("containers", 1), ("disk", None), ("done", None)]


def test_a_failed_boot_skips_its_stages_and_the_bar_is_full_only_at_done() -> None:
    events: list[ProgressEvent] = []
    track = ProgressTracker(1, "none", events.append)
    track.note("looking for qemu and a guest image")
    for stage in ("image", "accelerator", "containers-warm", "launched"):
        track.reached(stage, stage, 1 if stage == "launched" else None)
    track.reached("stopped", "qemu stopped", 1)  # never ready: init, ready, sampled skipped
    track.note("containers 1/1: starting", "containers", 1)
    track.reached("containers", "containers 1/1: measured", 1)
    track.reached("done", "done")
    total = len(plan(1, "none"))
    assert [e.step for e in events] == [0, 1, 2, 3, 4, 8, 8, 9, 11] and total == 11
    assert [e.reached for e in events].count(False) == 2, "notes leave the bar where it is"
    assert [e.done for e in events] == [False] * 8 + [True]
    assert [e.fraction for e in events if e.fraction == 1] == [1.0]


def test_a_broken_display_never_breaks_the_baseline() -> None:
    def broken(event: ProgressEvent) -> None:
        raise RuntimeError("front end gone")

    track = ProgressTracker(1, "none", broken)
    track.reached("image", "ready")
    track.reached("done", "done")  # no exception, and no more calls to the broken display
    assert track.report is None


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[tuple[dict, bool]]:
    """What the widget displays: (bundle, update) pairs."""
    calls: list[tuple[dict, bool]] = []
    monkeypatch.setattr(
        IPython.display, "display",
        lambda data, *, raw, display_id, update: calls.append((data, update)),
    )  # fmt: skip
    return calls


def test_an_interrupted_baseline_leaves_a_red_bar_that_says_where_it_stopped(
    shown: list[tuple[dict, bool]],
) -> None:
    view = ProgressView(widgets=True)
    track = ProgressTracker(1, "none", view)
    track.reached("image", "guest image ready")
    track.reached("launched", "VM 1/1: qemu started; the guest kernel boots", 1)
    view.close()  # as the magic's finally does after a Ctrl-C
    assert view.bar.bar_style == "danger"
    assert view.bar.value == 4 < view.bar.max
    assert view.text().startswith("VM baseline: stopped after ")
    assert view.text().endswith("at stage 4/11: VM 1/1: qemu started; the guest kernel boots")
    assert view.line.value == escape(view.text())
    final, update = shown[-1]
    assert update and final["text/plain"] == view.text(), "a saved notebook says the same"


def test_without_widgets_the_progress_is_lines_on_stdout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = ProgressView(widgets=False)
    track = ProgressTracker(1, "none", view)
    track.reached("image", "guest image ready")
    track.reached("done", "done in 0.0 s")
    view.close()
    out, err = capsys.readouterr()
    assert err == ""
    assert [line.split("] ", 1)[1] for line in out.splitlines()] == [
        "guest image ready", "done in 0.0 s",
    ]
    assert view.text().startswith("VM baseline: done in ")
