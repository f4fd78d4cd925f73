"""The VM baseline: real micro VMs measured beside containers, the published fallback, the
magic's table and chart, and nothing (qemu, VM cgroups) left behind."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

import psutil
import pytest

from nsmagic.vm import Baseline, baseline, start_vm, vm_available
from nsmagic.vm.figures import DISK_ROW, FORK_SERVER_ROW, fill_figures, median
from nsmagic.vm.loops import workload_script
from nsmagic.vm.measure_containers import ContainerRun
from nsmagic.vm.memory import split_smaps
from nsmagic.vm.progress import VM_STAGES, ProgressEvent, plan
from nsmagic.vm.qemu import qemu_binary
from nsmagic.vm.reference import load_reference
from nsmagic.vm.workload import compare_workload

SMAPS = """\
55d0c0000000-55d0c0a00000 r-xp 00000000 08:01 1234    /usr/bin/qemu-system-x86_64
Size:              10240 kB
Rss:                8192 kB
Pss:                8000 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0
Size:             262144 kB
Rss:              100000 kB
Pss:              100000 kB
7f0010000000-7f0050000000 rwxp 00000000 00:00 0
Size:            1048576 kB
Rss:               30000 kB
Pss:               30000 kB
7f0050000000-7f0050800000 rw-p 00000000 00:00 0
Size:               8192 kB
Rss:                2000 kB
Pss:                1500 kB
"""


def vm_cgroups() -> list[str]:
    """VM cgroups of ours anywhere in the cgroup filesystems."""
    found = subprocess.run(
        ["find", "/sys/fs/cgroup", "-maxdepth", "6", "-type", "d", "-name", "nsmagic-*vm*"],
        capture_output=True, text=True, check=False,
    ).stdout.split()
    return found


def qemu_children() -> list[int]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "qemu" in child.name():
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_nothing_left() -> None:
    deadline = time.monotonic() + 5
    while (qemu_children() or vm_cgroups()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not qemu_children(), f"qemu left running: {qemu_children()}"
    assert not vm_cgroups(), f"VM cgroups left behind: {vm_cgroups()}"


def need_vm() -> None:
    ok, why = vm_available()
    if not ok:
        pytest.skip(f"no VM here: {why}")


# -- no VM needed ------------------------------------------------------------------------


def test_smaps_split_into_guest_ram_tcg_cache_and_vmm() -> None:
    split = split_smaps(SMAPS, 256 * 2**20)
    assert split.guest_ram_found
    assert split.guest_ram_pss == 100000 * 1024
    assert split.tcg_cache_pss == 30000 * 1024
    assert split.vmm_pss == (8000 + 1500) * 1024
    assert split.vmm_rss == (8192 + 2000) * 1024
    assert split.total_pss == (100000 + 30000 + 8000 + 1500) * 1024
    # A different -m: no mapping is guest RAM, so all of it counts as VMM (or TCG).
    assert not split_smaps(SMAPS, 512 * 2**20).guest_ram_found


def test_every_reference_figure_names_its_source_and_what_was_checked() -> None:
    data = load_reference()
    assert data["label"] == "published, not measured on this host"
    ids = {f["id"] for f in data["figures"]}
    assert {"firecracker_boot_to_init", "firecracker_vmm_overhead", "lightvm_boot",
            "kata_qemu_pod_overhead", "kata_fc_pod_overhead", "crun_100_true"} <= ids
    for figure in data["figures"]:
        for key in ("system", "what", "source", "url", "checked", "cite"):
            assert figure.get(key), f"{figure['id']} has no {key}"
    by_id = {f["id"]: f for f in data["figures"]}
    assert by_id["firecracker_boot_to_init"]["value"] == 125
    assert by_id["firecracker_vmm_overhead"]["value"] == 5
    assert (by_id["lightvm_boot"]["value"], by_id["lightvm_fork_exec"]["value"]) == (2.3, 1)
    assert by_id["kata_qemu_pod_overhead"]["value"] == 160
    assert by_id["kata_fc_pod_overhead"]["value"] == 130
    assert (by_id["crun_100_true"]["value"], by_id["runc_100_true"]["value"]) == (1.69, 3.34)


def test_the_public_api_is_a_plain_function_and_its_result() -> None:
    import types

    import nsmagic.vm

    assert nsmagic.vm.baseline is baseline and isinstance(baseline, types.FunctionType)
    assert type(nsmagic.vm) is types.ModuleType, "no module swaps its class to be callable"
    assert nsmagic.vm.Baseline is Baseline
    with pytest.raises(ValueError):
        nsmagic.vm.baseline(machine="pc-i440fx")


def container_run(pss: int, server: int | None, init: int = 50_000) -> ContainerRun:
    return ContainerRun([0.01], [0.004], [0.006], idle_pss_bytes=pss, idle_rss_bytes=3 * pss,
                        idle_init_pss_bytes=init, idle_cgroup_memory_bytes=pss,
                        fork_server_pss_bytes=server, cgroup_driver="v1")


def test_the_fork_server_is_reported_apart_and_charged_to_no_container() -> None:
    mib = 2**20
    out = Baseline(measured=False, container_runs=[container_run(5 * mib, 12 * mib)])
    fill_figures(out, budget=1024 * mib)
    assert out.row("host memory (PSS)").container == 5 * mib
    assert out.row(FORK_SERVER_ROW).container == 12 * mib
    assert out.row(FORK_SERVER_ROW).vm is None
    # The VMM row's container side is pid 1 alone: the runtime's part, without the payload.
    assert out.row("  of which VMM overhead").container == 50_000
    assert "shared by all containers: fork server 12.0 MiB" in out.text()
    assert "shared by all containers: fork server" in out._repr_html_()
    # The fork server is paid once, not per container: (budget - server) / own PSS.
    assert out.density[0].container == (1024 - 12) // 5


def test_without_a_fork_server_there_is_no_shared_figure_to_report() -> None:
    out = Baseline(measured=False, container_runs=[container_run(9 * 2**20, None)])
    fill_figures(out, budget="1G")
    assert out.row(FORK_SERVER_ROW) is None  # no VM here: rows without a container figure go
    assert any("a container's memory includes its helper" in n for n in out.notes)
    assert out.density[0].container == 1024 // 9


def test_workload_scripts_are_the_guests_loops() -> None:
    from nsmagic.vm.images import _MICRO_INIT

    assert "while :; do :; done &" in workload_script("cpu", 2)
    assert "while :; do :; done &" in _MICRO_INIT
    assert "dd if=/dev/zero of=/tmp/fill bs=1048576 count=8" in workload_script("memory", 1, 8)
    assert 'dd if=/dev/zero of=/tmp/fill bs=1048576 count="${nsmagic_mib:-64}"' in _MICRO_INIT
    with pytest.raises(ValueError):
        workload_script("disk", 1)
    with pytest.raises(ValueError):
        baseline(workload="disk")


def test_without_qemu_the_published_reference_is_shown_never_as_measured(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no qemu-system-x86_64 to be found
    assert qemu_binary() is None
    seen: list[ProgressEvent] = []
    result = baseline(runs=1, progress=seen.append)
    monkeypatch.undo()
    assert not result.measured
    assert result.label == "published, not measured on this host"
    assert result.accel is None and not result.vm_runs
    assert "not installed" in result.why_not_measured
    text = result.text()
    assert "published, not measured on this host" in text
    assert "Firecracker SPECIFICATION.md" in text and "125" in text
    html = result._repr_html_()
    assert "published, not measured on this host" in html
    # Nothing in the VM column pretends to be measured here.
    assert all(row.vm is None for row in result.rows)
    # The containers are measured all the same (this host allows them).
    assert result.row("start: launch -> ready").container > 0
    assert result.row(FORK_SERVER_ROW).container > 0, "the shared fork server, apart"
    assert any("no VM here" in e.text for e in seen)
    # No VM stage is reached, and the bar is full only at the end, all the same.
    assert not {e.stage for e in seen} & set(VM_STAGES)
    assert [e.done for e in seen] == [False] * (len(seen) - 1) + [True]
    from nsmagic.widgets.vm_compare import png

    assert png(result).startswith(b"\x89PNG")
    assert_nothing_left()


def test_an_idle_container_is_charged_its_pid_1_and_main_process_only() -> None:
    import threading

    from nsmagic.runtime.container import Container
    from nsmagic.runtime.launcher import default_launcher
    from nsmagic.vm.measure_containers import (
        FORK_HELPER_NAME,
        _wait_for_main_process,
        container_processes,
    )

    container = Container()
    waiter = threading.Thread(target=container.wait, kwargs={"timeout": 30}, daemon=True)
    container.start("import time\ntime.sleep(30)\n")
    waiter.start()
    try:
        init = _wait_for_main_process(container)
        assert init is not None, container.result.describe()
        own, shared = container_processes(init)
        server = getattr(default_launcher(), "pid", None)
        if server is None:
            pytest.skip("containers start without a fork server here (spawn launcher)")
        (main,) = init.children()
        assert {p.pid for p in own} == {init.pid, main.pid}
        assert shared[0].pid == server, "the fork server, which serves every container"
        assert [p.name() for p in shared[1:]] == [FORK_HELPER_NAME], "and its fork helper"
        assert not {p.pid for p in shared} & {p.pid for p in own}
    finally:
        container.send_signal(9)
        waiter.join(timeout=10)
        container.close()


# -- real VMs ------------------------------------------------------------------------------


QEMU_TEXT = ("Assertion", "qemu-system", "kvm_buf_set_msrs")


@dataclass
class Shown:
    """One display() of the progress widget: its bundle, and whether it replaced the first."""

    data: dict
    display_id: str
    update: bool


@dataclass
class Measured:
    """A real baseline, the progress events it reported and the widget that showed them."""

    result: Baseline
    events: list[ProgressEvent]
    view: object  # nsmagic.widgets.vm_compare.ProgressView
    outputs: list[Shown]


def run_with_widget(**kwargs) -> Measured:
    """baseline(**kwargs) reporting to a ProgressView widget, whose displays are recorded."""
    import IPython.display

    from nsmagic.widgets.vm_compare import ProgressView

    outputs: list[Shown] = []

    def record(data: dict, *, raw: bool, display_id: str, update: bool) -> None:
        assert raw
        outputs.append(Shown(data, display_id, update))

    events: list[ProgressEvent] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IPython.display, "display", record)
        view = ProgressView(widgets=True)

        def progress(event: ProgressEvent) -> None:
            events.append(event)
            view(event)

        try:
            result = baseline(progress=progress, **kwargs)
        finally:
            view.close()
    return Measured(result, events, view, outputs)


@pytest.fixture(scope="module")
def measured() -> Measured:
    need_vm()
    run = run_with_widget(runs=1, memory="256M")
    print(run.result.text())
    return run


@pytest.mark.vm
def test_a_real_vm_boots_and_its_figures_are_sane(measured: Measured) -> None:
    from nsmagic.vm.qemu import kvm_works

    b = measured.result
    assert b.measured and b.vm_runs and b.vm_runs[0].ok, b.notes
    assert b.accel == ("kvm" if kvm_works()[0] else "tcg")
    run = b.vm_runs[0]
    assert run.boot_wall_s > 0 and 0 < run.guest_uptime_s < run.boot_wall_s
    assert run.qemu_rss_bytes > b.kernel_bytes > 1_000_000
    assert 0 < run.qemu_pss_bytes <= run.qemu_rss_bytes
    assert run.cpu_s > 0
    # qemu ran in its own cgroup (same driver as containers), sampled through Cgroup.stats().
    assert run.cgroup.startswith(f"nsmagic-{os.getpid()}-vm-")
    if b.cgroup_driver != "rlimit":
        assert run.cgroup_memory_bytes > b.kernel_bytes
    split = run.split
    assert split is not None and split.guest_ram_found
    assert 0 < split.guest_ram_rss <= b.memory_bytes
    assert split.vmm_pss > 0
    assert (split.tcg_cache_rss > 0) == (b.accel == "tcg")
    # The ratio is the two figures of this same run.
    ready = b.row("start: launch -> ready")
    assert ready.vm == run.boot_wall_s
    assert ready.container == median(b.container_runs[0].start_ready_s)
    assert ready.ratio == pytest.approx(ready.vm / ready.container)
    assert ready.ratio > 1
    pss = b.row("host memory (PSS)")
    assert pss.ratio == pytest.approx(run.qemu_pss_bytes / pss.container)
    # The disk: the files this boot used, against the busybox image (tests/vm/test_disk.py
    # checks each figure against du).
    disk = b.row(DISK_ROW)
    assert disk.vm == b.disk.vm_bytes > b.kernel_bytes and disk.container == b.disk.image.size
    assert disk.ratio > 1 and "measured, bytes on disk" in disk.note
    # Labelled: emulated figures say so, in the title (once), the table and the notes.
    text = b.text()
    if b.emulated:
        assert "emulated" in b.label and "VM (emulated)" in text and "TCG" in text
        assert b.title().count("emulated (TCG)") == 1, b.title()
    else:
        assert "KVM" in b.label and "emulated" not in b.title()
    assert "Density (estimate)" in text
    assert b.density[0].vm > 0 and b.density[0].container > b.density[0].vm
    json.dumps(b.as_dict())
    assert_nothing_left()


@pytest.mark.vm
def test_a_real_baselines_disk_rows_and_sentence_are_in_text_html_dict_and_chart(
    measured: Measured,
) -> None:
    from nsmagic.widgets.vm_compare import figure

    b = measured.result
    assert b.disk is not None and b.disk.image is not None and b.disk.base is not None, b.notes
    from nsmagic.vm.images import build_image

    guest = build_image("micro")  # what this run booted (cached: built before the boot)
    assert [p.paths for p in b.disk.vm] == [(str(guest.kernel),), (str(guest.initramfs),)]
    sentence = b.disk_sentence
    assert sentence.startswith("Measured on disk: the container image of the shell loop")
    assert "the VM needs" in sentence and "two images on one base store it once" in sentence
    assert sentence in b.text() and escape(sentence) in b._repr_html_()
    assert b.as_dict()["disk_sentence"] == sentence
    assert [r["figure"] for r in b.as_dict()["rows"] if r["figure"].startswith(DISK_ROW)]
    titles = [ax.get_title() for ax in figure(b).axes]
    assert any(t.startswith("disk for the same program (measured") for t in titles), titles
    assert any(t.replace("\n", " ") == sentence for t in titles), titles
    disk_stage = next(e for e in measured.events if e.stage == "disk" and e.reached)
    assert disk_stage.text.startswith("disk measured: VM ")


@pytest.mark.vm
def test_a_real_boots_progress_comes_stage_by_stage_and_is_done_only_after_the_figures(
    measured: Measured,
) -> None:
    events = measured.events
    stages = plan(1, "none")
    reached = [(e.stage, e.run) for e in events if e.reached]
    # Every planned stage of a boot that worked is reached once, in the plan's order.
    assert reached == stages
    assert [e.stage for e in events if e.run == 1 and e.stage in VM_STAGES] == list(VM_STAGES)
    # Each with its elapsed time, which never runs backwards; the bar never either.
    assert [e.elapsed_s for e in events] == sorted(e.elapsed_s for e in events)
    assert [e.step for e in events] == sorted(e.step for e in events)
    # Full only at "done", the last event, after the VM was sampled and containers measured.
    assert [e.fraction == 1 for e in events] == [False] * (len(events) - 1) + [True]
    assert events[-1].done and events[-1].stage == "done"
    assert reached.index(("done", None)) > reached.index(("sampled", 1))
    assert reached.index(("done", None)) > reached.index(("containers", 1))
    # The boot's stage times are the figures of this same run.
    run = measured.result.vm_runs[0]
    ready = next(e for e in events if e.stage == "ready")
    assert f"ready marker {run.boot_wall_s:.1f} s after launch" in ready.text


@pytest.mark.vm
def test_the_progress_widget_ends_full_and_its_text_says_the_same(measured: Measured) -> None:
    view, last = measured.view, measured.events[-1]
    assert view.bar.value == view.bar.max == last.total
    assert view.bar.bar_style == "success"
    assert view.text() == f"VM baseline: done in {last.elapsed_s:.1f} s, all {last.total} stages"
    assert view.line.value == escape(view.text())
    # A saved notebook keeps the display's text/plain: the final one says the same.
    first, final = measured.outputs[0], measured.outputs[-1]
    assert first.data["text/plain"] == "VM baseline: starting" and not first.update
    assert final.update and final.display_id == first.display_id
    assert final.data["text/plain"] == view.text()
    assert "application/vnd.jupyter.widget-view+json" in final.data


@pytest.mark.vm
def test_the_doctor_and_the_vm_baseline_give_one_reason(measured: Measured) -> None:
    from nsmagic.host import probe

    b = measured.result
    assert b.accel_reason == probe().kvm.reason
    assert f"KVM for the VM baseline: {b.accel_reason}" in probe().describe()
    if b.emulated:
        assert f"No KVM: {b.accel_reason};" in b.text()
        accelerator = next(e for e in measured.events if e.stage == "accelerator")
        assert accelerator.text == f"no KVM: {b.accel_reason}"


@pytest.mark.vm
def test_qemus_own_messages_stay_in_a_log_never_in_the_report_or_the_widget() -> None:
    # KVM asked for: where it is broken (here qemu asserts at once), the boot fails.
    need_vm()
    run = run_with_widget(runs=1, memory="128M", accel="kvm", timeout=20)
    b = run.result
    shown = [o.data.get("text/plain", "") for o in run.outputs]
    shown += [e.text for e in run.events] + [b.text(), b._repr_html_(), run.view.text()]
    for text in shown:
        assert not [q for q in QEMU_TEXT if q in text], text
    log_notes = [n for n in b.notes if n.startswith("qemu's own messages")]
    if b.vm_runs[0].ok:
        assert not log_notes, "nothing to explain: the log is not mentioned"
    else:
        assert any("did not become ready" in n and "failure:" in n for n in b.notes), b.notes
        assert log_notes == [f"qemu's own messages: {b.qemu_log_path}"]
        assert Path(b.qemu_log_path).read_text() == b.qemu_log
        print(f"qemu's own messages, kept apart:\n{b.qemu_log}")
    assert run.view.bar.bar_style == "success", "the baseline itself finished"
    assert_nothing_left()


@pytest.mark.vm
def test_vm_baseline_magic_shows_the_table_and_a_png(ipython_shell) -> None:  # noqa: ANN001
    from IPython.utils.capture import capture_output

    from nsmagic.vm.program_images import PYTHON_IMAGE, images_on_one_base

    need_vm()
    images_on_one_base()  # built once, cached: the image --image names
    with capture_output() as captured:
        returned = ipython_shell.run_line_magic(
            "vm_baseline", f"--runs 1 --memory 128M --image {PYTHON_IMAGE} -o"
        )
    assert isinstance(returned, Baseline)
    assert returned.measured and returned.vm_runs[0].ok
    # The disk rows are of the named image's program: its files are the VM's root too.
    assert returned.disk.image.name == PYTHON_IMAGE
    assert [p.what.split(" (")[0] for p in returned.disk.vm] == [
        "kernel", "initramfs", "root filesystem"
    ]  # fmt: skip
    kinds = [set(output.data) for output in captured.outputs]
    assert any("text/html" in k for k in kinds), kinds
    html = next(o.data["text/html"] for o in captured.outputs if "text/html" in o.data)
    assert "<table>" in html and "VM / container" in html and "start: launch -&gt; ready" in html
    assert f"{DISK_ROW}: the program of {PYTHON_IMAGE}" in html
    pngs = [o.data["image/png"] for o in captured.outputs if "image/png" in o.data]
    assert pngs, kinds
    # Without a kernel the progress is text lines, on stdout: it is no warning.
    assert "done in" in captured.stdout.splitlines()[-1], captured.stdout
    assert captured.stderr == ""
    assert_nothing_left()


@pytest.mark.vm
def test_a_vm_workload_is_visible_to_a_monitor_and_cleaned_up() -> None:
    from nsmagic.cgroups import detect_driver
    from nsmagic.runtime.registry import REGISTRY

    need_vm()
    handle = start_vm("cpu", seconds=1.5, memory="128M")
    try:
        assert handle.cgroup_name.startswith("nsmagic-") and "-vm-" in handle.cgroup_name
        record = REGISTRY.get(handle.record_id)
        assert record is not None and record.name == "vm"
        group = detect_driver().open(handle.cgroup_name)  # what a monitor would do
        deadline = time.monotonic() + 60
        while record.state != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert record.state == "running" and record.cgroup == handle.cgroup_name
        assert record.pid in group.pids()
        first = group.stats()
        time.sleep(0.6)
        assert group.stats().cpu_usage_ns > first.cpu_usage_ns, "the busy loop uses CPU"
        result = handle.wait(timeout=120)
    finally:
        handle.stop()
        handle.wait(timeout=30)
    assert result.ready and handle.done_marker_seen, result.console[-1500:]
    assert REGISTRY.get(handle.record_id).state == "exited"
    assert_nothing_left()


@pytest.mark.vm
def test_the_same_workload_runs_in_a_vm_and_a_container() -> None:
    need_vm()
    run = compare_workload("memory", seconds=1, mib=32, memory="128M")
    assert run.vm_ok and run.container_ok
    assert run.vm_ready_s is not None and run.vm_samples and run.container_samples
    # The container wrote 32 MiB into its tmpfs, charged to its cgroup.
    assert run.container_peak_bytes >= 32 * 2**20
    assert run.vm_peak_bytes > run.container_peak_bytes
    assert_nothing_left()


def test_an_image_that_is_not_there_is_refused_before_any_vm_boots(ipython_shell) -> None:  # noqa: ANN001
    from IPython.core.error import UsageError

    from nsmagic.errors import SpecError

    started = time.monotonic()
    with pytest.raises(SpecError, match="pull it first"):
        baseline(runs=1, image="localhost/nsmagic-vm/nothing:1")
    with pytest.raises(UsageError, match="%vm_baseline: the image .* pull it first"):
        ipython_shell.run_line_magic("vm_baseline", "--image localhost/nothing/here:1 -q")
    assert time.monotonic() - started < 5, "no VM was booted for it"
    assert_nothing_left()


def test_nothing_is_left_behind() -> None:
    assert_nothing_left()
