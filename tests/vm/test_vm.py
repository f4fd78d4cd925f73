"""Real qemu guests: image builds, boot figures, the cgroup v2 guest, and qemu never leaking."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from nsmagic.vm import boot, build_image, kvm_works, qemu_binary
from tests.vm.guest import repo_root, run_in_v2_guest, v2_guest_available

pytestmark = pytest.mark.vm

# TCG is slow: booting the v2 guest takes about 6 s of wall time here, and a Python with
# pytest inside it tens of seconds; the timeouts leave room for a loaded CI machine.
BOOT_TIMEOUT = 120
PYTEST_TIMEOUT = 1200

REPO = repo_root()
# The venv interpreter by the path it was started with: resolving the symlink would leave
# the venv (pyvenv.cfg is found next to the link, not next to /usr/bin/python3).
PYTHON = Path(sys.executable)


def qemu_children() -> list[psutil.Process]:
    """qemu processes descended from this test process (there should be none between tests)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "qemu" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_no_qemu_left() -> None:
    # Reaped by the API before it returns, so no waiting: any survivor is a leak.
    leftovers = qemu_children()
    assert not leftovers, f"qemu outlived the call: {[p.pid for p in leftovers]}"


@pytest.fixture(scope="module")
def v2_guest() -> None:
    ok, why = v2_guest_available()
    if not ok:
        pytest.skip(f"no cgroup v2 guest here: {why}")
    print(f"v2 guest: {why}")


def need_qemu() -> None:
    if not qemu_binary():
        pytest.skip("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")


def test_images_build_from_debian_packages_and_are_cached() -> None:
    for flavour in ("micro", "v2"):
        image = build_image(flavour)
        assert image.kernel.is_file() and image.initramfs.is_file()
        assert image.kernel_bytes > 1_000_000, "a vmlinuz is several MB"
        assert image.initramfs_bytes > 500_000, "busybox alone is about 2 MB uncompressed"
        started = time.monotonic()
        again = build_image(flavour)
        elapsed = time.monotonic() - started
        assert again == image
        assert elapsed < 0.5, f"a cached build took {elapsed:.2f} s"
        print(
            f"{flavour}: {image.kernel_package} {image.kernel_version}, busybox"
            f" {image.busybox_version}: kernel {image.kernel_bytes} B,"
            f" initramfs {image.initramfs_bytes} B"
        )
    assert build_image("micro").kernel_package.endswith("-cloud-amd64")


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    # A fresh cache folder forces real builds; the .deb files are copied rather than downloaded when
    # the default cache already holds them, so the test stays quick and offline-friendly.
    from nsmagic.vm.images import cache_dir

    debs = cache_dir() / "debs"
    if debs.is_dir():
        (tmp_path / "debs").mkdir()
        for deb in debs.iterdir():
            shutil.copy(deb, tmp_path / "debs" / deb.name)
    results: list = []
    errors: list = []

    def build() -> None:
        try:
            results.append(build_image("micro", cache=tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({r.initramfs for r in results}) == 1
    assert results[0].initramfs.read_bytes() == build_image("micro").initramfs.read_bytes()


def test_micro_vm_boots_and_reports_sane_figures() -> None:
    need_qemu()
    stages: list[tuple[str, float]] = []
    result = boot("micro", memory="256M", timeout=BOOT_TIMEOUT,
                  on_stage=lambda name, at: stages.append((name, at)))
    print(result.summary())
    assert_no_qemu_left()
    assert result.ready, result.console[-2000:]
    # The boot's stages as they were reached, read from the guest's console on the way.
    assert [name for name, _ in stages] == ["launched", "init", "ready", "stopped"]
    assert [at for _, at in stages] == sorted(at for _, at in stages)
    assert 0 < result.init_wall_s <= result.boot_wall_s < result.total_wall_s
    assert result.accel in ("kvm", "tcg")
    assert result.emulated == (result.accel == "tcg")
    assert result.accel == ("kvm" if kvm_works()[0] else "tcg")
    assert result.machine == "microvm"
    assert result.boot_wall_s > 0 and result.guest_uptime_s > 0
    # Guest uptime starts after qemu has loaded the kernel, so it cannot exceed the wall time.
    assert result.guest_uptime_s < result.boot_wall_s
    assert result.qemu_rss_bytes > result.kernel_bytes
    assert 0 < result.qemu_pss_bytes <= result.qemu_rss_bytes
    assert result.qemu_cpu_s > 0
    assert result.exit_status is None, "the micro guest runs no command"
    assert result.ok


def test_v2_guest_has_cgroup2_with_the_controllers(v2_guest: None) -> None:
    result = run_in_v2_guest("cat /sys/fs/cgroup/cgroup.controllers", timeout=BOOT_TIMEOUT)
    print(result.summary())
    assert result.exit_status == 0, (result.stderr, result.console[-2000:])
    assert result.ok
    assert {"cpu", "memory", "pids"} <= set(result.stdout.split())
    assert result.machine == "q35"
    assert result.boot_wall_s > 0 and result.guest_uptime_s > 0


def test_v2_guest_runs_the_repos_python_as_root_in_the_root_cgroup(v2_guest: None) -> None:
    code = "import nsmagic, os; print(nsmagic.__file__); print(os.getuid())"
    script = f"{shlex.quote(str(PYTHON))} -c {shlex.quote(code)} || exit 99\n"
    script += "cat /proc/self/cgroup\ntouch /etc/nsmagic-probe 2>&1\n"
    result = run_in_v2_guest(script, timeout=BOOT_TIMEOUT)
    print(result.summary())
    assert result.exit_status not in (None, 99), (result.stderr, result.console[-2000:])
    lines = result.stdout.splitlines()
    assert lines[0] == str(REPO / "nsmagic" / "__init__.py")
    assert lines[1] == "0", "the command runs as root"
    assert lines[2] == "0::/", "the command runs in the root cgroup"
    assert "Read-only file system" in lines[3], "the host root must stay read-only"
    assert result.exit_status != 0


def test_v2_guest_returns_stderr_status_and_environment(v2_guest: None) -> None:
    result = run_in_v2_guest(
        'echo "$HOME $TMPDIR $PYTHONDONTWRITEBYTECODE $FOO"; pwd; echo oops >&2; exit 7',
        env={"FOO": "bar baz"},
        cwd=REPO,
        timeout=BOOT_TIMEOUT,
    )
    assert result.exit_status == 7
    assert not result.ok
    assert result.stdout.splitlines() == ["/tmp /tmp 1 bar baz", str(REPO)]
    assert result.stderr == "oops\n"


def test_cgroup_v2_suite_passes_in_a_real_v2_kernel(v2_guest: None) -> None:
    argv = [str(PYTHON), "-m", "pytest", "-m", "cgroup_v2", "-p", "no:cacheprovider", "-q"]
    argv += [str(REPO / "tests" / "cgroups"),
             str(REPO / "tests" / "runtime" / "test_limits_on_any_cgroup_version.py")]
    started = time.monotonic()
    result = run_in_v2_guest(argv, cwd=REPO, timeout=PYTEST_TIMEOUT)
    elapsed = time.monotonic() - started
    summary = result.stdout.strip().splitlines()[-1:] or ["(no output)"]
    print(f"{result.summary()}; whole run {elapsed:.1f} s")
    print(f"guest pytest: {summary[0]}")
    assert not result.timed_out, result.stdout[-3000:]
    if result.exit_status == 5:
        pytest.skip(f"no cgroup_v2 tests collected in the guest yet: {summary[0]}")
    assert result.exit_status == 0, (
        f"guest pytest exited {result.exit_status}:\n{result.stdout[-6000:]}\n{result.stderr}"
    )


def test_a_hanging_command_is_killed_at_the_timeout(v2_guest: None) -> None:
    started = time.monotonic()
    result = run_in_v2_guest("echo started; sleep 600", timeout=30)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.exit_status is None
    assert not result.ok
    assert result.ready
    assert result.stdout == "started\n", "what the command printed before the kill comes back"
    assert elapsed < 45
    assert_no_qemu_left()


def test_qemu_dies_with_a_keyboard_interrupt() -> None:
    need_qemu()
    build_image("micro")
    kvm_works()  # probe now, so the interrupt lands in the boot below
    seen: list[int] = []

    def interrupt() -> None:
        # Wait until qemu runs, note it, then interrupt the main thread as Ctrl-C would.
        deadline = time.monotonic() + 30
        while not (found := qemu_children()) and time.monotonic() < deadline:
            time.sleep(0.01)
        seen.extend(p.pid for p in found)
        os.kill(os.getpid(), signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            # A guest that never finishes by itself within the test's patience.
            boot("micro", timeout=600, extra_args=["-S"])
    finally:
        helper.join()
    assert seen, "qemu was never seen running"
    assert_no_qemu_left()
    for pid in seen:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def test_qemu_dies_with_its_python_even_on_sigkill() -> None:
    # No finally block runs after SIGKILL: only the parent-death signal set on qemu saves it.
    need_qemu()
    build_image("micro")
    code = (
        "from nsmagic.vm import boot\nboot('micro', accel='tcg', timeout=600, extra_args=['-S'])\n"
    )
    owner = psutil.Popen([str(PYTHON), "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        qemus: list[psutil.Process] = []
        while not qemus and time.monotonic() < deadline:
            qemus = [p for p in owner.children(recursive=True) if "qemu" in p.name()]
            time.sleep(0.05)
        assert qemus, "qemu never started"
        owner.kill()
        owner.wait(10)
        gone, alive = psutil.wait_procs(qemus, timeout=10)
        assert not alive, f"qemu survived the SIGKILL of its owner: {[p.pid for p in alive]}"
    finally:
        if owner.is_running():
            owner.kill()
            owner.wait(10)
